"""CATENATE (RFC 4469): a message for APPEND put together from text parts and IMAP URLs
(RFC 5092) naming messages or parts of messages of the same user.

A URL names one message of the logged-in user, and optionally a section and a partial
range of it: ``imap://user@host/mailbox;UIDVALIDITY=n/;UID=n[/;SECTION=s][/;PARTIAL=o.l]``,
or the same relative to ``imap://user@host/`` (``/mailbox;...``) or to the selected mailbox
(``;UID=n...``).  Its octets go into the new message unchanged, as ``FETCH BODY[section]<o.l>``
would give them (RFC 4469 3); reading them does not set ``\\Seen``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_to_bytes

from cloudcote.core.mail import mime
from cloudcote.core.mail.api import InvalidMailboxName, MailboxNotFound, MessageExpunged

from . import utf7
from .parser import Command, ImapParseError, Token, tokenize

if TYPE_CHECKING:
    from cloudcote.core.mail import api

__all__ = ["CatenateError", "ImapUrl", "assemble", "parse_url"]


class CatenateError(Exception):
    """APPEND fails with NO and the response code ``code`` (``BADURL url``, ``TOOBIG``)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class BadUrl(ValueError):
    """A URL that is not an IMAP message (part) URL of this user; the text says why."""


@dataclass(frozen=True)
class ImapUrl:
    """What a message (part) URL names: RFC 5092 ``imessagepart`` with the section
    already split into part numbers, section text and header field names."""

    mailbox: str
    uidvalidity: int | None
    uid: int
    parts: tuple[int, ...] = ()
    kind: str | None = None  # HEADER, HEADER.FIELDS[.NOT], TEXT, MIME
    fields: tuple[str, ...] = ()
    partial: tuple[int, int | None] | None = None


# RFC 5092 11: bchar = achar / ":" / "@" / "/"; achar = uchar / "&" / "="; uchar =
# unreserved / sub-delims-sh / pct-encoded ("%" is checked separately).
_BCHAR = frozenset(string.ascii_letters + string.digits + "-._~" + "!$'()*+," + "&=" + ":@/%")
_ACHAR = _BCHAR - {":", "@", "/"}
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_NUMBER = r"[1-9][0-9]{0,9}"
#: The path of a message (part) URL after its first "/": imessagepart (RFC 5092 11).
_MESSAGE_PART = re.compile(
    rf"(?P<mailbox>[^;]*?)(?:;UIDVALIDITY=(?P<uidvalidity>{_NUMBER}))?"
    rf"/;UID=(?P<uid>{_NUMBER})"
    r"(?:/;SECTION=(?P<section>[^;]+?))?"
    rf"(?:/;PARTIAL=(?P<origin>[0-9]{{1,10}})(?:\.(?P<length>{_NUMBER}))?)?",
    re.IGNORECASE)
_SECTION_PARTS = re.compile(r"((?:[1-9][0-9]{0,8}\.)*[1-9][0-9]{0,8})(?:\.(.*))?$|(.*)$",
                            re.DOTALL)
_MSGTEXT = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT")
_HEADER_FIELDS = ("HEADER.FIELDS", "HEADER.FIELDS.NOT")


def parse_url(url: str, user: str, *, selected: str | None = None,
              hosts: Collection[str] | None = None) -> ImapUrl:
    """The message (part) that ``url`` names for the logged-in ``user`` (RFC 5092, relative
    URLs as RFC 4469 3 resolves them: against ``imap://user@server/``, and ``;UID=...``
    against the ``selected`` mailbox).  An absolute URL must name ``user``, and a host among
    ``hosts`` (any host if None).  BadUrl if it names nothing of this user's."""
    if not url or any(not 0x21 <= ord(c) <= 0x7E for c in url):
        raise BadUrl("not a URL")
    if "?" in url or "#" in url:
        raise BadUrl("not a message URL")
    if url.startswith("//"):
        url = "imap:" + url
    scheme = _SCHEME.match(url)
    if scheme is not None:
        if scheme.group().lower() != "imap:" or not url[5:].startswith("//"):
            raise BadUrl("not an IMAP URL")
        authority, slash, path = url[7:].partition("/")
        if not slash:
            raise BadUrl("not a message URL")
        _check_authority(authority, user, hosts)
    elif url.startswith("/"):
        path = url[1:]
    elif url.startswith(";"):
        # iuid-only / isection-only / ipartial-only: the selected mailbox is the base.
        if selected is None:
            raise BadUrl("a relative URL needs a selected mailbox")
        path = encode_mailbox(selected) + "/" + url
    else:
        path = url  # imailbox-ref "/" iuid-only ..., relative to imap://user@server/
    m = _MESSAGE_PART.fullmatch(path)
    if m is None:
        raise BadUrl("not a message URL")
    enc_mailbox = m.group("mailbox")
    if not enc_mailbox or not set(enc_mailbox) <= _BCHAR or _PCT.search(enc_mailbox):
        raise BadUrl("bad mailbox name")
    try:
        mailbox = unquote_to_bytes(enc_mailbox).decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl("mailbox name is not UTF-8") from None
    if mailbox.upper() == "INBOX":
        mailbox = "INBOX"
    parts: tuple[int, ...] = ()
    kind: str | None = None
    fields: tuple[str, ...] = ()
    enc_section = m.group("section")
    if enc_section is not None:
        if not set(enc_section) <= _BCHAR or _PCT.search(enc_section):
            raise BadUrl("bad section")
        parts, kind, fields = parse_section(unquote_to_bytes(enc_section))
    partial: tuple[int, int | None] | None = None
    if m.group("origin") is not None:
        length = m.group("length")
        partial = (int(m.group("origin")), int(length) if length is not None else None)
    uidvalidity = m.group("uidvalidity")
    return ImapUrl(mailbox, int(uidvalidity) if uidvalidity is not None else None,
                   int(m.group("uid")), parts, kind, fields, partial)


