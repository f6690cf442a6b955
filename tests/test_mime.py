"""MIME structure, ENVELOPE, BODY/BODYSTRUCTURE and BODY[section] (core/mail/mime.py) and the
IMAP value serializer (protocols/imap/values.py).

Expected values are worked out from RFC 3501 (6.4.5, 7.4.2, 9), RFC 2045/2046 and RFC 5322.
The corpus messages under tests/data/mime/ are imaptest's fixtures (MIT, see COPYING.MIT
there); where imaptest states the FETCH reply, the expectation below is that reply. imaptest
compares case-insensitively; ours are exact, in the case the header is written in (the
module docstring of mime.bodystructure says why). mailbox.mbox drops the empty line that
separates two messages, so a body followed by another message ends one CRLF earlier than in
imaptest's own runs (noted where it matters).
"""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudcote.core.mail import mime
from cloudcote.protocols.imap.values import Atom, astring, literal, nstring, serialize

DATA = Path(__file__).resolve().parent / "data" / "mime"


def crlf(text: str | bytes) -> bytes:
    """Stored form: every line break CRLF, nothing added at the end."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def block(text: str) -> bytes:
    """An imaptest ``{{{ ... }}}`` literal: its lines joined by CRLF (no final one)."""
    return crlf(text)


_CORPUS: dict[str, list[bytes]] = {}


def corpus(name: str) -> list[bytes]:
    """The messages of a corpus mbox, stored as the saver stores them (CRLF)."""
    if name not in _CORPUS:
        path = DATA / name
        if not path.is_file():
            pytest.fail(f"corpus file {path} is missing (it is part of the repository)")
        box = mailbox.mbox(path, create=False)
        try:
            _CORPUS[name] = [crlf(box.get_bytes(key)) for key in box.iterkeys()]
        finally:
            box.close()
    return _CORPUS[name]


def msg(name: str, index: int = 0) -> bytes:
    return corpus(name)[index]


# --- ENVELOPE: imaptest fetch-envelope, replies verbatim -----------------------------------

ENVELOPES = [
    (0, b'("Thu, 15 Feb 2007 01:02:03 +0200" "subject header" (("From Real" NIL "fromuser" '
        b'"fromdomain.org")) (("Sender Real" NIL "senderuser" "senderdomain.org")) '
        b'(("ReplyTo Real" NIL "replytouser" "replytodomain.org")) (("To Real" NIL "touser" '
        b'"todomain.org")) (("Cc Real" NIL "ccuser" "ccdomain.org")) (("Bcc Real" NIL '
        b'"bccuser" "bccdomain.org")) "<reply@to.id>" "<msg@id>")'),
    (1, b'("Thu, 15 Feb 2007 01:02:03 +0200" NIL ((NIL NIL "user" "domain")) ((NIL NIL "user" '
        b'"domain")) ((NIL NIL "user" "domain")) NIL NIL NIL NIL NIL)'),
    (2, b'("Thu, 15 Feb 2007 01:02:03 +0200" NIL ((NIL NIL "user" "domain")) ((NIL NIL "user" '
        b'"domain")) ((NIL NIL "user" "domain")) NIL NIL NIL NIL NIL)'),
    # Groups (RFC 3501 7.4.2): start [NIL NIL name NIL], members, end [NIL NIL NIL NIL].
    (3, b'("Thu, 15 Feb 2007 01:02:03 +0200" NIL (("Real Name" NIL "user" "domain")) '
        b'(("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) '
        b'((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)'
        b'(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")(NIL NIL NIL NIL)) ((NIL NIL "group" NIL)'
        b'(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL NIL NIL)) NIL NIL NIL)'),
    # Empty Sender and Reply-To fall back to From.
    (4, b'("Thu, 15 Feb 2007 01:02:03 +0200" NIL (("Real Name" NIL "user" "domain")) '
        b'(("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) '
        b'NIL NIL NIL NIL NIL)'),
    # Source route -> adl.
    (5, b'("Thu, 15 Feb 2007 01:02:03 +0200" NIL ((NIL "@route" "user" "domain")) '
        b'((NIL "@route" "user" "domain")) ((NIL "@route" "user" "domain")) '
        b'NIL NIL NIL NIL NIL)'),
]


@pytest.mark.parametrize(("index", "expected"), ENVELOPES)
def test_envelope_corpus(index: int, expected: bytes) -> None:
    ms = mime.parse(msg("fetch-envelope.mbox", index))
    assert serialize(mime.envelope(ms)) == expected


# --- BODY / BODYSTRUCTURE of corpus messages ------------------------------------------------

ENV_SUB = (b'("Sun, 12 Aug 2012 12:34:56 +0300" "submsg" ((NIL NIL "sub" "domain.org")) '
           b'((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) NIL NIL NIL NIL NIL)')
ENV_M1 = (b'(NIL "m1" ((NIL NIL "m1" "example.com")) ((NIL NIL "m1" "example.com")) '
          b'((NIL NIL "m1" "example.com")) NIL NIL NIL NIL NIL)')
ENV_M2 = ENV_M1.replace(b"m1", b"m2")
ENV_USER2 = (b'("Fri, 23 Mar 2007 11:22:33 +0200" NIL ((NIL NIL "user2" "domain.org")) '
             b'((NIL NIL "user2" "domain.org")) ((NIL NIL "user2" "domain.org")) '
             b'NIL NIL NIL NIL NIL)')
TEXT_US_ASCII = b'"text" "plain" ("charset" "us-ascii") NIL NIL "7bit"'

CORPUS_STRUCTURES = [
    # imaptest fetch-bodystructure: (("TEXT" "x-MYOWN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 7
    # 1) "MIXED"), compared case-insensitively there. The boundary parameter was folded
    # inside its quoted string; unfolding keeps the space: "foo bar".
    ("fetch-bodystructure.mbox", 0, False,
     b'(("text" "x-myown" ("charset" "us-ascii") NIL NIL "7bit" 7 1) "mixed")'),
    ("fetch-bodystructure.mbox", 0, True,
     b'(("text" "x-myown" ("charset" "us-ascii") NIL NIL "7bit" 7 1 NIL NIL NIL NIL) "mixed" '
     b'("boundary" "foo bar") NIL NIL NIL)'),
    # Sizes agree with imaptest fetch-binary-mime: BINARY.SIZE[1] 7, [2] 298, [2.1] 20,
    # [2.2] 21 (no transfer encoding, so the sizes are the stored ones). Part 2 has 18 lines.
    ("fetch-body-mime.mbox", 0, True,
     b'(("text" "x-myown" ("charset" "us-ascii") NIL NIL "7bit" 7 1 NIL NIL NIL NIL)'
     b'("message" "rfc822" NIL NIL NIL "7bit" 298 ' + ENV_SUB +
     b' ((' + TEXT_US_ASCII.replace(b'"plain"', b'"html"') + b' 20 1 NIL NIL NIL NIL)(' +
     TEXT_US_ASCII + b' 21 1 NIL NIL NIL NIL) "alternative" ("boundary" "sub1") NIL NIL NIL)'
     b' 18 NIL NIL NIL NIL) "mixed" ("boundary" "foo bar") NIL NIL NIL)'),
    ("fetch-body-mime.mbox", 0, False,
     b'(("text" "x-myown" ("charset" "us-ascii") NIL NIL "7bit" 7 1)'
     b'("message" "rfc822" NIL NIL NIL "7bit" 298 ' + ENV_SUB +
     b' ((' + TEXT_US_ASCII.replace(b'"plain"', b'"html"') + b' 20 1)(' + TEXT_US_ASCII +
     b' 21 1) "alternative") 18) "mixed")'),
    # multipart/digest: parts without Content-Type are message/rfc822 (RFC 2046 5.1.5).
    ("fetch-body-message-rfc822-mime.mbox", 0, False,
     b'("message" "rfc822" NIL NIL NIL "7bit" 296 ' + ENV_SUB +
     b' (("message" "rfc822" NIL NIL NIL "7bit" 46 ' + ENV_M1 + b' (' + TEXT_US_ASCII +
     b' 9 1) 4)("message" "rfc822" NIL NIL NIL "7bit" 46 ' + ENV_M2 + b' (' + TEXT_US_ASCII +
     b' 9 1) 4) "digest") 25)'),
    ("fetch-body-message-rfc822-x2.mbox", 0, True,
     b'("message" "rfc822" NIL NIL NIL "7bit" 207 ' + ENV_USER2 +
     b' ("message" "rfc822" NIL NIL NIL "7bit" 93 ' + ENV_SUB + b' (' + TEXT_US_ASCII +
     b' 13 1 NIL NIL NIL NIL) 5 NIL NIL NIL NIL) 10 NIL NIL NIL NIL)'),
    # No MIME at all: text/plain; charset=us-ascii (RFC 2045 5.2). "body1\r\n".
    ("fetch-body.mbox", 0, False, b'(' + TEXT_US_ASCII + b' 7 1)'),
    ("nil.mbox", 0, True, b'(' + TEXT_US_ASCII + b' 5 1 NIL NIL NIL NIL)'),
]


@pytest.mark.parametrize(("name", "index", "extended", "expected"), CORPUS_STRUCTURES)
def test_bodystructure_corpus(name: str, index: int, extended: bool, expected: bytes) -> None:
    ms = mime.parse(msg(name, index))
    assert serialize(mime.bodystructure(ms, extended=extended)) == expected


def test_nil_subject_is_a_string() -> None:
    # imaptest nil: the subject "NiL" is a string, never the atom NIL.
    ms = mime.parse(msg("nil.mbox"))
    assert serialize(mime.envelope(ms)) == (
        b'("Sat, 24 Mar 2007 23:00:00 +0200" "NiL" NIL NIL NIL NIL NIL NIL NIL NIL)')
    assert mime.decoded_text(msg("nil.mbox"), ms) == "nil\r\n"


# --- sections: imaptest fetch-body*, replies verbatim ------------------------------------------

MIME_MSG = "fetch-body-mime.mbox"
SUB_MSG = block("""From: sub@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg
Content-Type: multipart/alternative; boundary="sub1"

