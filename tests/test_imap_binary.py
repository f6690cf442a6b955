"""IMAP BINARY (RFC 3516): FETCH BINARY[section]<partial>, BINARY.PEEK, BINARY.SIZE, the
UNKNOWN-CTE response code and APPEND with a literal8.

The decoding (core/mail/mime.py ``binary_section``, ``protect_binary``) and the FETCH items
(protocols/imap/fetch.py) are tested on their own; then through the real server, on every
IMAP backend. Replies with a literal8 (``~{n}``) are read off the wire with the helpers of
test_imap; the rest with imaplib too.

Expected values are worked out from RFC 3516 and RFC 2045 6.7/6.8; BINARY[] of a whole
message or of a multipart decodes every part inside and marks it "binary", as Dovecot does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import imaplib
import itertools
import re
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudcote.core.mail import mime, objects
from cloudcote.core.mail.index import Message
from cloudcote.core.mail.storage import Mailbox
from cloudcote.protocols.imap.fetch import UnknownCte, parse_fetch_items, render
from cloudcote.protocols.imap.parser import ImapParseError, parse_command

from .imap_support import IMAP_BACKENDS, ImapServer, server_fixture
from .test_imap import (
    Clients,
    Reply,
    append,
    bad,
    clients_of,
    cmd,
    fetch_one,
    fetches,
    no,
    ok,
    parse,
    read_response,
    select,
)

# -- a message with every kind of part ------------------------------------------------------

TOP_HEAD = (b"From: Alice <alice@example.com>\r\nSubject: binary test\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="OUTER"\r\n\r\n')
# 1: quoted-printable text: encoded octets, a soft line break, padding at a line end.
P1_HEAD = (b"Content-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
P1_BODY = b"Gr=C3=BC=C3=9Fe, a long line that is=\r\n broken softly.\r\n=3D end  "
P1_DATA = "Grüße, a long line that is broken softly.\r\n= end".encode()
# 2: base64 octets with a NUL (a literal8 in the reply), wrapped.
P2_HEAD = (b"Content-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n")
P2_BODY = b"AAECAwQFBgcICQoLDA0O\r\nDxAREhMUFRYXGBkaGxwdHh8g"
P2_DATA = bytes(range(33))
# 3: multipart/alternative; 3.1 base64 (upper-case name), 3.2 7bit.
P3_HEAD = b'Content-Type: multipart/alternative; boundary="INNER"\r\n\r\n'
P31_HEAD = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: BASE64\r\n\r\n"
P31_BODY = b"aGVsbG8gd29ybGQ="
P31_DATA = b"hello world"
P32 = b"Content-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\n\r\n<p>hi</p>"
# 4: message/rfc822 whose body (4.1) is quoted-printable.
P4_HEAD = b"Content-Type: message/rfc822\r\n\r\n"
P41_HEAD = (b"Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
P41_BODY = b"caf=C3=A9"
P41_DATA = "café".encode()


def _binary_head(head: bytes) -> bytes:
    return re.sub(rb"(?i)(Content-Transfer-Encoding: )[a-z0-9-]+", rb"\1binary", head)


def _build(p1: bytes, p2: bytes, p31: bytes, p4_inner: bytes) -> bytes:
    p3_body = b"--INNER\r\n" + p31 + b"\r\n--INNER\r\n" + P32 + b"\r\n--INNER--"
    return (TOP_HEAD + b"preamble\r\n--OUTER\r\n" + p1 + b"\r\n--OUTER\r\n" + p2
            + b"\r\n--OUTER\r\n" + P3_HEAD + p3_body + b"\r\n--OUTER\r\n" + P4_HEAD
            + p4_inner + b"\r\n--OUTER--\r\nepilogue\r\n")


MSG = _build(P1_HEAD + P1_BODY, P2_HEAD + P2_BODY, P31_HEAD + P31_BODY, P41_HEAD + P41_BODY)
#: BINARY[]: every leaf decoded and marked binary; boundaries, preamble, epilogue kept.
MSG_BINARY = _build(_binary_head(P1_HEAD) + P1_DATA, _binary_head(P2_HEAD) + P2_DATA,
                    _binary_head(P31_HEAD) + P31_DATA, _binary_head(P41_HEAD) + P41_DATA)
# BODY[3] runs to the next outer boundary: the CRLF after the close delimiter is in it.
P3_BINARY = (b"--INNER\r\n" + _binary_head(P31_HEAD) + P31_DATA + b"\r\n--INNER\r\n" + P32
             + b"\r\n--INNER--\r\n")
P4_BINARY = _binary_head(P41_HEAD) + P41_DATA

#: What BINARY[section] gives for MSG.
EXPECTED: dict[tuple[int, ...], bytes] = {
    (): MSG_BINARY,
    (1,): P1_DATA,
    (2,): P2_DATA,
    (3,): P3_BINARY,
    (3, 1): P31_DATA,
    (3, 2): b"<p>hi</p>",
    (4,): P4_BINARY,
    (4, 1): P41_DATA,
    (5,): b"",
    (2, 1): P2_DATA,  # a part that is not a multipart has part 1: itself
    (3, 3): b"",
}

UNKNOWN = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nfine\r\n"
           b"--b\r\nContent-Type: application/x-thing\r\n"
           b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n`\r\nend\r\n"
           b"--b--\r\n")


def binary(raw: bytes, *parts: int) -> bytes:
    return mime.binary_section(raw, mime.parse(raw), parts)


# -- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("parts", sorted(EXPECTED))
def test_binary_sections(parts: tuple[int, ...]) -> None:
    assert binary(MSG, *parts) == EXPECTED[parts]


def test_binary_single_part_message() -> None:
    head = (b"Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: image/png\r\n"
            b"Content-Transfer-Encoding: base64\r\nX-After: kept\r\n\r\n")
    raw = head + b"iVBORw0KGgo=\r\n"
    png = b"\x89PNG\r\n\x1a\n"
    assert binary(raw, 1) == png
    assert binary(raw) == (b"Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: image/png\r\n"
                           b"Content-Transfer-Encoding: binary\r\nX-After: kept\r\n\r\n" + png)
    # Identity encodings: BINARY is BODY, byte for byte.
    for enc in (b"7bit", b"8bit", b"binary", b"8BIT"):
        raw = (b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: " + enc
               + b"\r\n\r\nx\xff\x00y=41\r\n")
        assert binary(raw, 1) == b"x\xff\x00y=41\r\n"
        assert binary(raw) == raw
    # No field: 7bit.
    assert binary(b"Subject: s\r\n\r\nplain =41\r\n") == b"Subject: s\r\n\r\nplain =41\r\n"


def test_binary_encoding_not_in_force() -> None:
    # Content-* fields count only in a MIME entity (no MIME-Version, no Content-Type).
    raw = b"Subject: s\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n"
    assert binary(raw, 1) == b"aGk=\r\n"
    assert binary(raw) == raw
    # A field that is not one token is invalid: 7bit, as BODYSTRUCTURE shows it.
    raw = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64 x\r\n\r\naGk=\r\n"
    assert binary(raw, 1) == b"aGk=\r\n"


def test_binary_encoding_field_forms() -> None:
    # Folded, with comments, upper case: still base64; the whole field is replaced.
    raw = (b"MIME-Version: 1.0\r\nContent-Transfer-Encoding:\r\n (old) Base64 (x)\r\n"
           b"Content-Type: text/plain\r\n\r\naGk=\r\n")
    assert binary(raw, 1) == b"hi"
    assert binary(raw) == (b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: binary\r\n"
                           b"Content-Type: text/plain\r\n\r\nhi")
    # Two fields: the first is in force, the second goes.
    raw = (b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\na=3Db\r\n")
    assert binary(raw, 1) == b"a=b\r\n"
    assert binary(raw) == (b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: binary\r\n"
                           b"\r\na=b\r\n")


@pytest.mark.parametrize(("body", "data"), [
    (b"aGVs\r\nbG8g\r\nd29y\r\nbGQ=\r\n", b"hello world"),  # line breaks
    (b"aGVs bG8g\td29y  bGQ=", b"hello world"),  # blanks
    (b"aGV*sbG8!gd29-ybGQ=", b"hello world"),  # characters outside the alphabet: ignored
    (b"aGVsbG8gd29ybGQ", b"hello world"),  # padding missing
    (b"aGVsbG8gd29ybG", b"hello worl"),  # padding missing, two sextets at the end
    (b"aGVsbG8gd29ybGQ=Z", b"hello world"),  # a lone sextet: less than an octet, dropped
    (b"aGVsbG8=IHdvcmxk", b"hello world"),  # encodings pasted one after the other
    (b"aGk=\r\n=\r\n", b"hi"),  # extra padding
    (b"", b""),
    (b"\r\n\r\n", b""),
    (b"====", b""),
])
def test_base64_decoding(body: bytes, data: bytes) -> None:
    raw = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body
    assert binary(raw, 1) == data


@pytest.mark.parametrize(("body", "data"), [
    (b"a=3Db=3d=C3=A9\r\n", b"a=b=\xc3\xa9\r\n"),  # upper and lower-case hex
    (b"soft=\r\nbreak\r\n", b"softbreak\r\n"),  # soft line break
    (b"soft=  \r\nbreak", b"softbreak"),  # padding after the "="
    (b"pad  \t\r\nnext\r\n", b"pad\r\nnext\r\n"),  # padding at a line end goes
    (b"keep\t=\r\n", b"keep\t"),  # blanks before a soft break stay
    (b"bad=ZZ and =4", b"bad=ZZ and =4"),  # malformed "=": kept as it is
    (b"bare\nlf\n", b"bare\r\nlf\r\n"),  # line breaks become CRLF
    (b"nul=00=0D=0A", b"nul\x00\r\n"),  # encoded octets may be anything
    (b"ends=", b"ends"),
])
def test_quoted_printable_decoding(body: bytes, data: bytes) -> None:
    raw = (b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
           b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\n" + body)
    assert binary(raw, 1) == data


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=400), st.integers(4, 80))
def test_decoding_round_trip(data: bytes, width: int) -> None:
    """Whatever octets a part encodes (base64 wrapped at any width, quoted-printable of
    binary data), BINARY gives them back."""
    b64 = base64.b64encode(data)
    b64 = b"\r\n".join(b64[i:i + width] for i in range(0, len(b64), width))
    qp = binascii.b2a_qp(data, istext=False).replace(b"\n", b"\r\n")
    for enc, body in ((b"base64", b64), (b"quoted-printable", qp)):
        raw = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
               b"--zz\r\nContent-Transfer-Encoding: " + enc + b"\r\n\r\n" + body
               + b"\r\n--zz--\r\n")
        assert binary(raw, 1) == data
        assert binary(raw) == (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
                               b"boundary=zz\r\n\r\n--zz\r\nContent-Transfer-Encoding: "
                               b"binary\r\n\r\n" + data + b"\r\n--zz--\r\n")


def test_unknown_encoding() -> None:
    assert binary(UNKNOWN, 1) == b"fine"
    for parts in [(2,), ()]:
        with pytest.raises(mime.UnknownTransferEncoding) as info:
            binary(UNKNOWN, *parts)
        assert info.value.encoding == "x-uuencode"
    # The body of a multipart or message/rfc822 part is not decoded: its encoding is ignored.
    raw = (b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: x-weird\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n")
    assert binary(raw) == raw
    assert binary(raw, 1) == b"x"


# -- APPEND: parts in the binary encoding ---------------------------------------------------

def _binary_message(payload: bytes, boundary: bytes = b"=_cloudcote_=") -> bytes:
    return (b"From: a@example.com\r\nSubject: bin\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
            b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
            b"--" + boundary + b"\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\nContent-Disposition: attachment\r\n\r\n"
            + payload + b"\r\n--" + boundary + b"--\r\n")


def test_protect_binary() -> None:
    payload = bytes(range(256)) * 3
    raw = _binary_message(payload, b"=_boundary_=")
    stored = objects.normalize_crlf(mime.protect_binary(raw))
    assert b"\x00" not in stored
    ms = mime.parse(stored)
    bs = mime.bodystructure(ms)
    assert bs[1][5] == "base64"
    assert bs[0][5] == "7bit"
    body = mime.section(stored, ms, (2,))
    assert max(len(line) for line in body.split(b"\r\n")) == 76
    assert mime.binary_section(stored, ms, (2,)) == payload
    assert mime.section(stored, ms, (2,), "MIME") == (
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment\r\n\r\n")
    # Nothing else changed.
    assert mime.section(stored, ms, (1,)) == b"see attachment"
    assert stored.startswith(raw[:raw.index(b"Content-Transfer-Encoding: binary")])
    assert stored.endswith(b"\r\n--=_boundary_=--\r\n")


@pytest.mark.parametrize("raw", [
    _binary_message(b"8-bit \xff\xfe text\r\nin CRLF lines"),  # safe as it is
    MSG,  # no binary part
    b"Subject: binary\r\n\r\nContent-Transfer-Encoding: binary\r\n\x00\n",  # not MIME
    b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: 8bit\r\n\r\nbinary\x00\n",
])
def test_protect_binary_leaves_alone(raw: bytes) -> None:
    assert mime.protect_binary(raw) == raw


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_protect_binary_round_trip(payload: bytes) -> None:
    """Stored (binary parts protected, then CRLF-normalised as the store does), BINARY gives
    every octet back."""
    stored = objects.normalize_crlf(mime.protect_binary(_binary_message(payload)))
    ms = mime.parse(stored)
    assert mime.binary_section(stored, ms, (2,)) == payload
    assert b"\x00" not in mime.section(stored, ms, (2,))


# -- FETCH items ------------------------------------------------------------------------------

def _items(text: str) -> Any:
    return parse_fetch_items(parse_command([b"a FETCH 1 " + text.encode()]).args[1])


def test_parse_binary_items() -> None:
    req = _items("(BINARY[1.2]<5.10> BINARY.PEEK[] BINARY.SIZE[3] binary.peek[2]<0.1>)")
    labels = [b.label for b in req.bodies]
    assert labels == [b"BINARY[1.2]<5>", b"BINARY[]", b"BINARY.SIZE[3]", b"BINARY[2]<0>"]
    first, peek, size, lower = req.bodies
    assert first.binary and first.parts == (1, 2) and first.partial == (5, 10)
    assert not first.peek and peek.peek and size.peek and size.size_only
    assert lower.parts == (2,) and lower.peek
    assert req.sets_seen and req.needs_message
    for text in ("BINARY.PEEK[1]", "BINARY.SIZE[1]", "(BINARY.PEEK[] BINARY.SIZE[])"):
        req = _items(text)
        assert not req.sets_seen and req.needs_message
    assert _items("BINARY[1]").sets_seen


@pytest.mark.parametrize("text", [
    "BINARY[1.MIME]", "BINARY[HEADER]", "BINARY[TEXT]", "BINARY[1.HEADER]", "BINARY[0]",
    "BINARY[1.0]", "BINARY[1.]", "BINARY[.1]", "BINARY[1 2]", 'BINARY["1"]', "BINARY[(1)]",
    "BINARY[1234567890]", "BINARY.SIZE[1]<0.5>", "BINARY[1]<5>", "BINARY.PEEK[]<0>",
    "BINARY[\u00b2]",
])
def test_parse_binary_items_bad(text: str) -> None:
    with pytest.raises(ImapParseError):
        _items(text)


class _Box:
    """What render() reads of a mailbox for BINARY items: the stored message."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.reads = 0

    async def read_message(self, msg: Message) -> bytes:
        self.reads += 1
        return self.raw


