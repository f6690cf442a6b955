"""IMAP command parsing (RFC 3501 9, RFC 7888 LITERAL+): bytes to values, no I/O.

A command arrives as *chunks*: the text of its lines, each but the last ending where a
literal's ``{n}``/``{n+}`` marker was, and the octets of every literal in between. The
session reads them (it must answer ``+`` before a synchronizing literal); this module turns
them into tokens:

- ``str``: an atom (``FETCH``, ``1:*``, ``\\Seen``, ``NIL``), never a quoted string;
- ``bytes``: a quoted string or a literal;
- ``list``: a parenthesized list;
- :class:`Section`: a ``BODY[...]<...>``-style fetch attribute with its section text.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Command",
    "ImapParseError",
    "Section",
    "Token",
    "literal_marker",
    "parse_command",
    "parse_date_time",
    "parse_flags",
    "tokenize",
]


class ImapParseError(ValueError):
    """The command is malformed; the text says how (answered with BAD)."""


@dataclass
class Section:
    """``NAME[section]<partial>``: NAME is BODY, BODY.PEEK, BINARY, BINARY.PEEK or
    BINARY.SIZE; ``spec`` holds the tokens inside the brackets."""

    name: str
    spec: list[Token] = field(default_factory=list)
    text: str = ""
    partial: tuple[int, int | None] | None = None


Token = str | bytes | list["Token"] | Section


@dataclass
class Command:
    tag: str
    name: str
    args: list[Token]
    #: The literals among the arguments (the same objects): a quoted string and a literal
    #: are both ``bytes``, and APPEND must tell its date-time from its message.
    literals: tuple[bytes, ...] = field(default=(), compare=False, repr=False)

    def is_literal(self, tok: Token) -> bool:
        return any(tok is lit for lit in self.literals)


_MARKER = re.compile(rb"~?\{(\d{1,20})(\+?)\}$")
_TAG_CHARS = re.compile(r"^[\x21-\x7e]+$")
_SECTION_ATOMS = ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE")
_PARTIAL = re.compile(rb"<(\d{1,10})(?:\.(\d{1,10}))?>")


def literal_marker(line: bytes) -> tuple[int, bool, bool] | None:
    """``(size, non_synchronizing, binary)`` if ``line`` ends with a literal marker."""
    m = _MARKER.search(line)
    if m is None:
        return None
    return int(m.group(1)), bool(m.group(2)), line[m.start():m.start() + 1] == b"~"


def strip_marker(line: bytes) -> bytes:
    m = _MARKER.search(line)
    return line if m is None else line[:m.start()]


class _Lexer:
    """Tokens of a command made of ``lines`` with ``literals`` between them."""

    def __init__(self, lines: Sequence[bytes], literals: Sequence[bytes], max_depth: int):
        self.lines = lines
        self.literals = literals
        self.max_depth = max_depth
        self.li = 0  # current line
        self.pos = 0

    @property
    def text(self) -> bytes:
        return self.lines[self.li]

    def at_line_end(self) -> bool:
        return self.pos >= len(self.text)

    def tokens(self, depth: int = 0, closer: int | None = None) -> list[Token]:
        out: list[Token] = []
        need_sep = False  # a token was just read: a space or a closer must follow
        while True:
            if self.at_line_end():
                if self.li < len(self.literals):
                    # The literal stands where its marker was.
                    if need_sep:
                        raise ImapParseError("missing space before a literal")
                    out.append(self.literals[self.li])
                    self.li += 1
                    self.pos = 0
                    need_sep = True
                    continue
                if closer is not None:
                    raise ImapParseError(f"missing {chr(closer)!r}")
                return out
            c = self.text[self.pos]
            if c == closer:
                self.pos += 1
                return out
            if c in (0x29, 0x5D):  # ')' or ']'
                raise ImapParseError(f"unexpected {chr(c)!r}")
            if c == 0x20:
                if not need_sep:
                    raise ImapParseError("unexpected space")
                self.pos += 1
                need_sep = False
                if self.at_line_end() and self.li >= len(self.literals):
                    raise ImapParseError("trailing space")
                continue
            if need_sep:
                raise ImapParseError("missing space between arguments")
            if c == 0x28:  # '('
                if depth + 1 > self.max_depth:
                    raise ImapParseError("lists nested too deeply")
                self.pos += 1
                out.append(self.tokens(depth + 1, 0x29))
            elif c == 0x22:
                out.append(self.quoted())
            else:
                out.append(self.atom(depth))
            need_sep = True

    def quoted(self) -> bytes:
        data = self.text
        i = self.pos + 1
        buf = bytearray()
        while True:
            if i >= len(data):
                raise ImapParseError("unterminated quoted string")
            c = data[i]
            if c == 0x5C:
                if i + 1 < len(data) and data[i + 1] in (0x22, 0x5C):
                    buf.append(data[i + 1])
                    i += 2
                    continue
                raise ImapParseError("bad escape in quoted string")
            if c == 0x22:
                self.pos = i + 1
                return bytes(buf)
            if c in (0x0D, 0x0A, 0):
                raise ImapParseError("control character in quoted string")
            buf.append(c)
            i += 1

    def atom(self, depth: int) -> Token:
        data = self.text
        begin = i = self.pos
        while i < len(data) and data[i] not in b" ()\"[]" and 0x20 <= data[i] != 0x7F:
            i += 1
        if i < len(data) and (data[i] < 0x20 or data[i] == 0x7F):
            raise ImapParseError("control character in command")
        word = _text(data[begin:i])
        self.pos = i
        if i >= len(data) or data[i] != 0x5B:  # not '['
            if not word:
                raise ImapParseError(f"unexpected {chr(data[i])!r}")
            return word
        if word.upper() not in _SECTION_ATOMS:
            # Not a fetch attribute: brackets belong to the atom (a mailbox name, say).
            while i < len(data) and data[i] not in b" ()\"" and 0x20 <= data[i] != 0x7F:
                i += 1
            self.pos = i
            return _text(data[begin:i])
        if depth + 1 > self.max_depth:
            raise ImapParseError("lists nested too deeply")
        start = self.pos = i + 1
        li = self.li
        spec = self.tokens(depth + 1, 0x5D)
        # A header field name may be a literal: then the section ends on a later line.
        text = (data[start:self.pos - 1].decode("utf-8", "replace") if self.li == li
                else _spec_text(spec))
        sec = Section(word.upper(), spec, text)
        data = self.text
        m = _PARTIAL.match(data, self.pos)
        if m is not None:
            length = int(m.group(2)) if m.group(2) is not None else None
            sec.partial = (int(m.group(1)), length)
            self.pos = m.end()
        elif self.pos < len(data) and data[self.pos] not in b" )":
            raise ImapParseError("bad text after a section")
        return sec


def _spec_text(tokens: list[Token]) -> str:
    """Section text rebuilt from its tokens (when literals stood in it)."""
    out = []
    for tok in tokens:
        if isinstance(tok, list):
            out.append("(" + _spec_text(tok) + ")")
        elif isinstance(tok, bytes):
            text = tok.decode("utf-8", "replace")
            out.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(str(tok))
    return " ".join(out)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImapParseError("invalid UTF-8 in an atom") from None


def tokenize(lines: Sequence[bytes], literals: Sequence[bytes] = (), *,
             max_depth: int = 16) -> list[Token]:
    """Tokens of a command's chunks (see the module text)."""
    if len(literals) not in (len(lines) - 1, len(lines)):
        raise ValueError("each literal must follow a line")
    return _Lexer(lines, literals, max_depth).tokens()


