"""Mail storage on libfs: users, mailboxes, saving, flags, expunge, copy and move.

Layout under the libfs chain (see docs/storage.md)::

    users/<user>/list/{log,snap}.<k>          the user's mailbox list (mailbox_list.py)
    users/<user>/mbox/<guid>/index/{log,snap}.<k>   a mailbox's log and snapshots
    users/<user>/mbox/<guid>/cache/<id>       cache chunks the snapshots refer to
    users/<user>/mbox/<guid>/msg/<id>         sdbox: one object per message
    storage/<id>                              mdbox: messages packed into shared objects

One ``MailStore`` per process: it shares each opened mailbox between the sessions of that
process, so that a save by one session is seen by the others without reading the store.

Other processes' changes: where the libfs chain has a change feed (``Fs.change_feed``:
inotify on posix, LISTEN/NOTIFY on PostgreSQL), each opened mailbox subscribes its log's
directory once, whatever the number of sessions on it; an announcement marks it stale and
wakes every session waiting in :meth:`Mailbox.wait_for_change`, which refresh it once
between them.  A slow safety poll (``feed_poll_interval``) stays.  Without a feed, a
mailbox that sessions wait on is polled every ``poll_interval``, once for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import cachetools

from cloudcote.libfs.api import (
    ChangeFeed,
    Fs,
    FsError,
    FsExists,
    FsNotFound,
    FsUnavailable,
    Subscription,
)

from . import objects
from .errors import (
    CorruptMailbox,
    InvalidMailboxName,
    MailboxExists,
    MailboxInUse,
    MailboxNotFound,
    MessageExpunged,
    MessageTooLarge,
    QuotaExceeded,
    StorageUnavailable,
    store_io,
)
from .index import MailboxState, Message, normalize_flag, ranges_of
from .mailbox_list import (
    SEP,
    MailboxEntry,
    MailboxListState,
    normalize_name,
    normalize_special_use,
)
from .prefetch import Prefetch
from .recent import claim_recent
from .txlog import TransactionLog
from .values import (  # noqa: F401  (re-exported until importers use api/values)
    DEFAULT_AUTOCREATE,
    LAYOUTS,
    QuotaLimits,
    QuotaUsage,
    SaveRequest,
    StorageSettings,
    internal_datetime,
    parse_quota_rule,
)

log = logging.getLogger("cloudcote.core.mail")
T = TypeVar("T")

#: Users a process keeps open when no session or delivery holds them (the most recent).
KEEP_USERS = 1000
#: Cache entries keep a header block up to this size; bigger ones are read from the message.
MAX_CACHED_HEADER = 64 * 1024


def user_prefix(user: str) -> str:
    """The libfs prefix of a user's mail: the name percent-encoded so that no user name can
    reach another user's objects (``/``, ``..`` and the like are encoded)."""
    enc = urllib.parse.quote(user, safe="@+-_.")
    if enc in (".", ".."):
        enc = enc.replace(".", "%2E")
    return f"users/{enc}"


class MailStore:
    """Mail storage of one process over one libfs chain."""

    def __init__(self, fs: Fs, settings: StorageSettings | None = None) -> None:
        self.fs = fs
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
                         boxes: Sequence[Mailbox]) -> list[int | Exception]:
        """One message into several users' mailboxes; see :func:`deliver_to`."""
        return await deliver_to(raw, boxes)

    def cached_user(self, name: str) -> UserMail | None:
        return self._users.get(name)

    async def close(self) -> None:
        """Forget the opened users and mailboxes, ending their change subscriptions."""
        for um in list(self._users.values()):
            um.close()
        self._users.clear()
        self._kept.clear()


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
        from .index import new_guid

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
            from .resync import force_resync

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


def _cache_entry(raw: bytes) -> dict[str, Any]:
    """The cache fields of a message, computed at save time (ENVELOPE, BODYSTRUCTURE, BODY
    and the header block)."""
    from . import mime

    ms = mime.parse(raw)
    hdr = mime.header_block(raw)
    entry: dict[str, Any] = {
        "env": mime.envelope(ms),
        "bs": mime.bodystructure(ms, extended=True),
        "b": mime.bodystructure(ms, extended=False),
    }
    if len(hdr) <= MAX_CACHED_HEADER:
        entry["h"] = hdr.decode("utf-8", "surrogateescape")
    return entry