def _render(raw: bytes, items: str) -> bytes:
    box = _Box(raw)
    msg = Message(7, "guid", "loc", len(raw), 0, 0, frozenset(), 1)
    out = asyncio.run(render(cast(Mailbox, box), msg, _items(items), seq=3, recent=False,
                             with_uid=False, with_modseq=False))
    assert box.reads == 1
    return out


def test_render_binary() -> None:
    out = _render(MSG, "(BINARY.SIZE[2] BINARY[2] BINARY.PEEK[1]<3.5> BINARY[2]<30.10> "
                       "BINARY[2]<1.2> BINARY.SIZE[] BINARY[9] BINARY[3.1]<100.1>)")
    assert out == (b"* 3 FETCH (BINARY.SIZE[2] 33 BINARY[2] ~{33}\r\n" + P2_DATA
                   + b" BINARY[1]<3> {5}\r\n" + P1_DATA[3:8]
                   + b" BINARY[2]<30> {3}\r\n" + P2_DATA[30:]  # no NUL in these
                   + b" BINARY[2]<1> {2}\r\n\x01\x02"
                   + b" BINARY.SIZE[] %d BINARY[9] {0}\r\n" % len(MSG_BINARY)
                   + b" BINARY[3.1]<100> {0}\r\n)\r\n")
    assert _render(MSG, "BINARY[2]<0.1>") == b"* 3 FETCH (BINARY[2]<0> ~{1}\r\n\x00)\r\n"


