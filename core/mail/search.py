"""SEARCH: the search keys of RFC 3501 6.4.4, CONDSTORE's MODSEQ (RFC 7162 3.1.5) and
WITHIN's OLDER and YOUNGER (RFC 5032).

Protocol-free: ``parse_search`` turns the tokens of a SEARCH command into an AST of frozen
dataclasses, ``search`` / ``search_uids`` evaluate an AST against a ``SearchView`` of a mailbox.
Errors are ``SearchSyntaxError`` (the session answers BAD) and ``BadCharset`` (the session
answers NO [BADCHARSET (...)], RFC 3501 6.4.4); neither carries IMAP reply text.

Evaluation runs in three stages, cheapest first, and each message leaves as soon as its
answer is known (Kleene three-valued logic: a key whose data is not loaded yet is "unknown"):

1. index data: flags, UID, sequence number, size, internal date (also OLDER, YOUNGER), MODSEQ;
2. the header block (``view.header``, answered from the cache);
3. the whole message (``view.body``), only for messages still undecided.

A search that needs no header never calls ``view.header``; one that needs no body never
calls ``view.body``. ``key_needs`` tells the protocol layer which stage a key can reach, to
plan prefetch.

Text matching (RFC 3501 6.4.4 "case-insensitive substring"): both sides are Unicode-casefolded
and NFC-normalised; header values are unfolded and RFC 2047-decoded; BODY and TEXT search the
decoded text of the text/* parts (base64 and quoted-printable undone, charsets converted).
All decoding is ``mime.py``'s (charsets: docs/storage.md).
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, TypeVar

from . import mime
from .mime import decode_rfc2047  # kept importable from here, where it used to live
from .prefetch import DEFAULT_MAX_BYTES, Prefetch

__all__ = [
    "MAX_DEPTH",
    "SUPPORTED_CHARSETS",
    "Address",
    "All",
    "And",
    "BadCharset",
    "Body",
    "DateOp",
    "Flag",
    "Header",
    "InternalDate",
    "Larger",
    "ModSeq",
    "Needs",
    "New",
    "Not",
    "Old",
    "Older",
    "Or",
    "Recent",
    "SearchError",
    "SearchKey",
    "SearchMessage",
    "SearchSyntaxError",
    "SearchToken",
    "SearchView",
    "SentDate",
    "SequenceNumbers",
    "SequenceSet",
    "Smaller",
    "Text",
    "Uid",
    "Younger",
    "decode_rfc2047",
    "key_needs",
    "parse_search",
    "parse_sequence_set",
    "search",
    "search_uids",
    "uses_modseq",
]

#: Charsets named in BADCHARSET replies. Any other Python text codec is accepted too.
SUPPORTED_CHARSETS: tuple[str, ...] = ("UTF-8", "US-ASCII")
#: Deepest nesting of parenthesised lists, NOT and OR that ``parse_search`` accepts: the
#: parser and the evaluator recurse, and a client must not be able to exhaust the stack.
MAX_DEPTH = 64

_MAX_NUMBER = 2**32 - 1  # RFC 3501 9: number, nz-number are unsigned 32-bit
_MAX_MODSEQ = 2**63 - 1  # RFC 7162 7: mod-sequence-value is 63-bit


# --- errors ------------------------------------------------------------------------------


class SearchError(ValueError):
    """Base of the errors of this module."""


class SearchSyntaxError(SearchError):
    """The search program is malformed; ``str()`` says what and where, without IMAP text."""


class BadCharset(SearchError):
    """The CHARSET is not one this server can convert (RFC 3501 6.4.4: tagged NO
    [BADCHARSET]); ``supported`` lists the charsets to name in the response code."""

    def __init__(self, charset: str, supported: Sequence[str] = SUPPORTED_CHARSETS) -> None:
        self.charset = charset
        self.supported = tuple(supported)
        super().__init__(f"unsupported charset {charset!r}; supported: {' '.join(supported)}")


# --- sequence sets -----------------------------------------------------------------------

#: One end of a range: a number, or "*" (the largest number in use), kept symbolic until
#: the search runs because the mailbox may grow between parsing and evaluation.
Bound: TypeAlias = "int | Literal['*']"

_SEQ_ELEMENT = re.compile(r"(\*|[1-9][0-9]*)(?::(\*|[1-9][0-9]*))?", re.ASCII)


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """RFC 3501 9 ``sequence-set``: ranges in the order given; ``a:b`` equals ``b:a``."""

    ranges: tuple[tuple[Bound, Bound], ...]

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """The ranges with ``*`` replaced by ``largest``, ordered low-high, sorted, merged."""
        spans = []
        for lo, hi in self.ranges:
            a = largest if lo == "*" else lo
            b = largest if hi == "*" else hi
            spans.append((min(a, b), max(a, b)))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return merged

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in self.ranges)


def parse_sequence_set(text: str) -> SequenceSet:
    """Parse RFC 3501 9 ``sequence-set`` ("1:5,7:*"); ``SearchSyntaxError`` if malformed."""
    ranges: list[tuple[Bound, Bound]] = []
    for element in text.split(","):
        m = _SEQ_ELEMENT.fullmatch(element)
        if m is None:
            raise SearchSyntaxError(f"bad sequence set {text!r}")
        lo = _bound(m.group(1), text)
        hi = lo if m.group(2) is None else _bound(m.group(2), text)
        ranges.append((lo, hi))
    return SequenceSet(tuple(ranges))


def _bound(text: str, whole: str) -> Bound:
    if text == "*":
        return "*"
    n = int(text)
    if n > _MAX_NUMBER:
        raise SearchSyntaxError(f"number out of range in sequence set {whole!r}")
    return n


def _in_spans(n: int, spans: list[tuple[int, int]]) -> bool:
    # Few spans in practice; a linear scan beats bisect's set-up for them.
    return any(lo <= n <= hi for lo, hi in spans)


# --- the AST -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchKey:
    """Base of every search-key node (RFC 3501 6.4.4)."""


@dataclass(frozen=True, slots=True)
class All(SearchKey):
    """ALL: every message."""


@dataclass(frozen=True, slots=True)
class SequenceNumbers(SearchKey):
    """A bare ``sequence-set``: messages whose sequence numbers are in it."""

    seqset: SequenceSet


@dataclass(frozen=True, slots=True)
class Uid(SearchKey):
    """UID sequence-set: messages whose UIDs are in it; ``*`` is the largest UID in use."""

    seqset: SequenceSet


@dataclass(frozen=True, slots=True)
class Flag(SearchKey):
    """ANSWERED DELETED DRAFT FLAGGED SEEN KEYWORD (``present``) and their UN- forms.

    ``name`` is spelled as in the message's flags ("\\\\Seen", "$Label1"); it is compared
    ASCII-case-insensitively so that a client's spelling of a flag never hides it."""

    name: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class Recent(SearchKey):
    """RECENT: the \\Recent flag is set."""


