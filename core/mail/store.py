"""The libfs backend's store and users: one ``MailStore`` per process over one libfs chain,
``UserMail`` for a user's mailbox list, subscriptions and quota.

The store shares each opened user and mailbox between the sessions of the process, so that
a save by one session is seen by the others without reading the store.  The layout of
objects is in layout.py; an opened mailbox in mailbox.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cachetools

from cloudcote.libfs.api import ChangeFeed, Fs, FsError, FsExists, FsNotFound, Subscription

from .delivery import deliver_to
from .errors import (
    CorruptMailbox,
    StorageUnavailable,
)
from .layout import user_prefix
from .mailbox import Mailbox
from .mailbox_list import (
    MailboxListState,
)
from .resync import force_resync
from .txlog import TransactionLog
from .user_base import UserBase
from .values import LAYOUTS, QuotaLimits, StorageSettings

if TYPE_CHECKING:
    from .api import Mailbox as AnyMailbox

log = logging.getLogger("cloudcote.core.mail")

#: Users a process keeps open when no session or delivery holds them (the most recent).
KEEP_USERS = 1000


class MailStore:
    """Mail storage of one process over one libfs chain."""

    def __init__(self, fs: Fs, settings: StorageSettings | None = None, *,
                 owns_fs: bool = False) -> None:
        self.fs = fs
        #: ``close`` closes the chain too (a store ``open_store`` opened).
        self.owns_fs = owns_fs
        self.settings = settings or StorageSettings()
        if self.settings.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.settings.layout!r}")
        # Users stay open while a session or delivery holds them, and the last
        # KEEP_USERS used stay open besides; any other is let go (with its mailboxes'
        # indexes and change subscriptions), so memory follows the users in use.
        self._users: weakref.WeakValueDictionary[str, UserMail] = \
            weakref.WeakValueDictionary()
        self._kept: cachetools.LRUCache[str, UserMail] = cachetools.LRUCache(KEEP_USERS)
        self._opening: dict[str, asyncio.Task[UserMail]] = {}
        self._feed: ChangeFeed | None = None
        self._feed_tried = False

    @property
    def feed(self) -> ChangeFeed | None:
        """The chain's change feed (None: poll), taken on first use."""
        if not self._feed_tried:
            self._feed_tried = True
            self._feed = self.fs.change_feed()
        return self._feed

    async def watch(self, prefix: str, owner: object,
                    on_change: Callable[[Any, str], None]) -> Subscription | None:
        """Subscribe ``on_change(owner, path)`` to changes under ``prefix`` for as long as
        ``owner`` lives (or until the subscription is closed); None without a feed."""
        feed = self.feed
        if feed is None:
            return None
        ref = weakref.ref(owner)

        def callback(path: str) -> None:
            target = ref()
            if target is not None:
                on_change(target, path)

        sub = await feed.subscribe(prefix, callback)
        if sub is not None:
            done = weakref.finalize(owner, _close_soon, asyncio.get_running_loop(), sub)
            done.atexit = False  # at exit the feed goes with the process
        return sub

    async def user(self, name: str, quota: QuotaLimits | None = None) -> UserMail:
        """The user's mail, opened (and set up on first use: INBOX and the autocreated
        special-use mailboxes)."""
        um = self._users.get(name)
        if um is None:
            # Sessions and deliveries reaching a user at once share one opening (a new
            # user's first opening also creates the mailbox list and INBOX).
            opening = self._opening.get(name)
            if opening is None:
                opening = asyncio.ensure_future(self._open_user(name, quota))
                self._opening[name] = opening
                opening.add_done_callback(lambda f: self._opened(name, f))
            um = await asyncio.shield(opening)
        if quota is not None:
            um.quota_limits = quota
        self._kept[name] = um
        return um

    async def _open_user(self, name: str, quota: QuotaLimits | None) -> UserMail:
        um = UserMail(self, name, quota or QuotaLimits(self.settings.quota_bytes,
                                                         self.settings.quota_messages))
        await um.open()
        kept = self._users.setdefault(name, um)
        if kept is not um:
            um.close()
        return kept

    def _opened(self, name: str, opening: asyncio.Task[UserMail]) -> None:
        self._opening.pop(name, None)
        if not opening.cancelled():
            opening.exception()  # retrieved: whoever awaited it got it already

    async def deliver_to(self, raw: bytes,
                         boxes: Sequence[AnyMailbox]) -> list[int | Exception]:
        """One message into several users' mailboxes; see :func:`delivery.deliver_to`."""
        return await deliver_to(raw, boxes)  # type: ignore[arg-type]

    def cached_user(self, name: str) -> UserMail | None:
        return self._users.get(name)

    def recent_users(self) -> list[str]:
        """The users this process keeps open (the most recently used ones)."""
        return list(self._kept.keys())

    async def close(self) -> None:
        """Forget the opened users and mailboxes, ending their change subscriptions (and
        close the chain if this store owns it)."""
        for um in list(self._users.values()):
            um.close()
        self._users.clear()
        self._kept.clear()
        if self.owns_fs:
            self.owns_fs = False
            await self.fs.close()


def _close_soon(loop: asyncio.AbstractEventLoop, sub: Subscription) -> None:
    """End ``sub`` in its event loop's thread (a finalizer may run in any thread)."""
    if loop.is_closed():
        sub.close()
        return
    with contextlib.suppress(RuntimeError):  # closed meanwhile
        loop.call_soon_threadsafe(sub.close)