def parse_command(lines: Sequence[bytes], literals: Sequence[bytes] = (), *,
                  max_depth: int = 16) -> Command:
    """Split off the tag and the command name (``UID FETCH`` is one name)."""
    first = lines[0]
    tag_b, sp, rest = first.partition(b" ")
    tag = tag_b.decode("ascii", "replace")
    if not tag_b or not _TAG_CHARS.match(tag) or any(c in tag for c in '(){%*"\\+'):
        raise ImapParseError("missing or invalid tag")
    if not sp or not rest:
        raise ImapParseError("missing command")
    head = [rest, *lines[1:]]
    tokens = tokenize(head, literals, max_depth=max_depth)
    if not tokens or not isinstance(tokens[0], str):
        raise ImapParseError("missing command")
    name = tokens[0].upper()
    args = tokens[1:]
    if name == "UID":
        if not args or not isinstance(args[0], str):
            raise ImapParseError("UID needs a command")
        name = "UID " + args[0].upper()
        args = args[1:]
    if not re.fullmatch(r"[A-Z][A-Z0-9-]*( [A-Z]+)?", name):
        raise ImapParseError("invalid command name")
    return Command(tag, name, args, tuple(literals))


def tag_of(line: bytes) -> str | None:
    """The tag of a line that could not be parsed, for a tagged BAD; None if unusable."""
    tag_b = line.split(b" ", 1)[0]
    try:
        tag = tag_b.decode("ascii")
    except UnicodeDecodeError:
        return None
    if tag and _TAG_CHARS.match(tag) and not any(c in tag for c in '(){%*"\\+'):
        return tag
    return None