@dataclass(frozen=True, slots=True)
class New(SearchKey):
    """NEW: \\Recent set and \\Seen not set."""


@dataclass(frozen=True, slots=True)
class Old(SearchKey):
    """OLD: \\Recent not set."""


@dataclass(frozen=True, slots=True)
class Larger(SearchKey):
    """LARGER n: RFC822.SIZE greater than n."""

    size: int


@dataclass(frozen=True, slots=True)
class Smaller(SearchKey):
    """SMALLER n: RFC822.SIZE less than n."""

    size: int


class DateOp(enum.Enum):
    """How a date key compares: BEFORE (strictly earlier), ON (same day), SINCE (same day
    or later); always on whole days."""

    BEFORE = "BEFORE"
    ON = "ON"
    SINCE = "SINCE"


@dataclass(frozen=True, slots=True)
class InternalDate(SearchKey):
    """BEFORE, ON, SINCE: the internal date's calendar day, disregarding time and zone."""

    op: DateOp
    date: datetime.date


@dataclass(frozen=True, slots=True)
class SentDate(SearchKey):
    """SENTBEFORE, SENTON, SENTSINCE: the Date: header's calendar day as written,
    disregarding time and zone. A message with no parsable Date: uses its internal date."""

    op: DateOp
    date: datetime.date


@dataclass(frozen=True, slots=True)
class Older(SearchKey):
    """OLDER n (RFC 5032): the internal date is at least ``seconds`` before the time the
    search runs."""

    seconds: int


@dataclass(frozen=True, slots=True)
class Younger(SearchKey):
    """YOUNGER n (RFC 5032): the internal date is at most ``seconds`` before the time the
    search runs."""

    seconds: int


@dataclass(frozen=True, slots=True)
class ModSeq(SearchKey):
    """MODSEQ [entry-name entry-type] n (RFC 7162 3.1.5): mod-sequence >= n.

    The entry is parsed and kept but not used: messages have one mod-sequence here, which
    RFC 7162 3.1.5 allows a server to compare for every entry."""

    modseq: int
    entry_name: str | None = None
    entry_type: Literal["priv", "shared", "all"] | None = None


