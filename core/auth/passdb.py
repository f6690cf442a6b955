"""Password databases after Dovecot's passdb drivers: passwd-file, static and sql.

passwd-file: https://doc.dovecot.org/main/core/config/auth/databases/passwd_file.html
static: https://doc.dovecot.org/main/core/config/auth/databases/static.html
sql: https://doc.dovecot.org/2.3/configuration_manual/authentication/sql/ (see ``sql``)
extra fields: https://doc.dovecot.org/main/core/config/auth/passdb.html#extra-fields

A passdb is anything with ``async authenticate(user, password)`` and ``async close()``; see
``PassDb``. passwd-file and static also answer ``lookup(user)`` at once. ``open_passdb`` builds
one from a spec string through its driver table. The editing functions (``add_user`` ...)
serve ``cloudcote user``.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import re
import stat
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .errors import (
    AuthConfigError,
    InvalidHash,
    PasswdFileError,
    UnknownScheme,
    UserExists,
    UserNotFound,
)
from .schemes import (
    DEFAULT_SCHEME,
    check_stored_password,
    hash_password,
    scheme_of,
    verify_password,
)
from .verify import UserEntry, check_login, dummy_hash, parse_allow_nets


class PassDb(Protocol):
    """What the server needs from a password database.

    ``authenticate`` returns the entry on success and None for a wrong password, an unknown
    user or a refused login; it raises (``AuthError``) when the database cannot answer,
    which the sessions turn into a temporary failure.
    """

    async def authenticate(self, user: str, password: str, *,
                           remote_ip: str | None = None) -> UserEntry | None: ...

    async def user_lookup(self, user: str) -> UserEntry | None:
        """The user's entry without a password check (LMTP's userdb lookup): None if there
        is no such user; raises (``AuthError``) when the database cannot answer."""

    async def close(self) -> None:
        """Release connections; called once when the server stops."""


# -- passwd-file parsing ---------------------------------------------------------------------


def _parse_id(value: str, what: str, user: str) -> int | None:
    """uid/gid as Dovecot's userdb_parse_uid(): a number or a system name; 0 is refused."""
    if value == "":
        return None
    if re.fullmatch(r"[0-9]+", value):
        number = int(value)
    else:
        try:
            number = pwd.getpwnam(value).pw_uid if what == "uid" else grp.getgrnam(value).gr_gid
        except KeyError:
            raise ValueError(f"user {user!r} has invalid {what} {value!r}: no such "
                             f"{'user' if what == 'uid' else 'group'}") from None
    if number <= 0 or number >= 2**32 - 1:
        raise ValueError(f"user {user!r} has invalid {what} {value!r}")
    return number


def _parse_extra(text: str, user: str) -> dict[str, str]:
    """Space-separated ``key=value`` fields; a bare key (``nologin``) gets the value ''."""
    extra: dict[str, str] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if not key:
            raise ValueError(f"user {user!r} has an extra field without a name: {item!r}")
        if key == "allow_nets":
            parse_allow_nets(value)
        extra[key] = value
    return extra


def _parse_line(line: str) -> UserEntry:
    """One ``user:password:uid:gid:gecos:home:shell:extra_fields`` line; ValueError if bad."""
    fields = line.split(":", 7)  # extra fields may contain ':' (quota_rule=*:storage=1G)
    user = fields[0]
    if not user:
        raise ValueError("empty user name")
    if len(fields) < 2:
        raise ValueError(f"user {user!r} has no password field")
    password = fields[1]
    try:
        check_stored_password(password)
    except UnknownScheme as exc:
        raise ValueError(f"user {user!r} has unknown password scheme {exc.scheme!r}") from None
    except InvalidHash as exc:
        raise ValueError(f"user {user!r} has a bad {scheme_of(password)} password: {exc}") \
            from None
    fields += [""] * (8 - len(fields))
    return UserEntry(user=user, password=password,
                     uid=_parse_id(fields[2], "uid", user),
                     gid=_parse_id(fields[3], "gid", user),
                     home=fields[5] or None,
                     extra=_parse_extra(fields[7], user))


