"""MIME structure of one stored message: part offsets, ENVELOPE, BODYSTRUCTURE, sections.

Everything here is a pure function over the stored bytes of one message (CRLF line endings as
the saver writes them, though bare LF and a missing final newline are handled too).
:func:`parse` walks the message once and records, for every MIME part, where its header and
body start and end; sections are then exact slices of the stored bytes, so ``BODY[]`` and
``BODY[1.2]`` return what was stored, byte for byte (RFC 3501 6.4.5).

Structure rules (RFC 2045, RFC 2046):

* A part's header ends after the first empty line; a header with no empty line runs to the end
  of the part and the body is empty.
* Content-* fields count only in MIME entities: parts of a multipart, or an entity with a
  MIME-Version or a Content-Type field (RFC 2045 4; a Content-Type alone is taken as MIME, as
  common mail software does).
* A missing or syntactically invalid Content-Type means ``text/plain; charset=us-ascii``
  (RFC 2045 5.2), except inside ``multipart/digest`` where it means ``message/rfc822``
  (RFC 2046 5.1.5).
* Boundary lines (RFC 2046 5.1.1): a line that starts with ``--`` and a boundary of any
  enclosing multipart; only the start of the line has to match ("it is sufficient that the
  boundary appear in its entirety following the CRLF"). When several enclosing boundaries
  match, the longest one wins, so nested boundaries that share a prefix still work. The
  CRLF before a boundary line belongs to the boundary; the rest of the line (transport
  padding) is skipped. Text before the first boundary is the preamble and text after the
  close delimiter the epilogue; neither belongs to any part. A missing close delimiter ends
  the multipart at the end of the enclosing entity, and a boundary of an outer multipart
  ends every inner one.
* A multipart without a usable boundary parameter has no parts (BODYSTRUCTURE then shows one
  empty text/plain part in its place, so the reply stays valid); nesting deeper than
  :data:`MAX_DEPTH` or more than :data:`MAX_PARTS` parts stops the splitting: the rest is
  kept as one opaque part shown as ``application/octet-stream``.

Message text for SEARCH and SORT is decoded here too, with one charset rule
(:func:`decode_text`, :func:`text_readings`, docs/storage.md "Charsets"): RFC 2047
encoded-words (:func:`decode_rfc2047`), header fields (:func:`header_fields`,
:func:`header_values`) and the text of the text/* parts (:func:`decoded_text`).

``BINARY[section]`` (RFC 3516) is the same slice with the Content-Transfer-Encoding of
every leaf part in it removed (:func:`binary_section`); :func:`protect_binary` re-encodes, on
the way in, the binary parts that could not be stored or sent as they are.

Value conventions for ENVELOPE and BODYSTRUCTURE: ``str``, ``int``, ``None`` (NIL) and
``list``, written to the wire by ``cloudcote.protocols.imap.values.serialize``. Strings taken
from headers are the raw header bytes (unfolded, not RFC 2047-decoded) decoded as UTF-8 with
``errors="surrogateescape"``, so 8-bit bytes survive a JSON round trip and go out unchanged
as literals.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "IDENTITY_ENCODINGS",
    "KNOWN_ENCODINGS",
    "MAX_DEPTH",
    "MAX_PARTS",
    "MessageStructure",
    "MimePart",
    "UnknownTransferEncoding",
    "binary_section",
    "bodystructure",
    "decode_rfc2047",
    "decode_text",
    "decoded_text",
    "envelope",
    "header_block",
    "header_fields",
    "header_text",
    "header_values",
    "parse",
    "partial",
    "protect_binary",
    "section",
    "text_readings",
    "transfer_decode",
    "transfer_encoding",
]

#: Deepest nesting of multipart and message/rfc822 that is split into parts.
MAX_DEPTH = 100
#: Most MIME parts split out of one message; after that no more boundaries are looked for.
MAX_PARTS = 10000

DEFAULT_CHARSET = "us-ascii"

#: Fields kept from each part's header: what ENVELOPE and BODYSTRUCTURE need.
_KEPT_FIELDS = frozenset({
    "date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to",
    "message-id", "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "content-md5", "content-disposition", "content-language",
    "content-location",
})
_ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc", "bcc")

# --- the structure ------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class MimePart:
    """One MIME entity: its header is ``raw[start:header_end]``, its body
    ``raw[header_end:end]``.

    ``kind`` is ``"multipart"`` (``children`` are its parts), ``"message"`` (a message/rfc822
    part: ``children`` holds the one encapsulated message, which spans the body) or
    ``"leaf"``. ``type`` and ``subtype`` are as written in the Content-Type field, or
    ``None`` when the field is absent, invalid or not in force (the RFC 2045/2046 default
    applies: see ``is_text`` and ``kind``). ``fields`` holds the unfolded raw values of the
    header fields that ENVELOPE and BODYSTRUCTURE use, by lower-case name, in order.
    """

    start: int
    header_end: int
    end: int
    kind: str
    type: str | None
    subtype: str | None
    params: list[tuple[str, str]]
    fields: dict[str, list[bytes]]
    is_mime: bool
    is_text: bool
    overflow: bool = False
    #: LF count of the body, for text and message/rfc822 parts (RFC 3501 body-fld-lines).
    lines: int = 0
    children: list[MimePart] = field(default_factory=list)

    @property
    def body_start(self) -> int:
        return self.header_end

    def param(self, name: str) -> str | None:
        """The first Content-Type parameter called ``name`` (case-insensitive)."""
        name = name.lower()
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None

    def first(self, name: str) -> bytes | None:
        """The first value of a kept header field, or None."""
        values = self.fields.get(name)
        return values[0] if values else None

    def content(self, name: str) -> bytes | None:
        """A Content-* field in force for this part: only MIME entities have them."""
        return self.first(name) if self.is_mime else None

    def walk(self) -> Iterator[MimePart]:
        yield self
        for child in self.children:
            yield from child.walk()


class MessageStructure:
    """The parsed MIME tree of one message, built by :func:`parse`; holds offsets and the
    few header fields it needs, not the message bytes."""

    __slots__ = ("root", "size")

    def __init__(self, root: MimePart, size: int) -> None:
        self.root = root
        self.size = size

    def find(self, parts: tuple[int, ...]) -> MimePart | None:
        """The part a section number names (RFC 3501 6.4.5), or None if there is none.

        A multipart's n-th part is its n-th child; any other part has only part 1, itself;
        a number that follows a message/rfc822 part counts inside the encapsulated message.
        """
        part: MimePart | None = self.root
        for i, num in enumerate(parts):
            assert part is not None
            more = i + 1 < len(parts)
            if num < 1:
                return None
            if part.kind == "multipart":
                if num > len(part.children):
                    return None
                part = part.children[num - 1]
            elif num != 1 or (more and part.kind != "message"):
                return None
            if more and part.kind == "message":
                part = part.children[0]
        return part

    def walk(self) -> Iterator[MimePart]:
        return self.root.walk()


class _Hit(NamedTuple):
    """A boundary line: which enclosing boundary (index in the stack), whether it is the
    close delimiter, where the line starts and where the next line starts."""

    level: int
    close: bool
    line: int
    next: int


class _Parser:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.n = len(raw)
        self.count = 0

    def _match(self, pos: int, stack: list[bytes]) -> _Hit | None:
        """The boundary line starting at ``pos`` (which starts with ``--``), if it is one."""
        if self.count >= MAX_PARTS:
            return None
        raw = self.raw
        nl = raw.find(b"\n", pos)
        line_end = self.n if nl < 0 else nl + 1
        text_end = self.n if nl < 0 else nl
        if text_end > pos and raw[text_end - 1] == 0x0D:
            text_end -= 1
        start = pos + 2
        size = text_end - start
        trailing_dashes = size > 2 and raw.startswith(b"--", text_end - 2)
        best, best_len = -1, -1
        # Innermost first; the longest prefix wins, an exact match ends the search.
        for level in range(len(stack) - 1, -1, -1):
            length = len(stack[level])
            if best_len < length <= size and raw.startswith(stack[level], start):
                best, best_len = level, length
                if length == size or (trailing_dashes and length + 2 == size):
                    break
        if best < 0:
            return None
        close = best_len + 2 <= size and raw.startswith(b"--", start + best_len)
        return _Hit(best, close, pos, line_end)

    def _scan(self, pos: int, stack: list[bytes]) -> _Hit | None:
        """The first boundary line at or after ``pos`` (a line start)."""
        if not stack:
            return None
        raw = self.raw
        if raw.startswith(b"--", pos):
            hit = self._match(pos, stack)
            if hit is not None:
                return hit
        while True:
            j = raw.find(b"\n--", pos)
            if j < 0:
                return None
            pos = j + 1
            hit = self._match(pos, stack)
            if hit is not None:
                return hit

    def _end_before(self, line: int, floor: int) -> int:
        """Where content ends before a boundary line: the newline before it belongs to the
        boundary (RFC 2046 5.1.1), unless the content is empty."""
        raw = self.raw
        end = line
        if end > floor and raw[end - 1] == 0x0A:
            end -= 1
            if end > floor and raw[end - 1] == 0x0D:
                end -= 1
        return end

    def entity(self, start: int, stack: list[bytes], in_multipart: bool, in_digest: bool,
               depth: int) -> tuple[MimePart, _Hit | None]:
        """Parse the entity at ``start``; return it and the boundary line that ended it
        (None at the end of the message)."""
        part, hit = self._entity(start, stack, in_multipart, in_digest, depth)
        if part.is_text or part.kind == "message":
            part.lines = self.raw.count(b"\n", part.header_end, part.end)
        return part, hit

    def _entity(self, start: int, stack: list[bytes], in_multipart: bool, in_digest: bool,
                depth: int) -> tuple[MimePart, _Hit | None]:
        raw, n = self.raw, self.n
        self.count += 1
        hit: _Hit | None = None
        header_end = n
        pos = start
        while pos < n:
            if stack and raw.startswith(b"--", pos):
                hit = self._match(pos, stack)
                if hit is not None:
                    header_end = self._end_before(pos, start)
                    break
            nl = raw.find(b"\n", pos)
            line_end = n if nl < 0 else nl + 1
            if line_end - pos <= 2 and raw[pos:line_end] in (b"\r\n", b"\n"):
                header_end = line_end
                break
            pos = line_end
        fields = _kept_fields(raw, start, header_end)
        is_mime = in_multipart or "mime-version" in fields or "content-type" in fields
        ctype = None
        if is_mime and "content-type" in fields:
            ctype = _parse_content_type(_text(fields["content-type"][0]))
        params: list[tuple[str, str]] = []
        if ctype is None:
            mtype = msub = None
            main, sub = ("message", "rfc822") if in_digest else ("text", "plain")
        else:
            mtype, msub, params = ctype
            main, sub = mtype.lower(), msub.lower()
        kind = "leaf"
        overflow = False
        if main == "multipart" or (main, sub) == ("message", "rfc822"):
            if depth >= MAX_DEPTH or self.count >= MAX_PARTS:
                overflow = True
            else:
                kind = "multipart" if main == "multipart" else "message"
        part = MimePart(start, header_end, header_end, kind, mtype, msub, params, fields,
                        is_mime, main == "text" and not overflow, overflow)
        if hit is not None:
            # A boundary cut the header short: the part has no body.
            if kind == "message":
                part.children.append(_empty_entity(header_end))
            return part, hit
        body_start = header_end
        if kind == "message":
            child, hit = self.entity(body_start, stack, False, False, depth + 1)
            part.children.append(child)
            part.end = child.end
            return part, hit
        boundary = part.param("boundary") if kind == "multipart" else None
        if not boundary:
            hit = self._scan(body_start, stack)
            part.end = n if hit is None else self._end_before(hit.line, body_start)
            return part, hit
        own = len(stack)
        inner = [*stack, boundary.encode("utf-8", "surrogateescape")]
        digest = sub == "digest"
        hit = self._scan(body_start, inner)
        if hit is None or hit.level != own:
            # Nothing but preamble: the multipart has no parts.
            part.end = n if hit is None else self._end_before(hit.line, body_start)
            return part, hit
        while hit is not None and hit.level == own and not hit.close:
            child, hit = self.entity(hit.next, inner, True, digest, depth + 1)
            part.children.append(child)
        if hit is not None and hit.level == own:
            # Close delimiter: the epilogue runs to the next outer boundary or the end.
            epilogue = hit.next
            hit = self._scan(epilogue, stack)
            part.end = n if hit is None else self._end_before(hit.line, epilogue)
        else:
            # No close delimiter: the last part ran to an outer boundary or the end.
            part.end = part.children[-1].end
        return part, hit


def _empty_entity(pos: int) -> MimePart:
    return MimePart(pos, pos, pos, "leaf", None, None, [], {}, False, True)


def parse(raw: bytes) -> MessageStructure:
    """Parse a stored message into its MIME tree (one pass over the header lines and the
    boundary lines; bodies are skipped with ``bytes.find``)."""
    root, _ = _Parser(raw).entity(0, [], False, False, 0)
    return MessageStructure(root, len(raw))


# --- header fields -------------------------------------------------------------------------

class _Field(NamedTuple):
    name: bytes  # lower-case, without trailing blanks; b"" for a line with no colon
    start: int
    colon: int  # -1 when the line has no colon
    end: int  # after the field's last line break


def _fields(buf: bytes, start: int, end: int) -> list[_Field]:
    """The fields of the header in ``buf[start:end]``, up to the empty line (RFC 5322 2.2)."""
    out: list[_Field] = []
    pos = start
    while pos < end:
        nl = buf.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if line_end - pos <= 2 and buf[pos:line_end] in (b"\r\n", b"\n"):
            break
        if buf[pos] in (0x20, 0x09) and out:
            out[-1] = out[-1]._replace(end=line_end)
        else:
            colon = buf.find(b":", pos, line_end)
            name = buf[pos:colon].rstrip(b" \t").lower() if colon >= 0 else b""
            out.append(_Field(name, pos, colon, line_end))
        pos = line_end
    return out


_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def _field_value(buf: bytes, f: _Field) -> bytes:
    """The unfolded raw value (RFC 5322 2.2.3): leading blanks and the final line break
    dropped; NUL, which no IMAP string may hold, becomes 0x80 as Dovecot does."""
    if f.colon < 0:
        return b""
    value = _FOLD.sub(b"", buf[f.colon + 1:f.end]).lstrip(b" \t").rstrip(b"\r\n")
    return value.replace(b"\x00", b"\x80")


def _kept_fields(buf: bytes, start: int, end: int) -> dict[str, list[bytes]]:
    kept: dict[str, list[bytes]] = {}
    for f in _fields(buf, start, end):
        name = f.name.decode("ascii", "replace")
        if name in _KEPT_FIELDS:
            kept.setdefault(name, []).append(_field_value(buf, f))
    return kept


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def header_block(raw: bytes) -> bytes:
    """The top-level header including the empty line that ends it (RFC 5322 2.1); the whole
    message if it has no empty line."""
    pos, n = 0, len(raw)
    while pos < n:
        nl = raw.find(b"\n", pos)
        line_end = n if nl < 0 else nl + 1
        if line_end - pos <= 2 and raw[pos:line_end] in (b"\r\n", b"\n"):
            return raw[:line_end]
        pos = line_end
    return raw


# --- decoding text: the one charset rule, RFC 2047 -----------------------------------------

#: Charset names read as UTF-8: 8-bit text that claims to be US-ASCII is nearly always UTF-8.
_UTF8_NAMES = frozenset({"us-ascii", "ascii", "utf-8", "utf8"})


def _decode_declared(data: bytes, charset: str | None) -> str | None:
    """``data`` in a declared charset other than UTF-8 and US-ASCII that Python knows,
    undecodable bytes as U+FFFD; None when there is no such charset."""
    if not charset:
        return None
    name = charset.strip().strip('"').lower()
    if name in _UTF8_NAMES:
        return None
    try:
        return data.decode(name, "replace")
    except (LookupError, ValueError, TypeError):  # ValueError: a NUL in the name
        return None


def decode_text(data: bytes, charset: str | None = None) -> str:
    """Text of ``data`` in ``charset``: the one charset rule for message text
    (docs/storage.md, "Charsets").

    A charset Python knows is used, undecodable bytes becoming U+FFFD. No charset, US-ASCII
    (which 8-bit text often claims wrongly) and a charset Python does not know (or a name
    that is no text codec) mean UTF-8, also with U+FFFD for invalid bytes. Never raises."""
    text = _decode_declared(data, charset)
    return data.decode("utf-8", "replace") if text is None else text


def text_readings(data: bytes, charset: str | None = None) -> tuple[str, str | None]:
    """:func:`decode_text` of ``data`` and, when that read it as UTF-8 and it is not valid
    UTF-8, its Latin-1 reading (else None).

    Older software wrote unlabelled 8-bit Latin-1 (in headers, where no charset can be
    named, and in bodies without a charset); SEARCH matches that second reading too, so no
    text is unsearchable. Display and SORT use only the first."""
    text = _decode_declared(data, charset)
    if text is not None:
        return text, None
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), data.decode("latin-1")


_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?(?:[bB]\?[A-Za-z0-9+/]*={0,2}|[qQ]\?[^?\s]*)\?=",
                           re.ASCII)


def decode_rfc2047(value: str) -> str:
    """Decode the RFC 2047 encoded-words in a header value (RFC 2047 6.2: whitespace between
    adjacent encoded-words is dropped; consecutive words in one charset are joined before
    decoding, as senders split multi-byte characters across words). Each word's charset is
    applied with :func:`decode_text`; malformed words stay as they are. Never raises."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[tuple[bytes, str]] = []

    def flush() -> None:
        while pending:
            data, charset = pending.pop(0)
            while pending and pending[0][1] == charset:
                data += pending.pop(0)[0]
            out.append(decode_text(data, charset))

    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos:m.start()]
        if gap and not (pending and gap.isspace()):
            flush()
            out.append(gap)
        try:
            # The stdlib decodes one well-formed word to [(bytes, charset)].
            [(data, charset)] = email.header.decode_header(m.group(0))
        except (email.errors.HeaderParseError, ValueError, binascii.Error):
            flush()
            out.append(m.group(0))
        else:
            if isinstance(data, str) or charset is None:
                flush()
                out.append(m.group(0))
            else:
                # RFC 2231 5: a language may follow the charset ("utf-8*en").
                pending.append((data, charset.partition("*")[0]))
        pos = m.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def header_fields(block: bytes) -> list[tuple[str, bytes]]:
    """The fields of a header block up to its empty line, in order, as (lower-case name,
    value): the value unfolded (RFC 5322 2.2.3: only the line breaks go), blanks at both
    ends dropped, still raw bytes. Lines that are no field (no colon, a blank in the name,
    a continuation with nothing to continue) are skipped."""
    out: list[tuple[str, bytes]] = []
    lines: list[bytes] = []

    def add() -> None:
        name, colon, value = b"".join(lines).partition(b":")
        name = name.rstrip(b" \t")  # RFC 5322 4.5: obsolete WSP before the colon
        if colon and name and b" " not in name:
            out.append((name.decode("utf-8", "replace").lower(), value.strip(b" \t")))

    for line in block.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            break
        if line[0] in (0x20, 0x09):
            if lines:
                lines.append(line)
            continue
        if lines:
            add()
        lines = [line]
    if lines:
        add()
    return out


