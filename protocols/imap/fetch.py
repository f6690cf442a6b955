"""FETCH (RFC 3501 6.4.5, 7.4.2; RFC 7162 MODSEQ; RFC 3516 BINARY): what a client asks
for, and the response of one message.

Metadata items (UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ) come from the index,
ENVELOPE, BODY, BODYSTRUCTURE and the header sections from the cache; only body sections
(BINARY ones included) read the stored message, once per message however many sections ask
for it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudcote.core.mail import mime
from cloudcote.core.mail.api import internal_datetime

from .parser import ImapParseError, Section, Token, as_string
from .values import Atom, astring, serialize, serialize_envelope

if TYPE_CHECKING:
    from cloudcote.core.mail import api

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_SIMPLE = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE",
           "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"}
_HEADER_KINDS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")


@dataclass
class BodyItem:
    """One ``BODY[...]``-style item: where its bytes come from and how it is named in the
    response."""

    label: bytes  # e.g. b"BODY[HEADER.FIELDS (FROM)]<0>"
    parts: tuple[int, ...]
    kind: str | None
    fields: tuple[str, ...]
    partial: tuple[int, int | None] | None
    peek: bool
    #: ``BINARY[...]`` (RFC 3516 4.2): the section with its transfer encoding removed.
    binary: bool = False
    #: ``BINARY.SIZE[...]``: only the size of the ``BINARY`` data.
    size_only: bool = False

    @property
    def header_only(self) -> bool:
        return not self.parts and self.kind in _HEADER_KINDS


class UnknownCte(Exception):
    """A BINARY item names a part whose Content-Transfer-Encoding the server cannot decode:
    the FETCH fails with ``NO [UNKNOWN-CTE]`` (RFC 3516 4.3)."""

    def __init__(self, text: str, encoding: str) -> None:
        super().__init__(text)
        self.encoding = encoding


@dataclass
class FetchRequest:
    items: list[str] = field(default_factory=list)  # simple items, in request order
    bodies: list[BodyItem] = field(default_factory=list)
    sets_seen: bool = False

    @property
    def needs_cache(self) -> bool:
        return any(i in ("ENVELOPE", "BODY", "BODYSTRUCTURE") for i in self.items)

    @property
    def needs_message(self) -> bool:
        return any(i in ("RFC822", "RFC822.TEXT") for i in self.items) or any(
            not b.header_only for b in self.bodies)


def parse_fetch_items(tok: Token) -> FetchRequest:
    """The ``fetch-att`` list (or macro, or single item) of a FETCH command."""
    req = FetchRequest()
    if isinstance(tok, str) and tok.upper() in _MACROS:
        req.items = list(_MACROS[tok.upper()])
        return req
    toks = tok if isinstance(tok, list) else [tok]
    if not toks:
        raise ImapParseError("empty FETCH item list")
    for t in toks:
        if isinstance(t, Section):
            req.bodies.append(_binary_item(t) if t.name.startswith("BINARY") else _body_item(t))
            if t.name in ("BODY", "BINARY"):
                req.sets_seen = True
            continue
        if not isinstance(t, str):
            raise ImapParseError("FETCH items are atoms")
        name = t.upper()
        if name not in _SIMPLE:
            raise ImapParseError(f"unknown FETCH item {t[:40]!r}")
        if name in ("RFC822", "RFC822.TEXT"):
            req.sets_seen = True
        if name not in req.items:
            req.items.append(name)
    return req


def _body_item(sec: Section) -> BodyItem:
    if sec.name not in ("BODY", "BODY.PEEK"):
        raise ImapParseError(f"{sec.name} is not supported")
    spec = sec.spec
    parts: list[int] = []
    kind: str | None = None
    fields: tuple[str, ...] = ()
    if spec:
        if not isinstance(spec[0], str):
            raise ImapParseError("bad section")
        words = spec[0].split(".")
        i = 0
        while i < len(words) and words[i].isdigit():
            n = int(words[i])
            if n == 0 or len(words[i]) > 9:
                raise ImapParseError("bad section part number")
            parts.append(n)
            i += 1
        rest = ".".join(words[i:]).upper()
        if rest:
            allowed = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT")
            if rest not in allowed and not (rest == "MIME" and parts):
                raise ImapParseError(f"bad section text {rest!r}")
            kind = rest
        if kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            if len(spec) != 2 or not isinstance(spec[1], list) or not spec[1]:
                raise ImapParseError(f"{kind} needs a list of field names")
            fields = tuple(as_string(f, "header field").decode("ascii", "replace").upper()
                           for f in spec[1])
        elif len(spec) != 1:
            raise ImapParseError("bad section")
    if sec.partial is not None and sec.partial[1] is None:
        raise ImapParseError("a partial needs <origin.length>")
    text = _section_text(parts, kind, fields)
    label = f"BODY[{text}]"
    if sec.partial is not None:
        label += f"<{sec.partial[0]}>"
    return BodyItem(label.encode("ascii", "replace"), tuple(parts), kind, fields,
                    sec.partial, sec.name == "BODY.PEEK")


def _binary_item(sec: Section) -> BodyItem:
    """``BINARY[part]<partial>``, ``BINARY.PEEK[...]`` or ``BINARY.SIZE[part]`` (RFC 3516 7:
    ``section-binary = "[" [section-part] "]"``, a partial only on the first two)."""
    parts: list[int] = []
    if sec.spec:
        text = sec.spec[0]
        if len(sec.spec) != 1 or not isinstance(text, str):
            raise ImapParseError(f"{sec.name} takes a part number only")
        for word in text.split("."):
            if not (word.isascii() and word.isdigit()) or len(word) > 9 or int(word) == 0:
                raise ImapParseError(f"{sec.name} takes a part number only")
            parts.append(int(word))
    size_only = sec.name == "BINARY.SIZE"
    if sec.partial is not None:
        if size_only:
            raise ImapParseError("BINARY.SIZE takes no partial")
        if sec.partial[1] is None:
            raise ImapParseError("a partial needs <origin.length>")
    label = ("BINARY.SIZE" if size_only else "BINARY") + f"[{_section_text(parts, None, ())}]"
    if sec.partial is not None:
        # The origin is in the reply as for BODY (RFC 3516 4.3, as Dovecot sends it).
        label += f"<{sec.partial[0]}>"
    return BodyItem(label.encode("ascii"), tuple(parts), None, (), sec.partial,
                    sec.name != "BINARY", binary=True, size_only=size_only)


def _section_text(parts: list[int], kind: str | None, fields: tuple[str, ...]) -> str:
    text = ".".join(str(p) for p in parts)
    if kind:
        text = f"{text}.{kind}" if text else kind
    if fields:
        text += " (" + " ".join(astring(f).decode("utf-8", "replace") for f in fields) + ")"
    return text


def format_internaldate(msg: api.Message) -> bytes:
    when = internal_datetime(msg)
    return format_datetime(when)


def format_datetime(when: dt.datetime) -> bytes:
    off = int((when.utcoffset() or dt.timedelta(0)).total_seconds() // 60)
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (f'"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} '
            f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} '
            f'{sign}{off // 60:02d}{off % 60:02d}"').encode("ascii")


#: Rendered flag lists by (flags, recent): a mailbox has few distinct flag sets, and a
#: listing renders the same few again and again.
_FLAG_LISTS: dict[tuple[frozenset[str], bool], bytes] = {}


def flags_list(flags: frozenset[str] | set[str], recent: bool = False) -> bytes:
    if isinstance(flags, frozenset):
        done = _FLAG_LISTS.get((flags, recent))
        if done is not None:
            return done
    names = sorted(flags)
    if recent:
        names.append("\\Recent")
    text = b"(" + " ".join(names).encode("utf-8", "replace") + b")"
    if isinstance(flags, frozenset):
        if len(_FLAG_LISTS) >= 4096:
            _FLAG_LISTS.clear()
        _FLAG_LISTS[(flags, recent)] = text
    return text


def response_items(req: FetchRequest, *, with_uid: bool, with_modseq: bool,
                   flags: bool) -> list[str]:
    """The simple items of the response, in order: the request's, plus UID, MODSEQ and
    FLAGS where the command adds them."""
    items = list(req.items)
    if with_uid and "UID" not in items:
        items.insert(0, "UID")
    if with_modseq and "MODSEQ" not in items:
        items.append("MODSEQ")
    if flags and "FLAGS" not in items:
        items.append("FLAGS")
    return items


def render_meta_block(jobs: list[tuple[int, api.Message]], items: list[str], *,
                      recent: set[int] | frozenset[int]) -> bytes:
    """``render_meta`` of many messages as one block: the item lists a flag
    resynchronization sends (FLAGS, UID FLAGS, with or without MODSEQ) in one
    comprehension each, with each distinct flag list rendered once."""
    lists: dict[tuple[frozenset[str], bool], bytes] = {}

    def fl(m: api.Message) -> bytes:
        key = (m.flags, m.uid in recent)
        text = lists.get(key)
        if text is None:
            text = lists[key] = flags_list(*key)
        return text

    if items == ["FLAGS"]:
        return b"".join([b"* %d FETCH (FLAGS %s)\r\n" % (seq, fl(m)) for seq, m in jobs])
    if items == ["UID", "FLAGS"]:
        return b"".join([b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, m.uid, fl(m))
                         for seq, m in jobs])
    if items == ["UID", "FLAGS", "MODSEQ"]:
        return b"".join([b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                         % (seq, m.uid, fl(m), m.modseq) for seq, m in jobs])
    return b"".join([render_meta(m, items, seq=seq, recent=m.uid in recent)
                     for seq, m in jobs])


def render_meta(msg: api.Message, items: list[str], *, seq: int, recent: bool) -> bytes:
    """``render`` for a request of index items only (UID, FLAGS, INTERNALDATE,
    RFC822.SIZE, MODSEQ), with ``items`` from ``response_items``: no awaiting, so a
    listing of a large mailbox costs little per message."""
    out: list[bytes] = []
    for name in items:
        if name == "UID":
            out.append(b"UID %d" % msg.uid)
        elif name == "FLAGS":
            out.append(b"FLAGS " + flags_list(msg.flags, recent))
        elif name == "INTERNALDATE":
            out.append(b"INTERNALDATE " + format_internaldate(msg))
        elif name == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % msg.size)
        elif name == "MODSEQ":
            out.append(b"MODSEQ (%d)" % msg.modseq)
        else:
            raise ValueError(f"{name} is not an index item")
    return b"* %d FETCH (" % seq + b" ".join(out) + b")\r\n"


async def render(box: api.Mailbox, msg: api.Message, req: FetchRequest, *, seq: int,
                 recent: bool, with_uid: bool, with_modseq: bool,
                 flags: frozenset[str] | None = None) -> bytes:
    """``* seq FETCH (...)`` of one message (CRLF included).  ``flags`` overrides the
    message's flags when the FETCH itself just set \\Seen.  Raises :class:`UnknownCte` when
    a BINARY item cannot be decoded (the whole FETCH then fails, RFC 3516 4.3)."""
    out: list[bytes] = []
    items = response_items(req, with_uid=with_uid, with_modseq=with_modseq,
                           flags=flags is not None)
    cur_flags = msg.flags if flags is None else flags
    entry: dict[str, Any] | None = None
    if req.needs_cache:
        entry = await box.cache_entry(msg)
    raw: bytes | None = None
    if req.needs_message:
        raw = await box.read_message(msg)
    for name in items:
        if name == "UID":
            out.append(b"UID %d" % msg.uid)
        elif name == "FLAGS":
            out.append(b"FLAGS " + flags_list(cur_flags, recent))
        elif name == "INTERNALDATE":
            out.append(b"INTERNALDATE " + format_internaldate(msg))
        elif name == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % msg.size)
        elif name == "MODSEQ":
            out.append(b"MODSEQ (%d)" % msg.modseq)
        elif name == "ENVELOPE":
            assert entry is not None
            out.append(b"ENVELOPE " + serialize_envelope(entry["env"]))
        elif name == "BODYSTRUCTURE":
            assert entry is not None
            out.append(b"BODYSTRUCTURE " + serialize(entry["bs"]))
        elif name == "BODY":
            assert entry is not None
            out.append(b"BODY " + serialize(entry["b"]))
        elif name == "RFC822":
            assert raw is not None
            out.append(b"RFC822 " + _literal(raw))
        elif name == "RFC822.HEADER":
            out.append(b"RFC822.HEADER " + _literal(await box.header_block(msg)))
        elif name == "RFC822.TEXT":
            assert raw is not None
            out.append(b"RFC822.TEXT " + _literal(raw[len(mime.header_block(raw)):]))
    structure = None
    decoded: dict[tuple[int, ...], bytes] = {}
    for body in req.bodies:
        if body.binary:
            assert raw is not None
            data = decoded.get(body.parts)
            if data is None:
                if structure is None:
                    structure = mime.parse(raw)
                try:
                    data = mime.binary_section(raw, structure, body.parts)
                except mime.UnknownTransferEncoding as exc:
                    raise UnknownCte(f"{exc} in message UID {msg.uid}.", exc.encoding) from None
                decoded[body.parts] = data
            if body.size_only:
                out.append(body.label + b" %d" % len(data))
                continue
            if body.partial is not None:
                data = mime.partial(data, body.partial[0], body.partial[1] or 0)
            out.append(body.label + b" " + _literal8(data))
            continue
        if raw is not None and not body.header_only:
            if not body.parts and body.kind is None:
                data = raw
            else:
                if structure is None:
                    structure = mime.parse(raw)
                data = mime.section(raw, structure, body.parts, body.kind, body.fields)
        else:
            data = await box.body_section(msg, body.parts, body.kind, body.fields)
        if body.partial is not None:
            data = mime.partial(data, body.partial[0], body.partial[1] or 0)
        out.append(body.label + b" " + _literal(data))
    return b"* %d FETCH (" % seq + b" ".join(out) + b")\r\n"


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _literal8(data: bytes) -> bytes:
    """BINARY data: a literal8 (``~{n}``) when it holds NUL, else a literal, as RFC 3516
    4.3 asks, so the client learns from the form alone whether a NUL is in it."""
    if b"\x00" in data:
        return b"~{%d}\r\n" % len(data) + data
    return _literal(data)


__all__ = ["Atom", "BodyItem", "FetchRequest", "UnknownCte", "format_datetime",
           "format_internaldate", "flags_list", "parse_fetch_items", "render", "render_meta",
           "render_meta_block", "response_items"]