Sub MIME prologue
--sub1
Content-Type: text/html

<p>Hello world</p>

--sub1
Content-Type: text/plain

Hello another world

--sub1--
Sub MIME epilogue
""")
RFC822_INNER = block("""From: sub@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg

Hello world
""")
# The digest's boundary lines carry transport padding: "--foo ".
DIGEST = block("""From: sub@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg
Content-Type: multipart/digest; boundary="foo"

prologue

--foo

From: m1@example.com
Subject: m1

m1 body

--foo
X-Mime: m2 header

From: m2@example.com
Subject: m2

m2 body

--foo--

epilogue
""".replace("--foo\n", "--foo \n"))
X2_INNER = block("""From: user2@domain.org
Date: Fri, 23 Mar 2007 11:22:33 +0200
Mime-Version: 1.0
Content-Type: message/rfc822

""") + RFC822_INNER

SECTIONS = [
    # fetch-body-mime
    (MIME_MSG, (), None, (), None),  # BODY[]: the stored message itself
    (MIME_MSG, (), "TEXT", (), block("""Root MIME prologue

--foo bar
Content-Type: text/x-myown; charset=us-ascii

hello

--foo bar
Content-Type: message/rfc822

""") + SUB_MSG + block("""
--foo bar--
Root MIME epilogue
""")),
    (MIME_MSG, (1,), None, (), block("hello\n")),
    (MIME_MSG, (1,), "MIME", (), block("Content-Type: text/x-myown; charset=us-ascii\n\n")),
    (MIME_MSG, (2,), None, (), SUB_MSG),
    (MIME_MSG, (2,), "MIME", (), block("Content-Type: message/rfc822\n\n")),
    (MIME_MSG, (2,), "HEADER", (), block("""From: sub@domain.org
Date: Sun, 12 Aug 2012 12:34:56 +0300
Subject: submsg
Content-Type: multipart/alternative; boundary="sub1"

""")),
    (MIME_MSG, (2,), "HEADER.FIELDS", ("from", "subject", "X-foo"),
     block("From: sub@domain.org\nSubject: submsg\n\n")),
    (MIME_MSG, (2,), "HEADER.FIELDS.NOT", ("from", "subject", "X-foo"), block(
        "Date: Sun, 12 Aug 2012 12:34:56 +0300\n"
        'Content-Type: multipart/alternative; boundary="sub1"\n\n')),
    (MIME_MSG, (2,), "TEXT", (), block("""Sub MIME prologue
--sub1
Content-Type: text/html

<p>Hello world</p>

--sub1
Content-Type: text/plain

Hello another world