@dataclass(frozen=True, slots=True)
class Header(SearchKey):
    """HEADER field string, and SUBJECT string (field "subject"): a field of that name
    whose decoded value contains the string; the empty string matches any such field."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class Address(SearchKey):
    """FROM, TO, CC, BCC string: as ``Header``, matched against the raw value, the
    RFC 2047-decoded value and the parsed addresses ("Name <local@domain>")."""

    field: Literal["from", "to", "cc", "bcc"]
    value: str


@dataclass(frozen=True, slots=True)
class Body(SearchKey):
    """BODY string: the decoded text of the message's text/* parts contains the string."""

    value: str


@dataclass(frozen=True, slots=True)
class Text(SearchKey):
    """TEXT string: the header block or the body text contains the string."""

    value: str


@dataclass(frozen=True, slots=True)
class Not(SearchKey):
    """NOT key."""

    key: SearchKey


@dataclass(frozen=True, slots=True)
class Or(SearchKey):
    """OR key1 key2."""

    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class And(SearchKey):
    """A parenthesised list, or the top-level list: every key matches."""

    keys: tuple[SearchKey, ...]


def _children(key: SearchKey) -> tuple[SearchKey, ...]:
    if isinstance(key, And):
        return key.keys
    if isinstance(key, Or):
        return (key.left, key.right)
    if isinstance(key, Not):
        return (key.key,)
    return ()


def _walk(key: SearchKey) -> Iterable[SearchKey]:
    stack = [key]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(_children(node))


class Needs(enum.IntEnum):
    """The most expensive data a search key may read, per message, in stage order."""

    INDEX = 0  # flags, UIDs, sizes, dates, MODSEQ: index and cache only
    HEADERS = 1  # the header block
    BODY = 2  # the whole message


_HEADER_KEYS = (Header, Address, SentDate)
_BODY_KEYS = (Body, Text)


def key_needs(key: SearchKey) -> Needs:
    """What evaluating ``key`` may read: ``Needs.BODY`` means some messages may need their
    body read (only those the index and headers leave undecided)."""
    needs = Needs.INDEX
    for node in _walk(key):
        if isinstance(node, _BODY_KEYS):
            return Needs.BODY
        if isinstance(node, _HEADER_KEYS):
            needs = Needs.HEADERS
    return needs


def _uses_headers(key: SearchKey) -> bool:
    # TEXT counts: its header half may decide a message before the body is read.
    return any(isinstance(node, (*_HEADER_KEYS, Text)) for node in _walk(key))


def uses_modseq(key: SearchKey) -> bool:
    """Whether ``key`` contains MODSEQ: RFC 7162 3.1.5 then asks for (MODSEQ n) in the
    SEARCH response."""
    return any(isinstance(node, ModSeq) for node in _walk(key))


# --- parsing -----------------------------------------------------------------------------

#: A token as the IMAP tokenizer gives it: an atom, a quoted string or literal, a list.
SearchToken: TypeAlias = "str | bytes | list[SearchToken]"

_NUMBER = re.compile(r"[0-9]+", re.ASCII)
_SEQSET_CHARS = re.compile(r"[0-9*:,]+", re.ASCII)
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})", re.ASCII)
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}

_SYSTEM_FLAGS = {
    "ANSWERED": "\\Answered",
    "DELETED": "\\Deleted",
    "DRAFT": "\\Draft",
    "FLAGGED": "\\Flagged",
    "SEEN": "\\Seen",
}
_NO_ARGUMENT: dict[str, SearchKey] = {
    "ALL": All(),
    "NEW": New(),
    "OLD": Old(),
    "RECENT": Recent(),
    **{name: Flag(flag) for name, flag in _SYSTEM_FLAGS.items()},
    **{"UN" + name: Flag(flag, present=False) for name, flag in _SYSTEM_FLAGS.items()},
}
_DATE_KEYS = {
    "BEFORE": (InternalDate, DateOp.BEFORE),
    "ON": (InternalDate, DateOp.ON),
    "SINCE": (InternalDate, DateOp.SINCE),
    "SENTBEFORE": (SentDate, DateOp.BEFORE),
    "SENTON": (SentDate, DateOp.ON),
    "SENTSINCE": (SentDate, DateOp.SINCE),
}
_ADDRESS_KEYS: dict[str, Literal["from", "to", "cc", "bcc"]] = {
    "FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc",
}
_ENTRY_TYPES: dict[str, Literal["priv", "shared", "all"]] = {
    "priv": "priv", "shared": "shared", "all": "all",
}