def _is_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _parse_text(path: str, text: str) -> tuple[dict[str, UserEntry], dict[str, int]]:
    """(entries by user in file order, 0-based line index by user); PasswdFileError if bad."""
    entries: dict[str, UserEntry] = {}
    where: dict[str, int] = {}
    for index, line in enumerate(text.split("\n")):
        line = line.removesuffix("\r")
        if _is_comment(line):
            continue
        try:
            entry = _parse_line(line)
            if entry.user in entries:
                raise ValueError(f"user {entry.user!r} is already defined on line "
                                 f"{where[entry.user] + 1}")
        except ValueError as exc:
            problem = " ".join(str(exc).split())  # always one line
            raise PasswdFileError(f"{path}:{index + 1}: {problem}") from None
        entries[entry.user] = entry
        where[entry.user] = index
    return entries, where


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class _Snapshot:
    stamp: tuple[int, ...] | None  # None: the file does not exist (yet)
    entries: dict[str, UserEntry]
    dummy: str  # a stored value of the file's most used scheme, for unknown users


class PasswdFile:
    """Dovecot's ``passdb passwd-file``: users in a colon-separated file, reread on change.

    User names match exactly (case-sensitive, no username_format). Each lookup costs a
    ``stat``; a changed file (mtime, size or inode) is parsed again. A missing file has no
    users (``cloudcote user add`` creates it). A file that is unreadable or invalid makes
    ``load`` and lookups raise ``PasswdFileError``: no login is better than one against a
    half-edited file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._snapshot: _Snapshot | None = None

    def __repr__(self) -> str:
        return f"PasswdFile({self.path!r})"

    def load(self) -> None:
        """Read and validate the whole file now; ``PasswdFileError`` names PATH:LINE.

        A missing file is not an error: it has no users until it appears.
        """
        self._snapshot = self._read()

    def _read(self) -> _Snapshot:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return _Snapshot(None, {}, _representative({}))
        except OSError as exc:
            raise PasswdFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        entries, _ = _parse_text(self.path, data.decode("utf-8", "surrogateescape"))
        return _Snapshot(_stamp(st), entries, _representative(entries))

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        try:
            stamp: tuple[int, ...] | None = _stamp(os.stat(self.path))
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            raise PasswdFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        if snapshot is None or stamp != snapshot.stamp:
            # Concurrent reloads in worker threads are harmless: each snapshot is whole and
            # carries its own stamp, so a stale one is simply read again next time.
            snapshot = self._snapshot = self._read()
        return snapshot

    def lookup(self, user: str) -> UserEntry | None:
        """The user's entry, or None; reloads the file first if it changed."""
        return self._current().entries.get(user)

    def users(self) -> list[UserEntry]:
        """Every entry, in file order."""
        return list(self._current().entries.values())

    async def authenticate(self, user: str, password: str, *,
                           remote_ip: str | None = None) -> UserEntry | None:
        """The entry if ``password`` is right and the login allowed, else None.

        Hashing runs in a worker thread. An unknown user costs a verification against a
        value of the file's most used scheme, so the answer time does not reveal who exists.
        """
        return await asyncio.to_thread(self._authenticate, user, password, remote_ip)

    def _authenticate(self, user: str, password: str, remote_ip: str | None) -> UserEntry | None:
        snapshot = self._current()
        entry = snapshot.entries.get(user)
        if entry is None:
            verify_password(snapshot.dummy, password)
            return None
        return check_login(entry, password, remote_ip)

    async def user_lookup(self, user: str) -> UserEntry | None:
        return self.lookup(user)

    async def close(self) -> None:
        """Nothing to release: the file is read on demand."""


def _representative(entries: Mapping[str, UserEntry]) -> str:
    """A stored value of the most used scheme (its result is thrown away)."""
    by_scheme: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for entry in entries.values():
        value = entry.password.partition("}")[2] if entry.password.startswith("{") \
            else entry.password
        if value:
            scheme = scheme_of(entry.password)
            counts[scheme] += 1
            by_scheme.setdefault(scheme, entry.password)
    if not counts:
        return dummy_hash()
    return by_scheme[counts.most_common(1)[0][0]]


# -- passwd-file editing ---------------------------------------------------------------------

_EDIT_ATTEMPTS = 5


def check_user_name(user: str) -> None:
    """Refuse a name a passwd-file cannot hold: empty, ':', whitespace, control characters."""
    if not user:
        raise ValueError("user name is empty")
    for char in user:
        if char == ":" or char.isspace() or unicodedata.category(char).startswith("C"):
            raise ValueError(f"user name {user!r} contains {char!r}; ':', whitespace and "
                             "control characters are not allowed")
    if user.startswith("#"):
        raise ValueError(f"user name {user!r} starts with '#', which marks a comment")