def header_text(value: bytes) -> str:
    """A raw header value as text: bytes as UTF-8 (:func:`decode_text`), then RFC 2047
    encoded-words decoded."""
    return decode_rfc2047(decode_text(value))


def header_values(block: bytes, name: str) -> list[str]:
    """Every value of field ``name`` (case-insensitive) in a header block, unfolded and
    decoded with :func:`header_text`."""
    wanted = name.strip().lower()
    return [header_text(value) for field_name, value in header_fields(block)
            if field_name == wanted]


# --- MIME field syntax (RFC 2045 5.1, RFC 2231) ----------------------------------------------

_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')


class _Scanner:
    """A cursor over a header value with RFC 822 lexical rules (blanks and comments skip)."""

    __slots__ = ("s", "i")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip_cfws(self) -> None:
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c == "(":
                self.comment()
            else:
                return

    def comment(self) -> str:
        """A (possibly nested) comment at the cursor; returns its text without the outer
        parentheses and with quoted-pairs resolved."""
        s, n = self.s, len(self.s)
        depth, out = 0, []
        while self.i < n:
            c = s[self.i]
            self.i += 1
            if c == "\\" and self.i < n:
                out.append(s[self.i])
                self.i += 1
                continue
            if c == "(":
                depth += 1
                if depth == 1:
                    continue
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
            out.append(c)
        return "".join(out)

    def quoted(self) -> str:
        """A quoted-string at the cursor, unquoted; an unterminated one runs to the end."""
        s, n = self.s, len(self.s)
        self.i += 1
        out = []
        while self.i < n:
            c = s[self.i]
            self.i += 1
            if c == "\\" and self.i < n:
                out.append(s[self.i])
                self.i += 1
            elif c == '"':
                break
            else:
                out.append(c)
        return "".join(out)

    def token(self) -> str:
        s, n, start = self.s, len(self.s), self.i
        while self.i < n:
            c = s[self.i]
            if c in _TSPECIALS or c <= " " or c == "\x7f":
                break
            self.i += 1
        return s[start:self.i]

    def skip_past(self, stop: str) -> None:
        j = self.s.find(stop, self.i)
        self.i = len(self.s) if j < 0 else j