def parse_search(tokens: Sequence[SearchToken], charset: str = "UTF-8") -> SearchKey:
    """Parse the search program of RFC 3501 6.4.4 (``search-key *(SP search-key)``).

    ``tokens``: ``str`` atoms (keywords are case-insensitive), ``bytes`` quoted strings and
    literals, ``list`` parenthesised groups. A leading ``CHARSET name`` overrides
    ``charset``; string arguments given as ``bytes`` are decoded with it, atoms are taken as
    they are. Several top-level keys give an ``And``.

    Raises ``BadCharset`` for a charset that cannot be converted and ``SearchSyntaxError``
    for anything else malformed."""
    tokens = list(tokens)
    pos = 0
    if tokens and isinstance(tokens[0], str) and tokens[0].upper() == "CHARSET":
        if len(tokens) < 2 or isinstance(tokens[1], list):
            raise SearchSyntaxError("CHARSET needs a charset name")
        name = tokens[1]
        charset = name if isinstance(name, str) else name.decode("ascii", "replace")
        pos = 2
    parser = _Parser(_check_charset(charset))
    keys = parser.parse_list(tokens[pos:], depth=0)
    if not keys:
        raise SearchSyntaxError("missing search key")
    return keys[0] if len(keys) == 1 else And(tuple(keys))


def _check_charset(charset: str) -> str:
    try:
        # Decoding rejects unknown names and the bytes-to-bytes codecs (base64, rot13...);
        # not nothing, which Python decodes without looking the codec up.
        b"a".decode(charset)
    except UnicodeDecodeError:
        pass  # a real charset in which "a" alone is incomplete (UTF-16...)
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise BadCharset(charset) from None
    return charset


