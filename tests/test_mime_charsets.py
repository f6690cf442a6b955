"""The one charset rule of mime.py (docs/storage.md, "Charsets") and its use by SEARCH and
SORT: declared charsets with U+FFFD for bad bytes, UTF-8 otherwise, and the Latin-1 reading
that SEARCH matches as well."""

from __future__ import annotations

import asyncio

import pytest

from cloudcote.core.mail import mime
from cloudcote.core.mail.search import Body, Header, Text, search
from cloudcote.core.mail.sort import base_subject

from .test_search import crlf, mailbox


@pytest.mark.parametrize(("data", "charset", "text"), [
    (b"caf\xc3\xa9", None, "café"),
    (b"caf\xe9", None, "caf\ufffd"),  # no charset: UTF-8
    (b"caf\xe9", "us-ascii", "caf\ufffd"),  # US-ASCII: read as UTF-8
    (b"caf\xc3\xa9", "US-ASCII", "café"),
    (b"caf\xe9", "ISO-8859-1", "café"),
    (b"caf\xe9", ' "iso-8859-1" ', "café"),  # quotes and blanks around the name
    (b"\xd0\xd2\xc9\xd7\xc5\xd4", "koi8-r", "привет"),
    (b"caf\xe9", "x-no-such-charset", "caf\ufffd"),  # unknown: UTF-8
    (b"caf\xe9", "base64", "caf\ufffd"),  # a codec that is no text codec: unknown
    (b"caf\xe9", "a\x00b", "caf\ufffd"),
    (b"\x81", "shift_jis", "\ufffd"),  # bad bytes in a known charset
    (b"a", "utf-16", "\ufffd"),
    (b"", None, ""),
])
def test_decode_text(data: bytes, charset: str | None, text: str) -> None:
    assert mime.decode_text(data, charset) == text
    first, latin1 = mime.text_readings(data, charset)
    assert first == text


@pytest.mark.parametrize(("data", "charset", "latin1"), [
    (b"caf\xe9", None, "café"),
    (b"caf\xe9", "us-ascii", "café"),
    (b"caf\xe9", "x-unknown", "café"),
    (b"caf\xc3\xa9", None, None),  # valid UTF-8: one reading
    (b"plain", None, None),
    (b"caf\xe9", "iso-8859-1", None),  # a known charset: one reading
    (b"\x81", "shift_jis", None),
])
def test_latin1_reading_only_where_utf8_was_assumed(data: bytes, charset: str | None,
                                                    latin1: str | None) -> None:
    assert mime.text_readings(data, charset) == (mime.decode_text(data, charset), latin1)


def test_encoded_words_follow_the_rule() -> None:
    assert mime.decode_rfc2047("=?iso-8859-1?q?caf=E9?=") == "café"
    assert mime.decode_rfc2047("=?x-unknown?q?caf=E9?=") == "caf\ufffd"
    assert mime.decode_rfc2047("=?us-ascii?q?caf=C3=A9?=") == "café"
    assert mime.decode_rfc2047("=?utf-8?q?caf=E9?= x") == "caf\ufffd x"


def test_header_fields() -> None:
    block = (b" orphan continuation\r\n"
             b"Subject:  two  spaces \r\n"
             b"X-Folded: one\r\n\ttwo\r\n  three\r\n"
             b"no colon here\r\n"
             b"Bad Name: x\r\n"
             b"Received : obsolete blank before the colon\r\n"
             b"X-Latin: caf\xe9\r\n"
             b"\r\n"
             b"After: the header\r\n")
    assert mime.header_fields(block) == [
        ("subject", b"two  spaces"),
        ("x-folded", b"one\ttwo  three"),
        ("received", b"obsolete blank before the colon"),
        ("x-latin", b"caf\xe9"),
    ]
    assert mime.header_fields(b"A: 1\nB: 2") == [("a", b"1"), ("b", b"2")]
    assert mime.header_values(block, "X-LATIN") == ["caf\ufffd"]


FORWARD = crlf(
    b"Subject: outer\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
    b"--b\nContent-Type: text/plain\n\nna\xefve\n"
    b"--b\nContent-Type: message/rfc822\n\n"
    b"Subject: =?utf-8?q?=C3=A9t=C3=A9?=\nX-Latin: cr\xe8me\n\ninner body\n--b--\n")


def test_decoded_text_options() -> None:
    ms = mime.parse(FORWARD)
    assert mime.decoded_text(FORWARD, ms) == "na\ufffdve\ninner body"
    assert mime.decoded_text(FORWARD, ms, latin1=True) == (
        "na\ufffdve\nnaïve\ninner body")
    assert mime.decoded_text(FORWARD, ms, message_headers=True) == (
        "na\ufffdve\nsubject: été\nx-latin: cr\ufffdme\ninner body")
    assert mime.decoded_text(FORWARD, ms, message_headers=True, latin1=True) == (
        "na\ufffdve\nnaïve\nsubject: été\nx-latin: cr\ufffdme\nx-latin: crème\n"
        "inner body")


def test_search_matches_both_readings() -> None:
    view = mailbox(
        FORWARD,
        crlf(b"Subject: caf\xe9\nContent-Type: text/plain; charset=iso-8859-1\n\ncr\xe8me\n"),
        crlf(b"Subject: caf\xc3\xa9\n\ncr\xc3\xa8me\n"),
    )

    def found(key: object) -> list[int]:
        return asyncio.run(search(key, view))  # type: ignore[arg-type]

    assert found(Body("naïve")) == [1]
    assert found(Body("crème")) == [1, 2, 3]  # attached header, declared charset, UTF-8
    assert found(Body("été")) == [1]
    assert found(Header("subject", "café")) == [2, 3]
    assert found(Text("café")) == [2, 3]
    assert found(Body("\ufffd")) == [1]  # the first reading is there too


def test_sort_uses_the_same_rule() -> None:
    assert base_subject("Re: =?x-unknown?q?caf=E9?=") == "caf\ufffd"
    assert base_subject("=?iso-8859-1?q?Re=3A_caf=E9?=") == "café"
