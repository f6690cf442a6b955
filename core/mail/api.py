"""The mail-storage API: all that protocols, admin commands and dsync know of mail storage.

Backends (libfs sdbox/mdbox, in-memory; later imapc and sqlmail) implement these
Protocols; code above ``core/mail`` imports this module, ``errors`` and the value types
re-exported here, never a backend's module.  ``open_store`` picks the backend from a
storage spec.  docs/architecture.md describes the layers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from .errors import (
    CorruptMailbox,
    InvalidMailboxName,
    MailboxExists,
    MailboxInUse,
    MailboxNotFound,
    MailError,
    MessageExpunged,
    MessageTooLarge,
    QuotaExceeded,
    StorageUnavailable,
)
from .index import MailboxState, Message, ranges_of
from .mailbox_list import SEP, MailboxEntry, normalize_name
from .values import QuotaLimits, QuotaUsage, SaveRequest, StorageSettings, internal_datetime

__all__ = [
    "SEP", "CorruptMailbox", "InvalidMailboxName", "MailError", "Mailbox", "MailboxEntry",
    "MailboxExists", "MailboxInUse", "MailboxNotFound", "MailboxState", "Message",
    "MessageExpunged", "MessageTooLarge", "QuotaExceeded", "QuotaLimits", "QuotaUsage",
    "SaveRequest", "StorageSettings", "StorageUnavailable", "Store", "User",
    "internal_datetime", "normalize_name", "ranges_of",
]


@runtime_checkable
class Mailbox(Protocol):
    """One open mailbox and its view: messages by UID with flags and MODSEQ.

    ``state`` is the index as of the last ``refresh``; changes made through this object
    are in it when the call returns.  Every method raises ``MailError`` subclasses only
    (``StorageUnavailable`` for store faults)."""

    guid: str

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> MailboxState: ...

    def needs_refresh(self) -> bool:
        """Whether another process may have changed the mailbox since the last refresh."""
        ...

    async def refresh(self) -> bool:
        """Read other processes' changes; True if ``state`` changed."""
        ...

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change by anyone; True if one came."""
        ...

    async def save_many(self, requests: Sequence[SaveRequest]) -> list[int]:
        """Save all or nothing (one log record); the new UIDs in order."""
        ...

    async def save(self, raw: bytes, flags: Sequence[str] = (),
                   internaldate: dt.datetime | None = None) -> int: ...

    async def read_message(self, msg: Message, start: int = 0,
                           end: int | None = None) -> bytes:
        """The stored bytes ``[start:end]``, byte for byte as saved."""
        ...

    async def header_block(self, msg: Message) -> bytes:
        """The message's header block (with its blank line), from the cache if there."""
        ...

    async def body_section(self, msg: Message, parts: tuple[int, ...] = (),
                           what: str = "") -> bytes: ...

    async def cache_entry(self, msg: Message) -> dict[str, Any]:
        """The cached fields of one message (sizes, envelope, bodystructure, headers)."""
        ...

    def cache_chunk_name(self, msg: Message) -> str | None:
        """The cache chunk holding ``msg``'s entry, if any: readers fetch whole chunks."""
        ...

    async def cache_chunk(self, name: str) -> dict[str, Any] | None: ...

    async def store(self, uids: Iterable[int], mode: str, flags: Iterable[str],
                    unchanged_since: int | None = None) -> Any:
        """Change flags (``mode``: ``set``, ``add``, ``remove``); see the backend for the
        result of conditional stores (RFC 7162 3.1.3)."""
        ...

    async def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Expunge ``uids`` (all ``\\Deleted`` ones when None); the UIDs expunged."""
        ...

    async def copy(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Copy to ``dest``; (source UID, new UID) pairs."""
        ...

    async def move(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]: ...

    async def search(self, key: Any, messages: Sequence[Message] | None = None,
                     recent: frozenset[int] = frozenset()) -> list[int]:
        """RFC 3501 6.4.4: the sequence numbers (positions in ``messages``, default the
        mailbox in UID order) of the messages matching a parsed search key; ``recent``
        holds the UIDs the session sees as \\Recent."""
        ...

    async def claim_recent(self, upto: int) -> range:
        """Claim the UIDs below ``upto`` as this session's ``\\Recent`` (RFC 3501 2.3.2):
        the UIDs no earlier session claimed."""
        ...


@runtime_checkable
class User(Protocol):
    """One user's mailboxes, subscriptions and quota."""

    user: str
    quota_limits: QuotaLimits

    async def refresh_list(self) -> None: ...

    def list_may_be_behind(self) -> bool: ...

    async def wait_for_list_change(self, timeout: float) -> bool: ...

    def list_mailboxes(self) -> list[MailboxEntry]: ...

    def subscriptions(self) -> set[str]: ...

    def entry(self, name: str) -> MailboxEntry:
        """The list entry of ``name``; ``MailboxNotFound`` if there is none."""
        ...

    async def create_mailbox(self, name: str,
                             special_use: Iterable[str] = ()) -> MailboxEntry: ...

    async def delete_mailbox(self, name: str) -> None: ...

    async def rename_mailbox(self, old: str, new: str) -> None: ...

    async def subscribe(self, name: str) -> None: ...

    async def unsubscribe(self, name: str) -> None: ...

    async def set_special_use(self, name: str, special_use: Iterable[str]) -> None: ...

    async def mailbox(self, name: str) -> Mailbox:
        """The mailbox ``name``, opened (shared by the sessions of this process)."""
        ...

    async def quota_usage(self, *, max_age: float | None = None) -> QuotaUsage: ...

    async def check_quota(self, add_bytes: int, add_messages: int) -> None:
        """``QuotaExceeded`` if adding this much would pass a limit."""
        ...


@runtime_checkable
class Store(Protocol):
    """The mail storage of one process."""

    settings: StorageSettings

    async def user(self, name: str, quota: QuotaLimits | None = None) -> User: ...

    async def deliver_to(self, raw: bytes,
                         boxes: Sequence[Mailbox]) -> list[int | Exception]:
        """Save one message into several users' mailboxes (sharing its bytes where the
        backend can); per mailbox the new UID or the error that mailbox got."""
        ...

    async def close(self) -> None: ...
