"""SASL for every protocol: the PLAIN (RFC 4616) and LOGIN mechanisms and the base64
exchange that IMAP (RFC 3501 6.2.2, RFC 4959), POP3 (RFC 5034) and ManageSieve (RFC 5804
2.1) share; each protocol frames challenges and responses on its wire and maps the errors
to its replies.

A protocol calls :func:`authenticate` with the mechanism, the initial response (if the
command had one) and a coroutine that sends one base64 challenge and returns the client's
answer; it gets :class:`Credentials` or one of the errors below.
"""

from __future__ import annotations

import abc
import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

#: The mechanisms offered, in the order capability lists name them.
MECHANISMS = ("PLAIN", "LOGIN")
#: The longest response (base64 characters) taken: longer is a bad response, whatever the
#: line limit of the protocol carrying it.
MAX_RESPONSE = 64 * 1024


class SaslError(Exception):
    """The exchange failed on the client's side."""


class BadResponse(SaslError):
    """A response that cannot be read: not base64, too long, or (LOGIN) not UTF-8.
    Protocols answer it as a malformed command (IMAP BAD, POP3 -ERR counted as bad)."""


class InvalidCredentials(SaslError):
    """A readable response the mechanism refuses: a malformed PLAIN message, or an
    authorization identity other than the user (no proxy authorization here)."""


class Cancelled(SaslError):
    """The client answered a challenge with ``*`` (RFC 4422 3.5)."""


@dataclass(frozen=True)
class Credentials:
    """What a finished exchange yields: who logs in, with which password, and for whom
    (``authzid``: empty, or the same user)."""

    authcid: str
    password: str
    authzid: str = ""


class Mechanism(abc.ABC):
    """One exchange of one mechanism: ``step`` takes the client's next response (None:
    the command carried no initial response) and returns the next challenge or, at the
    end, the credentials."""

    name = ""

    @abc.abstractmethod
    def step(self, response: bytes | None) -> bytes | Credentials: ...


class Plain(Mechanism):
    """RFC 4616: ``[authzid] NUL authcid NUL passwd`` in one response."""

    name = "PLAIN"

    def step(self, response: bytes | None) -> bytes | Credentials:
        if response is None:
            return b""  # an empty challenge asks for the message
        authzid, authcid, password = parse_plain(response)
        if authzid and authzid != authcid:
            raise InvalidCredentials("PLAIN: authorization as another user is not supported")
        return Credentials(authcid, password, authzid)


class Login(Mechanism):
    """The LOGIN mechanism (draft-murchison-sasl-login): ``Username:``, ``Password:``;
    a user name in the initial response skips the first challenge."""

    name = "LOGIN"

    def __init__(self) -> None:
        self.user: str | None = None
        self.asked = False

    def step(self, response: bytes | None) -> bytes | Credentials:
        if self.user is None:
            if not response and not self.asked:  # no initial response, or an empty one
                self.asked = True
                return b"Username:"
            self.user = _utf8(response or b"", "user name")
            return b"Password:"
        return Credentials(self.user, _utf8(response or b"", "password"))


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadResponse(f"LOGIN: the {what} is not UTF-8") from None


def parse_plain(message: bytes) -> tuple[str, str, str]:
    """RFC 4616 2: (authzid, authcid, password) of a decoded PLAIN message;
    ``InvalidCredentials`` if it is not UTF-8, not three fields, or has no authcid."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCredentials("PLAIN: the message is not UTF-8") from None
    parts = text.split("\0")
    if len(parts) != 3 or not parts[1]:
        raise InvalidCredentials("PLAIN: expected authzid NUL authcid NUL password")
    return parts[0], parts[1], parts[2]


def mechanism(name: str) -> Mechanism | None:
    """A new exchange of the mechanism ``name`` (any case); None if it is not offered."""
    kind = {"PLAIN": Plain, "LOGIN": Login}.get(name.upper())
    return kind() if kind is not None else None


def decode_response(text: str, *, initial: bool = False) -> bytes:
    """A response as IMAP, POP3 and ManageSieve carry it: base64, where ``=`` is an
    empty ``initial`` response (RFC 4959 3, RFC 5034 4).  ``*`` is not looked at here
    (the caller knows whether it answers a challenge)."""
    if len(text) > MAX_RESPONSE:
        raise BadResponse(f"response longer than {MAX_RESPONSE} characters")
    if initial and text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadResponse("response is not base64") from None


def encode_challenge(challenge: bytes) -> str:
    """A challenge in base64, as the protocols send it after ``+ ``."""
    return base64.b64encode(challenge).decode("ascii")


async def authenticate(name: str, initial: str | None,
                       exchange: Callable[[str], Awaitable[str]]) -> Credentials:
    """Run the mechanism ``name`` to its end.  ``initial``: the initial response as the
    command carried it (None: none); ``exchange(challenge)`` sends a base64 challenge in
    the protocol's framing and returns the client's answer (its line, without CRLF).

    Raises ``ValueError`` for a mechanism not offered (check ``mechanism`` or
    ``MECHANISMS`` first), ``Cancelled``, ``BadResponse`` or ``InvalidCredentials``."""
    mech = mechanism(name)
    if mech is None:
        raise ValueError(f"SASL mechanism {name!r} is not offered")
    response = None if initial is None else decode_response(initial, initial=True)
    while True:
        out = mech.step(response)
        if isinstance(out, Credentials):
            return out
        answer = await exchange(encode_challenge(out))
        if answer == "*":
            raise Cancelled("authentication cancelled by the client")
        # The answer to an empty challenge is the initial response sent late (RFC 4422
        # 5), so ``=`` means empty there as well.
        response = decode_response(answer, initial=not out)


def decode_sasl_plain(b64: str) -> tuple[str, str, str] | None:
    """RFC 4616: ``authzid NUL authcid NUL passwd`` in base64; None if malformed."""
    try:
        return parse_plain(decode_response(b64))
    except SaslError:
        return None