def test_render_unknown_encoding() -> None:
    assert _render(UNKNOWN, "BINARY[1]") == b"* 3 FETCH (BINARY[1] {4}\r\nfine)\r\n"
    for items in ("BINARY[2]", "BINARY.SIZE[2]", "BINARY.PEEK[]", "(BINARY[1] BINARY[2])"):
        with pytest.raises(UnknownCte) as info:
            _render(UNKNOWN, items)
        assert info.value.encoding == "x-uuencode"
        assert "x-uuencode" in str(info.value) and "UID 7" in str(info.value)


# -- through the server -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def binary_server(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(request, tmp_path_factory.mktemp("imapbin"))


@pytest.fixture
def imap(binary_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(binary_server)


_LITERAL8 = re.compile(rb" ~\{(\d+)\}\r\n")


def binary_fetches(reply: Reply) -> list[tuple[int, dict[str, Any], set[str]]]:
    """``(seq, {ITEM: value}, {items sent as literal8})`` of every untagged FETCH."""
    out = []
    for line in reply.lines:
        if not re.match(rb"\* \d+ FETCH ", line):
            continue
        eight = set()
        plain = bytearray()
        pos = 0
        for mo in _LITERAL8.finditer(line):
            if mo.start() < pos:
                continue
            name = line[:mo.start()].rsplit(b" ", 1)[-1].lstrip(b"(").decode()
            eight.add(name.upper())
            plain += line[pos:mo.start()] + b" {" + mo.group(1) + b"}\r\n"
            pos = mo.end() + int(mo.group(1))
            plain += line[mo.end():pos]
        plain += line[pos:]
        seq, _, body = bytes(plain)[2:].partition(b" FETCH ")
        (items,) = parse(body)
        out.append((int(seq), {str(items[i]).upper(): items[i + 1]
                               for i in range(0, len(items), 2)}, eight))
    return out


def binary_fetch(m: imaplib.IMAP4, text: str) -> tuple[dict[str, Any], set[str]]:
    got = binary_fetches(ok(m, text))
    assert len(got) == 1, got
    return got[0][1], got[0][2]


def test_fetch_binary(imap: Clients) -> None:
    m = imap.login()
    append(m, "INBOX", MSG)
    assert m.select("INBOX")[0] == "OK"
    names = {parts: ".".join(map(str, parts)) for parts in EXPECTED}
    items = " ".join(f"BINARY.PEEK[{n}] BINARY.SIZE[{n}]" for n in names.values())
    f, eight = binary_fetch(m, f"FETCH 1 ({items})")
    for parts, name in names.items():
        assert f[f"BINARY[{name}]"] == EXPECTED[parts], name
        assert int(f[f"BINARY.SIZE[{name}]"]) == len(EXPECTED[parts]), name
    # A literal8 exactly where a NUL is in the data.
    assert eight == {"BINARY[]", "BINARY[2]", "BINARY[2.1]"}
    # BODY is untouched by BINARY.
    f = fetch_one(m, "FETCH 1 (BODY.PEEK[] BODY.PEEK[2] RFC822.SIZE)")
    assert f["BODY[]"] == MSG and f["BODY[2]"] == P2_BODY
    assert int(f["RFC822.SIZE"]) == len(MSG)
    # imaplib reads the reply (a plain literal: no NUL).
    typ, data = m.fetch("1", "(BINARY.PEEK[4.1] BINARY.SIZE[1])")
    assert typ == "OK"
    assert data[0] == (b"1 (BINARY[4.1] {5}", P41_DATA)
    assert data[1] == b" BINARY.SIZE[1] %d)" % len(P1_DATA)
    typ, data = m.uid("FETCH", "1", "(BINARY.PEEK[3.1])")
    assert typ == "OK" and data[0] == (b"1 (UID 1 BINARY[3.1] {11}", P31_DATA)


def test_fetch_binary_partial(imap: Clients) -> None:
    m = imap.login()
    append(m, "INBOX", MSG)
    select(m)
    f, eight = binary_fetch(m, "FETCH 1 (BINARY.PEEK[2]<0.4> BINARY.PEEK[2]<20.100> "
                               "BINARY.PEEK[1]<2.4> BINARY.PEEK[4]<999.5> BINARY.PEEK[]<0.0>)")
    # The partial counts octets of the decoded data (RFC 3516 4.2).
    assert f["BINARY[2]<0>"] == P2_DATA[:4]
    assert f["BINARY[2]<20>"] == P2_DATA[20:]
    assert f["BINARY[1]<2>"] == P1_DATA[2:6] == "üß".encode()
    assert f["BINARY[4]<999>"] == b""
    assert f["BINARY[]<0>"] == b""
    # Only the piece with a NUL is a literal8.
    assert eight == {"BINARY[2]<0>"}
    # The first octets of a BINARY[] are those of BINARY[] in full.
    f, _ = binary_fetch(m, "FETCH 1 BINARY.PEEK[]<0.200>")
    assert f["BINARY[]<0>"] == MSG_BINARY[:200]


def test_fetch_binary_seen(imap: Clients) -> None:
    m = imap.login()
    for _ in range(4):
        append(m, "INBOX", MSG)
    select(m)
    f, _ = binary_fetch(m, "FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[2])")
    assert "FLAGS" not in f
    f, _ = binary_fetch(m, "FETCH 2 BINARY.SIZE[]")
    assert "FLAGS" not in f
    f, _ = binary_fetch(m, "FETCH 3 BINARY[1]")
    assert f["BINARY[1]"] == P1_DATA and "\\Seen" in f["FLAGS"]
    f, _ = binary_fetch(m, "UID FETCH 4 (BINARY.PEEK[2] BINARY[3.1]<0.5>)")
    assert f["BINARY[3.1]<0>"] == b"hello" and "\\Seen" in f["FLAGS"]
    got = {s: "\\Seen" in x["FLAGS"] for s, x in fetches(ok(m, "FETCH 1:4 FLAGS"))}
    assert got == {1: False, 2: False, 3: True, 4: True}
    # Read-only: BINARY sets nothing.
    ok(m, "EXAMINE INBOX")
    f, _ = binary_fetch(m, "FETCH 1 BINARY[2]")
    assert f["BINARY[2]"] == P2_DATA and "FLAGS" not in f
    assert "\\Seen" not in fetch_one(m, "FETCH 1 FLAGS")["FLAGS"]


def test_fetch_binary_bad_sections(imap: Clients) -> None:
    m = imap.login()
    append(m, "INBOX", MSG)
    select(m)
    for items in ("BINARY[1.MIME]", "BINARY.PEEK[HEADER]", "BINARY[TEXT]", "BINARY[0]",
                  "BINARY.SIZE[1]<0.5>", "BINARY[1]<5>", "BINARY.PEEK[1.]"):
        bad(m, f"FETCH 1 {items}")
    assert "\\Seen" not in fetch_one(m, "FETCH 1 FLAGS")["FLAGS"]


def test_fetch_binary_unknown_encoding(imap: Clients) -> None:
    """RFC 3516 4.3: NO with UNKNOWN-CTE. Needs the session to answer UnknownCte so."""
    m = imap.login()
    append(m, "INBOX", UNKNOWN)
    select(m)
    f, _ = binary_fetch(m, "FETCH 1 BINARY.PEEK[1]")
    assert f["BINARY[1]"] == b"fine"
    assert fetch_one(m, "FETCH 1 BODY.PEEK[2]")["BODY[2]"] == b"begin 644 x\r\n`\r\nend"
    for items in ("BINARY.PEEK[2]", "BINARY.SIZE[2]", "BINARY.PEEK[]", "UID FETCH 1 BINARY[2]"):
        text = items if items.startswith("UID") else f"FETCH 1 {items}"
        r = no(m, text, "UNKNOWN-CTE")
        assert b"x-uuencode" in r.text
    # The session goes on.
    assert fetch_one(m, "FETCH 1 BINARY.SIZE[1]")["BINARY.SIZE[1]"] == "4"


PAYLOAD_NUL = b"\x00\x01\x02 binary data \xff\xfe\x00"
PAYLOAD_ALL = bytes(range(256)) + b"\n\r\r\n\n--B\r\n"
_TAGS = itertools.count(1)


def _append_literal8(m: imaplib.IMAP4, data: bytes) -> Reply:
    """APPEND with a synchronizing literal8: the server asks for the octets with "+"."""
    tag = b"L%d" % next(_TAGS)
    m.send(tag + b" APPEND INBOX (\\Flagged) ~{%d}\r\n" % len(data))
    assert m.readline().startswith(b"+")
    m.send(data + b"\r\n")
    lines = []
    while not (line := read_response(m)).startswith(tag + b" "):
        lines.append(line)
    status, _, text = line[len(tag) + 1:].partition(b" ")
    return Reply(lines, status.decode(), text, tag)


def test_append_literal8(imap: Clients) -> None:
    """RFC 3516 4.4: APPEND takes a literal8; what FETCH BINARY gives back is what was
    sent, NUL octets included."""
    m = imap.login()
    raw = _binary_message(PAYLOAD_NUL)
    r = _append_literal8(m, raw)
    assert r.status == "OK" and (r.code() or "").startswith("APPENDUID"), r
    # Non-synchronizing (LITERAL+) literal8, a second message in the same command
    # (MULTIAPPEND), and a literal8 with no NUL in it.
    r = ok(m, b"APPEND INBOX ~{%d+}\r\n" % len(raw) + raw
           + b" ~{%d+}\r\n" % len(MSG) + MSG)
    select(m)
    got = {seq: (f, eight) for seq, f, eight in binary_fetches(
        ok(m, "FETCH 1:3 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1] FLAGS)"))}
    for seq in (1, 2):
        f, eight = got[seq]
        assert f["BINARY[2]"] == PAYLOAD_NUL and int(f["BINARY.SIZE[2]"]) == len(PAYLOAD_NUL)
        assert f["BINARY[1]"] == b"see attachment"
        assert eight == {"BINARY[2]"}
    assert set(got[1][0]["FLAGS"]) - {"\\Recent"} == {"\\Flagged"}
    assert got[3][0]["BINARY[2]"] == P2_DATA
    f, _ = binary_fetch(m, "FETCH 3 BINARY.PEEK[]")
    assert f["BINARY[]"] == MSG_BINARY


def test_append_literal8_any_octets(imap: Clients) -> None:
    """Every octet value survives, bare CR and LF too: a binary part the store could not
    keep as it is is stored in base64 (RFC 3516 4.4 allows the change, 6 asks that BODY and
    BODYSTRUCTURE describe such a part in an encoding IMAP4rev1 can carry). Needs the
    session to pass appended messages through ``mime.protect_binary``."""
    m = imap.login()
    raw = _binary_message(PAYLOAD_ALL, b"=_b")
    ok(m, b"APPEND INBOX ~{%d+}\r\n" % len(raw) + raw)
    select(m)
    f, eight = binary_fetch(m, "FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1])")
    assert f["BINARY[2]"] == PAYLOAD_ALL and int(f["BINARY.SIZE[2]"]) == len(PAYLOAD_ALL)
    assert f["BINARY[1]"] == b"see attachment" and eight == {"BINARY[2]"}
    f = fetch_one(m, "FETCH 1 (BODYSTRUCTURE BODY.PEEK[2] BODY.PEEK[2.MIME] RFC822.SIZE)")
    assert f["BODYSTRUCTURE"][1][5].lower() == b"base64"
    assert base64.b64decode(f["BODY[2]"]) == PAYLOAD_ALL
    assert b"Content-Transfer-Encoding: base64\r\n" in f["BODY[2.MIME]"]
    body = fetch_one(m, "FETCH 1 BODY.PEEK[]")["BODY[]"]
    assert int(f["RFC822.SIZE"]) == len(body) and b"\x00" not in body
    # The text part and the boundaries are as sent.
    assert body.startswith(raw[:raw.index(b"Content-Transfer-Encoding: binary")])
    assert body.endswith(b"\r\n--=_b--\r\n")


def test_literal8_in_other_commands(imap: Clients) -> None:
    """A literal8 stands for a string elsewhere too (RFC 4466 allows it in APPEND only; the
    server takes it as a literal, as it does in CATENATE's TEXT, RFC 4469 5)."""
    m = imap.login()
    r = cmd(m, b"CREATE ~{4+}\r\nbin8")
    assert r.status == "OK"
    assert b"bin8" in b" ".join(ok(m, 'LIST "" bin8').lines)
