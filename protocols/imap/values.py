"""Nested IMAP values to wire bytes (RFC 3501 4 and 9, formal syntax).

The storage layer describes ENVELOPE and BODYSTRUCTURE as plain values: ``None`` (NIL),
``int`` (number), ``str`` (string), ``bytes`` (literal) and ``list`` (parenthesized list);
:class:`Atom` marks a string that goes out bare (flags, keywords). Strings taken from headers
hold 8-bit bytes as surrogate escapes; they go out as literals with those bytes restored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["Atom", "astring", "literal", "nstring", "quoted", "serialize", "serialize_envelope",
           "utf8_astring"]


class Atom(str):
    """A string written as is, unquoted: an atom or a flag (RFC 3501 4.1)."""

    __slots__ = ()


# ATOM-CHAR: any CHAR except atom-specials; ASTRING-CHAR adds resp-specials "]".
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')


_UNQUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")
_NOT_ASTRING = re.compile(rb'[\x00-\x20\x7f-\xff(){ %*"\\]')


def _quotable(data: bytes) -> bool:
    """A quoted string may hold any 7-bit CHAR but CR and LF (RFC 3501 9 TEXT-CHAR)."""
    return _UNQUOTABLE.search(data) is None


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def quoted(data: bytes) -> bytes:
    """``"..."`` with ``"`` and ``\\`` escaped; ``data`` must be quotable."""
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(data: bytes) -> bytes:
    """A synchronizing literal ``{n}CRLF`` followed by the octets (RFC 3501 4.3)."""
    return b"{%d}\r\n" % len(data) + data


def string(text: str | bytes) -> bytes:
    """A string: quoted when it can be, else a literal (8-bit, CR, LF or NUL inside)."""
    data = _encode(text) if isinstance(text, str) else text
    return quoted(data) if _quotable(data) else literal(data)


def nstring(text: str | bytes | None) -> bytes:
    """NIL or a string (RFC 3501 9 nstring)."""
    return b"NIL" if text is None else string(text)


def astring(text: str | bytes) -> bytes:
    """An atom when the text is a non-empty run of ASTRING-CHARs and not NIL (so that the
    reply cannot be read as NIL), else a string (RFC 3501 9 astring)."""
    data = _encode(text) if isinstance(text, str) else text
    if data and data.upper() != b"NIL" and _NOT_ASTRING.search(data) is None:
        return data
    return string(data)


def utf8_astring(text: str) -> bytes:
    """An astring that may carry UTF-8 in a quoted string (RFC 9051 9 QUOTED-CHAR, for
    IMAP4rev2 clients): a literal only for CR, LF or NUL."""
    data = text.encode("utf-8")
    if data and data.upper() != b"NIL" and _NOT_ASTRING.search(data) is None:
        return data
    return quoted(data) if re.search(rb"[\x00\r\n]", data) is None else literal(data)


def serialize(value: object) -> bytes:
    """Wire form of a nested value.

    Elements of a list are separated by one space, except a leading run of lists, which
    are written back to back: RFC 3501 writes a multipart body as ``1*body SP
    media-subtype`` and an address list as ``"(" 1*address ")"``, with no space between
    the parts or the addresses, while every other neighbour (``env-from SP env-sender``,
    ``body-fld-dsp SP body-fld-lang``) takes a space, and in those no list comes first.
    """
    out: list[bytes] = []
    _write(value, out)
    return b"".join(out)


def _write(value: object, out: list[bytes]) -> None:
    if value is None:
        out.append(b"NIL")
    elif isinstance(value, Atom):
        out.append(_encode(value))
    elif isinstance(value, bool):
        raise TypeError("an IMAP value cannot be a bool")
    elif isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")
        out.append(b"%d" % value)
    elif isinstance(value, (str, bytes)):
        out.append(string(value))
    elif isinstance(value, (list, tuple)):
        _write_list(value, out)
    else:
        raise TypeError(f"cannot serialize {type(value).__name__} as an IMAP value")


def _write_list(items: Iterable[object], out: list[bytes]) -> None:
    out.append(b"(")
    leading_lists = True
    for i, item in enumerate(items):
        is_list = isinstance(item, (list, tuple))
        if i and not (leading_lists and is_list):
            out.append(b" ")
        leading_lists = leading_lists and is_list
        _write(item, out)
    out.append(b")")


#: Characters that keep an ASCII text from being sent as is between double quotes.
_QUOTE_SPECIAL = re.compile(r'[\x00\r\n"\\]')


def _plain_envelope(env: list[object]) -> bytes | None:
    """The ENVELOPE built as one text when every string in it is plain ASCII that needs
    no escaping (nearly every message): one pass, one encode.  None otherwise."""
    out: list[str] = []
    add = out.append
    special = _QUOTE_SPECIAL.search
    add("(")
    for i, value in enumerate(env):
        if i:
            add(" ")
        if value is None:
            add("NIL")
        elif type(value) is str:
            if not value.isascii() or special(value):
                return None
            add('"')
            add(value)
            add('"')
        elif 2 <= i <= 7 and type(value) is list:
            add("(")
            for addr in value:
                if type(addr) is not list or len(addr) != 4:
                    return None
                add("(")
                for j, f in enumerate(addr):
                    if j:
                        add(" ")
                    if f is None:
                        add("NIL")
                    elif type(f) is str and f.isascii() and not special(f):
                        add('"')
                        add(f)
                        add('"')
                    else:
                        return None
                add(")")
            add(")")
        else:
            return None
    add(")")
    return "".join(out).encode("ascii")


def serialize_envelope(env: list[object]) -> bytes:
    """``serialize`` of an ENVELOPE (RFC 3501 7.4.2), without the generic walk: a listing
    of many messages spends most of its time here.  Fields 2-7 are address lists of
    4-field addresses; anything else takes the generic path."""
    plain = _plain_envelope(env)
    if plain is not None:
        return plain
    parts: list[bytes] = []
    for i, value in enumerate(env):
        if value is None:
            parts.append(b"NIL")
        elif isinstance(value, str) and not isinstance(value, Atom):
            parts.append(string(value))
        elif 2 <= i <= 7 and isinstance(value, list):
            addrs = []
            for addr in value:
                if not (isinstance(addr, list) and len(addr) == 4):
                    return serialize(env)
                fields = []
                for f in addr:
                    if f is None:
                        fields.append(b"NIL")
                    elif isinstance(f, str) and not isinstance(f, Atom):
                        fields.append(string(f))
                    else:
                        return serialize(env)
                addrs.append(b"(" + b" ".join(fields) + b")")
            parts.append(b"(" + b"".join(addrs) + b")")
        else:
            return serialize(env)
    return b"(" + b" ".join(parts) + b")"