def _check_authority(authority: str, user: str, hosts: Collection[str] | None) -> None:
    """``iserver`` (RFC 5092 11): the user must be the logged-in one (any ``;AUTH=``
    mechanism: no new login happens, RFC 4469 3), the host one of ``hosts``."""
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        raise BadUrl("the URL names no user")
    enc_user = userinfo.split(";", 1)[0]
    if ";" in userinfo and not userinfo[len(enc_user):].upper().startswith(";AUTH="):
        raise BadUrl("bad user name")
    if not enc_user or _PCT.search(enc_user) or not set(enc_user) <= _ACHAR | {"@"}:
        raise BadUrl("bad user name")
    try:
        url_user = unquote_to_bytes(enc_user).decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl("bad user name") from None
    if url_user != user:
        raise BadUrl("the URL names another user")
    if hostport.startswith("["):  # IP-literal
        end = hostport.find("]")
        host, rest = hostport[:end + 1], hostport[end + 1:]
    else:
        host, colon, port = hostport.partition(":")
        rest = colon + port
    if not host or (rest and not re.fullmatch(r":[0-9]{0,5}", rest)):
        raise BadUrl("bad host")
    if hosts is not None and host.lower() not in {h.lower() for h in hosts}:
        raise BadUrl("the URL names another server")


def encode_mailbox(name: str) -> str:
    """``enc-mailbox`` (RFC 5092 11): the name in UTF-8, percent-encoded but for bchar."""
    return quote(name.encode("utf-8"), safe="-._~!$'()*+,&=:@/")