--sub1--
Sub MIME epilogue
""")),
    (MIME_MSG, (2, 1), "MIME", (), block("Content-Type: text/html\n\n")),
    (MIME_MSG, (2, 1), None, (), block("<p>Hello world</p>\n")),
    (MIME_MSG, (2, 2), "MIME", (), block("Content-Type: text/plain\n\n")),
    (MIME_MSG, (2, 2), None, (), block("Hello another world\n")),
    # fetch-body-message-rfc822
    ("fetch-body-message-rfc822.mbox", (), "TEXT", (), RFC822_INNER),
    ("fetch-body-message-rfc822.mbox", (1,), None, (), RFC822_INNER),
    ("fetch-body-message-rfc822.mbox", (1, 1), None, (), block("Hello world\n")),
    ("fetch-body-message-rfc822.mbox", (1,), "HEADER", (), block(
        "From: sub@domain.org\nDate: Sun, 12 Aug 2012 12:34:56 +0300\nSubject: submsg\n\n")),
    ("fetch-body-message-rfc822.mbox", (1,), "HEADER.FIELDS", ("from", "subject", "X-foo"),
     block("From: sub@domain.org\nSubject: submsg\n\n")),
    ("fetch-body-message-rfc822.mbox", (1,), "HEADER.FIELDS.NOT", ("from", "subject", "X-foo"),
     block("Date: Sun, 12 Aug 2012 12:34:56 +0300\n\n")),
    ("fetch-body-message-rfc822.mbox", (1,), "TEXT", (), block("Hello world\n")),
    # fetch-body-message-rfc822-x2
    ("fetch-body-message-rfc822-x2.mbox", (), "TEXT", (), X2_INNER),
    ("fetch-body-message-rfc822-x2.mbox", (1,), None, (), X2_INNER),
    ("fetch-body-message-rfc822-x2.mbox", (1, 1), None, (), RFC822_INNER),
    ("fetch-body-message-rfc822-x2.mbox", (1,), "HEADER", (), block(
        "From: user2@domain.org\nDate: Fri, 23 Mar 2007 11:22:33 +0200\nMime-Version: 1.0\n"
        "Content-Type: message/rfc822\n\n")),
    ("fetch-body-message-rfc822-x2.mbox", (1,), "TEXT", (), RFC822_INNER),
    ("fetch-body-message-rfc822-x2.mbox", (1, 1, 1), None, (), block("Hello world\n")),
    ("fetch-body-message-rfc822-x2.mbox", (1, 1), "HEADER", (), block(
        "From: sub@domain.org\nDate: Sun, 12 Aug 2012 12:34:56 +0300\nSubject: submsg\n\n")),
    ("fetch-body-message-rfc822-x2.mbox", (1, 1), "TEXT", (), block("Hello world\n")),
    # fetch-body-message-rfc822-mime: digest parts, one with an empty MIME header.
    ("fetch-body-message-rfc822-mime.mbox", (), "TEXT", (), DIGEST),
    ("fetch-body-message-rfc822-mime.mbox", (1,), None, (), DIGEST),
    ("fetch-body-message-rfc822-mime.mbox", (1,), "HEADER", (), block(
        "From: sub@domain.org\nDate: Sun, 12 Aug 2012 12:34:56 +0300\nSubject: submsg\n"
        'Content-Type: multipart/digest; boundary="foo"\n\n')),
    ("fetch-body-message-rfc822-mime.mbox", (1,), "TEXT", (), DIGEST[DIGEST.index(b"prologue"):]),
    ("fetch-body-message-rfc822-mime.mbox", (1, 1), None, (),
     block("From: m1@example.com\nSubject: m1\n\nm1 body\n")),
    ("fetch-body-message-rfc822-mime.mbox", (1, 1), "MIME", (), block("\n")),
    ("fetch-body-message-rfc822-mime.mbox", (1, 1), "HEADER", (),
     block("From: m1@example.com\nSubject: m1\n\n")),
    ("fetch-body-message-rfc822-mime.mbox", (1, 1), "TEXT", (), block("m1 body\n")),
    ("fetch-body-message-rfc822-mime.mbox", (1, 2), None, (),
     block("From: m2@example.com\nSubject: m2\n\nm2 body\n")),
    ("fetch-body-message-rfc822-mime.mbox", (1, 2), "MIME", (), block("X-Mime: m2 header\n\n")),
    ("fetch-body-message-rfc822-mime.mbox", (1, 2), "HEADER", (),
     block("From: m2@example.com\nSubject: m2\n\n")),
    ("fetch-body-message-rfc822-mime.mbox", (1, 2), "TEXT", (), block("m2 body\n")),
    # Parts that do not exist are empty (Dovecot answers so, RFC 3501 leaves it open).
    (MIME_MSG, (3,), None, (), b""),
    (MIME_MSG, (2, 3), None, (), b""),
    (MIME_MSG, (1,), "HEADER", (), b""),  # HEADER of a part that is not a message
    (MIME_MSG, (1,), "TEXT", (), b""),
    (MIME_MSG, (0,), None, (), b""),
    (MIME_MSG, (), "MIME", (), b""),
    ("fetch-body-message-rfc822.mbox", (2,), None, (), b""),
    ("fetch-body-message-rfc822.mbox", (1, 2), None, (), b""),
    ("fetch-body.mbox", (1, 1, 1), None, (), b""),
]


@pytest.mark.parametrize(("name", "parts", "kind", "fields", "expected"), SECTIONS)
def test_section_corpus(name: str, parts: tuple[int, ...], kind: str | None,
                        fields: tuple[str, ...], expected: bytes | None) -> None:
    raw = msg(name)
    ms = mime.parse(raw)
    got = mime.section(raw, ms, parts, kind, fields)
    assert got == (raw if expected is None else expected)


FETCH_BODY_HEADER_1 = block("""From: User1 <user1@domain.org>
Date: Sat, 24 Mar 2007 23:00:00 +0200
Subject: s1