class _Parser:
    def __init__(self, charset: str) -> None:
        self.charset = charset

    def parse_list(self, tokens: Sequence[SearchToken], depth: int) -> list[SearchKey]:
        stream = _Tokens(tokens)
        keys = []
        while not stream.done():
            keys.append(self.parse_key(stream, depth))
        return keys

    def parse_key(self, stream: _Tokens, depth: int) -> SearchKey:
        if depth > MAX_DEPTH:
            raise SearchSyntaxError(f"search keys nested deeper than {MAX_DEPTH}")
        token = stream.next("a search key")
        if isinstance(token, list):
            keys = self.parse_list(token, depth + 1)
            if not keys:
                raise SearchSyntaxError("empty parenthesised list of search keys")
            return keys[0] if len(keys) == 1 else And(tuple(keys))
        if isinstance(token, bytes):
            raise SearchSyntaxError(
                f"expected a search key, got the string {_show(token)}")
        name = token.upper()
        simple = _NO_ARGUMENT.get(name)
        if simple is not None:
            return simple
        if name in _ADDRESS_KEYS:
            return Address(_ADDRESS_KEYS[name], self.string(stream, name))
        if name == "SUBJECT":
            return Header("subject", self.string(stream, name))
        if name == "HEADER":
            field = self.string(stream, name, "a field name")
            if not field or any(c <= " " or c == ":" or c > "~" for c in field):
                raise SearchSyntaxError(f"HEADER: bad field name {field!r}")
            return Header(field.lower(), self.string(stream, name))
        if name == "BODY":
            return Body(self.string(stream, name))
        if name == "TEXT":
            return Text(self.string(stream, name))
        if name in ("KEYWORD", "UNKEYWORD"):
            keyword = self.string(stream, name, "a keyword")
            if not keyword or any(c <= " " or c in '(){%*"]' for c in keyword):
                raise SearchSyntaxError(f"{name}: bad keyword {keyword!r}")
            return Flag(keyword, present=name == "KEYWORD")
        if name in _DATE_KEYS:
            cls, op = _DATE_KEYS[name]
            return cls(op, _parse_date(stream.next(f"a date after {name}"), name))
        if name == "LARGER":
            return Larger(self.number(stream, name, _MAX_NUMBER))
        if name == "SMALLER":
            return Smaller(self.number(stream, name, _MAX_NUMBER))
        if name == "UID":
            return Uid(self.seqset(stream, name))
        if name in ("OLDER", "YOUNGER"):
            seconds = self.number(stream, name, _MAX_NUMBER)
            if seconds == 0:
                raise SearchSyntaxError(f"{name} needs a non-zero number of seconds")
            return Older(seconds) if name == "OLDER" else Younger(seconds)
        if name == "NOT":
            return Not(self.parse_key(stream, depth + 1))
        if name == "OR":
            left = self.parse_key(stream, depth + 1)
            return Or(left, self.parse_key(stream, depth + 1))
        if name == "MODSEQ":
            return self.modseq(stream)
        if _SEQSET_CHARS.fullmatch(token):
            return SequenceNumbers(parse_sequence_set(token))
        raise SearchSyntaxError(f"unknown search key {token!r}")

    def string(self, stream: _Tokens, key: str, what: str = "a string") -> str:
        token = stream.next(f"{what} after {key}")
        if isinstance(token, list):
            raise SearchSyntaxError(f"{key} needs {what}, got a parenthesised list")
        if isinstance(token, str):
            return token
        try:
            return token.decode(self.charset)
        except UnicodeDecodeError:
            raise SearchSyntaxError(
                f"{key}: the string {_show(token)} is not valid {self.charset}") from None

    def number(self, stream: _Tokens, key: str, limit: int) -> int:
        token = stream.next(f"a number after {key}")
        if not isinstance(token, str) or not _NUMBER.fullmatch(token):
            raise SearchSyntaxError(f"{key} needs a number, got {_show(token)}")
        n = int(token)
        if n > limit:
            raise SearchSyntaxError(f"{key}: number {token} out of range")
        return n

    def seqset(self, stream: _Tokens, key: str) -> SequenceSet:
        token = stream.next(f"a sequence set after {key}")
        if not isinstance(token, str):
            raise SearchSyntaxError(f"{key} needs a sequence set, got {_show(token)}")
        return parse_sequence_set(token)

    def modseq(self, stream: _Tokens) -> ModSeq:
        # RFC 7162 7: "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer, where
        # search-modseq-ext = SP entry-name SP entry-type-req and entry-name is quoted.
        entry_name = entry_type = None
        if isinstance(stream.peek(), bytes):
            entry_name = self.string(stream, "MODSEQ", "an entry name")
            if not entry_name.lower().startswith("/flags/") or len(entry_name) == 7:
                raise SearchSyntaxError(f"MODSEQ: bad entry name {entry_name!r}")
            kind = stream.next("an entry type after MODSEQ entry name")
            if not isinstance(kind, str) or kind.lower() not in _ENTRY_TYPES:
                raise SearchSyntaxError(
                    f"MODSEQ: entry type must be priv, shared or all, got {_show(kind)}")
            entry_type = _ENTRY_TYPES[kind.lower()]
        return ModSeq(self.number(stream, "MODSEQ", _MAX_MODSEQ), entry_name, entry_type)


class _Tokens:
    """A cursor over one level of tokens."""

    def __init__(self, tokens: Sequence[SearchToken]) -> None:
        self.tokens = tokens
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def peek(self) -> SearchToken | None:
        return None if self.done() else self.tokens[self.pos]

    def next(self, what: str) -> SearchToken:
        if self.done():
            raise SearchSyntaxError(f"missing {what}")
        token = self.tokens[self.pos]
        self.pos += 1
        if not isinstance(token, (str, bytes, list)):
            raise SearchSyntaxError(f"unexpected token {token!r}")
        return token


def _show(token: SearchToken | None) -> str:
    if token is None:
        return "nothing"
    if isinstance(token, list):
        return "a parenthesised list"
    text = token if isinstance(token, str) else token.decode("utf-8", "replace")
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def _parse_date(token: SearchToken, key: str) -> datetime.date:
    """RFC 3501 9: ``date = date-text / DQUOTE date-text DQUOTE``, date-text "1-Feb-1994"."""
    if isinstance(token, list):
        raise SearchSyntaxError(f"{key} needs a date, got a parenthesised list")
    text = token if isinstance(token, str) else token.decode("ascii", "replace")
    m = _DATE.fullmatch(text)
    month = _MONTHS.get(m.group(2).upper()) if m else None
    if m is None or month is None:
        raise SearchSyntaxError(f"{key}: bad date {_show(token)}, expected e.g. 1-Feb-1994")
    try:
        return datetime.date(int(m.group(3)), month, int(m.group(1)))
    except ValueError:
        raise SearchSyntaxError(f"{key}: no such date {_show(token)}") from None