class UserMail(UserBase):
    """One user's mailboxes."""

    def __init__(self, store: MailStore, user: str, quota: QuotaLimits) -> None:
        self.store = store
        self.fs = store.fs
        self.user = user
        self.prefix = user_prefix(user)
        self.quota_limits = quota
        self.list_log: TransactionLog[MailboxListState] = TransactionLog(
            self.fs, f"{self.prefix}/list", MailboxListState.decode_snapshot,
            what=f"user {user} mailbox list")
        self._mailboxes: dict[str, Mailbox] = {}
        self._list_sub: Subscription | None = None
        #: A change feed said the list changed since it was last refreshed.
        self.list_stale = False
        self._list_changed = asyncio.Event()
        self.list_refreshed_at = 0.0

    def close(self) -> None:
        """End the change subscriptions of the list and of every opened mailbox."""
        if self._list_sub is not None:
            self._list_sub.close()
        for box in self._mailboxes.values():
            box.close()

    def _on_list_change(self, path: str) -> None:
        self.list_stale = True
        self._list_changed.set()
        self._list_changed = asyncio.Event()

    # -- the list -------------------------------------------------------------------------

    async def open(self) -> None:
        # Subscribed before the first read, so no change falls between the two.
        self._list_sub = await self.store.watch(
            f"{self.list_log.base}/", self, UserMail._on_list_change)
        try:
            await self.list_log.open()
        except FsNotFound:
            try:
                await self.list_log.create(MailboxListState())
            except FsExists:
                await self.list_log.open()
        self.list_refreshed_at = time.monotonic()
        await self.autocreate()

    async def refresh_list(self) -> None:
        self.list_stale = False
        await self.list_log.refresh()
        self.list_refreshed_at = time.monotonic()
        # Mailboxes another process deleted (or deleted and created again under the same
        # name, with a new GUID) are let go: no one opens their old index again.
        for guid in [g for g in self._mailboxes if g not in self.list_state.by_guid]:
            box = self._mailboxes.pop(guid)
            box.deleted = True
            box.close()

    def list_may_be_behind(self) -> bool:
        """The feed announced a change of the list, or (without a feed) it was last read
        longer ago than the poll interval."""
        settings = self.store.settings
        interval = settings.poll_interval
        if self._list_sub is not None:
            interval = max(interval, settings.feed_poll_interval)
        return self.list_stale or time.monotonic() - self.list_refreshed_at >= interval

    async def wait_for_list_change(self, timeout: float) -> bool:
        """Wait until the mailbox list may have changed (a change feed's announcement, or
        a poll interval without one), refresh it, and say whether it changed.  With a feed
        the list is polled only every ``feed_poll_interval``."""
        settings = self.store.settings
        interval = settings.poll_interval
        if self._list_sub is not None:
            interval = max(interval, settings.feed_poll_interval)
        gen = self.list_log.generation
        deadline = time.monotonic() + timeout
        while True:
            if self.list_stale or time.monotonic() - self.list_refreshed_at >= interval:
                await self.refresh_list()
                if self.list_log.generation != gen:
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait = min(left, max(0.0, self.list_refreshed_at + interval - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._list_changed.wait(), wait)

    async def remove_mailbox_data(self, guid: str) -> None:
        """The objects of a deleted mailbox (logs last); what fails is left to purge."""
        base = f"{self.prefix}/mbox/{guid}/"
        try:
            names = [n async for n in self.fs.iter(base)]
            # Logs last: a reader that finds the log gone knows the mailbox is.
            names.sort(key=lambda n: ("/log." in n, n))
            for n in names:
                await self.fs.delete(n)
        except (FsError, StorageUnavailable) as exc:
            log.warning("user=%s mailbox=%s: objects of the deleted mailbox not all removed "
                        "(%s); purge removes the rest", self.user, guid, exc)

    def opened_mailbox(self, guid: str) -> Mailbox | None:
        """The mailbox if this process has it open (purge opens the others only while it
        looks at them)."""
        return self._mailboxes.get(guid)

    async def open_mailbox_apart(self, guid: str) -> Mailbox:
        """The mailbox opened for one caller alone, not kept by this user (the caller
        closes it): purge looks at every mailbox without keeping their indexes."""
        entry = self.entry_by_guid(guid)
        box = Mailbox(self, entry)
        await box.open()  # closes it on failure
        return box

    async def mailbox_by_guid(self, guid: str) -> Mailbox:
        box = self._mailboxes.get(guid)
        if box is not None:
            return box
        entry = self.entry_by_guid(guid)
        box = Mailbox(self, entry)
        try:
            await box.open()
        except CorruptMailbox as exc:
            # Dovecot rebuilds a broken index on open; so do we (and say so once).
            log.error("user=%s mailbox=%s: %s; running force-resync", self.user, entry.name,
                      exc)
            box.close()
            box = Mailbox(self, entry)
            await force_resync(box)
        kept = self._mailboxes.setdefault(guid, box)
        if kept is not box:
            box.close()  # opened twice at once: one stays, the other lets go of its watch
        return kept

async def open_libfs_store(spec: str, settings: StorageSettings) -> MailStore:
    """The registry's opener: a store over the libfs chain ``spec``, which it owns."""
    from cloudcote.libfs.chain import open_fs

    return MailStore(await open_fs(spec), settings, owns_fs=True)
