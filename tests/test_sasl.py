"""protocols/sasl.py on its own: PLAIN and LOGIN step by step and the base64 exchange
(initial responses, ``=``, ``*``, bad base64, oversized responses), without a wire."""

from __future__ import annotations

import asyncio
import base64

import pytest

from cloudcote.protocols import sasl


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run_exchange(name: str, initial: str | None, answers: list[str]
                 ) -> tuple[sasl.Credentials, list[str]]:
    """``authenticate`` with scripted answers; the credentials and the challenges sent."""
    sent: list[str] = []
    left = list(answers)

    async def exchange(challenge: str) -> str:
        sent.append(challenge)
        return left.pop(0)

    creds = asyncio.run(sasl.authenticate(name, initial, exchange))
    assert not left, "answers left over"
    return creds, sent


def test_mechanisms_offered() -> None:
    assert sasl.MECHANISMS == ("PLAIN", "LOGIN")
    assert isinstance(sasl.mechanism("plain"), sasl.Plain)
    assert isinstance(sasl.mechanism("Login"), sasl.Login)
    assert sasl.mechanism("CRAM-MD5") is None
    with pytest.raises(ValueError, match="CRAM-MD5"):
        run_exchange("CRAM-MD5", None, [])


def test_plain_initial_response_and_authzid() -> None:
    creds, sent = run_exchange("PLAIN", b64(b"\0alice\0secret"), [])
    assert creds == sasl.Credentials("alice", "secret", "") and sent == []
    # An authzid naming the user itself is the same login.
    creds, _ = run_exchange("PLAIN", b64(b"alice\0alice\0p\xc3\xa4ss"), [])
    assert creds == sasl.Credentials("alice", "päss", "alice")
    # Acting as another user (proxy authorization) is refused.
    with pytest.raises(sasl.InvalidCredentials, match="another user"):
        run_exchange("PLAIN", b64(b"bob\0alice\0secret"), [])


def test_plain_without_initial_response() -> None:
    creds, sent = run_exchange("PLAIN", None, [b64(b"\0alice\0secret")])
    assert sent == [""]  # RFC 4422 5: an empty challenge asks for the initial response
    assert creds.authcid == "alice" and creds.password == "secret"


@pytest.mark.parametrize("message", [
    b"",                      # empty
    b"alice\0secret",         # two fields
    b"\0\0secret",            # no authcid
    b"a\0b\0c\0d",            # four fields
    b"\0al\xffice\0secret",   # not UTF-8
])
def test_plain_malformed_is_invalid_credentials(message: bytes) -> None:
    with pytest.raises(sasl.InvalidCredentials):
        run_exchange("PLAIN", b64(message), [])
    assert sasl.decode_sasl_plain(b64(message)) is None


def test_empty_response_markers() -> None:
    # "=" is an empty initial response (RFC 4959 3, RFC 5034 4), and an empty answer to
    # the empty challenge: PLAIN then has no fields.
    with pytest.raises(sasl.InvalidCredentials):
        run_exchange("PLAIN", "=", [])
    with pytest.raises(sasl.InvalidCredentials):
        run_exchange("PLAIN", None, ["="])
    with pytest.raises(sasl.InvalidCredentials):
        run_exchange("PLAIN", None, [""])
    # LOGIN: "=" as the initial response asks for the user name, as no response does.
    creds, sent = run_exchange("LOGIN", "=", [b64(b"alice"), b64(b"pw")])
    assert sent == [b64(b"Username:"), b64(b"Password:")]
    assert creds == sasl.Credentials("alice", "pw")
    # An empty answer to "Username:" is an empty user name (the passdb refuses it).
    creds, _ = run_exchange("LOGIN", None, ["", ""])
    assert creds == sasl.Credentials("", "")
    # Answering a non-empty challenge with "=" is not base64.
    with pytest.raises(sasl.BadResponse):
        run_exchange("LOGIN", None, ["="])


def test_login_with_and_without_initial_response() -> None:
    creds, sent = run_exchange("LOGIN", None, [b64(b"alice"), b64("pässword".encode())])
    assert sent == ["VXNlcm5hbWU6", "UGFzc3dvcmQ6"]  # "Username:", "Password:"
    assert creds == sasl.Credentials("alice", "pässword")
    creds, sent = run_exchange("LOGIN", b64(b"alice"), [b64(b"pw")])
    assert sent == ["UGFzc3dvcmQ6"] and creds == sasl.Credentials("alice", "pw")


def test_login_not_utf8_is_a_bad_response() -> None:
    with pytest.raises(sasl.BadResponse, match="user name"):
        run_exchange("LOGIN", b64(b"al\xffice"), [])
    with pytest.raises(sasl.BadResponse, match="password"):
        run_exchange("LOGIN", b64(b"alice"), [b64(b"\xff")])


@pytest.mark.parametrize("text", ["!!!", "QQ", "QQ=", "Q Q==", "=QQ=", "*"])
def test_bad_base64(text: str) -> None:
    # An initial response is never a cancel: "*" there is just not base64.
    with pytest.raises(sasl.BadResponse, match="base64"):
        run_exchange("PLAIN", text, [])
    with pytest.raises(sasl.BadResponse, match="base64"):
        run_exchange("LOGIN", None, [text] if text != "*" else ["!"])
    assert sasl.decode_sasl_plain(text) is None


def test_cancel() -> None:
    with pytest.raises(sasl.Cancelled):
        run_exchange("PLAIN", None, ["*"])
    with pytest.raises(sasl.Cancelled):
        run_exchange("LOGIN", None, ["*"])
    with pytest.raises(sasl.Cancelled):
        run_exchange("LOGIN", None, [b64(b"alice"), "*"])


def test_oversized_response() -> None:
    big = b64(b"\0alice\0" + b"x" * sasl.MAX_RESPONSE)
    assert len(big) > sasl.MAX_RESPONSE
    with pytest.raises(sasl.BadResponse, match="longer"):
        run_exchange("PLAIN", big, [])
    with pytest.raises(sasl.BadResponse, match="longer"):
        run_exchange("LOGIN", None, [b64(b"alice"), big])
    # Right at the limit it is still taken.
    fits = "A" * sasl.MAX_RESPONSE
    assert len(sasl.decode_response(fits)) == sasl.MAX_RESPONSE // 4 * 3


def test_errors_are_sasl_errors() -> None:
    for kind in (sasl.BadResponse, sasl.InvalidCredentials, sasl.Cancelled):
        assert issubclass(kind, sasl.SaslError)
    assert sasl.encode_challenge(b"") == "" and sasl.encode_challenge(b"Username:") \
        == "VXNlcm5hbWU6"