# --- the mailbox view --------------------------------------------------------------------


class SearchMessage(Protocol):
    """What a search reads of a message from the index; attributes or properties."""

    @property
    def uid(self) -> int: ...
    @property
    def flags(self) -> frozenset[str]: ...  # "\\Seen"... and keywords; no "\\Recent"
    @property
    def recent(self) -> bool: ...
    @property
    def modseq(self) -> int: ...
    @property
    def size(self) -> int: ...  # RFC822.SIZE: the stored bytes
    @property
    def internaldate(self) -> datetime.datetime: ...  # aware


M = TypeVar("M", bound=SearchMessage)


class SearchView(Protocol[M]):
    """A mailbox as a search sees it: ``messages`` in sequence order (index i is sequence
    number i + 1, UIDs ascending), the header block from the cache, the stored message."""

    @property
    def messages(self) -> Sequence[M]: ...
    async def header(self, msg: M) -> bytes: ...
    async def body(self, msg: M) -> bytes: ...


# --- decoding (mime.py) -------------------------------------------------------------------


def _fold(text: str) -> str:
    """The form both sides of a text comparison take: casefold, then NFC so that composed
    and decomposed spellings of one character compare equal."""
    return unicodedata.normalize("NFC", text.casefold())


class _Headers:
    """A header block split into fields, decoded lazily and once per search and message.

    Each raw value is read as UTF-8 and, when it is not valid UTF-8, also as Latin-1
    (``mime.text_readings``); a key matches either reading."""

    def __init__(self, raw: bytes) -> None:
        # (lower-case name, UTF-8 reading of the unfolded raw value, Latin-1 reading or None)
        self.fields: list[tuple[str, str, str | None]] = [
            (name, *mime.text_readings(value)) for name, value in mime.header_fields(raw)]
        self._decoded: dict[str, list[str]] = {}
        self._addresses: dict[str, list[str]] = {}
        self._text: str | None = None

    def has(self, name: str) -> bool:
        return any(field == name for field, _, _ in self.fields)

    def raw(self, name: str) -> list[str]:
        """The readings of the fields called ``name``: each field's UTF-8 reading, followed
        by its Latin-1 reading if it has one."""
        out: list[str] = []
        for field, value, latin1 in self.fields:
            if field == name:
                out.append(value)
                if latin1 is not None:
                    out.append(latin1)
        return out

    def decoded(self, name: str) -> list[str]:
        """Folded, RFC 2047-decoded readings of the fields called ``name``."""
        values = self._decoded.get(name)
        if values is None:
            values = self._decoded[name] = [
                _fold(mime.decode_rfc2047(v)) for v in self.raw(name)]
        return values

    def addresses(self, name: str) -> list[str]:
        """Folded texts an address key matches: each value raw and decoded, and its parsed
        addresses as "Name <local@domain>" (comments dropped, comment names kept as names,
        as in an ENVELOPE)."""
        texts = self._addresses.get(name)
        if texts is None:
            texts = []
            for value in self.raw(name):
                texts.append(_fold(value))
                texts.append(_fold(mime.decode_rfc2047(value)))
                rendered = []
                for display, addr in _getaddresses(value):
                    display = mime.decode_rfc2047(display.strip())
                    rendered.append(f"{display} <{addr}>" if display else addr)
                texts.append(_fold(", ".join(rendered)))
            self._addresses[name] = texts
        return texts

    def text(self) -> str:
        """The folded header block as "Name: decoded value" lines, for TEXT (a field with a
        Latin-1 reading gives a line for each reading)."""
        if self._text is None:
            lines = []
            for name, value, latin1 in self.fields:
                lines.append(f"{name}: {mime.decode_rfc2047(value)}")
                if latin1 is not None:
                    lines.append(f"{name}: {mime.decode_rfc2047(latin1)}")
            self._text = _fold("\n".join(lines))
        return self._text

    def sent_date(self) -> datetime.date | None:
        """The calendar day written in the first Date: field (RFC 3501 6.4.4: disregarding
        time and timezone), or None if missing or unparsable."""
        for value in self.raw("date"):
            try:
                parsed = email.utils.parsedate_tz(value)
                if parsed is None:
                    return None
                return datetime.date(parsed[0], parsed[1], parsed[2])
            except (ValueError, TypeError, IndexError, OverflowError):
                return None
        return None


