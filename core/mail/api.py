"""The mail-storage API: all that protocols, admin commands and dsync know of mail storage.

Backends (libfs sdbox/mdbox, in-memory; later imapc and sqlmail) implement these
Protocols; code above ``core/mail`` imports this module, ``errors`` and the value types
re-exported here, never a backend's module.  ``open_store(spec, settings)`` picks the
backend from a storage spec (registry.py).  docs/architecture.md describes the layers.

Shared rules: every method raises ``MailError`` subclasses only (``StorageUnavailable``
when the store fails past its retries; then nothing that call did is visible).  A
change is durable when its call returns, and visible at once to every session of the
store (they share the opened user and mailbox objects); other stores (processes) see it
after their next ``refresh``.  No method takes a lock.
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
from .registry import open_store
from .values import QuotaLimits, QuotaUsage, SaveRequest, StorageSettings, internal_datetime

__all__ = [
    "SEP", "CorruptMailbox", "InvalidMailboxName", "MailError", "Mailbox", "MailboxEntry",
    "MailboxExists", "MailboxInUse", "MailboxNotFound", "MailboxState", "Message",
    "MessageExpunged", "MessageTooLarge", "QuotaExceeded", "QuotaLimits", "QuotaUsage",
    "SaveRequest", "StorageSettings", "StorageUnavailable", "Store", "User",
    "internal_datetime", "normalize_name", "open_store", "ranges_of",
]


@runtime_checkable
class Mailbox(Protocol):
    """One opened mailbox and its index: messages by UID with flags and MODSEQ.

    ``state`` is the index as of the last ``refresh`` or own change; sessions keep their
    own sequence-number views over it.  Changes are log records: each call's change is
    atomic (all of it or none) and totally ordered with every other process's."""

    guid: str

    @property
    def name(self) -> str:
        """The mailbox's name as of the list's last refresh (``/``-separated, UTF-8)."""
        ...

    @property
    def state(self) -> MailboxState:
        """UIDVALIDITY, next UID, HIGHESTMODSEQ, messages, expunge history, \\Recent point."""
        ...

    @property
    def settings(self) -> StorageSettings:
        """The store's settings (prefetch depth and bytes, size limit, poll intervals)."""
        ...

    def needs_refresh(self) -> bool:
        """Whether ``state`` may be behind what others committed (no I/O)."""
        ...

    async def refresh(self) -> bool:
        """Read others' changes into ``state``; True if there were any.
        ``MailboxNotFound`` if the mailbox was deleted meanwhile."""
        ...

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change by anyone (refreshing ``state``);
        True if one came.  One wait serves every session waiting on the mailbox."""
        ...

    async def save_many(self, requests: Sequence[SaveRequest]) -> list[int]:
        """Save every message or none (one record); their new UIDs, ascending.
        ``MessageTooLarge``, ``QuotaExceeded`` before anything is written."""
        ...

    async def save(self, raw: bytes, flags: Sequence[str] = (),
                   internaldate: dt.datetime | None = None) -> int:
        """``save_many`` of one message (RFC 3501 6.3.11 APPEND); its UID.  Bare LF in
        ``raw`` is stored as CRLF; ``\\Recent`` in ``flags`` is ignored."""
        ...

    async def read_message(self, msg: Message, start: int = 0,
                           end: int | None = None) -> bytes:
        """The stored bytes ``[start:end]``, byte for byte as saved.  ``MessageExpunged``
        if the message is gone (another process may have expunged it)."""
        ...

    async def header_block(self, msg: Message) -> bytes:
        """The message's header block with its blank line, from the cache if there."""
        ...

    async def body_section(self, msg: Message, parts: tuple[int, ...] = (),
                           kind: str | None = None, fields: tuple[str, ...] = ()) -> bytes:
        """``BODY[section]`` (RFC 3501 6.4.5): ``parts`` the part numbers, ``kind`` one of
        HEADER, HEADER.FIELDS[.NOT] (with ``fields``), TEXT, MIME or None (the whole)."""
        ...

    async def cache_entry(self, msg: Message) -> dict[str, Any]:
        """The cached fields of one message: ``env`` (ENVELOPE), ``bs``/``b``
        (BODYSTRUCTURE/BODY), ``h`` (header block, when small); computed if missing."""
        ...

    def cache_chunk_name(self, msg: Message) -> str | None:
        """The cache chunk holding ``msg``'s entry, if any (readers fetch whole chunks);
        None when the entry is at hand."""
        ...

    async def cache_chunk(self, name: str) -> dict[str, Any] | None:
        """The entries of one cache chunk by message GUID (read once however many ask);
        None if it cannot be read (then ``cache_entry`` computes them)."""
        ...

    async def store(self, uids: Iterable[int], mode: str, flags: Iterable[str],
                    unchangedsince: int | None = None) -> dict[str, list[int]]:
        """RFC 3501 6.4.6 STORE: ``mode`` ``+``, ``-`` or ``=``; with UNCHANGEDSINCE
        (RFC 7162 3.1.3) messages of a higher MODSEQ are left alone.  Returns
        ``{"changed": uids, "failed": uids}``; the changed share one new MODSEQ."""
        ...

    async def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Expunge ``uids`` (every ``\\Deleted`` one when None, RFC 3501 6.4.3); the UIDs
        this call expunged (one taken by a concurrent expunge is not among them)."""
        ...

    async def copy(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """RFC 3501 6.4.7 COPY into ``dest`` (flags and internal date along, all or
        nothing in ``dest``); (source UID, new UID) pairs for RFC 4315 COPYUID.
        ``QuotaExceeded`` for ``dest``'s user."""
        ...

    async def move(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """RFC 6851 MOVE: ``copy``, then expunge the originals; the pairs."""
        ...

    async def search(self, key: Any, messages: Sequence[Message] | None = None,
                     recent: frozenset[int] = frozenset()) -> list[int]:
        """RFC 3501 6.4.4: the sequence numbers (positions in ``messages``, default the
        mailbox in UID order) of the messages matching a parsed search key (search.py);
        ``recent`` holds the UIDs the session sees as \\Recent."""
        ...

    async def claim_recent(self, upto: int) -> range:
        """Claim the UIDs below ``upto`` as this session's ``\\Recent`` (RFC 3501 2.3.2):
        the UIDs no earlier session claimed; exactly one session wins each UID."""
        ...


@runtime_checkable
class User(Protocol):
    """One user's mailboxes, subscriptions and quota.  List changes are records of the
    user's list log: of two concurrent creators of one name exactly one wins."""

    user: str
    #: The limits ``check_quota`` applies (from the userdb, or the store's default).
    quota_limits: QuotaLimits

    @property
    def settings(self) -> StorageSettings:
        """The settings of the user's store."""
        ...

    async def refresh_list(self) -> None:
        """Read others' changes of the mailbox list."""
        ...

    def list_may_be_behind(self) -> bool:
        """Whether the list may be behind what others committed (no I/O)."""
        ...

    async def wait_for_list_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change of the list (refreshing it); True
        if one came."""
        ...

    def list_mailboxes(self) -> list[MailboxEntry]:
        """Every mailbox, sorted by name, as of the last refresh (no I/O)."""
        ...

    def subscriptions(self) -> set[str]:
        """The subscribed names (RFC 3501 6.3.6), which need not exist."""
        ...

    def entry(self, name: str) -> MailboxEntry:
        """The list entry of ``name`` (INBOX in any case); ``MailboxNotFound`` if there is
        none, ``InvalidMailboxName`` if it cannot be a name."""
        ...

    async def create_mailbox(self, name: str,
                             special_use: Iterable[str] = ()) -> MailboxEntry:
        """RFC 3501 6.3.3 CREATE (missing superiors too; RFC 6154 SPECIAL-USE): a new
        GUID and a UIDVALIDITY above any the name had.  ``MailboxExists``,
        ``InvalidMailboxName``."""
        ...

    async def delete_mailbox(self, name: str) -> None:
        """RFC 3501 6.3.4 DELETE: the mailbox and its messages; children stay.
        ``MailboxInUse`` for INBOX, ``MailboxNotFound``."""
        ...

    async def rename_mailbox(self, old: str, new: str) -> None:
        """RFC 3501 6.3.5 RENAME with children, GUIDs and UIDs kept; INBOX's messages move
        to a new mailbox instead.  ``MailboxExists``, ``MailboxInUse``, ``MailboxNotFound``."""
        ...

    async def subscribe(self, name: str) -> None: ...

    async def unsubscribe(self, name: str) -> None: ...

    async def set_special_use(self, name: str, special_use: Iterable[str]) -> None:
        """Replace the mailbox's SPECIAL-USE attributes (RFC 6154); ``InvalidMailboxName``
        for an unknown attribute."""
        ...

    async def mailbox(self, name: str) -> Mailbox:
        """The mailbox ``name``, opened (shared by the sessions of the store; the list is
        read again first when it may be behind).  ``MailboxNotFound``."""
        ...

    async def quota_usage(self, *, max_age: float | None = None) -> QuotaUsage:
        """Bytes and messages over all mailboxes (RFC 9208 STORAGE, MESSAGE), from views
        at most ``max_age`` seconds old (default ``settings.quota_refresh``)."""
        ...

    async def check_quota(self, add_bytes: int, add_messages: int) -> None:
        """``QuotaExceeded`` if adding this much would pass a limit of ``quota_limits``."""
        ...


@runtime_checkable
class Store(Protocol):
    """The mail storage of one process: users opened once and shared by its sessions."""

    settings: StorageSettings

    async def user(self, name: str, quota: QuotaLimits | None = None) -> User:
        """The user's mail, opened (on first use: INBOX and ``settings.autocreate``);
        ``quota`` replaces the user's limits when given."""
        ...

    async def deliver_to(self, raw: bytes,
                         boxes: Sequence[Mailbox]) -> list[int | Exception]:
        """Save one message into several users' opened mailboxes (LMTP), each checked
        against the size limit and its user's quota; per mailbox the new UID (durable) or
        the error that mailbox got.  The bytes are stored once where the backend can."""
        ...

    async def close(self) -> None:
        """Let go of the opened users and mailboxes, and of what ``open_store`` opened."""
        ...
