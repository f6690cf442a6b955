"""Domain errors of mail storage.  They carry no protocol text: IMAP, POP3 and LMTP each map
them to their own replies (``QuotaExceeded`` is ``NO [OVERQUOTA]`` in IMAP, ``552`` in LMTP)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from cloudcote.libfs.api import FsUnavailable

T = TypeVar("T")


class MailError(Exception):
    """Base of mail storage errors."""


class MailboxNotFound(MailError):
    """No mailbox of that name (or it was deleted meanwhile)."""


class MailboxExists(MailError):
    """CREATE or RENAME to a name that exists (or that a concurrent request took first)."""


class InvalidMailboxName(MailError):
    """A name that cannot be a mailbox: empty, bad hierarchy, control characters, too long,
    too deep."""


class MailboxInUse(MailError):
    """An operation that the mailbox's state refuses (deleting INBOX, renaming a mailbox
    into its own child)."""


class QuotaExceeded(MailError):
    """A save would take the user over quota.  ``resource`` is ``"storage"`` or
    ``"messages"``; ``limit`` and ``used`` are in bytes or messages."""

    def __init__(self, resource: str, limit: int, used: int, needed: int) -> None:
        super().__init__(f"quota exceeded: {resource} {used} + {needed} > {limit}")
        self.resource = resource
        self.limit = limit
        self.used = used
        self.needed = needed


class MessageExpunged(MailError):
    """The message was expunged (its object is gone) since this session last looked."""


class MessageTooLarge(MailError):
    """A message above the configured size limit."""


class CorruptMailbox(MailError):
    """The mailbox's index cannot be read as far as needed; ``force_resync`` repairs it."""


class StorageUnavailable(MailError):
    """The store failed transiently past every retry: try again later (nothing that was
    acknowledged is lost, and the failed operation did not take effect as far as the
    index is concerned)."""


async def store_io(coro: Awaitable[T], what: str = "") -> T:
    """Await a libfs call; a store that is unavailable becomes StorageUnavailable."""
    try:
        return await coro
    except FsUnavailable as exc:
        prefix = f"{what}: " if what else ""
        raise StorageUnavailable(f"{prefix}store unavailable: {exc}") from exc
