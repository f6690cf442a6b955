"""Userdb fields: what the mail layer takes from a user's passdb entry.

https://doc.dovecot.org/2.3/configuration_manual/authentication/user_databases_userdb/

A passdb entry carries userdb fields as ``userdb_*`` extra fields (Dovecot's "prefetch"):
``userdb_home``, ``userdb_quota_rule`` and ``userdb_mail``; a passwd-file also has the home
in its own column, and the unprefixed ``quota_rule`` / ``mail`` are taken when the prefixed
ones are absent.  ``mail`` is a libfs chain string like ``[storage] fs``
(``compress:zstd:s3:bucket=vip,...``): that user's mail lives on that store instead of the
default one.  ``~/`` in it stands for the user's home.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cloudcote.core.quota import QuotaLimits, parse_quota_rule
from cloudcote.libfs.api import FsInvalidSpec
from cloudcote.libfs.chain import parse_chain

from .errors import UserdbError
from .verify import UserEntry

#: ``~`` as a whole path or a path's first component, after a chain separator.
_HOME_RE = re.compile(r"(?<=[:=,])~(/)?(?(1)|(?=$|[,:]))")
_SECRET_RE = re.compile(r"((?:secret_key|password|access_key)=)[^,:\s]*|(://[^:/@\s]*:)[^@\s]*@")


def redact_chain(chain: str) -> str:
    """A chain string for messages: secrets and DSN passwords replaced by ``***``."""
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}***" if m.group(1) else f"{m.group(2)}***@",
                          chain)


@dataclass(frozen=True)
class UserFields:
    """A user's userdb fields; None means "the server's default"."""

    home: str | None = None
    quota: QuotaLimits | None = None
    #: A libfs chain string for this user's mail store.
    mail: str | None = None


def _field(entry: UserEntry, name: str) -> str | None:
    value = entry.extra.get(f"userdb_{name}")
    if value is None:
        value = entry.extra.get(name)
    return value or None


def user_fields(entry: UserEntry) -> UserFields:
    """The userdb fields of ``entry``; ``UserdbError`` (one line, naming the user and the
    field) if the quota rule or the mail chain cannot be used."""
    home = _field(entry, "home") or entry.home
    quota = None
    rule = _field(entry, "quota_rule")
    if rule is not None:
        try:
            quota = parse_quota_rule(rule)
        except ValueError as exc:
            raise UserdbError(f"user {entry.user!r}: {exc}") from None
    mail = _field(entry, "mail")
    if mail is not None:
        if _HOME_RE.search(mail):
            if not home:
                raise UserdbError(f"user {entry.user!r}: mail {redact_chain(mail)!r} uses ~ "
                                  "but the user has no home")
            base: str = home
            mail = _HOME_RE.sub(lambda m: base.rstrip("/") + "/" if m.group(1) else base, mail)
        try:
            parse_chain(mail)
        except FsInvalidSpec as exc:
            raise UserdbError(f"user {entry.user!r}: mail {redact_chain(mail)!r} is not a "
                              f"libfs chain: {redact_chain(str(exc))}") from None
    return UserFields(home=home, quota=quota, mail=mail)