def _idate(when: dt.datetime | None) -> tuple[int, int]:
    if when is None:
        return int(time.time()), 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    off = when.utcoffset() or dt.timedelta(0)
    return int(when.timestamp()), int(off.total_seconds() // 60)


class Mailbox:
    """An opened mailbox: its index (shared by the sessions of this process), and the
    operations that change it."""

    def __init__(self, user: UserMail, entry: MailboxEntry) -> None:
        self.user = user
        self.mail_store = user.store
        self.fs = user.fs
        self.entry = entry
        self.guid = entry.guid
        self.base = f"{user.prefix}/mbox/{entry.guid}"
        self.log: TransactionLog[MailboxState] = TransactionLog(
            self.fs, f"{self.base}/index", MailboxState.decode_snapshot,
            limit=self.mail_store.settings.log_limit,
            what=f"user={user.user} mailbox={entry.name}",
            before_snapshot=lambda st: st.take_cache_chunk(self.base))
        self.refreshed_at = 0.0
        self.deleted = False
        self._changed = asyncio.Event()
        self._seen_generation = 0
        #: The change feed's subscription to this mailbox's log, if there is a feed.
        self._sub: Subscription | None = None
        self._watch_tried = False
        #: The feed announced a change not yet read.
        self._stale = False
        self._refreshing: asyncio.Future[bool] | None = None
        self._chunks: dict[str, dict[str, Any]] = {}
        self._chunk_loads: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._damage_repaired = 0
        self._repairing = False

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def state(self) -> MailboxState:
        assert self.log.state is not None
        return self.log.state

    async def open(self) -> None:
        # Subscribed before the first read, so no change falls between the two.
        await self._watch()
        try:
            await self._open_log()
        except BaseException:
            self.close()
            raise

    async def _open_log(self) -> None:
        try:
            await self.log.open()
        except FsNotFound:
            # First use of a listed mailbox: its log starts here.  Concurrent first users
            # write the same snap.1 (GUID and UIDVALIDITY come from the list).
            try:
                await self.log.create(MailboxState(self.guid, self.entry.uidvalidity))
            except FsExists:
                await self.log.open()
        self.refreshed_at = time.monotonic()
        self._seen_generation = self.log.generation
        await self._repair_if_damaged()

    # -- change notification --------------------------------------------------------------

    async def _watch(self) -> None:
        """Subscribe to the change feed once per opened mailbox (not per session)."""
        if self._watch_tried or self.deleted:
            return
        self._watch_tried = True
        self._sub = await self.mail_store.watch(f"{self.log.base}/", self,
                                                Mailbox._on_store_change)

    def _on_store_change(self, path: str) -> None:
        """The feed says the log changed: stale now; waiting sessions wake and refresh."""
        self._stale = True
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """End the change subscription (a dropped or deleted mailbox).  Idempotent."""
        self._watch_tried = True
        if self._sub is not None:
            self._sub.close()

    @property
    def watched(self) -> bool:
        """Whether a change feed announces this mailbox's changes."""
        return self._sub is not None and not self._sub.closed

    @property
    def poll_interval(self) -> float:
        """Seconds between polls while sessions wait: ``poll_interval``, or with a change
        feed the slow safety poll (``feed_poll_interval``)."""
        settings = self.mail_store.settings
        if self.watched:
            return max(settings.poll_interval, settings.feed_poll_interval)
        return settings.poll_interval

    def needs_refresh(self) -> bool:
        """Whether the view may be behind the store: the feed announced a change, or the
        last refresh is older than :attr:`poll_interval`."""
        return self._stale or time.monotonic() - self.refreshed_at >= self.poll_interval

    async def refresh(self) -> bool:
        """Read other processes' changes.  True if there were any."""
        self._stale = False
        try:
            changed = await self.log.refresh()
        except CorruptMailbox:
            await self.user.refresh_list()
            if self.guid not in self.user.list_state.by_guid:
                self.deleted = True
                self.close()
                raise MailboxNotFound(f"mailbox {self.name!r} was deleted") from None
            raise
        self.refreshed_at = time.monotonic()
        self._notify()
        await self._repair_if_damaged()
        return changed

    async def _repair_if_damaged(self) -> None:
        """A damaged log span was just found (and logged): repair at once, as Dovecot
        rebuilds a corrupted index, so the next reader never meets it."""
        seen = len(self.log.damage)
        if seen > self._damage_repaired and not self._repairing:
            self._repairing = True
            try:
                from .resync import force_resync

                await force_resync(self)
            finally:
                self._repairing = False
                self._damage_repaired = len(self.log.damage)

    def _notify(self) -> None:
        if self.log.generation != self._seen_generation:
            self._seen_generation = self.log.generation
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait until the mailbox changes: a commit in this process at once; another
        process's as soon as the change feed announces it, else within the poll interval.
        However many sessions wait, one refresh serves them all.  True if it changed."""
        await self._watch()
        deadline = time.monotonic() + timeout
        gen = self.log.generation
        while True:
            if self.needs_refresh():
                await self._shared_refresh()
                if self.log.generation != gen:
                    return True
                if self._stale and time.monotonic() < deadline:
                    continue  # announced while that refresh read: read again
            left = deadline - time.monotonic()
            if left <= 0:
                return self.log.generation != gen
            event = self._changed
            due = self.refreshed_at + self.poll_interval - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, max(0.0, due)))
            if self.log.generation != gen:
                return True

    async def _shared_refresh(self) -> None:
        """One refresh for every waiting session (a waiter that gives up does not cancel
        it for the others)."""
        running = self._refreshing
        if running is None:
            running = asyncio.ensure_future(self.refresh())
            self._refreshing = running
            running.add_done_callback(self._refresh_done)
        await asyncio.shield(running)

    def _refresh_done(self, done: asyncio.Future[bool]) -> None:
        if self._refreshing is done:
            self._refreshing = None
        if not done.cancelled():
            done.exception()  # retrieved: the waiters got it

    # -- saving ---------------------------------------------------------------------------

    async def save(self, raw: bytes, flags: Sequence[str] = (),
                   internaldate: dt.datetime | None = None) -> int:
        """Save one message (RFC 3501 6.3.11 APPEND); returns its UID once it is durable."""
        (uid,) = await self.save_many([SaveRequest(raw, flags, internaldate)])
        return uid

    async def save_many(self, requests: Sequence[SaveRequest]) -> list[int]:
        """Save several messages all at once: every message or (on an error before the log
        record) none.  Returns their UIDs, ascending."""
        if not requests:
            return []
        prepared = [self._prepare(r) for r in requests]
        await self.user.check_quota(sum(len(p[0]) for p in prepared), len(prepared))
        if self.mail_store.settings.layout == "mdbox":
            locs = await _write_mdbox(self.fs, [(self.user.user, self.guid)],
                                      [(p[0], p[1]) for p in prepared])
        else:
            locs = await asyncio.gather(*(self._write_sdbox(p[0], p[1]) for p in prepared))
        records = [
            ["a", meta.guid, loc, meta.size, meta.internaldate, meta.tz,
             list(flags), _cache_entry(raw)]
            for (raw, meta, flags), loc in zip(prepared, locs, strict=True)
        ]
        uids = await self.log.commit(records)
        self._notify()
        await self._repair_if_damaged()
        return [int(u) for u in uids]

    def _prepare(self, req: SaveRequest) -> tuple[bytes, objects.StoredMeta, list[str]]:
        from .index import new_guid

        raw = objects.normalize_crlf(req.raw)
        if len(raw) > self.mail_store.settings.max_message_size:
            raise MessageTooLarge(f"message of {len(raw)} bytes is above the limit of "
                                  f"{self.mail_store.settings.max_message_size}")
        idate, tz = _idate(req.internaldate)
        meta = objects.StoredMeta(new_guid(), self.guid, idate, tz, len(raw))
        flags = sorted({normalize_flag(f) for f in req.flags if f.lower() != "\\recent"})
        return raw, meta, flags

    async def _write_sdbox(self, raw: bytes, meta: objects.StoredMeta) -> str:
        oid = objects.new_object_id()
        data = objects.encode_message(meta, raw)
        await _io(self.fs.write(f"{self.base}/msg/{oid}", data))
        return f"{oid}:{meta.offset}"

    # -- reading --------------------------------------------------------------------------

    def _where(self, msg: Message) -> tuple[str, int]:
        loc = msg.loc
        if loc.startswith("@"):
            oid, _, off = loc[1:].partition(":")
            return f"storage/{oid}", int(off)
        oid, _, off = loc.partition(":")
        return f"{self.base}/msg/{oid}", int(off)

    async def read_message(self, msg: Message, start: int = 0, end: int | None = None) -> bytes:
        """The stored bytes of ``msg`` (or ``[start, end)`` of them), byte for byte.
        Raises MessageExpunged when its object is gone."""
        end = msg.size if end is None else min(end, msg.size)
        if start >= end:
            return b""
        for attempt in range(2):
            path, off = self._where(msg)
            try:
                return bytes(await _io(self.fs.read_range(path, off + start, off + end)))
            except FsNotFound:
                # Expunged by another process, or (mdbox) moved by purge: the log says.
                await self.refresh()
                current = self.state.messages.get(msg.uid)
                if current is None:
                    break
                if current.loc == msg.loc:
                    # Another process may be expunging it right now (objects go before
                    # the log record): give its record a moment to arrive.
                    for _ in range(3):
                        await asyncio.sleep(0.2)
                        await self.refresh()
                        if msg.uid not in self.state.messages:
                            break
                    current = self.state.messages.get(msg.uid)
                    if current is None:
                        break
                if attempt == 1 or current.loc == msg.loc:
                    # Still in the index, and its object is gone: repair the index.
                    log.error("user=%s mailbox=%s: object of UID %d (%s) is missing; "
                              "expunging it", self.user.user, self.name, msg.uid, path)
                    await self.log.commit([["x", ranges_of([msg.uid])]])
                    self._notify()
                    break
                msg = current
        raise MessageExpunged(f"message UID {msg.uid} of {self.name!r} is gone")

    async def cache_entry(self, msg: Message) -> dict[str, Any]:
        """The cached ENVELOPE/BODYSTRUCTURE/BODY/header fields of ``msg``; read from the
        cache chunk if needed; computed from the message (and logged) if the cache lost it."""
        st = self.state
        entry = st.loose_cache.get(msg.guid)
        if entry is not None:
            return entry
        chunk = st.cache_where.get(msg.guid)
        if chunk is not None:
            data = await self.cache_chunk(chunk)
            if data is not None and msg.guid in data:
                return dict(data[msg.guid])
        raw = await self.read_message(msg)
        entry = _cache_entry(raw)
        st.loose_cache[msg.guid] = entry
        return entry

    def cache_chunk_name(self, msg: Message) -> str | None:
        """The cache chunk object holding ``msg``'s entry, if it is in one (not loose)."""
        st = self.state
        return None if msg.guid in st.loose_cache else st.cache_where.get(msg.guid)

    async def cache_chunk(self, name: str) -> dict[str, Any] | None:
        """A cache chunk's entries: from memory, from a read already in flight, or read
        now (once, however many messages ask for it at the same time)."""
        data = self._chunks.get(name)
        if data is not None:
            return data
        loading = self._chunk_loads.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load_chunk(name))
            self._chunk_loads[name] = loading
            loading.add_done_callback(lambda _f: self._chunk_loads.pop(name, None))
        return await asyncio.shield(loading)

    async def _load_chunk(self, name: str) -> dict[str, Any] | None:
        import json
        import zlib

        try:
            blob = await _io(self.fs.read(name))
            data = json.loads(zlib.decompress(blob))
        except (FsNotFound, ValueError, zlib.error) as exc:
            log.error("user=%s mailbox=%s: cache chunk %s unreadable (%s); rebuilding "
                      "entries from the messages", self.user.user, self.name, name, exc)
            return None
        # Room for what a FETCH reads ahead, and then some.
        if len(self._chunks) > max(64, 2 * self.mail_store.settings.prefetch_count):
            self._chunks.pop(next(iter(self._chunks)))
        self._chunks[name] = data
        return data  # type: ignore[no-any-return]

    async def header_block(self, msg: Message) -> bytes:
        """The message's header block (cached; read from the message if too large)."""
        entry = await self.cache_entry(msg)
        hdr = entry.get("h")
        if hdr is not None:
            return str(hdr).encode("utf-8", "surrogateescape")
        from . import mime

        return mime.header_block(await self.read_message(msg))

    async def body_section(self, msg: Message, parts: tuple[int, ...] = (),
                           kind: str | None = None, fields: tuple[str, ...] = ()) -> bytes:
        """``BODY[section]`` (RFC 3501 6.4.5) from the stored bytes.  The top-level HEADER
        and HEADER.FIELDS[.NOT] come from the cached header block without reading the
        message; a partial ``<o.n>`` is the caller's slice (``mime.partial``)."""
        from . import mime

        if not parts and kind is None:
            return await self.read_message(msg)
        if not parts and kind in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            hdr = await self.header_block(msg)
            return mime.section(hdr, mime.parse(hdr), (), kind, fields)
        raw = await self.read_message(msg)
        return mime.section(raw, mime.parse(raw), parts, kind, fields)

    # -- changes --------------------------------------------------------------------------

    async def store(self, uids: Iterable[int], mode: str, flags: Iterable[str],
                    unchangedsince: int | None = None) -> dict[str, list[int]]:
        """RFC 3501 6.4.6 STORE (``mode`` "+", "-" or "="), with RFC 7162 UNCHANGEDSINCE.
        Returns ``{"changed": uids, "failed": uids}``."""
        if mode not in ("+", "-", "="):
            raise ValueError(f"bad store mode {mode!r}")
        fl = sorted({normalize_flag(f) for f in flags if f.lower() != "\\recent"})
        ranges = ranges_of(uids)
        if not ranges:
            return {"changed": [], "failed": []}
        (result,) = await self.log.commit([["f", ranges, mode, fl, unchangedsince]])
        self._notify()
        await self._repair_if_damaged()
        return result  # type: ignore[no-any-return]

    async def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Expunge ``uids`` (default: every message flagged \\Deleted, RFC 3501 6.4.3).
        Returns the UIDs this call expunged; their objects are removed afterwards."""
        if uids is None:
            await self.refresh()
            uids = [m.uid for m in self.state if "\\Deleted" in m.flags]
        victims = {u: self.state.messages[u] for u in uids if u in self.state.messages}
        if not victims:
            return []
        # sdbox: objects go first, so that force-resync never brings an expunged message
        # back; a crash in between leaves index entries without objects, which resync
        # expunges.  (mdbox keeps the bytes until purge.)
        await self._delete_objects(list(victims.values()))
        (gone,) = await self.log.commit([["x", ranges_of(victims)]])
        self._notify()
        return [int(u) for u in gone]

    async def _delete_objects(self, msgs: list[Message]) -> None:
        for msg in msgs:
            if msg.loc.startswith("@"):
                continue  # mdbox: purge reclaims the space
            path, _ = self._where(msg)
            try:
                await self.fs.delete(path)
            except FsUnavailable as exc:
                raise StorageUnavailable(f"expunge of UID {msg.uid}: {exc}") from exc

    async def copy(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """RFC 3501 6.4.7 COPY: returns (source UID, destination UID) pairs (RFC 4315
        COPYUID).  Flags and internal date go along; the message GUID is kept."""
        msgs = [self.state.messages[u] for u in sorted(set(uids)) if u in self.state.messages]
        if not msgs:
            return []
        await dest.user.check_quota(sum(m.size for m in msgs), len(msgs))
        settings = self.mail_store.settings
        entries = [e async for _, e in self._each_ahead(msgs, self.cache_entry, lambda m: 0)]
        locs: list[str] = []
        if dest.mail_store.settings.layout == "mdbox":
            # Read ahead, and pack into objects of at most about prefetch_bytes each.
            batch: list[tuple[bytes, objects.StoredMeta]] = []
            held = 0
            async for m, data in self._each_ahead(msgs, self.read_message, lambda m: m.size):
                batch.append((data, objects.StoredMeta(m.guid, dest.guid, m.internaldate,
                                                       m.tz, m.size)))
                held += len(data)
                if held >= settings.prefetch_bytes // 2:
                    locs += await _write_mdbox(self.fs, [(dest.user.user, dest.guid)], batch)
                    batch, held = [], 0
            if batch:
                locs += await _write_mdbox(self.fs, [(dest.user.user, dest.guid)], batch)
        else:
            # Server-side copies where the store has them (no bytes through this process),
            # else read and written here: prefetch_count at a time either way.
            locs = [loc async for _, loc in self._each_ahead(
                msgs, lambda m: self._copy_sdbox(m, dest),
                lambda m: m.size if m.loc.startswith("@") else 0)]
        records = [["a", m.guid, loc, m.size, m.internaldate, m.tz, sorted(m.flags), e]
                   for m, loc, e in zip(msgs, locs, entries, strict=True)]
        new = await dest.log.commit(records)
        dest._notify()
        return [(m.uid, int(u)) for m, u in zip(msgs, new, strict=True)]

    async def _each_ahead(self, msgs: Sequence[Message],
                          work: Callable[[Message], Awaitable[T]],
                          size: Callable[[Message], int]) -> AsyncIterator[tuple[Message, T]]:
        """``work(m)`` for each message in order, prefetch_count ahead, the bytes held
        bounded by prefetch_bytes (``size`` says what one costs); the first error raises."""
        settings = self.mail_store.settings
        async with Prefetch(msgs, work, count=settings.prefetch_count,
                            max_bytes=settings.prefetch_bytes, size=size) as ahead:
            async for done in ahead:
                yield done.job, done.result()

    async def _copy_sdbox(self, msg: Message, dest: Mailbox) -> str:
        oid = objects.new_object_id()
        path, off = self._where(msg)
        dst = f"{dest.base}/msg/{oid}"
        if not msg.loc.startswith("@"):
            try:
                await _io(self.fs.copy(path, dst))
                return f"{oid}:{off}"
            except FsNotFound:
                raise MessageExpunged(f"message UID {msg.uid} of {self.name!r} is gone") \
                    from None
        raw = await self.read_message(msg)
        meta = objects.StoredMeta(msg.guid, dest.guid, msg.internaldate, msg.tz, msg.size)
        await _io(self.fs.write(dst, objects.encode_message(meta, raw)))
        return f"{oid}:{meta.offset}"

    async def search(self, key: Any, messages: Sequence[Message] | None = None,
                     recent: frozenset[int] = frozenset()) -> list[int]:
        """RFC 3501 6.4.4 SEARCH; see :func:`search_mailbox`."""
        return await search_mailbox(self, key, messages, recent)

    async def claim_recent(self, upto: int) -> range:
        """RFC 3501 2.3.2 \\Recent; see core/mail/recent.py."""
        return await claim_recent(self, upto)

    async def move(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """RFC 6851 MOVE: copy, then expunge the originals."""
        pairs = await self.copy(uids, dest)
        await self.expunge([s for s, _ in pairs])
        return pairs


async def _write_mdbox(fs: Fs, refs: list[tuple[str, str]],
                       items: list[tuple[bytes, objects.StoredMeta]]) -> list[str]:
    """Pack ``items`` into one new storage object (mdbox); return their locations."""
    oid = objects.new_object_id()
    parts: list[bytes] = []
    locs: list[str] = []
    pos = 0
    for raw, meta in items:
        meta.refs = [list(r) for r in refs]
        blob = objects.encode_message(meta, raw)
        locs.append(f"@{oid}:{pos + meta.offset}")
        parts.append(blob)
        pos += len(blob)
    await _io(fs.write(f"storage/{oid}", b"".join(parts)))
    return locs


async def deliver(store: MailStore, raw: bytes,
                  targets: Sequence[tuple[str, str]]) -> list[int | Exception]:
    """Deliver one message to several (user, mailbox) targets of one store; see
    :func:`deliver_to`.  Returns per target the UID or the error."""
    results: list[int | Exception] = []
    boxes: list[Mailbox] = []
    for user, name in targets:
        try:
            um = await store.user(user)
            boxes.append(await um.mailbox(name))
            results.append(0)
        except Exception as exc:  # noqa: BLE001 - reported per recipient
            results.append(exc)
    done = iter(await deliver_to(raw, boxes))
    return [r if isinstance(r, Exception) else next(done) for r in results]


async def deliver_to(raw: bytes, boxes: Sequence[Mailbox]) -> list[int | Exception]:
    """Deliver one message into several opened mailboxes (LMTP), each checked against its
    user's size limit and quota first.  With mdbox the message is stored once for all the
    mailboxes of one store, even across users.  Returns per mailbox the UID or the error;
    a UID means that copy is durable."""
    raw = objects.normalize_crlf(raw)
    results: list[int | Exception] = [RuntimeError("not delivered")] * len(boxes)
    live: list[tuple[int, Mailbox]] = []
    for i, box in enumerate(boxes):
        try:
            if len(raw) > box.mail_store.settings.max_message_size:
                raise MessageTooLarge(f"message of {len(raw)} bytes is above the limit")
            await box.user.check_quota(len(raw), 1)
            live.append((i, box))
        except Exception as exc:  # noqa: BLE001 - reported per recipient
            results[i] = exc
    by_store: dict[int, list[tuple[int, Mailbox]]] = {}
    for i, box in live:
        by_store.setdefault(id(box.mail_store), []).append((i, box))

    async def save(i: int, box: Mailbox) -> None:
        try:
            results[i] = await box.save(raw)
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    async def link(i: int, box: Mailbox, guid: str, loc: str, idate: int, tz: int,
                   entry: dict[str, Any]) -> None:
        try:
            (uid,) = await box.log.commit([["a", guid, loc, len(raw), idate, tz, [], entry]])
            box._notify()
            results[i] = int(uid)
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    async def one_store(group: list[tuple[int, Mailbox]]) -> None:
        store = group[0][1].mail_store
        if store.settings.layout != "mdbox":
            await asyncio.gather(*(save(i, b) for i, b in group))
            return
        from .index import new_guid

        guid = new_guid()
        idate, tz = _idate(None)
        meta = objects.StoredMeta(guid, group[0][1].guid, idate, tz, len(raw))
        try:
            (loc,) = await _write_mdbox(store.fs, [(b.user.user, b.guid) for _, b in group],
                                        [(raw, meta)])
        except Exception as exc:  # noqa: BLE001
            for i, _ in group:
                results[i] = exc
            return
        entry = _cache_entry(raw)
        await asyncio.gather(*(link(i, b, guid, loc, idate, tz, entry) for i, b in group))

    await asyncio.gather(*(one_store(g) for g in by_store.values()))
    return results


_io = store_io


@dataclass
class _SearchMessage:
    """A message as the SEARCH engine sees it (core/mail/search.py's SearchMessage)."""

    msg: Message
    recent: bool

    @property
    def uid(self) -> int:
        return self.msg.uid

    @property
    def flags(self) -> frozenset[str]:
        return self.msg.flags

    @property
    def modseq(self) -> int:
        return self.msg.modseq

    @property
    def size(self) -> int:
        return self.msg.size

    @property
    def internaldate(self) -> dt.datetime:
        return internal_datetime(self.msg)


class _SearchView:
    def __init__(self, box: Mailbox, messages: Sequence[_SearchMessage]) -> None:
        self.box = box
        self.messages = messages

    async def header(self, m: _SearchMessage) -> bytes:
        return await self.box.header_block(m.msg)

    async def body(self, m: _SearchMessage) -> bytes:
        return await self.box.read_message(m.msg)


async def search_mailbox(box: Mailbox, key: Any, messages: Sequence[Message] | None = None,
                         recent: frozenset[int] = frozenset()) -> list[int]:
    """RFC 3501 6.4.4 SEARCH over ``messages`` (default: the mailbox in UID order; a
    session passes its own view, whose order gives the sequence numbers).  Returns the
    matching sequence numbers.  Header keys are answered from the cache; body keys read
    the messages."""
    from . import search

    msgs = list(box.state) if messages is None else list(messages)
    view = _SearchView(box, [_SearchMessage(m, m.uid in recent) for m in msgs])
    settings = box.mail_store.settings
    return await search.search(key, view,  # type: ignore[arg-type]
                               concurrency=settings.prefetch_count,
                               max_bytes=settings.prefetch_bytes)