# -- typed accessors used by the command handlers ---------------------------------------------


def as_string(tok: Token, what: str) -> bytes:
    """An astring: an atom or a string (quoted or literal)."""
    if isinstance(tok, bytes):
        return tok
    if isinstance(tok, str):
        return tok.encode("utf-8")
    raise ImapParseError(f"{what}: expected a string")


def as_atom(tok: Token, what: str) -> str:
    if isinstance(tok, str):
        return tok
    raise ImapParseError(f"{what}: expected an atom")


def as_list(tok: Token, what: str) -> list[Token]:
    if isinstance(tok, list):
        return tok
    raise ImapParseError(f"{what}: expected a parenthesized list")


def as_number(tok: Token, what: str, limit: int = 2**32 - 1) -> int:
    if isinstance(tok, str) and tok.isdigit() and tok.isascii():
        n = int(tok)
        if n <= limit:
            return n
    raise ImapParseError(f"{what}: expected a number")


SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_FLAG = re.compile(r"^\\?[!#$&'+-.0-9:<=>?@A-Z^-z|~]+$")
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DATE_TIME = re.compile(
    r"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")


def parse_flags(toks: list[Token]) -> list[str]:
    """A flag list of APPEND or STORE: system flags in their canonical case, keywords as
    they are; ``\\Recent`` is dropped (a client cannot set it)."""
    out = []
    for t in toks:
        flag = as_atom(t, "flag")
        if not _FLAG.match(flag):
            raise ImapParseError(f"invalid flag {flag[:30]!r}")
        if flag.startswith("\\"):
            canon = next((f for f in SYSTEM_FLAGS if f.lower() == flag.lower()), None)
            if canon is None:
                if flag.lower() == "\\recent":
                    continue
                raise ImapParseError(f"invalid system flag {flag[:30]}")
            flag = canon
        out.append(flag)
    return out


def parse_date_time(text: str) -> dt.datetime:
    """RFC 3501 date-time ``"dd-Mon-yyyy hh:mm:ss +zzzz"``."""
    m = _DATE_TIME.match(text)
    if m is None:
        raise ImapParseError("bad date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        raise ImapParseError("bad month in date-time")
    off = dt.timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == "-" else 1)
    try:
        return dt.datetime(int(year), month, int(day), int(hh), int(mm), int(ss),
                           tzinfo=dt.timezone(off))
    except ValueError:
        raise ImapParseError("bad date-time") from None
