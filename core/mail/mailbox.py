"""An opened mailbox of the libfs backend: its index (a transaction log, shared by the
sessions of one process), reading and writing its messages (sdbox or mdbox objects), and
waiting for other processes' changes.

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
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from cloudcote.libfs.api import FsExists, FsNotFound, FsUnavailable, Subscription
from cloudcote.libfs.backoff import backoff

from . import objects
from .entries import cache_entry_of, stored_idate
from .errors import (
    CorruptMailbox,
    MailboxNotFound,
    MessageExpunged,
    MessageTooLarge,
    StorageUnavailable,
    store_io,
)
from .index import MailboxState, Message, new_guid, normalize_flag, ranges_of
from .layout import object_path, write_mdbox, write_sdbox
from .mailbox_base import MailboxBase
from .mailbox_list import MailboxEntry
from .prefetch import Prefetch
from .resync import force_resync
from .txlog import TransactionLog
from .values import SaveRequest, StorageSettings

if TYPE_CHECKING:
    from .api import Mailbox as AnyMailbox
    from .store import UserMail

log = logging.getLogger("cloudcote.core.mail")
T = TypeVar("T")

#: Times a commit of new messages that failed is settled (the log read, the records
#: looked up, written again if absent) before the failure is reported, and the backoff
#: between them (seconds).
SETTLE_ATTEMPTS = 6
SETTLE_BACKOFF = 0.02
SETTLE_MAX_BACKOFF = 1.0
#: Log records that need not be durable on their own (Dovecot's ``fsync=optimized`` does
#: not sync its index either): flag changes and \Recent claims.  Saves and expunges are.
DEFERRABLE = frozenset({"f", "r"})


class Mailbox(MailboxBase):
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
            before_snapshot=lambda st: st.take_cache_chunk(self.base),
            deferrable=DEFERRABLE)
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
    def state(self) -> MailboxState:
        assert self.log.state is not None
        return self.log.state

    @property
    def settings(self) -> StorageSettings:
        return self.mail_store.settings

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
        self.notify()
        await self._repair_if_damaged()
        return changed

    async def _repair_if_damaged(self) -> None:
        """A damaged log span was just found (and logged): repair at once, as Dovecot
        rebuilds a corrupted index, so the next reader never meets it."""
        seen = len(self.log.damage)
        if seen > self._damage_repaired and not self._repairing:
            self._repairing = True
            try:
                await force_resync(self)
            finally:
                self._repairing = False
                self._damage_repaired = len(self.log.damage)

    async def commit(self, records: list[Any]) -> list[Any]:
        """Commit log records written elsewhere (delivery links a shared mdbox object) and
        wake this process's waiters; the records' results.  Append records whose commit
        failed uncertainly are settled (:meth:`_commit_appends`)."""
        if records and all(rec[0] == "a" for rec in records):
            results: list[Any] = await self._commit_appends(records)
        else:
            results = await self.log.commit(records)
        self.notify()
        return results

    async def _commit_appends(self, records: list[Any]) -> list[int]:
        """Commit append records and return their UIDs.  A commit that failed may have
        put its frame in the log all the same (a store that failed after the append, a
        lost reply, a read after the append that failed): the log is read again and the
        records' objects looked up there, and only records surely not in it are
        committed again, so a caller never reports a failure for a message that is
        stored.  Writing one again is harmless even if the first frame lands after all:
        an append record applies once per object (the second is a no-op that reports
        the same UID).  StorageUnavailable only when the log cannot be read either."""
        try:
            return [int(u) for u in await self.log.commit(records)]
        except StorageUnavailable as exc:
            failure = exc
        locs = [rec[2] for rec in records]
        for attempt in range(SETTLE_ATTEMPTS):
            await backoff(attempt, SETTLE_BACKOFF, SETTLE_MAX_BACKOFF)
            try:
                await self.log.refresh()
            except StorageUnavailable as exc:
                failure = exc
                continue
            by_loc = self.state.by_loc
            if all(loc in by_loc for loc in locs):
                log.warning("user=%s mailbox=%s: a commit reported as failed (%s) is in the "
                            "log; its %d message(s) are stored", self.user.user, self.name,
                            failure, len(locs))
                return [by_loc[loc] for loc in locs]
            try:
                return [int(u) for u in await self.log.commit(records)]
            except StorageUnavailable as exc:
                failure = exc
        log.error("user=%s mailbox=%s: could not tell whether a commit of %d message(s) "
                  "reached the log: %s", self.user.user, self.name, len(locs), failure)
        raise failure

    def notify(self) -> None:
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


    async def save_many(self, requests: Sequence[SaveRequest]) -> list[int]:
        """Save several messages all at once: every message or (on an error before the log
        record) none.  Returns their UIDs, ascending."""
        if not requests:
            return []
        prepared = [self._prepare(r) for r in requests]
        await self.user.check_quota(sum(len(p[0]) for p in prepared), len(prepared))
        if self.mail_store.settings.layout == "mdbox":
            locs = await write_mdbox(self.fs, [(self.user.user, self.guid)],
                                      [(p[0], p[1]) for p in prepared])
        else:
            locs = await asyncio.gather(*(write_sdbox(self.fs, self.base, p[0], p[1])
                                           for p in prepared))
        records = [
            ["a", meta.guid, loc, meta.size, meta.internaldate, meta.tz,
             list(flags), cache_entry_of(raw)]
            for (raw, meta, flags), loc in zip(prepared, locs, strict=True)
        ]
        uids = await self._commit_appends(records)
        self.notify()
        try:
            await self._repair_if_damaged()
        except StorageUnavailable as exc:
            # The messages are stored: their UIDs stand; the repair runs on a later read.
            log.warning("user=%s mailbox=%s: repair after a save failed: %s",
                        self.user.user, self.name, exc)
        return uids

    def _prepare(self, req: SaveRequest) -> tuple[bytes, objects.StoredMeta, list[str]]:
        raw = objects.normalize_crlf(req.raw)
        if len(raw) > self.mail_store.settings.max_message_size:
            raise MessageTooLarge(f"message of {len(raw)} bytes is above the limit of "
                                  f"{self.mail_store.settings.max_message_size}")
        idate, tz = stored_idate(req.internaldate)
        meta = objects.StoredMeta(new_guid(), self.guid, idate, tz, len(raw))
        flags = sorted({normalize_flag(f) for f in req.flags if f.lower() != "\\recent"})
        return raw, meta, flags

    # -- reading --------------------------------------------------------------------------

    def _where(self, msg: Message) -> tuple[str, int]:
        return object_path(self.base, msg.loc)

    async def read_message(self, msg: Message, start: int = 0, end: int | None = None) -> bytes:
        """The stored bytes of ``msg`` (or ``[start, end)`` of them), byte for byte.
        Raises MessageExpunged when its object is gone."""
        end = msg.size if end is None else min(end, msg.size)
        if start >= end:
            return b""
        for attempt in range(2):
            path, off = self._where(msg)
            try:
                return bytes(await store_io(self.fs.read_range(path, off + start, off + end)))
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
                    self.notify()
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
        entry = cache_entry_of(raw)
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
        try:
            blob = await store_io(self.fs.read(name))
            data = json.loads(zlib.decompress(blob))
        except (FsNotFound, ValueError, zlib.error) as exc:
            log.error("user=%s mailbox=%s: cache chunk %s unreadable (%s); rebuilding "
                      "entries from the messages", self.user.user, self.name, name, exc)
            return None
        # Room for what a FETCH reads ahead, and then some.
        if len(self._chunks) > max(64, 2 * self.mail_store.settings.prefetch_count):
            self._chunks.pop(next(iter(self._chunks)))
        self._chunks[name] = data
        return data



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
        self.notify()
        await self._repair_if_damaged()
        return result

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
        self.notify()
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

    async def copy(self, uids: Iterable[int], dest: AnyMailbox) -> list[tuple[int, int]]:
        """RFC 3501 6.4.7 COPY: returns (source UID, destination UID) pairs (RFC 4315
        COPYUID).  Flags and internal date go along; the message GUID is kept."""
        msgs = [self.state.messages[u] for u in sorted(set(uids)) if u in self.state.messages]
        if not msgs:
            return []
        if not isinstance(dest, Mailbox):
            return await self.copy_by_saving(msgs, dest)
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
                    locs += await write_mdbox(self.fs, [(dest.user.user, dest.guid)], batch)
                    batch, held = [], 0
            if batch:
                locs += await write_mdbox(self.fs, [(dest.user.user, dest.guid)], batch)
        else:
            # Server-side copies where the store has them (no bytes through this process),
            # else read and written here: prefetch_count at a time either way.
            locs = [loc async for _, loc in self._each_ahead(
                msgs, lambda m: self._copy_sdbox(m, dest),
                lambda m: m.size if m.loc.startswith("@") else 0)]
        records = [["a", m.guid, loc, m.size, m.internaldate, m.tz, sorted(m.flags), e]
                   for m, loc, e in zip(msgs, locs, entries, strict=True)]
        new = await dest.log.commit(records)
        dest.notify()
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
                await store_io(self.fs.copy(path, dst))
                return f"{oid}:{off}"
            except FsNotFound:
                raise MessageExpunged(f"message UID {msg.uid} of {self.name!r} is gone") \
                    from None
        raw = await self.read_message(msg)
        meta = objects.StoredMeta(msg.guid, dest.guid, msg.internaldate, msg.tz, msg.size)
        await store_io(self.fs.write(dst, objects.encode_message(meta, raw)))
        return f"{oid}:{meta.offset}"