def parse_section(raw: bytes) -> tuple[tuple[int, ...], str | None, tuple[str, ...]]:
    """``section-spec`` (RFC 3501 9): part numbers, section text, header field names."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadUrl("bad section") from None
    head, sp, field_list = text.partition(" ")
    m = _SECTION_PARTS.match(head)
    assert m is not None
    parts: tuple[int, ...] = ()
    if m.group(1) is not None:
        parts = tuple(int(p) for p in m.group(1).split("."))
        rest = m.group(2)
        if rest is None:
            kind = None
        elif not rest:
            raise BadUrl("bad section")
        else:
            kind = rest.upper()
    else:
        kind = m.group(3).upper()
    if kind is not None and kind not in _MSGTEXT and not (kind == "MIME" and parts):
        raise BadUrl("bad section")
    if (kind in _HEADER_FIELDS) != bool(sp):
        raise BadUrl("bad section")
    fields: tuple[str, ...] = ()
    if sp:
        try:
            toks = tokenize([field_list.encode("ascii")])
        except ImapParseError:
            raise BadUrl("bad header field list") from None
        if len(toks) != 1 or not isinstance(toks[0], list) or not toks[0]:
            raise BadUrl("bad header field list")
        names = []
        for tok in toks[0]:
            if isinstance(tok, bytes):
                tok = tok.decode("ascii", "replace")
            if not isinstance(tok, str) or not tok:
                raise BadUrl("bad header field list")
            names.append(tok.upper())
        fields = tuple(names)
    return parts, kind, fields


def url_resp_text(url: str) -> str:
    """The URL as ``url-resp-text`` (RFC 4469 5 with errata 2002 and 4046): bare, any
    TEXT-CHAR but "]"; other octets are percent-encoded, a very long URL is cut."""
    out = "".join(c if 0x20 <= ord(c) <= 0x7E and c != "]"
                  else quote(c.encode("utf-8", "surrogateescape"), safe="") for c in url)
    return out[:1000] or "%20"


async def assemble(mail: api.User, user: str, parts: list[Token], cmd: Command, *,
                   selected: str | None, limit: int,
                   hosts: Collection[str] | None = None) -> bytes:
    """The message that the CATENATE ``parts`` (``TEXT literal`` / ``URL astring``) make,
    at most ``limit`` octets; ``selected`` is the selected mailbox's name, if any, and a
    URL's host must be one of ``hosts`` (any if None).

    ImapParseError (BAD) if the list is not CATENATE's syntax (RFC 4469 5); CatenateError
    with ``BADURL url`` for the first URL that names nothing (RFC 4469 4.1), with ``TOOBIG``
    when the message would be larger than ``limit`` (4.2)."""
    items: list[tuple[bool, bytes]] = []  # (is a URL, literal or URL text)
    if not parts or len(parts) % 2:
        raise ImapParseError("CATENATE needs TEXT and URL parts")
    for word, value in zip(parts[::2], parts[1::2], strict=True):
        what = word.upper() if isinstance(word, str) else ""
        if what == "TEXT":
            if not isinstance(value, bytes) or not cmd.is_literal(value):
                raise ImapParseError("CATENATE TEXT needs a literal")
            items.append((False, value))
        elif what == "URL":
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, bytes):
                raise ImapParseError("CATENATE URL needs a string")
            items.append((True, value))
        else:
            raise ImapParseError("CATENATE parts are TEXT or URL")
    out: list[bytes] = []
    total = 0
    for is_url, value in items:
        if is_url:
            text = value.decode("utf-8", "surrogateescape")
            try:
                ref = parse_url(text, user, selected=selected, hosts=hosts)
                data = await _fetch(mail, ref, limit - total)
            except BadUrl as exc:
                raise CatenateError(f"Bad URL: {exc}.",
                                    "BADURL " + url_resp_text(text)) from None
            except _TooBig:
                raise _too_big(limit) from None
        else:
            data = value
        total += len(data)
        if total > limit:
            raise _too_big(limit)
        out.append(data)
    return b"".join(out)


class _TooBig(Exception):
    """A URL names more octets than the message has room for."""


def _too_big(limit: int) -> CatenateError:
    return CatenateError(f"Message too large (limit {limit} bytes).", "TOOBIG")


async def _fetch(mail: api.User, ref: ImapUrl, room: int) -> bytes:
    """The octets ``ref`` names; _TooBig, without reading them, if a whole message (or a
    partial of it) is more than ``room``."""
    box = await _mailbox(mail, ref.mailbox)
    if ref.uidvalidity is not None and ref.uidvalidity != box.state.uidvalidity:
        raise BadUrl("UIDVALIDITY does not match")
    msg = box.state.messages.get(ref.uid)
    if msg is None:
        await box.refresh()
        msg = box.state.messages.get(ref.uid)
        if msg is None:
            raise BadUrl("no such message")
    try:
        return await _section(box, msg, ref, room)
    except MessageExpunged:
        raise BadUrl("the message was expunged") from None


async def _mailbox(mail: api.User, name: str) -> api.Mailbox:
    try:
        return await mail.mailbox(name)
    except (MailboxNotFound, InvalidMailboxName):
        pass
    # RFC 5092 names mailboxes in UTF-8; clients that percent-encode the modified UTF-7
    # name they know are understood too.
    if "&" in name and name.isascii():
        try:
            return await mail.mailbox(utf7.decode(name))
        except (ValueError, MailboxNotFound, InvalidMailboxName):
            pass
    raise BadUrl("no such mailbox")


async def _section(box: api.Mailbox, msg: api.Message, ref: ImapUrl, room: int) -> bytes:
    """``BODY[section]<partial>`` of ``msg`` (RFC 3501 6.4.5); a part that does not
    exist, and HEADER or TEXT of a part that is not a message, is a bad URL."""
    origin, length = ref.partial if ref.partial is not None else (0, None)
    if not ref.parts and ref.kind is None:
        end = msg.size if length is None else min(msg.size, origin + length)
        if end - origin > room:
            raise _TooBig()
        return await box.read_message(msg, origin, end)
    if not ref.parts:
        data = await box.body_section(msg, (), ref.kind, ref.fields)
    else:
        raw = await box.read_message(msg)
        ms = mime.parse(raw)
        part = ms.find(ref.parts)
        if part is None:
            raise BadUrl("no such body part")
        if ref.kind not in (None, "MIME") and part.kind != "message":
            raise BadUrl("the body part is not a message")
        data = mime.section(raw, ms, ref.parts, ref.kind, ref.fields)
    if ref.partial is None:
        return data
    return data[origin:] if length is None else mime.partial(data, origin, length)