def _getaddresses(value: str) -> list[tuple[str, str]]:
    try:
        return [(n, a) for n, a in email.utils.getaddresses([value]) if a]
    except (ValueError, TypeError, IndexError):
        return []


def _body_text(message: bytes) -> str:
    """The folded text BODY searches: each text/* part's content with its transfer encoding
    undone and converted from its charset, plus the header fields of attached messages
    (they are body to the outer message). Other parts are not text and are skipped."""
    ms = mime.parse(message)
    return _fold(mime.decoded_text(message, ms, message_headers=True, latin1=True))


# --- evaluation --------------------------------------------------------------------------


class _Message:
    """One message during a search: index data, and what later stages have loaded."""

    __slots__ = ("seq", "msg", "_flags", "headers", "body")

    def __init__(self, seq: int, msg: SearchMessage) -> None:
        self.seq = seq
        self.msg = msg
        self._flags: frozenset[str] | None = None
        self.headers: _Headers | None = None
        self.body: str | None = None  # folded body text

    def flags(self) -> frozenset[str]:
        if self._flags is None:
            self._flags = frozenset(f.lower() for f in self.msg.flags)
        return self._flags


#: A compiled key: True or False, or None while the data it needs is not loaded yet.
_Matcher = Callable[[_Message], "bool | None"]


def _compare(op: DateOp, day: datetime.date, wanted: datetime.date) -> bool:
    if op is DateOp.BEFORE:
        return day < wanted
    if op is DateOp.ON:
        return day == wanted
    return day >= wanted


def _compile(key: SearchKey, messages: Sequence[SearchMessage]) -> _Matcher:
    """Turn ``key`` into a matcher for one search; ``*`` resolves against ``messages``."""
    if isinstance(key, And):
        parts = [_compile(k, messages) for k in key.keys]

        def match_and(m: _Message) -> bool | None:
            result: bool | None = True
            for part in parts:
                value = part(m)
                if value is False:
                    return False
                if value is None:
                    result = None
            return result

        return match_and
    if isinstance(key, Or):
        left, right = _compile(key.left, messages), _compile(key.right, messages)

        def match_or(m: _Message) -> bool | None:
            a = left(m)
            if a is True:
                return True
            b = right(m)
            if b is True:
                return True
            return None if a is None or b is None else False

        return match_or
    if isinstance(key, Not):
        inner = _compile(key.key, messages)

        def match_not(m: _Message) -> bool | None:
            value = inner(m)
            return None if value is None else not value

        return match_not
    if isinstance(key, All):
        return lambda m: True
    if isinstance(key, SequenceNumbers):
        spans = key.seqset.resolve(len(messages))
        return lambda m: _in_spans(m.seq, spans)
    if isinstance(key, Uid):
        uid_spans = key.seqset.resolve(messages[-1].uid if messages else 0)
        return lambda m: _in_spans(m.msg.uid, uid_spans)
    if isinstance(key, Flag):
        flag, present = key.name.lower(), key.present
        return lambda m: (flag in m.flags()) is present
    if isinstance(key, Recent):
        return lambda m: m.msg.recent
    if isinstance(key, New):
        return lambda m: m.msg.recent and "\\seen" not in m.flags()
    if isinstance(key, Old):
        return lambda m: not m.msg.recent
    if isinstance(key, Larger):
        larger = key.size
        return lambda m: m.msg.size > larger
    if isinstance(key, Smaller):
        smaller = key.size
        return lambda m: m.msg.size < smaller
    if isinstance(key, ModSeq):
        modseq = key.modseq
        return lambda m: m.msg.modseq >= modseq
    if isinstance(key, InternalDate):
        op, wanted = key.op, key.date
        return lambda m: _compare(op, m.msg.internaldate.date(), wanted)
    if isinstance(key, Older):
        # RFC 5032 3: relative to the time of the search, to the second; as Dovecot, both
        # bounds are inclusive (an interval of exactly n seconds is both OLDER and YOUNGER n).
        older_than = time.time() - key.seconds
        return lambda m: m.msg.internaldate.timestamp() <= older_than
    if isinstance(key, Younger):
        younger_than = time.time() - key.seconds
        return lambda m: m.msg.internaldate.timestamp() >= younger_than
    if isinstance(key, SentDate):
        return _compile_sent_date(key)
    if isinstance(key, Header):
        return _compile_header(key)
    if isinstance(key, Address):
        return _compile_address(key)
    if isinstance(key, Body):
        body_needle = _fold(key.value)
        return lambda m: None if m.body is None else body_needle in m.body
    if isinstance(key, Text):
        return _compile_text(key)
    raise TypeError(f"not a search key: {key!r}")