""")

FROM_SUBJECT_1 = block("From: User1 <user1@domain.org>\nSubject: s1\n\n")


@pytest.mark.parametrize(("kind", "fields", "expected"), [
    ("HEADER", (), FETCH_BODY_HEADER_1),
    # imaptest shows "body1\r\n\r\n": its mbox reader keeps the separating empty line.
    ("TEXT", (), b"body1\r\n"),
    ("HEADER.FIELDS", ("from",), block("From: User1 <user1@domain.org>\n\n")),
    ("HEADER.FIELDS", ("from", "from"), block("From: User1 <user1@domain.org>\n\n")),
    ("HEADER.FIELDS", ("FROM", "subject"), FROM_SUBJECT_1),
    # Order is the message's, not the request's.
    ("HEADER.FIELDS", ("subject", "from"), FROM_SUBJECT_1),
    ("HEADER.FIELDS.NOT", ("date",), FROM_SUBJECT_1),
    ("HEADER.FIELDS.NOT", ("date", "date"), FROM_SUBJECT_1),
    ("HEADER.FIELDS", ("xyz",), b"\r\n"),
    ("header.fields", ("from",), block("From: User1 <user1@domain.org>\n\n")),
])
def test_section_top_level(kind: str, fields: tuple[str, ...], expected: bytes) -> None:
    raw = msg("fetch-body.mbox", 0)
    assert mime.section(raw, mime.parse(raw), (), kind, fields) == expected


@pytest.mark.parametrize(("index", "origin", "length", "expected"), [
    # imaptest fetch-body partial fetches of BODY[TEXT].
    (1, 0, 3, b"bod"), (1, 3, 3, b"y22"),
    (2, 0, 1, b"b"), (2, 5, 1, b"3"), (2, 5, 2, b"3\r"), (2, 5, 3, b"3\r\n"),
    (2, 6, 1, b"\r"), (2, 6, 2, b"\r\n"), (2, 7, 1, b"\n"),
    (2, 8, 5, b""), (2, 100, 1, b""), (2, 0, 0, b""), (2, 4, 100, b"33\r\n"),
])
def test_partial(index: int, origin: int, length: int, expected: bytes) -> None:
    raw = msg("fetch-body.mbox", index)
    text = mime.section(raw, mime.parse(raw), (), "TEXT")
    assert mime.partial(text, origin, length) == expected


def test_partial_rejects_negative() -> None:
    with pytest.raises(ValueError):
        mime.partial(b"abc", -1, 2)


def test_bad_section_kind() -> None:
    raw = msg("fetch-body.mbox")
    with pytest.raises(ValueError):
        mime.section(raw, mime.parse(raw), (), "BODY")


# --- constructed messages ---------------------------------------------------------------------

ALTERNATIVE = crlf(
    "From: =?utf-8?q?J=C3=B6rg?= <jorg@example.com>\n"
    'To: "Doe, John" <john@example.com>, jane@example.com (Jane)\n'
    "Subject: =?iso-8859-1?q?caf=E9?=\n"
    "  menu\n"
    "Date: Mon, 1 Jan 2024 10:00:00 +0000\n"
    "Message-ID: <alt@example.com>\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="b1"\n'
    "\n"
    "--b1\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "Caf=C3=A9 au lait=\n"
    " today\n"
    "--b1\n"
    'Content-Type: text/html; charset="iso-8859-1"\n'
    "\n"
    "<p>Caf\udce9</p>\n"
    "--b1--\n")


def test_alternative() -> None:
    ms = mime.parse(ALTERNATIVE)
    # Subject and names are sent raw (RFC 2047 words undecoded); the folded subject's
    # whitespace collapses to one space.
    assert mime.envelope(ms) == [
        "Mon, 1 Jan 2024 10:00:00 +0000",
        "=?iso-8859-1?q?caf=E9?= menu",
        [["=?utf-8?q?J=C3=B6rg?=", None, "jorg", "example.com"]],
        [["=?utf-8?q?J=C3=B6rg?=", None, "jorg", "example.com"]],
        [["=?utf-8?q?J=C3=B6rg?=", None, "jorg", "example.com"]],
        [["Doe, John", None, "john", "example.com"], ["Jane", None, "jane", "example.com"]],
        None, None, None, "<alt@example.com>",
    ]
    # "Caf=C3=A9 au lait=\r\n today" is 26 octets, one line; "<p>Caf\xe9</p>" 11 octets,
    # no line break of its own (the CRLF before "--b1--" belongs to the boundary).
    assert serialize(mime.bodystructure(ms)) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 26 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "iso-8859-1") NIL NIL "7bit" 11 0 NIL NIL NIL NIL) '
        b'"alternative" ("boundary" "b1") NIL NIL NIL)')
    assert mime.section(ALTERNATIVE, ms, (1,)) == b"Caf=C3=A9 au lait=\r\n today"
    assert mime.section(ALTERNATIVE, ms, (2,)) == b"<p>Caf\xe9</p>"
    assert mime.decoded_text(ALTERNATIVE, ms) == "Café au lait today\n<p>Café</p>"
    header = mime.header_block(ALTERNATIVE)
    assert header == ALTERNATIVE[:ALTERNATIVE.index(b"\r\n\r\n") + 4]
    assert mime.header_values(header, "subject") == ["café  menu"]
    assert mime.header_values(header, "From") == ["Jörg <jorg@example.com>"]
    assert mime.header_values(header, "x-missing") == []


NESTED = crlf('''From: Sender <sender@example.com>
To: undisclosed-recipients:;
Subject: report
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative; boundary="outer-inner"

--outer-inner
Content-Type: text/plain

plain text
--outer-inner
Content-Type: text/html

<b>html</b>
--outer-inner--
--outer
Content-Type: application/pdf; name="r.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="r.pdf"; size=12
Content-ID: <pdf@example.com>
Content-Description: The report
Content-Language: en, de
Content-Location: http://example.com/r.pdf
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

JVBERi0xLjQK
AAEC
--outer--
epilogue
''')

NESTED_ALT_BODY = block("""--outer-inner
Content-Type: text/plain

plain text
--outer-inner
Content-Type: text/html

