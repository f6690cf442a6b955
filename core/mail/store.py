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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import cachetools

from cloudcote.libfs.api import ChangeFeed, Fs, FsError, FsExists, FsNotFound, Subscription

from .delivery import deliver_to
from .errors import (
    CorruptMailbox,
    InvalidMailboxName,
    MailboxExists,
    MailboxInUse,
    MailboxNotFound,
    QuotaExceeded,
    StorageUnavailable,
)
from .index import new_guid
from .layout import user_prefix
from .mailbox import Mailbox
from .mailbox_list import (
    SEP,
    MailboxEntry,
    MailboxListState,
    normalize_name,
    normalize_special_use,
)
from .resync import force_resync
from .txlog import TransactionLog
from .values import LAYOUTS, QuotaLimits, QuotaUsage, StorageSettings

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


class UserMail:
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

    @property
    def settings(self) -> StorageSettings:
        return self.store.settings

    # -- the list -------------------------------------------------------------------------

    @property
    def list_state(self) -> MailboxListState:
        assert self.list_log.state is not None
        return self.list_log.state

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
        wanted: dict[str, list[str]] = {"INBOX": []} | dict(self.store.settings.autocreate)
        missing = [(n, su) for n, su in wanted.items() if n not in self.list_state.by_name]
        if missing:
            recs = [self._create_record(n, normalize_special_use(su)) for n, su in missing]
            await self.list_log.commit(recs)

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

    def _create_record(self, name: str, special_use: list[str]) -> list[Any]:
        last = self.list_state.last_uidvalidity.get(name, 0)
        uidvalidity = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
        return ["c", name, new_guid(), uidvalidity, special_use]

    def list_mailboxes(self) -> list[MailboxEntry]:
        """Every mailbox, sorted by name (as of the last refresh)."""
        return sorted(self.list_state.by_name.values(), key=lambda e: e.name)

    def subscriptions(self) -> set[str]:
        return set(self.list_state.subscriptions)

    def entry(self, name: str) -> MailboxEntry:
        canon = normalize_name(name)
        entry = self.list_state.by_name.get(canon)
        if entry is None:
            raise MailboxNotFound(f"no mailbox {name!r}")
        return entry

    async def create_mailbox(self, name: str, special_use: Iterable[str] = ()) -> MailboxEntry:
        """RFC 3501 6.3.3 CREATE (with RFC 6154 CREATE-SPECIAL-USE).  One of two concurrent
        creators of a name wins; the other gets MailboxExists."""
        canon = normalize_name(name)
        su = normalize_special_use(list(special_use))
        await self.refresh_list()
        if canon in self.list_state.by_name:
            raise MailboxExists(f"mailbox {canon!r} exists")
        # RFC 3501 6.3.3: superior names that are needed are created too.
        parts = canon.split(SEP)
        parents = [SEP.join(parts[:i]) for i in range(1, len(parts))]
        recs = [self._create_record(p, []) for p in parents
                if p not in self.list_state.by_name]
        rec = self._create_record(canon, su)
        *_, result = await self.list_log.commit([*recs, rec])
        if result != "ok":
            raise MailboxExists(f"mailbox {canon!r} exists")
        return self.list_state.by_guid[rec[2]]

    async def delete_mailbox(self, name: str) -> None:
        """RFC 3501 6.3.4 DELETE: the mailbox and its messages go; its children stay."""
        entry = self.entry(name)
        if entry.name == "INBOX":
            raise MailboxInUse("INBOX cannot be deleted")
        (result,) = await self.list_log.commit([["d", entry.guid]])
        if result != "ok":
            raise MailboxNotFound(f"no mailbox {name!r}")
        box = self._mailboxes.pop(entry.guid, None)
        if box is not None:
            box.deleted = True
            box.close()
        await self._remove_mailbox_objects(entry.guid)

    async def _remove_mailbox_objects(self, guid: str) -> None:
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

    async def rename_mailbox(self, old: str, new: str) -> None:
        """RFC 3501 6.3.5 RENAME: the mailbox and its children.  Renaming INBOX moves its
        messages into a new mailbox and leaves INBOX empty."""
        entry = self.entry(old)
        canon = normalize_name(new)
        if canon == entry.name:
            raise MailboxExists(f"mailbox {canon!r} exists")
        if entry.name == "INBOX":
            # INBOX's children are not moved, so INBOX/old is a fine new name.
            target = await self.create_mailbox(canon)
            src = await self.mailbox("INBOX")
            dst = await self.mailbox_by_guid(target.guid)
            uids = list(src.state.uids)
            if uids:
                await src.move(uids, dst)
            return
        if canon.startswith(entry.name + SEP):
            raise MailboxInUse("a mailbox cannot be renamed into its own child")
        await self.refresh_list()
        if canon in self.list_state.by_name:
            raise MailboxExists(f"mailbox {canon!r} exists")
        (result,) = await self.list_log.commit([["r", entry.guid, canon]])
        if result == "exists":
            raise MailboxExists(f"mailbox {canon!r} (or one of its children) exists")
        if result == "missing":
            raise MailboxNotFound(f"no mailbox {old!r}")
        if result != "ok":
            raise InvalidMailboxName(f"cannot rename {old!r} to {new!r}")

    async def subscribe(self, name: str) -> None:
        await self.list_log.commit([["s", normalize_name(name)]])

    async def unsubscribe(self, name: str) -> None:
        await self.list_log.commit([["u", normalize_name(name)]])

    async def set_special_use(self, name: str, special_use: Iterable[str]) -> None:
        entry = self.entry(name)
        await self.list_log.commit([["su", entry.guid, normalize_special_use(list(special_use))]])

    # -- mailboxes ------------------------------------------------------------------------

    async def mailbox(self, name: str) -> Mailbox:
        """The opened mailbox (shared with every session of this process).  The list is
        read again first when it may be behind, so that a mailbox another process deleted
        and created again is never served from its old index."""
        fresh = self.list_may_be_behind()
        if fresh:
            await self.refresh_list()
        try:
            entry = self.entry(name)
        except MailboxNotFound:
            if fresh:
                raise
            await self.refresh_list()
            entry = self.entry(name)
        return await self.mailbox_by_guid(entry.guid)

    async def mailbox_by_guid(self, guid: str) -> Mailbox:
        box = self._mailboxes.get(guid)
        if box is not None:
            return box
        entry = self.list_state.by_guid.get(guid)
        if entry is None:
            raise MailboxNotFound(f"no mailbox with GUID {guid}")
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

    # -- quota ----------------------------------------------------------------------------

    async def quota_usage(self, *, max_age: float | None = None) -> QuotaUsage:
        """Bytes and messages over all mailboxes (RFC 9208 STORAGE and MESSAGE), from the
        indexes; mailboxes refreshed if their view is older than ``max_age`` seconds."""
        age = self.store.settings.quota_refresh if max_age is None else max_age
        total = count = 0
        for entry in list(self.list_state.by_name.values()):
            try:
                box = await self.mailbox_by_guid(entry.guid)
                if time.monotonic() - box.refreshed_at > age:
                    await box.refresh()
            except MailboxNotFound:
                continue
            total += box.state.total_size
            count += box.state.exists
        return QuotaUsage(total, count, self.quota_limits)

    async def check_quota(self, add_bytes: int, add_messages: int) -> None:
        limits = self.quota_limits
        if not limits.bytes and not limits.messages:
            return
        usage = await self.quota_usage()
        if limits.bytes and usage.bytes + add_bytes > limits.bytes:
            raise QuotaExceeded("storage", limits.bytes, usage.bytes, add_bytes)
        if limits.messages and usage.messages + add_messages > limits.messages:
            raise QuotaExceeded("messages", limits.messages, usage.messages, add_messages)


async def open_libfs_store(spec: str, settings: StorageSettings) -> MailStore:
    """The registry's opener: a store over the libfs chain ``spec``, which it owns."""
    from cloudcote.libfs.chain import open_fs

    return MailStore(await open_fs(spec), settings, owns_fs=True)
