"""CATENATE (RFC 4469): a message for APPEND put together from text parts and IMAP URLs
(RFC 5092) naming messages or parts of messages of the same user."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .parser import Command, Token

if TYPE_CHECKING:
    from cloudcote.core.mail.storage import UserMail


class CatenateError(Exception):
    """APPEND fails with NO and the response code ``code`` (``BADURL "..."``, ``TOOBIG``)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


async def assemble(mail: UserMail, user: str, parts: list[Token], cmd: Command, *,
                   selected: str | None, limit: int) -> bytes:
    """The message that the CATENATE ``parts`` (``TEXT literal`` / ``URL astring``) make,
    at most ``limit`` octets; ``selected`` is the selected mailbox's name, if any."""
    raise CatenateError("CATENATE is not available.", "CANNOT")