def _check_extra(extra: Mapping[str, str]) -> str:
    items = []
    for key, value in extra.items():
        if not key or "=" in key or any(c.isspace() or not c.isprintable() for c in key):
            raise ValueError(f"extra field name {key!r} is empty or has '=', whitespace "
                             "or control characters")
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(f"extra field {key}={value!r} has whitespace or control "
                             "characters")
        items.append(f"{key}={value}" if value else key)
    return " ".join(items)


def _new_password_field(password: str, scheme: str) -> str:
    stored = hash_password(password, scheme)
    if any(c in stored for c in ":\r\n"):
        raise ValueError(f"a {scheme} password cannot contain ':' or a line break in a "
                         "passwd-file; use a hashed scheme such as SHA512-CRYPT")
    return stored


def _read_for_edit(path: str) -> tuple[os.stat_result | None, str]:
    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()), f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None, ""


def _write_atomic(path: str, text: str, old: os.stat_result | None) -> None:
    """Temp file in the same directory, fsync, rename over ``path``, fsync the directory."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode) if old else 0o600)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:  # keep the owner (e.g. root editing dovecot's file) where we may
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
                except PermissionError:
                    pass
            f.write(text.encode("utf-8", "surrogateescape"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _edit(path: str | os.PathLike[str],
          change: Callable[[str, list[str], dict[str, int]], None]) -> None:
    """Apply ``change(display_path, lines, where)`` to the file's lines and write it back.

    No lock: if another writer replaced the file meanwhile (its stamp moved), the edit is
    redone on the new content; a writer landing between that check and the rename can still
    win, which for an admin tool is an accepted, tiny window.
    """
    shown = os.fspath(path)
    real = os.path.realpath(shown)  # replace the target of a symlink, not the link
    for _ in range(_EDIT_ATTEMPTS):
        old, text = _read_for_edit(real)
        _, where = _parse_text(shown, text)  # refuse to edit a file that does not parse
        lines = text.split("\n")
        change(shown, lines, where)
        try:
            now: tuple[int, ...] | None = _stamp(os.stat(real))
        except FileNotFoundError:
            now = None
        if now != (_stamp(old) if old else None):
            continue
        _write_atomic(real, "\n".join(lines), old)
        return
    raise PasswdFileError(f"{shown}: changed by someone else {_EDIT_ATTEMPTS} times while "
                          "editing; try again")


def _line_ending(lines: list[str]) -> str:
    return "\r" if lines and lines[0].endswith("\r") else ""


def add_user(path: str | os.PathLike[str], user: str, password: str,
             scheme: str = DEFAULT_SCHEME, extra: Mapping[str, str] | None = None) -> UserEntry:
    """Append ``user:{SCHEME}hash[::::::extra]``; a new file gets mode 0600.

    Raises ``UserExists``, ``ValueError`` for a bad name, password or extra field, and
    ``PasswdFileError`` if the file has a bad line.
    """
    check_user_name(user)
    extra_text = _check_extra(extra or {})
    line = f"{user}:{_new_password_field(password, scheme)}"
    if extra_text:
        line += f"::::::{extra_text}"
    entry = _parse_line(line)  # the same checks a reader will make

    def change(shown: str, lines: list[str], where: dict[str, int]) -> None:
        if user in where:
            raise UserExists(f"user {user!r} already exists in {shown} (line "
                             f"{where[user] + 1})")
        new = line + _line_ending(lines)
        if lines[-1] == "":
            lines.insert(len(lines) - 1, new)
        else:
            lines.extend([new, ""])

    _edit(path, change)
    return entry


def set_password(path: str | os.PathLike[str], user: str, password: str,
                 scheme: str = DEFAULT_SCHEME) -> None:
    """Replace the user's password field, leaving the rest of the line alone."""
    stored = _new_password_field(password, scheme)

    def change(shown: str, lines: list[str], where: dict[str, int]) -> None:
        if user not in where:
            raise UserNotFound(f"user {user!r} not found in {shown}")
        index = where[user]
        body = lines[index].removesuffix("\r")
        fields = body.split(":", 7)
        fields[1:2] = [stored]
        lines[index] = ":".join(fields) + lines[index][len(body):]

    _edit(path, change)