def _parse_content_type(value: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    """``type/subtype`` and parameters (RFC 2045 5.1), or None when the type is invalid."""
    sc = _Scanner(value)
    sc.skip_cfws()
    main = sc.token()
    sc.skip_cfws()
    if not main or sc.peek() != "/":
        return None
    sc.i += 1
    sc.skip_cfws()
    sub = sc.token()
    sc.skip_cfws()
    if not sub or sc.peek() not in ("", ";"):
        return None
    return main, sub, _parse_params(sc)


def _parse_params(sc: _Scanner) -> list[tuple[str, str]]:
    """``*(";" attribute "=" value)``; a broken parameter is skipped, not fatal."""
    raw_params: list[tuple[str, str]] = []
    s = sc.s
    while True:
        sc.skip_cfws()
        if sc.i >= len(s):
            break
        if sc.peek() != ";":
            sc.skip_past(";")
            continue
        sc.i += 1
        sc.skip_cfws()
        name = sc.token()
        sc.skip_cfws()
        if not name or sc.peek() != "=":
            sc.skip_past(";")
            continue
        sc.i += 1
        sc.skip_cfws()
        if sc.peek() == '"':
            value = sc.quoted()
        else:
            # Unquoted values should be tokens; senders that forget to quote "=" or "/"
            # (boundary=----=_Part_1) are common, so read up to the next blank or ";".
            start = sc.i
            while sc.i < len(s) and s[sc.i] not in ' \t\r\n;("':
                sc.i += 1
            value = s[start:sc.i]
        raw_params.append((name, value))
    return _rfc2231(raw_params)


_RFC2231_KEY = re.compile(r"^(.+?)\*(?:(\d+)(\*)?|)$")


def _rfc2231(raw_params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Merge RFC 2231 continuations and decode extended values to text, as Dovecot does:
    ``name*0*=utf-8''a%C3; name*1*=%A9`` becomes ``name="aé"``. The first parameter of a
    name wins; a continuation with missing sections is kept as separate parameters."""
    result: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(key: str, value: str) -> None:
        if key.lower() not in seen:
            seen.add(key.lower())
            result.append((key, value))

    indexed: dict[str, list[tuple[int, bool, str, str]]] = {}
    for key, value in raw_params:
        m = _RFC2231_KEY.match(key)
        if m is None:
            add(key, value)
        elif m.group(2) is None:
            add(m.group(1), _decode_ext_value(value, None)[0])
        else:
            indexed.setdefault(m.group(1).lower(), []).append(
                (int(m.group(2)), m.group(3) is not None, m.group(1), value))
    for sections in indexed.values():
        sections.sort(key=lambda t: t[0])
        if [t[0] for t in sections] != list(range(len(sections))):
            for idx, extended, key, value in sections:
                add(f"{key}*{idx}", _decode_ext_value(value, None)[0] if extended else value)
            continue
        charset: str | None = None
        data = bytearray()
        for idx, extended, _key, value in sections:
            if extended:
                # Only the first section may carry charset'language' (RFC 2231 4.1).
                chunk, charset = _ext_bytes(value, (charset or "") if idx else None)
                data += chunk
            else:
                data += value.encode("utf-8", "surrogateescape")
        add(sections[0][2], _decode_charset(bytes(data), charset))
    return result


def _ext_bytes(value: str, charset: str | None) -> tuple[bytes, str | None]:
    """The octets of an RFC 2231 ext-value; the first section carries ``charset'lang'``."""
    if charset is None:
        head = value.split("'", 2)
        if len(head) == 3:
            charset, value = head[0], head[2]
        else:
            charset = ""
    raw = value.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and _is_hex(raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out), charset


def _is_hex(b: bytes) -> bool:
    return len(b) == 2 and all(c in b"0123456789abcdefABCDEF" for c in b)


def _decode_ext_value(value: str, charset: str | None) -> tuple[str, str | None]:
    data, charset = _ext_bytes(value, charset)
    return _decode_charset(data, charset), charset


def _decode_charset(data: bytes, charset: str | None) -> str:
    """Text of ``data`` in ``charset``; unknown or failing charsets keep the bytes as UTF-8
    with surrogate escapes (the bytes go out unchanged)."""
    if charset:
        try:
            return data.decode(charset)
        except (LookupError, UnicodeError):
            pass
    return data.decode("utf-8", "surrogateescape")


# --- ENVELOPE (RFC 3501 7.4.2) -----------------------------------------------------------------

_BLANKS = re.compile(r"[ \t\r\n]+")
_NEWLINE_BEFORE_TEXT = re.compile(r"[\r\n]+(?=[^ \t\r\n])")


def _for_humans(value: bytes | None) -> str | None:
    """Subject and display names: runs of blanks and line breaks become one space, ends
    trimmed (Dovecot's imap_append_string_for_humans)."""
    if value is None:
        return None
    return _BLANKS.sub(" ", _text(value)).strip(" ")


def _nolf(value: bytes | None) -> str | None:
    """Other strings: no CR or LF may remain (RFC 3501 9 TEXT-CHAR)."""
    if value is None:
        return None
    text = _text(value)
    if "\r" in text or "\n" in text:
        text = _NEWLINE_BEFORE_TEXT.sub(" ", text).replace("\r", "").replace("\n", "")
    return text


def envelope(ms: MessageStructure) -> list[object]:
    """ENVELOPE of the message (RFC 3501 7.4.2)."""
    return _envelope(ms.root.fields)


def _envelope(fields: dict[str, list[bytes]]) -> list[object]:
    """``[date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id]``.

    A repeated address field adds its addresses (as Dovecot does: no From can hide behind
    another); for the other fields the last one counts. Sender and Reply-To default to From
    when absent or empty (RFC 3501 7.4.2). Address lists are lists of ``[name, adl,
    mailbox, host]``; a group is ``[None, None, name, None]``, its members, then
    ``[None, None, None, None]``. A field with no addresses is NIL.
    """
    def last(name: str) -> bytes | None:
        values = fields.get(name)
        return values[-1] if values else None

    addrs = {name: _address_list(fields.get(name, [])) for name in _ADDRESS_FIELDS}
    return [
        _nolf(last("date")),
        _for_humans(last("subject")),
        addrs["from"],
        addrs["sender"] or addrs["from"],
        addrs["reply-to"] or addrs["from"],
        addrs["to"],
        addrs["cc"],
        addrs["bcc"],
        _nolf(last("in-reply-to")),
        _nolf(last("message-id")),
    ]


_ADDR_SPECIALS = frozenset('()<>[]:;@\\,"')


def _address_tokens(value: str) -> list[tuple[str, str]]:
    """RFC 5322 3.2 lexical tokens: ("atom", text) (dots included, so dot-atoms and
    obs-phrase dots stay whole), ("quoted", text), ("literal", "[...]"),
    ("comment", text) and (special, special)."""
    sc = _Scanner(value)
    s, n = value, len(value)
    out: list[tuple[str, str]] = []
    while sc.i < n:
        c = s[sc.i]
        if c in " \t\r\n":
            sc.i += 1
        elif c == "(":
            out.append(("comment", sc.comment()))
        elif c == '"':
            out.append(("quoted", sc.quoted()))
        elif c == "[":
            j = s.find("]", sc.i)
            j = n if j < 0 else j + 1
            out.append(("literal", _BLANKS.sub("", s[sc.i:j])))
            sc.i = j
        elif c in _ADDR_SPECIALS:
            out.append((c, c))
            sc.i += 1
        else:
            start = sc.i
            while sc.i < n and s[sc.i] not in _ADDR_SPECIALS and s[sc.i] not in " \t\r\n":
                sc.i += 1
            out.append(("atom", s[start:sc.i]))
    return out


def _address_list(values: list[bytes]) -> list[list[str | None]] | None:
    out: list[list[str | None]] = []
    for value in values:
        out.extend(_parse_addresses(_address_tokens(_text(value))))
    return out or None


def _parse_addresses(toks: list[tuple[str, str]]) -> list[list[str | None]]:
    """address-list (RFC 5322 3.4) with groups; empty members are skipped
    (obs-addr-list, RFC 5322 4.4)."""
    out: list[list[str | None]] = []
    i, n = 0, len(toks)
    while i < n:
        if toks[i][0] in (",", ";"):
            i += 1
            continue
        # A group starts with a phrase and ":" before any "<", "@" or ",".
        j = i
        while j < n and toks[j][0] not in (":", "<", "@", ",", ";"):
            j += 1
        if j < n and toks[j][0] == ":":
            out.append([None, None, _phrase(toks[i:j]) or "", None])
            i = j + 1
            while i < n and toks[i][0] != ";":
                end = _mailbox_end(toks, i, group=True)
                mailbox = _parse_mailbox(toks[i:end])
                if mailbox is not None:
                    out.append(mailbox)
                i = end + 1 if end < n and toks[end][0] == "," else end
            out.append([None, None, None, None])
            i += 1
            continue
        end = _mailbox_end(toks, i, group=False)
        mailbox = _parse_mailbox(toks[i:end])
        if mailbox is not None:
            out.append(mailbox)
        i = end + 1
    return out


def _mailbox_end(toks: list[tuple[str, str]], i: int, group: bool) -> int:
    """Index of the "," (or, in a group, ";") that ends the mailbox at ``i``; commas of an
    obs-route inside "<>" do not count."""
    angle = False
    while i < len(toks):
        kind = toks[i][0]
        if kind == "<":
            angle = True
        elif kind == ">":
            angle = False
        elif kind == "," and not angle:
            return i
        elif kind == ";" and (group or not angle):
            return i
        i += 1
    return i


def _phrase(toks: list[tuple[str, str]]) -> str | None:
    """Words of a display name, one space apart, quotes removed, encoded-words kept."""
    words = [text for kind, text in toks if kind in ("atom", "quoted", "literal")]
    if not words:
        return None
    return _BLANKS.sub(" ", " ".join(words)).strip(" ")


def _parse_mailbox(toks: list[tuple[str, str]]) -> list[str | None] | None:
    """``[name, adl, mailbox, host]`` for name-addr or addr-spec (RFC 5322 3.4); a missing
    local part or domain is filled in as Dovecot does (MISSING_MAILBOX, MISSING_DOMAIN), so
    no mailbox is mistaken for group syntax (host NIL)."""
    words = [t for t in toks if t[0] != "comment"]
    if not words:
        return None
    name: str | None
    route: str | None = None
    angle = next((k for k, t in enumerate(toks) if t[0] == "<"), -1)
    if angle >= 0:
        name = _phrase(toks[:angle])
        inner = [t for t in toks[angle + 1:] if t[0] != "comment"]
        close = next((k for k, t in enumerate(inner) if t[0] == ">"), len(inner))
        inner = inner[:close]
        if inner and inner[0][0] == "@":
            colon = next((k for k, t in enumerate(inner) if t[0] == ":"), -1)
            if colon >= 0:
                route = "".join(text for _kind, text in inner[:colon])
                inner = inner[colon + 1:]
        local, domain = _addr_spec(inner)
    else:
        at = next((k for k, t in enumerate(words) if t[0] == "@"), -1)
        comments = [text for kind, text in toks if kind == "comment"]
        name = _BLANKS.sub(" ", comments[-1]).strip(" ") if comments else None
        if at < 0 and (len(words) > 1 or words[0][0] == "quoted"):
            # Words and no address: a display name alone ("From: Real Name").
            return [_phrase(words), None, "MISSING_MAILBOX", "MISSING_DOMAIN"]
        local, domain = _addr_spec(words)
        name = name or None
    return [name, route, local or "MISSING_MAILBOX", domain or "MISSING_DOMAIN"]


def _addr_spec(toks: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    at = next((k for k, t in enumerate(toks) if t[0] == "@"), -1)
    local_toks = toks if at < 0 else toks[:at]
    local = "".join(text for kind, text in local_toks if kind in ("atom", "quoted")) or None
    if at < 0:
        return local, None
    domain = "".join(text for kind, text in toks[at + 1:] if kind in ("atom", "literal"))
    return local, domain or None


# --- BODY and BODYSTRUCTURE (RFC 3501 7.4.2) ---------------------------------------------------

def _empty_body(extended: bool) -> list[object]:
    body: list[object] = ["text", "plain", ["charset", DEFAULT_CHARSET], None, None, "7bit",
                          0, 0]
    return body + [None, None, None, None] if extended else body


def bodystructure(ms: MessageStructure, extended: bool = True) -> list[object]:
    """BODYSTRUCTURE (``extended=True``) or BODY (``extended=False``), RFC 3501 7.4.2.

    Values are presented as Dovecot presents them: type, subtype, parameter names and values,
    the encoding and the disposition exactly as written in the header (no case is changed;
    clients compare them case-insensitively, RFC 2045 5.1), and lower-case defaults where a
    field is absent: ``"text" "plain" ("charset" "us-ascii")`` and ``"7bit"``; a
    message/rfc822 part is always ``"message" "rfc822"``. A text part without a charset
    parameter gets ``"charset" "us-ascii"`` appended (RFC 2045 5.2). RFC 2231 parameters are
    merged and decoded to text. Sizes are the octets of the body as stored (what
    ``BODY[n]`` returns) and lines its LF count. The extension data of a single part is
    body-fld-md5 (the Content-MD5 field, else NIL), disposition, language and location;
    of a multipart: parameters, disposition, language and location.
    """
    return _bodystructure(ms.root, extended)


def _params_value(params: list[tuple[str, str]], default_charset: bool) -> list[str] | None:
    out: list[str] = []
    for key, value in params:
        out += [key, value]
    if default_charset and not any(key.lower() == "charset" for key, _ in params):
        out += ["charset", DEFAULT_CHARSET]
    return out or None


def _bodystructure(part: MimePart, extended: bool) -> list[object]:
    if part.kind == "multipart":
        out: list[object] = [_bodystructure(c, extended) for c in part.children]
        if not out:
            out = [_empty_body(extended)]
        out.append(part.subtype or "")
        if extended:
            out.append(_params_value(part.params, False))
            out += _extension_common(part)
        return out
    params = part.params
    if part.kind == "message":
        main, sub = "message", "rfc822"
    elif part.overflow:
        main, sub = "application", "octet-stream"
    elif part.type is None or part.subtype is None:
        main, sub = "text", "plain"
    else:
        main, sub = part.type, part.subtype
    octets = part.end - part.header_end
    out = [main, sub, _params_value(params, part.is_text),
           _nolf(part.content("content-id")), _nolf(part.content("content-description")),
           _encoding(part) or "7bit", octets]
    if part.is_text:
        out.append(part.lines)
    elif part.kind == "message":
        child = part.children[0]
        out += [_envelope(child.fields), _bodystructure(child, extended), part.lines]
    if extended:
        out.append(_nolf(part.content("content-md5")))
        out += _extension_common(part)
    return out


def _encoding(part: MimePart) -> str | None:
    value = part.content("content-transfer-encoding")
    if value is None:
        return None
    sc = _Scanner(_text(value))
    sc.skip_cfws()
    token = sc.token()
    sc.skip_cfws()
    return token if token and sc.i >= len(sc.s) else None


def _extension_common(part: MimePart) -> list[object]:
    """body-fld-dsp, body-fld-lang, body-fld-loc (RFC 3501 9)."""
    disposition: list[object] | None = None
    value = part.content("content-disposition")
    if value is not None:
        sc = _Scanner(_text(value))
        sc.skip_cfws()
        token = sc.token()
        if token:
            disposition = [token, _params_value(_parse_params(sc), False)]
    language: list[str] | None = None
    value = part.content("content-language")
    if value is not None:
        tags = [text for kind, text in _address_tokens(_text(value)) if kind == "atom"]
        language = tags or None
    return [disposition, language, _nolf(part.content("content-location"))]


# --- sections (RFC 3501 6.4.5) -------------------------------------------------------------------

SECTION_KINDS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"})


def section(raw: bytes, ms: MessageStructure, parts: tuple[int, ...] = (),
            kind: str | None = None, fields: tuple[str, ...] = ()) -> bytes:
    """``BODY[section]`` (RFC 3501 6.4.5) as a slice of the stored bytes.

    ``parts`` is the section number (``()`` for the message itself), ``kind`` the section
    text (None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME") and
    ``fields`` the field names of HEADER.FIELDS[.NOT]. A part number alone gives the part's
    body; MIME its MIME header (for a message/rfc822 part and for a message with no
    multipart, that is the header the part's content type came from); HEADER, TEXT and
    HEADER.FIELDS after a part number need a message/rfc822 part and address its
    encapsulated message. HEADER.FIELDS[.NOT] keeps the chosen fields as stored, folding
    included, in message order, and ends with an empty line. A part that does not exist, or
    HEADER/TEXT of a part that is not a message, gives b"" (as Dovecot does).
    """
    if kind is not None:
        kind = kind.upper()
        if kind not in SECTION_KINDS:
            raise ValueError(f"unknown section text {kind!r}")
    if parts:
        part = ms.find(parts)
        if part is None:
            return b""
        if kind is None:
            return raw[part.header_end:part.end]
        if kind == "MIME":
            return raw[part.start:part.header_end]
        if part.kind != "message":
            return b""
        entity = part.children[0]
    else:
        if kind is None:
            return raw
        if kind == "MIME":
            return b""  # RFC 3501 6.4.5: MIME needs a part number
        entity = ms.root
    if kind == "HEADER":
        return raw[entity.start:entity.header_end]
    if kind == "TEXT":
        return raw[entity.header_end:entity.end]
    return _header_fields(raw, entity, fields, exclude=kind == "HEADER.FIELDS.NOT")


def _header_fields(raw: bytes, entity: MimePart, names: tuple[str, ...],
                   exclude: bool) -> bytes:
    wanted = {n.strip().lower().encode("utf-8", "surrogateescape") for n in names}
    out = bytearray()
    for f in _fields(raw, entity.start, entity.header_end):
        if (f.name in wanted) != exclude:
            out += raw[f.start:f.end]
            if not raw.startswith(b"\n", f.end - 1):
                out += b"\r\n"
    out += b"\r\n"
    return bytes(out)


def partial(data: bytes, origin: int, length: int) -> bytes:
    """The ``<origin.octets>`` partial of a section (RFC 3501 6.4.5): up to ``length``
    octets from ``origin``; empty when ``origin`` is past the end."""
    if origin < 0 or length < 0:
        raise ValueError("partial origin and length must not be negative")
    return data[origin:origin + length]


# --- text for SEARCH BODY/TEXT ---------------------------------------------------------------

_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]+")


def _decode_base64(data: bytes) -> bytes:
    """Lenient base64 (RFC 2045 6.8): characters outside the alphabet are ignored, as the
    RFC asks; missing padding is tolerated, and data after padding (encodings pasted one
    after another) is decoded too rather than misaligned; a lone trailing character, which
    holds less than an octet, is dropped."""
    out = bytearray()
    for run in _NOT_BASE64.sub(b"", data).split(b"="):
        extra = len(run) % 4
        if extra == 1:
            run = run[:-1]
        elif extra:
            run += b"=" * (4 - extra)
        if run:
            try:
                out += base64.b64decode(run)
            except binascii.Error:  # pragma: no cover - the input is cleaned above
                pass
    return bytes(out)


_QP_LINE = re.compile(rb"([^\n]*?)([ \t]*)(\r?\n|$)")


def _decode_qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7): blanks at the end of a line are transport padding
    and go (rule 3), a line ending in "=" (padding after it allowed) joins the next (rule
    5), line breaks become CRLF, and a malformed "=" stays as it is."""
    out = bytearray()
    for m in _QP_LINE.finditer(data):
        text, newline = m.group(1), m.group(3)
        if not text and not newline:
            continue
        if text.endswith(b"="):
            out += text[:-1]
        else:
            out += text
            if newline:
                out += b"\r\n"
    return binascii.a2b_qp(bytes(out).replace(b"=\r\n", b"=3D\r\n"))


def transfer_decode(part: MimePart, body: bytes) -> bytes:
    """The body of ``part`` with its Content-Transfer-Encoding undone (base64 and
    quoted-printable; 7bit, 8bit, binary and unknown encodings unchanged)."""
    encoding = (_encoding(part) or "").lower()
    if encoding == "base64":
        return _decode_base64(body)
    if encoding == "quoted-printable":
        return _decode_qp(body)
    return body


def decoded_text(raw: bytes, ms: MessageStructure, *, message_headers: bool = False,
                 latin1: bool = False) -> str:
    """The text of every text/* part, transfer encoding (base64, quoted-printable) undone
    and charset decoded (:func:`decode_text`), joined by a newline: what SEARCH BODY
    matches (RFC 3501 6.4.4). Parts inside message/rfc822 parts count; the message's own
    header does not.

    With ``message_headers``, the header of each encapsulated message comes first as
    "name: value" lines (:func:`header_text`): it is body to the enclosing message. With
    ``latin1``, text that has a Latin-1 reading (:func:`text_readings`) is given in both
    readings. Bounded by :func:`parse` (:data:`MAX_DEPTH`, :data:`MAX_PARTS`); never
    raises."""
    texts = []
    for part in ms.walk():
        if part.kind == "message" and message_headers:
            inner = part.children[0]
            for name, value in header_fields(raw[inner.start:inner.header_end]):
                text, other = text_readings(value)
                texts.append(f"{name}: {decode_rfc2047(text)}")
                if latin1 and other is not None:
                    texts.append(f"{name}: {decode_rfc2047(other)}")
        elif part.kind == "leaf" and part.is_text:
            body = transfer_decode(part, raw[part.header_end:part.end])
            text, other = text_readings(body, part.param("charset"))
            texts.append(text)
            if latin1 and other is not None:
                texts.append(other)
    return "\n".join(texts)


# --- BINARY (RFC 3516) -----------------------------------------------------------------------

#: The Content-Transfer-Encodings of RFC 2045 6.1; the first three are identities.
IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
KNOWN_ENCODINGS = IDENTITY_ENCODINGS | {"base64", "quoted-printable"}


class UnknownTransferEncoding(ValueError):
    """A part's Content-Transfer-Encoding is none of :data:`KNOWN_ENCODINGS`, so its content
    cannot be decoded (RFC 3516 4.3: FETCH BINARY then fails with UNKNOWN-CTE)."""

    def __init__(self, encoding: str) -> None:
        super().__init__(f"Unknown Content-Transfer-Encoding {encoding[:40]!r}")
        self.encoding = encoding


def transfer_encoding(part: MimePart) -> str:
    """The Content-Transfer-Encoding in force for ``part``, lower-case; "7bit" when the field
    is absent, not a single token, or not in force (not a MIME entity), as BODYSTRUCTURE
    shows it (RFC 2045 6.1)."""
    return (_encoding(part) or "7bit").lower()


def binary_section(raw: bytes, ms: MessageStructure, parts: tuple[int, ...] = ()) -> bytes:
    """``BINARY[section]`` (RFC 3516 4.2): the section of ``BODY[section]`` with the
    Content-Transfer-Encoding removed.

    A leaf part gives its body decoded (base64 and quoted-printable; 7bit, 8bit and binary
    as stored). The whole message (``parts == ()``), a multipart or a message/rfc822 part
    gives what ``BODY[section]`` gives with every leaf part inside decoded, and the
    Content-Transfer-Encoding field of each decoded part set to "binary", so the result is
    still a valid MIME entity (Dovecot does the same). A container's own encoding is not
    applied: RFC 2045 6.4 allows only the identities there. A part that does not exist
    gives b"", as in :func:`section`.

    Raises :class:`UnknownTransferEncoding` when a leaf part in the section has an encoding
    that is not known.
    """
    if not parts:
        return _rewrite_leaves(raw, ms.root, 0, len(raw), _decoded_leaf)
    part = ms.find(parts)
    if part is None:
        return b""
    if part.kind == "leaf":
        return _decode_leaf_body(raw, part)
    return _rewrite_leaves(raw, part, part.header_end, part.end, _decoded_leaf)


def _known_encoding(part: MimePart) -> str:
    encoding = transfer_encoding(part)
    if encoding not in KNOWN_ENCODINGS:
        raise UnknownTransferEncoding(encoding)
    return encoding


def _decode_leaf_body(raw: bytes, part: MimePart) -> bytes:
    encoding = _known_encoding(part)
    body = raw[part.header_end:part.end]
    if encoding == "base64":
        return _decode_base64(body)
    if encoding == "quoted-printable":
        return _decode_qp(body)
    return body


def _decoded_leaf(raw: bytes, part: MimePart) -> tuple[bytes, bytes] | None:
    """New header and body of a leaf part inside a BINARY section; None to keep it."""
    if _known_encoding(part) in IDENTITY_ENCODINGS:
        return None
    return _with_encoding(raw, part, b"binary"), _decode_leaf_body(raw, part)


def _rewrite_leaves(raw: bytes, top: MimePart, lo: int, hi: int,
                    change: Callable[[bytes, MimePart], tuple[bytes, bytes] | None]) -> bytes:
    """``raw[lo:hi]`` (the span of ``top``, or of its body) with the header and body of
    each leaf part under ``top`` replaced by what ``change`` returns for it (None: the part
    stays as stored); boundaries, preambles and epilogues stay as they are."""
    out = bytearray()
    pos = lo
    for part in top.walk():
        if part.kind != "leaf":
            continue
        new = change(raw, part)
        if new is None:
            continue
        header, body = new
        if part.start >= lo:
            out += raw[pos:part.start]
            out += header
        else:  # the section is the part's body: its header stays out
            out += raw[pos:part.header_end]
        out += body
        pos = part.end
    if pos == lo:
        return raw[lo:hi]
    out += raw[pos:hi]
    return bytes(out)


def _with_encoding(raw: bytes, part: MimePart, encoding: bytes) -> bytes:
    """The header of ``part`` with its (first) Content-Transfer-Encoding field saying
    ``encoding`` and any further ones left out; the other fields stay as stored."""
    out = bytearray()
    pos = part.start
    replaced = False
    for f in _fields(raw, part.start, part.header_end):
        if f.name != b"content-transfer-encoding":
            continue
        out += raw[pos:f.start]
        if not replaced:
            out += b"Content-Transfer-Encoding: " + encoding
            if raw[f.end - 1:f.end] == b"\n":
                out += b"\r\n"
            replaced = True
        pos = f.end
    if not replaced:  # pragma: no cover - only parts with the field are rewritten
        return raw[part.start:part.header_end]
    out += raw[pos:part.header_end]
    return bytes(out)


_BINARY_WORD = re.compile(rb"[Bb][Ii][Nn][Aa][Rr][Yy]")


def protect_binary(raw: bytes) -> bytes:
    """The message to store for ``raw``, which may carry parts in the binary
    Content-Transfer-Encoding (RFC 3516 4.4, APPEND with a literal8; RFC 3030 BINARYMIME).

    A binary part whose body holds NUL, or a CR or LF outside a CRLF pair, is re-encoded as
    base64 (its Content-Transfer-Encoding field then says so): stored as it is, CRLF
    normalisation would change its octets, and FETCH BODY could not send a NUL (RFC 3516 6:
    BODY and BODYSTRUCTURE must describe the message in an encoding IMAP4rev1 can carry).
    Such a change loses nothing (RFC 3516 4.4); FETCH BINARY gives the original octets back.
    Every other part, and a message with no such part, is returned unchanged.
    """
    if not _BINARY_WORD.search(raw):
        return raw
    ms = parse(raw)
    return _rewrite_leaves(raw, ms.root, 0, len(raw), _protected_leaf)


def _protected_leaf(raw: bytes, part: MimePart) -> tuple[bytes, bytes] | None:
    if transfer_encoding(part) != "binary":
        return None
    body = raw[part.header_end:part.end]
    crlf = body.count(b"\r\n")
    if b"\x00" not in body and body.count(b"\r") == crlf and body.count(b"\n") == crlf:
        return None
    encoded = base64.b64encode(body)
    lines = b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    return _with_encoding(raw, part, b"base64"), lines