def _compile_sent_date(key: SentDate) -> _Matcher:
    op, wanted = key.op, key.date

    def match(m: _Message) -> bool | None:
        if m.headers is None:
            return None
        # Dovecot's fallback: a message without a usable Date: was "sent" when it arrived.
        day = m.headers.sent_date() or m.msg.internaldate.date()
        return _compare(op, day, wanted)

    return match


def _compile_header(key: Header) -> _Matcher:
    field, needle = key.field, _fold(key.value)

    def match(m: _Message) -> bool | None:
        if m.headers is None:
            return None
        if not needle:
            return m.headers.has(field)
        return any(needle in value for value in m.headers.decoded(field))

    return match


def _compile_address(key: Address) -> _Matcher:
    field, needle = key.field, _fold(key.value)

    def match(m: _Message) -> bool | None:
        if m.headers is None:
            return None
        if not needle:
            return m.headers.has(field)
        return any(needle in text for text in m.headers.addresses(field))

    return match


def _compile_text(key: Text) -> _Matcher:
    needle = _fold(key.value)

    def match(m: _Message) -> bool | None:
        if m.headers is not None and needle in m.headers.text():
            return True
        if m.body is None:
            return None
        return needle in m.body

    return match


async def _stage(undecided: list[_Message], load: Callable[[_Message], Awaitable[None]],
                 matcher: _Matcher, matched: list[_Message], concurrency: int,
                 max_bytes: int) -> list[_Message]:
    """Load one stage's data for each undecided message and decide those it settles: the
    matches go to ``matched``; the rest are returned, in sequence order."""
    still: list[_Message] = []

    async def decide(m: _Message) -> None:
        await load(m)
        result = matcher(m)
        if result is None:
            still.append(m)  # never after a body load: by then every key can answer
        elif result:
            matched.append(m)
        # Drop what was loaded: a later stage takes the header block from the body again.
        m.headers = None
        m.body = None

    # Reads in sequence order, ``concurrency`` ahead and at most ``max_bytes`` of stored
    # messages at once; the first error propagates (leaving the block cancels the rest).
    async with Prefetch(undecided, decide, count=max(1, concurrency), max_bytes=max_bytes,
                        size=lambda m: m.msg.size) as ahead:
        async for done in ahead:
            done.result()
    return sorted(still, key=lambda m: m.seq)


async def _matching(key: SearchKey, view: SearchView[M], concurrency: int,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> list[_Message]:
    """The messages matching ``key``, in sequence order, loading data stage by stage."""
    messages = view.messages
    matcher = _compile(key, messages)
    matched: list[_Message] = []
    undecided: list[_Message] = []
    for seq, msg in enumerate(messages, 1):
        state = _Message(seq, msg)
        result = matcher(state)
        if result is None:
            undecided.append(state)
        elif result:
            matched.append(state)

    async def load_headers(m: _Message) -> None:
        m.headers = _Headers(await view.header(messages[m.seq - 1]))

    async def load_body(m: _Message) -> None:
        raw = await view.body(messages[m.seq - 1])
        # The stored message starts with the header block: no second read for it.
        m.headers = _Headers(mime.header_block(raw))
        m.body = _body_text(raw)

    stages: list[Callable[[_Message], Awaitable[None]]] = [load_body]
    if _uses_headers(key):
        stages.insert(0, load_headers)
    for load in stages:
        if undecided:
            undecided = await _stage(undecided, load, matcher, matched, concurrency,
                                     max_bytes)
    matched.sort(key=lambda m: m.seq)
    return matched


async def search(key: SearchKey, view: SearchView[M], *, concurrency: int = 8,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> list[int]:
    """RFC 3501 6.4.4: the ascending sequence numbers of the messages matching ``key``.

    ``concurrency`` bounds the header or body reads awaited at once, ``max_bytes`` the
    stored size of the messages being read at once (prefetch.py). Errors from the view
    propagate unchanged."""
    return [m.seq for m in await _matching(key, view, concurrency, max_bytes)]


async def search_uids(key: SearchKey, view: SearchView[M], *, concurrency: int = 8,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> list[int]:
    """RFC 3501 6.4.8 UID SEARCH: the ascending UIDs of the messages matching ``key``."""
    return [m.msg.uid for m in await _matching(key, view, concurrency, max_bytes)]
