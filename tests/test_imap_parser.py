"""The pure parts of the IMAP server: the command parser (RFC 3501 9, RFC 7888 LITERAL+)
and modified UTF-7 (RFC 3501 5.1.3).  No server, no I/O.

A command reaches the parser as the session reads it: its lines without CRLF (each but the
last cut where a literal marker ``{n}``/``{n+}`` stood) and the octets of its literals.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudcote.protocols.imap import utf7
from cloudcote.protocols.imap.fetch import parse_fetch_items
from cloudcote.protocols.imap.parser import (
    Command,
    ImapParseError,
    Section,
    literal_marker,
    parse_command,
    strip_marker,
    tag_of,
    tokenize,
)

FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def chunks(wire: bytes) -> tuple[list[bytes], list[bytes]]:
    """Split a command as sent (CRLF lines, literals after their markers) the way the
    session does: the lines without markers and CRLF, and the literals."""
    lines: list[bytes] = []
    literals: list[bytes] = []
    rest = wire
    while True:
        line, _, rest = rest.partition(b"\r\n")
        marker = literal_marker(line)
        if marker is None:
            lines.append(line)
            return lines, literals
        lines.append(strip_marker(line))
        literals.append(rest[:marker[0]])
        rest = rest[marker[0]:]


def parse(wire: bytes, **kw: Any) -> Command:
    return parse_command(*chunks(wire), **kw)


# -- tokenize: table ------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "tokens"), [
    (b"NOOP", ["NOOP"]),
    (b"FETCH 1:*,5 FLAGS", ["FETCH", "1:*,5", "FLAGS"]),
    (b"STORE 1 +FLAGS.SILENT (\\Seen $Junk)", ["STORE", "1", "+FLAGS.SILENT",
                                               ["\\Seen", "$Junk"]]),
    (b'LOGIN "a b" "c\\"d\\\\e"', ["LOGIN", b"a b", b'c"d\\e']),
    (b'X ""', ["X", b""]),
    (b"X NIL nil", ["X", "NIL", "nil"]),
    (b"X ()", ["X", []]),
    (b"X (((a)) b)", ["X", [[["a"]], "b"]]),
    (b'X ("q" (a "b") c)', ["X", [b"q", ["a", b"b"], "c"]]),
    (b"SELECT INBOX[x]", ["SELECT", "INBOX[x]"]),
    (b"X [a] b[c]d", ["X", "[a]", "b[c]d"]),
    (b"X caf\xc3\xa9", ["X", "caf\u00e9"]),
    (b'X "8bit \xff"', ["X", b"8bit \xff"]),
    (b"X {a}", ["X", "{a}"]),
])
def test_tokenize_table(line: bytes, tokens: list[Any]) -> None:
    assert tokenize([line]) == tokens


@pytest.mark.parametrize(("text", "section"), [
    (b"BODY[]", Section("BODY", [], "", None)),
    (b"body.peek[TEXT]<0.100>", Section("BODY.PEEK", ["TEXT"], "TEXT", (0, 100))),
    (b"BODY[1.2.MIME]", Section("BODY", ["1.2.MIME"], "1.2.MIME", None)),
    (b"BODY[HEADER.FIELDS (From To)]<10.5>",
     Section("BODY", ["HEADER.FIELDS", ["From", "To"]], "HEADER.FIELDS (From To)", (10, 5))),
    (b'BODY.PEEK[HEADER.FIELDS.NOT ("X-A")]',
     Section("BODY.PEEK", ["HEADER.FIELDS.NOT", [b"X-A"]], 'HEADER.FIELDS.NOT ("X-A")', None)),
    (b"BINARY.PEEK[1]<0.10>", Section("BINARY.PEEK", ["1"], "1", (0, 10))),
    (b"BINARY.SIZE[2]", Section("BINARY.SIZE", ["2"], "2", None)),
])
def test_tokenize_sections(text: bytes, section: Section) -> None:
    assert tokenize([b"FETCH 1 " + text]) == ["FETCH", "1", section]
    assert tokenize([b"FETCH 1 (FLAGS " + text + b")"]) == ["FETCH", "1", ["FLAGS", section]]


def test_section_with_literal() -> None:
    """A header field name is an astring: a literal may stand in a section."""
    wire = b"t FETCH 1 (BODY.PEEK[HEADER.FIELDS ({7}\r\nSUBJECT FROM)]<0.10> FLAGS)"
    (sec, flags), = parse(wire).args[1:]
    assert sec == Section("BODY.PEEK", ["HEADER.FIELDS", [b"SUBJECT", "FROM"]],
                          'HEADER.FIELDS ("SUBJECT" FROM)', (0, 10))
    assert flags == "FLAGS"
    assert parse_fetch_items(parse(wire).args[1]).bodies[0].fields == ("SUBJECT", "FROM")
    with pytest.raises(ImapParseError):
        parse(b"t FETCH 1 BODY[HEADER.FIELDS ({7}\r\nSUBJECT)]x")


def test_tokenize_literals() -> None:
    # "X {3}\r\nabc {2+}\r\nde (a {1}\r\n)\r\n)" as the session cuts it.
    lines = [b"X ", b" ", b" (a ", b")"]
    assert tokenize(lines, [b"abc", b"de", b")"]) == ["X", b"abc", b"de", ["a", b")"]]
    # A literal may hold anything: CRLF, NUL, brackets, 8-bit.
    data = b"a\r\nb\x00c\"(\xff"
    assert tokenize([b"X ", b""], [data]) == ["X", data]
    # The last literal may end the command, or text may follow it.
    assert tokenize([b"X ", b" Y"], [b""]) == ["X", b"", "Y"]
    with pytest.raises(ValueError):
        tokenize([b"X"], [b"a", b"b"])


@pytest.mark.parametrize("lines_literals", [
    ([b"X  Y"], []),
    ([b"X Y "], []),
    ([b" X"], []),
    ([b"X (a"], []),
    ([b"X a)"], []),
    ([b"X ]"], []),
    ([b"X (a))"], []),
    ([b'X "abc'], []),
    ([b'X "a\\b"'], []),
    ([b'X "a\\'], []),
    ([b'X a"b"'], []),
    ([b'X "a"b'], []),
    ([b"X (a)(b)"], []),
    ([b"X a\x01"], []),
    ([b"X a\x7f"], []),
    ([b'X "a\x00"'], []),
    ([b'X "a\rb"'], []),
    ([b"X \xff"], []),
    ([b"X a", b""], [b"lit"]),            # no space before the literal
    ([b"X ", b"Y"], [b"lit"]),            # no space after it
    ([b"X (", b""], [b"lit"]),            # a list left open by a literal
    ([b"FETCH 1 BODY[TEXT"], []),
    ([b"FETCH 1 BODY[TEXT]x"], []),
    ([b"FETCH 1 BODY[TEXT]<a.b>"], []),
    ([b"FETCH 1 BODY[(]"], []),
])
def test_tokenize_errors(lines_literals: tuple[list[bytes], list[bytes]]) -> None:
    lines, literals = lines_literals
    with pytest.raises(ImapParseError):
        tokenize(lines, literals)


def test_tokenize_nesting_limit() -> None:
    assert tokenize([b"X " + b"(" * 3 + b")" * 3], max_depth=3) == ["X", [[[]]]]
    with pytest.raises(ImapParseError, match="nested"):
        tokenize([b"X " + b"(" * 4 + b")" * 4], max_depth=3)
    # A section's brackets count as a level.
    assert tokenize([b"X ((BODY[HEADER.FIELDS (A)]))"], max_depth=4)
    with pytest.raises(ImapParseError, match="nested"):
        tokenize([b"X ((BODY[HEADER.FIELDS (A)]))"], max_depth=3)
    # Far deeper than any limit: an error, not a RecursionError.
    with pytest.raises(ImapParseError):
        tokenize([b"X " + b"(" * 100_000], max_depth=16)


# -- parse_command --------------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "tag", "name", "args"), [
    (b"a1 NOOP", "a1", "NOOP", []),
    (b"A.2] capability", "A.2]", "CAPABILITY", []),
    (b"t login user {6}\r\nsecret", "t", "LOGIN", ["user", b"secret"]),
    (b"t LOGIN {4+}\r\nuser {6+}\r\nsecret", "t", "LOGIN", [b"user", b"secret"]),
    (b"t uid Fetch 1:* (UID FLAGS)", "t", "UID FETCH", ["1:*", ["UID", "FLAGS"]]),
    (b"t UID STORE 4 -FLAGS (\\Deleted)", "t", "UID STORE", ["4", "-FLAGS", ["\\Deleted"]]),
    (b"t APPEND INBOX (\\Seen) \" 1-Jan-2020 00:00:00 +0000\" {5+}\r\nhello",
     "t", "APPEND", ["INBOX", ["\\Seen"], b" 1-Jan-2020 00:00:00 +0000", b"hello"]),
    (b"t APPEND INBOX {0}\r\n", "t", "APPEND", ["INBOX", b""]),
    (b"t X-CUSTOM-1 a", "t", "X-CUSTOM-1", ["a"]),
    (b"t SELECT &ZeVnLIqe-", "t", "SELECT", ["&ZeVnLIqe-"]),
])
def test_parse_command_table(wire: bytes, tag: str, name: str, args: list[Any]) -> None:
    assert parse(wire) == Command(tag, name, args)


@pytest.mark.parametrize("wire", [
    b"", b"a", b"a ", b" NOOP", b"a  NOOP", b"+ NOOP", b"a* NOOP", b"a(b NOOP", b"a{1 NOOP",
    b'a" NOOP', b"a% NOOP", b"a\\b NOOP", b"\xff NOOP", b"a\x01 NOOP", b"a UID", b"a UID ()",
    b'a "NOOP"', b"a (NOOP)", b"a 1NOOP", b"a NO_OP", b"a UID FETCH-1 x", b"a UID 1",
    b"a NOOP ", b"a {3}\r\nabc",
])
def test_parse_command_errors(wire: bytes) -> None:
    with pytest.raises(ImapParseError):
        parse(wire)


@pytest.mark.parametrize(("line", "marker"), [
    (b"a LOGIN {5}", (5, False, False)),
    (b"a LOGIN {5+}", (5, True, False)),
    (b"a APPEND x ~{12}", (12, False, True)),
    (b"a X {0}", (0, False, False)),
    (b"a X {99999999999999999999}", (99999999999999999999, False, False)),
    (b"a X {5} ", None),
    (b"a X {}", None),
    (b"a X {-1}", None),
    (b"a X {5++}", None),
    (b"a X {123456789012345678901}", None),
    (b"a X 5}", None),
])
def test_literal_marker(line: bytes, marker: tuple[int, bool, bool] | None) -> None:
    assert literal_marker(line) == marker
    if marker is None:
        assert strip_marker(line) == line
    else:
        assert strip_marker(line) == line[:line.rindex(b"{")].rstrip(b"~")


@pytest.mark.parametrize(("line", "tag"), [
    (b"a1 NOOP", "a1"), (b"a1", "a1"), (b"x] junk", "x]"), (b"", None), (b"+ x", None),
    (b"a{ x", None), (b"\xff x", None), (b" x", None), (b"a\x00 x", None),
])
def test_tag_of(line: bytes, tag: str | None) -> None:
    assert tag_of(line) == tag


# -- modified UTF-7 -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "wire"), [
    ("INBOX", "INBOX"),
    ("&", "&-"),
    ("a&b&", "a&-b&-"),
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("\u263a!", "&Jjo-!"),
    ("Entw\u00fcrfe", "Entw&APw-rfe"),
    ("\U0001f600", "&2D3eAA-"),
    ("", ""),
])
def test_utf7_table(name: str, wire: str) -> None:
    assert utf7.encode(name) == wire
    assert utf7.decode(wire) == name


@pytest.mark.parametrize("wire", [
    "&",            # unterminated shift
    "&Jjo",         # unterminated shift
    "&Jjo!-",       # not base64
    "&Jjo=-",       # padding is not part of modified base64
    "&Jj/-",        # "/" is "," in modified base64
    "&AGE-",        # encodes printable ASCII ("a")
    "&AGEAYQ-",     # likewise ("aa")
    "&Jjp-",        # non-zero padding bits
    "&2D0-",        # a lone UTF-16 high surrogate
    "&AA-",         # an odd number of octets
    "caf\u00e9",    # 8-bit characters are never sent as is
    "a\x01b",       # nor control characters
])
def test_utf7_rejects(wire: str) -> None:
    with pytest.raises(ValueError):
        utf7.decode(wire)


_NAME_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@FUZZ
@given(_NAME_TEXT)
def test_utf7_round_trip(name: str) -> None:
    wire = utf7.encode(name)
    assert wire.isascii() and all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert utf7.decode(wire) == name


@FUZZ
@given(st.text(max_size=40) | st.text("&-+,/=ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij0123456789",
                                      max_size=40))
def test_utf7_decode_never_crashes(wire: str) -> None:
    try:
        name = utf7.decode(wire)
    except ValueError:
        return
    assert utf7.decode(utf7.encode(name)) == name


def test_utf7_adjacent_shifts() -> None:
    # Two shifts where one would do name the same mailbox; answers use the canonical form.
    assert utf7.decode("&Jjo-&Jjo-") == "\u263a\u263a"
    assert utf7.encode("\u263a\u263a") == "&JjomOg-"


# -- fuzzing --------------------------------------------------------------------------------

VALID = [
    b"a1 NOOP",
    b"a2 LOGIN user {6}\r\nsecret",
    b"a3 LOGIN {4+}\r\nuser \"se\\\"cret\"",
    b"a4 SELECT \"INBOX\" (CONDSTORE)",
    b"a5 FETCH 1:*,3 (FLAGS UID BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100> BODY[1.2.MIME])",
    b"a6 UID FETCH 1:* (UID) (CHANGEDSINCE 5 VANISHED)",
    b"a7 UID STORE 1,3:5 +FLAGS.SILENT (\\Seen $Junk)",
    b"a8 SEARCH CHARSET UTF-8 OR (FROM {3}\r\nbob) TEXT \"x\" UNSEEN",
    b"a9 APPEND INBOX (\\Seen) \"01-Jan-2020 10:00:00 +0000\" {11+}\r\nSubject: x",
    b"b1 LIST (SUBSCRIBED) \"\" (INBOX* %) RETURN (CHILDREN STATUS (MESSAGES))",
    b"b2 STATUS &ZeVnLIqe- (MESSAGES UIDNEXT)",
    b"b3 ID (\"name\" \"x\" \"version\" NIL)",
    b"b4 FETCH 1 BINARY.PEEK[1]<0.10>",
    b"b5 AUTHENTICATE PLAIN AHVzZXIAc2VjcmV0",
]


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, byte in ops:
        at = pos % (len(buf) + 1)
        if kind == 0:
            buf.insert(at, byte)
        elif kind == 1 and buf:
            del buf[at % len(buf)]
        elif buf:
            buf[at % len(buf)] = byte
    return bytes(buf)


_OPS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000),
                          st.sampled_from(b" ()[]<>{}\"\\+~*%.:,0123456789\r\n\x00\xffaZ")
                          | st.integers(0, 255)), min_size=1, max_size=6)


def _check_parse(lines: list[bytes], literals: list[bytes]) -> None:
    for depth in (2, 16):
        try:
            cmd = parse_command(lines, literals, max_depth=depth)
        except ImapParseError:
            continue
        assert isinstance(cmd.tag, str) and cmd.tag
        assert isinstance(cmd.name, str) and cmd.name == cmd.name.upper()
        # The handlers' first steps are pure too: they refuse with ImapParseError only.
        if cmd.name in ("FETCH", "UID FETCH") and len(cmd.args) >= 2:
            try:
                parse_fetch_items(cmd.args[1])
            except ImapParseError:
                pass


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    lines, literals = chunks(data)
    _check_parse(lines, literals)
    # Every line on its own, whatever it holds, as the session may cut it.
    _check_parse(data.split(b"\n"), [b"x"] * (data.count(b"\n")))
    tag_of(data)
    literal_marker(data)
    strip_marker(data)


@FUZZ
@given(st.sampled_from(VALID), _OPS)
def test_fuzz_mutated_commands(wire: bytes, ops: list[tuple[int, int, int]]) -> None:
    assert parse(wire).tag  # the seeds are valid
    _check_parse(*chunks(_mutate(wire, ops)))


@FUZZ
@given(st.recursive(
    st.sampled_from([b"a", b"NIL", b'"q"', b"BODY[]", b"BODY[HEADER.FIELDS (A)]<1.2>", b"{1}"]),
    lambda inner: st.lists(inner, max_size=4).map(lambda xs: b"(" + b" ".join(xs) + b")"),
    max_leaves=30))
def test_fuzz_nested_lists(arg: bytes) -> None:
    wire = b"t FETCH 1 " + arg
    lines = wire.split(b"{1}")
    _check_parse(lines, [b"L"] * (len(lines) - 1))