<b>html</b>
--outer-inner--
""")


def test_nested_multipart_with_attachment() -> None:
    ms = mime.parse(NESTED)
    assert serialize(mime.envelope(ms)) == (
        b'(NIL "report" (("Sender" NIL "sender" "example.com")) (("Sender" NIL "sender" '
        b'"example.com")) (("Sender" NIL "sender" "example.com")) '
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL NIL NIL NIL)')
    # "outer-inner" starts with "outer": the longest matching boundary wins. The inner
    # close delimiter's own CRLF stays in part 1 (the outer boundary line follows it
    # directly); "JVBERi0xLjQK\r\nAAEC" is 18 octets.
    assert serialize(mime.bodystructure(ms)) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0 NIL NIL NIL NIL) '
        b'"alternative" ("boundary" "outer-inner") NIL NIL NIL)'
        b'("application" "pdf" ("name" "r.pdf") "<pdf@example.com>" "The report" "base64" 18 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename" "r.pdf" "size" "12")) '
        b'("en" "de") "http://example.com/r.pdf") "mixed" ("boundary" "outer") NIL NIL NIL)')
    assert serialize(mime.bodystructure(ms, extended=False)) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0) "alternative")'
        b'("application" "pdf" ("name" "r.pdf") "<pdf@example.com>" "The report" "base64" 18)'
        b' "mixed")')
    expected = {
        ((1,), None): NESTED_ALT_BODY,
        ((1,), "MIME"): block('Content-Type: multipart/alternative; boundary="outer-inner"\n\n'),
        ((1, 1), None): b"plain text",
        ((1, 1), "MIME"): block("Content-Type: text/plain\n\n"),
        ((1, 2), None): b"<b>html</b>",
        ((2,), None): b"JVBERi0xLjQK\r\nAAEC",
        ((2,), "HEADER"): b"",
        ((3,), None): b"",
        ((1, 3), None): b"",
        ((1, 1, 2), None): b"",
        # A leaf has only part 1, itself (Dovecot's reading of RFC 3501 6.4.5).
        ((2, 1), None): b"JVBERi0xLjQK\r\nAAEC",
    }
    for (parts, kind), value in expected.items():
        assert mime.section(NESTED, ms, parts, kind) == value, (parts, kind)
    text = mime.section(NESTED, ms, (), "TEXT")
    assert text.startswith(b"This is a multi-part message in MIME format.\r\n--outer\r\n")
    assert text.endswith(b"--outer--\r\nepilogue\r\n")
    # The attachment is not text: SEARCH BODY sees only the text parts.
    assert mime.decoded_text(NESTED, ms) == "plain text\n<b>html</b>"


FORWARD_INNER = crlf(
    "From: b@example.com\n"
    "To: c@example.com\n"
    "Subject: inner\n"
    "Message-ID: <inner@example.com>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "h\u00e9llo\n"
    "bye")
FORWARD = crlf(
    "From: a@example.com\n"
    "Subject: fwd\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=XX\n"
    "\n"
    "--XX\n"
    "Content-Type: text/plain; charset=us-ascii\n"
    "\n"
    "see attached\n"
    "--XX\n"
    "Content-Type: message/rfc822\n"
    "Content-Disposition: inline\n"
    "\n") + FORWARD_INNER + crlf("\n--XX--\n")


def test_message_rfc822_inside_multipart() -> None:
    ms = mime.parse(FORWARD)
    inner_header_len = FORWARD_INNER.index(b"\r\n\r\n") + 4
    assert len(FORWARD_INNER) == 195 and inner_header_len == 184
    assert serialize(mime.bodystructure(ms)) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 0 NIL NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 195 (NIL "inner" ((NIL NIL "b" "example.com"))'
        b' ((NIL NIL "b" "example.com")) ((NIL NIL "b" "example.com")) '
        b'((NIL NIL "c" "example.com")) NIL NIL NIL "<inner@example.com>") '
        b'("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 11 1 NIL NIL NIL NIL) 9 '
        b'NIL ("inline" NIL) NIL NIL) "mixed" ("boundary" "XX") NIL NIL NIL)')
    inner_body = "h\u00e9llo\r\nbye".encode()
    expected = {
        ((2,), None): FORWARD_INNER,
        ((2,), "MIME"): block("Content-Type: message/rfc822\nContent-Disposition: inline\n\n"),
        ((2,), "HEADER"): FORWARD_INNER[:inner_header_len],
        ((2,), "TEXT"): inner_body,
        ((2, 1), None): inner_body,
        # MIME of the encapsulated message's part 1: the header its type came from.
        ((2, 1), "MIME"): FORWARD_INNER[:inner_header_len],
        ((2, 1), "HEADER"): b"",
        ((2, 2), None): b"",
    }
    for (parts, kind), value in expected.items():
        assert mime.section(FORWARD, ms, parts, kind) == value, (parts, kind)
    assert mime.section(FORWARD, ms, (2,), "HEADER.FIELDS", ("subject", "to")) == (
        b"To: c@example.com\r\nSubject: inner\r\n\r\n")
    assert mime.section(FORWARD, ms, (2,), "HEADER.FIELDS.NOT",
                        ("subject", "to", "mime-version", "content-type",
                         "content-transfer-encoding")) == (
        b"From: b@example.com\r\nMessage-ID: <inner@example.com>\r\n\r\n")
    assert mime.decoded_text(FORWARD, ms) == "see attached\nh\u00e9llo\r\nbye"


def test_eight_bit_headers_survive_json_and_go_out_as_literals() -> None:
    raw = (b"From: J\xc3\xb6rg M\xc3\xbcller <joerg@example.com>\r\n"
           b"To: \xe9t\xe9 <ete@example.com>\r\n"
           b"Subject: Gr\xfc\xdfe\r\n\r\nbody\r\n")
    ms = mime.parse(raw)
    env = mime.envelope(ms)
    assert env[1] == "Gr\udcfc\udcdfe"  # latin-1 bytes kept as surrogate escapes
    assert env[2] == [["J\u00f6rg M\u00fcller", None, "joerg", "example.com"]]
    assert env[5] == [["\udce9t\udce9", None, "ete", "example.com"]]
    assert json.loads(json.dumps(env)) == env
    wire = serialize(env)
    assert b' {5}\r\nGr\xfc\xdfe ' in wire
    assert b'(({13}\r\nJ\xc3\xb6rg M\xc3\xbcller NIL "joerg" "example.com"))' in wire
    assert b'(({3}\r\n\xe9t\xe9 NIL "ete" "example.com"))' in wire
    # Decoded for search: UTF-8 read as such, invalid bytes as U+FFFD.
    header = mime.header_block(raw)
    assert mime.header_values(header, "from") == ["J\u00f6rg M\u00fcller <joerg@example.com>"]
    assert mime.header_values(header, "subject") == ["Gr\ufffd\ufffde"]


def test_rfc2047_in_header_values() -> None:
    header = crlf(
        "Subject: =?UTF-8?B?w6l0w6k=?= =?utf-8?q?_caf=C3=A9?= plain\n"
        "Subject: =?x-unknown?q?caf=E9?=\n"
        "X-Folded: one\n"
        "\ttwo\n"
        "\n")
    assert mime.header_values(header, "SUBJECT") == ["\u00e9t\u00e9 caf\u00e9 plain", "caf\ufffd"]
    assert mime.header_values(header, "x-folded") == ["one\ttwo"]


def test_missing_final_crlf() -> None:
    raw = b"Subject: x\r\n\r\nline1\r\nline2"
    ms = mime.parse(raw)
    assert serialize(mime.bodystructure(ms, False)) == b'(' + TEXT_US_ASCII + b' 12 1)'
    assert mime.section(raw, ms, (), "TEXT") == b"line1\r\nline2"
    assert mime.section(raw, ms, (1,)) == b"line1\r\nline2"
    # A multipart whose close delimiter ends the message.
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--")
    ms = mime.parse(raw)
    assert mime.section(raw, ms, (1,)) == b"x"
    assert serialize(mime.bodystructure(ms, False)) == b'((' + TEXT_US_ASCII + b' 1 0) "mixed")'


def test_header_only_message() -> None:
    raw = b"Subject: no body\r\nFrom: a@b"
    ms = mime.parse(raw)
    assert mime.header_block(raw) == raw
    assert mime.section(raw, ms, (), "HEADER") == raw
    assert mime.section(raw, ms, (), "TEXT") == b""
    assert mime.section(raw, ms, (), "HEADER.FIELDS", ("from",)) == b"From: a@b\r\n\r\n"
    assert serialize(mime.bodystructure(ms, False)) == b'(' + TEXT_US_ASCII + b' 0 0)'
    assert mime.envelope(ms)[1] == "no body"
    assert mime.envelope(ms)[2] == [[None, None, "a", "b"]]


def test_empty_message() -> None:
    ms = mime.parse(b"")
    assert mime.envelope(ms) == [None] * 10
    assert serialize(mime.envelope(ms)) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert serialize(mime.bodystructure(ms, False)) == b'(' + TEXT_US_ASCII + b' 0 0)'
    assert mime.section(b"", ms, (1,)) == b""
    assert mime.decoded_text(b"", ms) == ""


def test_bare_lf() -> None:
    raw = (b"From: a@b\nSubject: lf\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/mixed; boundary=z\n\npre\n--z\n\nhi\nthere\n--z--\n")
    ms = mime.parse(raw)
    assert mime.header_block(raw) == raw[:raw.index(b"\n\n") + 2]
    assert mime.section(raw, ms, (1,)) == b"hi\nthere"
    assert mime.section(raw, ms, (1,), "MIME") == b"\n"
    assert mime.section(raw, ms, (), "TEXT") == b"pre\n--z\n\nhi\nthere\n--z--\n"
    # Chosen fields are copied as stored; the closing empty line is always CRLF.
    assert mime.section(raw, ms, (), "HEADER.FIELDS", ("subject",)) == b"Subject: lf\n\r\n"
    assert serialize(mime.bodystructure(ms, False)) == b'((' + TEXT_US_ASCII + b' 8 1) "mixed")'
    assert mime.envelope(ms)[1] == "lf"


def test_preamble_epilogue_and_missing_close_delimiter() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n"
               "preamble\n--b\n\none\n--b\n\ntwo\n\n")
    ms = mime.parse(raw)
    # No close delimiter: the last part runs to the end of the message.
    assert mime.section(raw, ms, (1,)) == b"one"
    assert mime.section(raw, ms, (2,)) == b"two\r\n\r\n"
    assert mime.section(raw, ms, (3,)) == b""
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n"
               "--b\n\none\n--b--  trailing\nepilogue\n--b\nnot a part\n")
    ms = mime.parse(raw)
    assert [mime.section(raw, ms, (n,)) for n in (1, 2)] == [b"one", b""]
    # Only preamble: no parts at all.
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\njust text\n")
    ms = mime.parse(raw)
    assert serialize(mime.bodystructure(ms, False)) == b'((' + TEXT_US_ASCII + b' 0 0) "mixed")'
    assert mime.section(raw, ms, (1,)) == b""


def test_outer_boundary_ends_inner_multipart() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=out\n\n"
               "--out\nContent-Type: multipart/alternative; boundary=in\n\n"
               "--in\n\nfirst\n"
               "--out\n\nsecond\n--out--\n")
    ms = mime.parse(raw)
    assert mime.section(raw, ms, (1, 1)) == b"first"
    assert mime.section(raw, ms, (1,)) == b"--in\r\n\r\nfirst"
    assert mime.section(raw, ms, (2,)) == b"second"


def test_boundary_inside_header_ends_part() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n"
               "--b\nContent-Type: text/html\n--b\n\nnext\n--b--\n")
    ms = mime.parse(raw)
    assert mime.section(raw, ms, (1,), "MIME") == b"Content-Type: text/html"
    assert mime.section(raw, ms, (1,)) == b""
    assert mime.section(raw, ms, (2,)) == b"next"
    assert serialize(mime.bodystructure(ms, False)) == (
        b'(("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 0 0)(' + TEXT_US_ASCII
        + b' 4 0) "mixed")')


def test_content_type_defaults() -> None:
    # Invalid Content-Type: text/plain; charset=us-ascii (RFC 2045 5.2).
    for value in (b"text", b"image/", b"/plain", b"text/plain garbage", b""):
        raw = b"MIME-Version: 1.0\r\nContent-Type: " + value + b"\r\n\r\nx"
        assert serialize(mime.bodystructure(mime.parse(raw), False)) == (
            b"(" + TEXT_US_ASCII + b" 1 0)"), value
    # Without MIME-Version or Content-Type, Content-* fields are not MIME (RFC 2045 4).
    raw = b"Content-Transfer-Encoding: base64\r\n\r\naGk=\r\n"
    ms = mime.parse(raw)
    assert serialize(mime.bodystructure(ms, False)) == b"(" + TEXT_US_ASCII + b" 6 1)"
    assert mime.decoded_text(raw, ms) == "aGk=\r\n"
    raw = b"MIME-Version: 1.0\r\n" + raw
    assert mime.decoded_text(raw, mime.parse(raw)) == "hi"
    # Comments and case as written; a charset present is not added again.
    raw = (b"Content-Type: (c) TEXT / Plain (c); CharSet=\"UTF-8\" (x); Format=flowed\r\n"
           b"Content-Transfer-Encoding: (why) QUOTED-PRINTABLE\r\n\r\nx")
    assert serialize(mime.bodystructure(mime.parse(raw), False)) == (
        b'("TEXT" "Plain" ("CharSet" "UTF-8" "Format" "flowed") NIL NIL "QUOTED-PRINTABLE" 1 0)')
    # A non-text type gets no charset and no line count.
    raw = b"Content-Type: image/png\r\n\r\nxx\r\n"
    assert serialize(mime.bodystructure(mime.parse(raw), False)) == (
        b'("image" "png" NIL NIL NIL "7bit" 4)')


def test_digest_default_and_explicit_types() -> None:
    raw = crlf("Content-Type: multipart/digest; boundary=d\n\n"
               "--d\n\nSubject: one\n\nbody one\n"
               "--d\nContent-Type: text/plain\n\nplain\n"
               "--d\nContent-Type: bogus\n\nSubject: three\n\nthree\n"
               "--d--\n")
    ms = mime.parse(raw)
    got = mime.bodystructure(ms, extended=False)
    assert [part[:2] for part in got[:3]] == [
        ["message", "rfc822"], ["text", "plain"], ["message", "rfc822"]]  # type: ignore[index]
    assert got[3] == "digest"
    assert mime.section(raw, ms, (1, 1)) == b"body one"
    assert mime.section(raw, ms, (3,), "HEADER") == b"Subject: three\r\n\r\n"


def test_multipart_without_boundary() -> None:
    raw = b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nnot split\r\n"
    ms = mime.parse(raw)
    assert serialize(mime.bodystructure(ms)) == (
        b'((' + TEXT_US_ASCII + b' 0 0 NIL NIL NIL NIL) "mixed" NIL NIL NIL NIL)')
    assert mime.section(raw, ms, (1,)) == b""


def test_rfc2231_parameters() -> None:
    raw = crlf("MIME-Version: 1.0\n"
               "Content-Type: application/octet-stream;\n"
               " name*1=\".txt\"; name*0*=utf-8''%C3%A9t%C3%A9;\n"
               " title*=iso-8859-1'en'%A3%20rates; x*0=a; x*2=c;\n"
               " y*0=\"it's\"; y*1*=%20ok\n"
               "Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC.txt\n"
               "\n"
               "data")
    got = mime.bodystructure(mime.parse(raw))
    assert got[2] == ["title", "\u00a3 rates", "name", "\u00e9t\u00e9.txt", "x*0", "a",
                      "x*2", "c", "y", "it's ok"]
    assert got[8] == ["attachment", ["filename", "\u20ac.txt"]]


def test_unquoted_boundary_with_equals_sign() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=----=_Part_1\n\n"
               "------=_Part_1\n\nok\n------=_Part_1--\n")
    ms = mime.parse(raw)
    assert mime.section(raw, ms, (1,)) == b"ok"


@pytest.mark.parametrize(("value", "expected"), [
    ("Real Name", [["Real Name", None, "MISSING_MAILBOX", "MISSING_DOMAIN"]]),
    ('"Real Name"', [["Real Name", None, "MISSING_MAILBOX", "MISSING_DOMAIN"]]),
    ("user", [[None, None, "user", "MISSING_DOMAIN"]]),
    ("<>", [[None, None, "MISSING_MAILBOX", "MISSING_DOMAIN"]]),
    ("a@b;", [[None, None, "a", "b"]]),
    ("g: , a@b", [[None, None, "g", None], [None, None, "a", "b"], [None, None, None, None]]),
    ('"quoted local"@example.com', [[None, None, "quoted local", "example.com"]]),
    ("a@[192.0.2.1]", [[None, None, "a", "[192.0.2.1]"]]),
    ("a@b,,c@d", [[None, None, "a", "b"], [None, None, "c", "d"]]),
    ("(comment) a@b (Name)", [["Name", None, "a", "b"]]),
    ('"A \\"B\\"" <a@b>', [['A "B"', None, "a", "b"]]),
    ("John Q. Public <john@example.com>", [["John Q. Public", None, "john", "example.com"]]),
    ("<@r1,@r2:u@d>", [[None, "@r1,@r2", "u", "d"]]),
    ("   ", None),
])
def test_address_parsing(value: str, expected: list[list[str | None]] | None) -> None:
    raw = f"From: {value}\r\n\r\n".encode()
    assert mime.envelope(mime.parse(raw))[2] == expected


def test_repeated_fields() -> None:
    raw = crlf("From: a@b\nFrom: c@d\nSubject: first\nSubject: second\n"
               "Date: x\n\tfolded\n\n")
    env = mime.envelope(mime.parse(raw))
    assert env[2] == [[None, None, "a", "b"], [None, None, "c", "d"]]
    assert env[1] == "second"
    assert env[0] == "x\tfolded"


def test_nul_in_header_becomes_0x80() -> None:
    env = mime.envelope(mime.parse(b"Subject: a\x00b\r\n\r\n"))
    assert env[1] == "a\udc80b"
    assert serialize(env[1]) == b"{3}\r\na\x80b"


def test_decoded_text_corpus_base64_and_qp() -> None:
    # imaptest fetch-binary-mime-base64: BINARY[1..5].
    raw = msg("fetch-binary-mime-base64.mbox")
    assert mime.decoded_text(raw, mime.parse(raw)) == "\n".join([
        "hello world", "hello world", "hello to you too", "hello to everyone!",
        "abcdefg\rhijkl\r\nmno\npqrstuvqxyz"])
    # imaptest fetch-binary-mime-qp: BINARY[1], 65 octets.
    raw = msg("fetch-binary-mime-qp.mbox")
    ms = mime.parse(raw)
    expected = block("hello\nbar\nfoo\tbar\nfoo\t \tb\nfoo bar\nfoo b\nfoo\nbar\nfoo_bar\n")
    assert len(expected) == 65
    assert mime.transfer_decode(ms.root.children[0], mime.section(raw, ms, (1,))) == expected
    assert mime.decoded_text(raw, ms) == expected.decode()


def test_decoded_text_charsets() -> None:
    raw = crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
               "--b\nContent-Type: text/plain; charset=koi8-r\n"
               "Content-Transfer-Encoding: base64\n\n0NLJ18XU\n"
               "--b\nContent-Type: text/plain; charset=x-no-such-charset\n\ncaf\u00e9\n"
               "--b\nContent-Type: text/plain; charset=us-ascii\n\n\udcff8bit\n"
               "--b--\n")
    assert mime.decoded_text(raw, mime.parse(raw)) == "\u043f\u0440\u0438\u0432\u0435\u0442\n" + (
        "caf\u00e9\n\ufffd8bit")


def test_depth_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "MAX_DEPTH", 3)
    raw = b"Content-Type: message/rfc822\r\n\r\n" * 6 + b"Subject: deep\r\n\r\nbody"
    ms = mime.parse(raw)
    got = serialize(mime.bodystructure(ms, False))
    assert got.count(b'"message" "rfc822"') == 3
    assert b'"application" "octet-stream"' in got
    # The opaque part is still an exact slice.
    part = ms.find((1, 1, 1, 1))
    assert part is not None and part.overflow
    assert mime.section(raw, ms, (1, 1, 1, 1)) == raw[part.header_end:]
    # Real limits: a deep message must not exhaust the interpreter's stack.
    monkeypatch.undo()
    deep = b"Content-Type: message/rfc822\r\n\r\n" * 500 + b"x"
    assert b"octet-stream" in serialize(mime.bodystructure(mime.parse(deep)))


def test_part_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "MAX_PARTS", 3)
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n"
               "--b\n\n1\n--b\n\n2\n--b\n\n3\n--b\n\n4\n--b--\n")
    ms = mime.parse(raw)
    # After the limit no boundary is recognised: the last part holds the rest.
    assert len(ms.root.children) == 2
    assert mime.section(raw, ms, (2,)).startswith(b"2\r\n--b\r\n")


ALL_MESSAGES = [ALTERNATIVE, NESTED, FORWARD]


def test_structure_invariants() -> None:
    """Every part is a slice inside its parent, children in order; BODYSTRUCTURE octets are
    the length of BODY[n]; the root spans the whole message."""
    messages = list(ALL_MESSAGES)
    for name in ("fetch-body-mime.mbox", "fetch-body-message-rfc822-mime.mbox",
                 "fetch-body-message-rfc822-x2.mbox", "fetch-binary-mime-base64.mbox",
                 "fetch-envelope.mbox"):
        messages += corpus(name)
    for raw in messages:
        ms = mime.parse(raw)
        assert (ms.root.start, ms.root.end, ms.size) == (0, len(raw), len(raw))
        _check_part(raw, ms, ms.root, ())


def _check_part(raw: bytes, ms: mime.MessageStructure, part: mime.MimePart,
                number: tuple[int, ...]) -> None:
    assert part.start <= part.header_end <= part.end
    prev = part.header_end
    for child in part.children:
        assert prev <= child.start and child.end <= part.end
        prev = child.end
    if part.kind == "multipart":
        for i, child in enumerate(part.children, 1):
            assert ms.find((*number, i)) is child
            body = mime.bodystructure(mime.MessageStructure(child, len(raw)), False)
            if child.kind != "multipart":
                assert body[6] == len(mime.section(raw, ms, (*number, i)))
            _check_part(raw, ms, child, (*number, i))
    elif part.kind == "message":
        assert part.children[0].start == part.header_end
        assert part.children[0].end == part.end
        _check_part(raw, ms, part.children[0], number or (1,))


FRAGMENTS = [
    b"Content-Type: multipart/mixed; boundary=a\r\n",
    b'Content-Type: multipart/digest; boundary="a b"\r\n',
    b"Content-Type: multipart/alternative; boundary=ab\r\n",
    b"Content-Type: message/rfc822\r\n", b"MIME-Version: 1.0\r\n", b"Content-Type: text\r\n",
    b"\r\n", b"\n", b"\r", b"--a\r\n", b"--a--\r\n", b"--a b\r\n", b"--a b--", b"--ab\r\n",
    b"--ab--\r\n", b'From: "x" <@a,@b:c@d>, g:;, (c) e@f (n)\r\n', b"To: a:b@c;,<>,,\r\n",
    b"Subject: =?utf-8?q?x?= \xff\x00\r\n", b" folded\r\n",
    b"Content-Type: text/plain; charset*0*=utf-8''%C3; charset*1*=%A9; name*=''x\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b'Content-Disposition: attachment; filename="a\r\n',
    b"Content-Language: en, (x) de\r\n", b"body line\r\n", b"=C3=\r\n", b"aGVsbG8=\r\n",
    b"(((", b'"', b"Content-Type: ;;;==\r\n",
]


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join))
def test_any_input_parses(raw: bytes) -> None:
    """Whatever the bytes, parsing and every reply succeed and the parts nest."""
    ms = mime.parse(raw)
    serialize(mime.envelope(ms))
    serialize(mime.bodystructure(ms))
    mime.decoded_text(raw, ms)
    mime.header_values(mime.header_block(raw), "from")
    _check_part(raw, ms, ms.root, ())
    for parts in [(), (1,), (2,), (1, 1), (1, 2), (2, 1), (1, 1, 1)]:
        for kind in (None, "HEADER", "TEXT", "HEADER.FIELDS.NOT"):
            mime.section(raw, ms, parts, kind, ("from",))


# --- the serializer -----------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (None, b"NIL"),
    (0, b"0"),
    (4294967295, b"4294967295"),
    ("", b'""'),
    ("NIL", b'"NIL"'),
    ('say "hi" \\ bye', b'"say \\"hi\\" \\\\ bye"'),
    ("tab\there", b'"tab\there"'),
    ("caf\u00e9", b"{5}\r\ncaf\xc3\xa9"),
    ("a\r\nb", b"{4}\r\na\r\nb"),
    ("nul\x00", b"{4}\r\nnul\x00"),
    ("\udcff", b"{1}\r\n\xff"),
    (b"raw\r\n", b"{5}\r\nraw\r\n"),
    (Atom("\\Seen"), b"\\Seen"),
    ([], b"()"),
    (["a", 1, None], b'("a" 1 NIL)'),
    # 1*body SP subtype / 1*address: leading lists back to back, the rest spaced.
    ([[1], [2], "mixed", [3], [4]], b'((1)(2) "mixed" (3) (4))'),
    (["x", [1], [2]], b'("x" (1) (2))'),
    ((("a",), ("b",)), b'(("a")("b"))'),
])
def test_serialize(value: object, expected: bytes) -> None:
    assert serialize(value) == expected


@pytest.mark.parametrize("value", [True, -1, 1.5, {"a": 1}])
def test_serialize_rejects(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        serialize(value)


def test_string_helpers() -> None:
    assert astring("INBOX") == b"INBOX"
    assert astring("Sent]") == b"Sent]"
    assert astring("nil") == b'"nil"'
    assert astring("") == b'""'
    assert astring("two words") == b'"two words"'
    assert astring("\u00e9") == b"{2}\r\n\xc3\xa9"
    assert nstring(None) == b"NIL"
    assert nstring("x") == b'"x"'
    assert literal(b"") == b"{0}\r\n"