def delete_user(path: str | os.PathLike[str], user: str) -> None:
    """Remove the user's line; comments and other lines stay as they are."""

    def change(shown: str, lines: list[str], where: dict[str, int]) -> None:
        if user not in where:
            raise UserNotFound(f"user {user!r} not found in {shown}")
        del lines[where[user]]

    _edit(path, change)


def list_users(path: str | os.PathLike[str]) -> list[UserEntry]:
    """Every user in file order; a missing file has none."""
    _, text = _read_for_edit(os.fspath(path))
    entries, _ = _parse_text(os.fspath(path), text)
    return list(entries.values())


# -- static ----------------------------------------------------------------------------------


class StaticPassDb:
    """Dovecot's ``passdb static``: any user name, one password (default scheme PLAIN).

    ``password`` may carry a ``{SCHEME}`` prefix. ``extra`` fields such as ``allow_nets`` and
    ``nologin`` apply to every login.
    """

    def __init__(self, password: str, *, extra: Mapping[str, str] | None = None) -> None:
        if not password:
            raise AuthConfigError("static passdb: password= is empty")
        check_stored_password(password, default_scheme="PLAIN")
        if "allow_nets" in (extra or {}):
            try:
                parse_allow_nets((extra or {})["allow_nets"])
            except ValueError as exc:
                raise AuthConfigError(f"static passdb: {exc}") from None
        self._password = password
        self._extra = dict(extra or {})

    def __repr__(self) -> str:
        return "StaticPassDb(password=***)"

    def _entry(self, user: str) -> UserEntry:
        # Spell out the default scheme, so that verify_password needs no default_scheme.
        has_scheme = self._password.startswith("{") and "}" in self._password
        stored = self._password if has_scheme else f"{{PLAIN}}{self._password}"
        return UserEntry(user=user, password=stored, extra=dict(self._extra))

    def lookup(self, user: str) -> UserEntry | None:
        return self._entry(user)

    async def authenticate(self, user: str, password: str, *,
                           remote_ip: str | None = None) -> UserEntry | None:
        return await asyncio.to_thread(check_login, self._entry(user), password, remote_ip)

    async def user_lookup(self, user: str) -> UserEntry | None:
        return self._entry(user)

    async def close(self) -> None:
        """Nothing to release."""


# -- opening by spec -------------------------------------------------------------------------


def _redact(spec: str) -> str:
    """The spec without secrets: ``password=***`` and ``scheme://user:***@host``."""
    spec = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", spec)
    return re.sub(r"(password=)\S*", r"\1***", spec)


def _open_passwd_file(args: str) -> PassDb:
    if not args:
        raise AuthConfigError("give the file's path, e.g. passwd-file:/etc/cloudcote/passwd")
    return PasswdFile(args)


def _open_static(args: str) -> PassDb:
    fields: dict[str, str] = {}
    for item in args.split():
        key, _, value = item.partition("=")
        fields[key] = value
    password = fields.pop("password", "")
    if not password:
        raise AuthConfigError("static passdb: needs password=SECRET")
    return StaticPassDb(password, extra=fields)


def _open_sql(args: str) -> PassDb:
    from .sql import SqlPassDb, SqlSettings  # asyncpg/aiomysql only when configured

    return SqlPassDb(SqlSettings.from_args(args))


#: driver name -> factory taking the text after ``driver:``.
_DRIVERS: dict[str, Callable[[str], PassDb]] = {
    "passwd-file": _open_passwd_file,
    "static": _open_static,
    "sql": _open_sql,
}


def open_passdb(spec: str) -> PassDb:
    """A passdb from ``passwd-file:PATH``, ``static:password=SECRET [key=value ...]`` or
    ``sql:connect=DSN password_query=QUERY [key=value ...]`` (shell-quoted words; see
    ``sql.SqlSettings.spec``).

    The file is not read here; call ``load()`` to validate it at start-up. Raises
    ``AuthConfigError`` naming the spec (with any password hidden).
    """
    driver, colon, args = spec.partition(":")
    factory = _DRIVERS.get(driver) if colon else None
    if factory is None:
        known = ", ".join(f"{name}:" for name in _DRIVERS)
        raise AuthConfigError(f"passdb {_redact(spec)!r}: unknown passdb driver; "
                              f"expected one of {known}")
    try:
        return factory(args)
    except AuthConfigError as exc:
        raise AuthConfigError(f"passdb {_redact(spec)!r}: {exc}") from None
