"""force-resync and purge: repair a mailbox's index from its objects, reclaim dead space.

``force_resync(mailbox)`` (Dovecot's ``doveadm force-resync``):

- reads the index as far as it can (a damaged log span is skipped and reported; a missing
  or unreadable snapshot falls back to the one before);
- lists the mailbox's message objects (sdbox: ``msg/``; mdbox: the storage objects whose
  metadata names this mailbox) and reads their metadata lines;
- expunges index entries whose object is gone, and links every object the index does not
  know (an interrupted save, or a save whose log record was lost) as a new message with
  the metadata it carries.  mdbox slots of messages that were expunged but not yet purged
  are not re-linked: the index remembers their GUIDs until purge reclaims them;
- closes the current log so that the next snapshot starts clean;
- logs each repair once.

If no snapshot can be loaded at all, the index is rebuilt from every log that is left plus
the objects; when the log history is incomplete, UIDs cannot be kept, so the mailbox gets
a new UIDVALIDITY (RFC 3501 2.3.1.1) and every session must resynchronize.

``purge(store, users)`` (``doveadm purge``) deletes garbage older than the orphan grace
period: log generations no reader needs, cache chunks no snapshot names, message objects
no index names (a save interrupted between its object and its log record), the objects of
deleted mailboxes, and (mdbox) storage objects whose messages are all dead, rewriting
partly dead ones.  ``purge_user`` does one user within a budget of requests and says where
to resume; ``BackgroundPurge`` runs it periodically in the server.  The rules:
docs/storage.md, "Purge".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudcote.libfs.api import FsError, FsNotFound

from . import objects
from .entries import cache_entry_of
from .errors import CorruptMailbox, MailboxNotFound, StorageUnavailable, store_io
from .index import MailboxState, ranges_of
from .layout import object_path
from .txlog import KEEP_GENERATIONS, parse_frames

if TYPE_CHECKING:
    from .mailbox import Mailbox
    from .store import MailStore, UserMail

log = logging.getLogger("cloudcote.core.mail.resync")

#: The objects of a transaction log (txlog.py names them so).
_GEN_NAME = re.compile(r"^(log|snap)\.(\d{8})$")


@dataclass
class ResyncReport:
    mailbox: str
    expunged_missing: list[int] = field(default_factory=list)
    relinked: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rebuilt: bool = False
    damage: int = 0

    @property
    def repaired(self) -> bool:
        return bool(self.expunged_missing or self.relinked or self.removed or self.rebuilt
                    or self.damage)


async def _sdbox_objects(box: Mailbox, grace: float) -> dict[str, tuple[str, objects.StoredMeta]]:
    """Message objects of an sdbox mailbox: loc -> (path, metadata)."""
    out: dict[str, tuple[str, objects.StoredMeta]] = {}
    prefix = f"{box.base}/msg/"
    now = time.time()
    async for path in box.fs.iter(prefix):
        oid = path[len(prefix):]
        if grace and objects.object_age(oid, now) < grace:
            continue
        try:
            head = await store_io(box.fs.read_range(path, 0, objects.MAX_META + 2))
        except FsNotFound:
            continue
        meta = objects.parse_meta_line(head)
        if meta is None:
            # A torn object (crash while writing on a store without atomic create):
            # nothing acknowledged lives in it.
            log.error("user=%s mailbox=%s: object %s holds no whole message; removing it",
                      box.user.user, box.name, path)
            await box.fs.delete(path)
            continue
        out[f"{oid}:{meta.offset}"] = (path, meta)
    return out


async def _mdbox_objects(box: Mailbox, grace: float) -> dict[str, tuple[str, objects.StoredMeta]]:
    """Slots of mdbox storage objects that name this mailbox: loc -> (path, metadata)."""
    out: dict[str, tuple[str, objects.StoredMeta]] = {}
    now = time.time()
    async for path in box.fs.iter("storage/"):
        oid = path[len("storage/"):]
        if grace and objects.object_age(oid, now) < grace:
            continue
        try:
            data = await store_io(box.fs.read(path))
        except FsNotFound:
            continue
        for meta in objects.parse_objects(data):
            if [box.user.user, box.guid] in meta.refs:
                out[f"@{oid}:{meta.offset}"] = (path, meta)
    return out


async def force_resync(box: Mailbox, *, grace: float | None = None) -> ResyncReport:
    """Repair ``box``'s index; see the module docstring."""
    settings = box.mail_store.settings
    grace = settings.orphan_grace if grace is None else grace
    report = ResyncReport(box.name)
    who = f"user={box.user.user} mailbox={box.name}"
    try:
        await box.log.refresh() if box.log.state is not None else await box.log.open()
    except CorruptMailbox as exc:
        log.error("%s: index unreadable (%s); rebuilding it", who, exc)
        await _rebuild(box, grace, report)
        return report
    report.damage = len(box.log.damage) + len(box.log.problems) + len(box.log.torn)
    mdbox_layout = settings.layout == "mdbox"
    found = await (_mdbox_objects(box, grace) if mdbox_layout else _sdbox_objects(box, grace))
    st = box.state
    known = {m.loc for m in st}
    missing = []
    for msg in st:
        if msg.loc in found:
            continue
        if msg.loc.startswith("@") != mdbox_layout:
            # Saved under the other layout: check its object directly.
            path, _ = object_path(box.base, msg.loc)
            if await box.fs.exists(path):
                continue
        elif grace and objects.object_age(msg.loc.lstrip("@")[:8]) < grace:
            continue
        missing.append(msg.uid)
    for uid in missing:
        log.error("%s: message UID %d has no object any more; expunging it", who, uid)
    records: list[list[Any]] = []
    if missing:
        records.append(["x", ranges_of(missing)])
    dead = set(st.purgeable)
    for loc, (path, meta) in sorted(found.items(), key=lambda kv: (kv[1][1].internaldate,
                                                                    kv[0])):
        if loc in known or meta.guid in dead:
            continue
        try:
            raw = await store_io(box.fs.read_range(path, meta.offset, meta.offset + meta.size))
        except FsNotFound:
            continue
        log.error("%s: object %s (GUID %s) was not in the index; linking it as a new "
                  "message", who, path, meta.guid)
        records.append(["a", meta.guid, loc, meta.size, meta.internaldate, meta.tz, [],
                        cache_entry_of(raw)])
        report.relinked.append(meta.guid)
    report.expunged_missing = missing
    if records:
        await box.log.commit(records)
    if records or report.damage:
        await box.log.seal()
    box.notify()
    return report


async def _rebuild(box: Mailbox, grace: float, report: ResyncReport) -> None:
    """No snapshot loads: replay what logs are left, then link the objects."""
    report.rebuilt = True
    tl = box.log
    snaps, logs = await store_io(tl.list_objects())
    entry = box.entry
    state = MailboxState(box.guid, entry.uidvalidity)
    full_history = bool(logs) and logs[0] == 1
    if full_history:
        # Replay the whole history: UIDs and flags are kept exactly.
        for k in logs:
            try:
                data = await store_io(box.fs.read(tl.log_path(k)))
            except FsNotFound:
                full_history = False
                break
            res = parse_frames(data, 0)
            for frame in res.frames:
                if frame.start >= tl.limit:
                    break
                state.apply(frame.records, (k, frame.start))
    if not full_history:
        state = MailboxState(box.guid, max(int(time.time()), entry.uidvalidity + 1))
        log.error("user=%s mailbox=%s: log history incomplete; new UIDVALIDITY %d",
                  box.user.user, box.name, state.uidvalidity)
    layout = box.mail_store.settings.layout
    found = await (_mdbox_objects(box, 0) if layout == "mdbox" else _sdbox_objects(box, 0))
    known = {m.loc for m in state}
    missing = [m.uid for m in state if m.loc not in found]
    if missing:
        state.apply([["x", ranges_of(missing)]], (0, 0))
    report.expunged_missing = missing
    for loc, (path, meta) in sorted(found.items(),
                                    key=lambda kv: (kv[1][1].internaldate, kv[0])):
        if loc in known:
            continue
        raw = await store_io(box.fs.read_range(path, meta.offset, meta.offset + meta.size))
        state.apply([["a", meta.guid, loc, meta.size, meta.internaldate, meta.tz, [],
                      cache_entry_of(raw)]], (0, 0))
        report.relinked.append(meta.guid)
    # Publish: the rebuilt state becomes snap.<k+1>, and a reset frame in log k tells every
    # reader to load it.
    k = (logs[-1] if logs else 0) + 1
    await store_io(box.fs.write(tl.snap_path(k), state.encode_snapshot(), _replace()))
    if logs:
        await tl.reset_to(k)
    tl.state, tl.k, tl.offset = state, k, 0
    box.notify()


def _replace() -> Any:
    from cloudcote.libfs.api import WriteMode

    return WriteMode.REPLACE


class BudgetSpent(Exception):
    """A purge used up the requests it was allowed; it resumes where it stopped."""


class PurgeBudget:
    """Libfs requests a purge may spend (None: no bound).  Each call purge makes counts
    one, a listing one per 1,000 names, opening or refreshing an index two."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, n: int = 1) -> None:
        if self.limit is not None and self.used + n > self.limit:
            raise BudgetSpent()
        self.used += n


@dataclass
class PurgeResult:
    """What one purge of a user deleted, and where to resume when the budget ran out
    (``cursor`` None: the user was done)."""

    stats: dict[str, int]
    cursor: str | None = None


def _new_stats() -> dict[str, int]:
    return {"storage_deleted": 0, "storage_rewritten": 0, "orphans_deleted": 0,
            "generations_deleted": 0, "chunks_deleted": 0, "messages_deleted": 0}


def dead_generations(snaps: list[int], logs: list[int]) -> list[int]:
    """Generations of a transaction log that no reader needs any more: older than the
    ``KEEP_GENERATIONS`` behind the newest snapshot (the rule txlog follows when it writes a
    snapshot; a reader further behind catches up from the newest snapshot)."""
    if not snaps:
        return []
    newest = snaps[-1]
    return sorted(k for k in set(snaps) | set(logs) if k <= newest - KEEP_GENERATIONS)


async def _older_than(fs: Any, path: str, grace: float, now: float,
                      budget: PurgeBudget) -> bool:
    """The store's mtime of ``path`` is older than ``grace`` (False if it is gone)."""
    if grace <= 0:
        return True
    budget.spend()
    try:
        st = await fs.stat(path)
    except FsError:
        return False
    return now - st.mtime >= grace


async def _delete(fs: Any, path: str, budget: PurgeBudget) -> None:
    budget.spend()
    await store_io(fs.delete(path))


async def _purge_generations(fs: Any, base: str, names: list[str], stats: dict[str, int],
                             budget: PurgeBudget) -> None:
    """Delete the dead generations of the log under ``base`` (``names``: the paths listed
    under it).  On a segmented store deleting a log's head deletes its segments."""
    snaps: list[int] = []
    logs: list[int] = []
    for name in names:
        m = _GEN_NAME.match(name[len(base) + 1:])
        if m:
            (logs if m.group(1) == "log" else snaps).append(int(m.group(2)))
    snaps.sort()
    for k in dead_generations(snaps, logs):
        # Snapshot first, as txlog does: a log without its snapshot is never opened from.
        if k in snaps:
            await _delete(fs, f"{base}/snap.{k:08d}", budget)
        if k in logs:
            await _delete(fs, f"{base}/log.{k:08d}", budget)
        stats["generations_deleted"] += 1
        log.info("purge: %s generation %d deleted", base, k)


async def _snapshot_chunks(box: Mailbox, names: list[str],
                           budget: PurgeBudget) -> set[str] | None:
    """Cache chunks named by the snapshots still on the store (readers that are behind
    load them); None if one cannot be read (then no chunk is deleted)."""
    out: set[str] = set()
    for name in names:
        if not _GEN_NAME.match(name.rsplit("/", 1)[-1]) or "/snap." not in name:
            continue
        budget.spend()
        try:
            data = await store_io(box.fs.read(name))
            st = MailboxState.decode_snapshot(data)
        except FsNotFound:
            continue
        except (ValueError, KeyError, TypeError, zlib.error):
            return None
        out.update(c[0] for c in st.cache_chunks)
        out.update(st.cache_where.values())
    return out


async def _purge_mailbox(box: Mailbox, names: list[str], grace: float, now: float,
                         stats: dict[str, int], budget: PurgeBudget) -> None:
    """One mailbox: dead log generations, unreferenced cache chunks, message objects
    (sdbox) that no index entry names.  ``names``: its objects, listed before the index
    was read again, so that whatever a save linked meanwhile is in the index read."""
    who = f"user={box.user.user} mailbox={box.name}"
    budget.spend(2)
    await box.refresh()
    if box.log.damage or box.log.problems:
        # A damaged log may have lost the record of an acknowledged save: force-resync,
        # not purge, decides what its objects are.
        log.warning("purge: %s has a damaged index; skipped (run force-resync)", who)
        return
    index = f"{box.base}/index"
    await _purge_generations(box.fs, index, [n for n in names if n.startswith(index + "/")],
                             stats, budget)
    st = box.state
    chunks = {c[0] for c in st.cache_chunks} | set(st.cache_where.values())
    candidates = [n for n in names if n.startswith(f"{box.base}/cache/") and n not in chunks]
    old = [n for n in candidates if await _older_than(box.fs, n, grace, now, budget)]
    if old:
        # Readers behind may have loaded an older snapshot: keep what any snapshot left on
        # the store names (snapshots listed now, as the newest may be new).
        budget.spend()
        current = [n async for n in box.fs.iter(index + "/")]
        named = await _snapshot_chunks(box, current, budget)
        for n in old:
            if named is not None and n not in named:
                await _delete(box.fs, n, budget)
                stats["chunks_deleted"] += 1
                log.info("purge: %s: cache chunk %s referenced by nothing; deleted", who, n)
    linked = {m.loc.partition(":")[0] for m in st if not m.loc.startswith("@")}
    msg_dir = f"{box.base}/msg/"
    for n in names:
        if not n.startswith(msg_dir):
            continue
        oid = n[len(msg_dir):]
        if oid in linked or objects.object_age(oid, now) < grace:
            continue
        if not await _older_than(box.fs, n, grace, now, budget):
            continue
        await _delete(box.fs, n, budget)
        stats["messages_deleted"] += 1
        log.warning("purge: %s: message object %s is in no index (a save interrupted "
                    "before its log record); deleted", who, n)


@contextlib.asynccontextmanager
async def _looking_at(um: UserMail, guid: str) -> AsyncIterator[Mailbox | None]:
    """The mailbox ``guid``: the one this process has open, or one opened for purge alone
    and let go afterwards (so that purging a user does not keep every mailbox's index in
    memory).  None if its index cannot be opened (force-resync's work, not purge's)."""
    box = um.opened_mailbox(guid)
    if box is not None:
        yield box
        return
    try:
        box = await um.open_mailbox_apart(guid)
    except MailboxNotFound:
        yield None
        return
    except (CorruptMailbox, FsError) as exc:
        log.warning("purge: user=%s mailbox %s cannot be opened (%s); skipped", um.user,
                    guid, exc)
        yield None
        return
    try:
        yield box
    finally:
        box.close()


async def purge_user(store: MailStore, user: str, *, grace: float | None = None,
                     budget: PurgeBudget | None = None, resume: str | None = None
                     ) -> PurgeResult:
    """Garbage under one user's prefix: dead log generations (mailbox list and every
    mailbox), cache chunks no snapshot names, sdbox message objects no index names, and
    the objects of mailboxes no longer in the list; only what is older than the grace
    period.  With a ``budget``, stops when it is spent and says where to ``resume``
    (mailboxes are visited in GUID order)."""
    grace = store.settings.orphan_grace if grace is None else grace
    budget = budget or PurgeBudget()
    stats = _new_stats()
    now = time.time()
    # A user open already is not touched in the store's LRU of users: purging the users
    # kept open must not keep them open.
    um = store.cached_user(user) or await store.user(user)
    step = resume or ""
    try:
        budget.spend()
        names = [n async for n in um.fs.iter(um.prefix + "/")]
        budget.spend(len(names) // 1000)
        budget.spend(2)
        await um.refresh_list()
        if step < "list":
            await _purge_generations(um.fs, um.list_log.base,
                                     [n for n in names if n.startswith(um.list_log.base + "/")],
                                     stats, budget)
            step = "list"
        mbox = f"{um.prefix}/mbox/"
        by_guid: dict[str, list[str]] = {}
        for n in names:
            if n.startswith(mbox):
                by_guid.setdefault(n[len(mbox):].split("/", 1)[0], []).append(n)
        live = set(um.list_state.by_guid)
        for guid in sorted(by_guid):
            key = f"mbox:{guid}"
            if key <= step:
                continue
            if guid in live:
                async with _looking_at(um, guid) as box:
                    if box is not None:
                        await _purge_mailbox(box, by_guid[guid], grace, now, stats, budget)
            else:
                # A deleted mailbox whose objects were not all removed.
                for n in by_guid[guid]:
                    if await _older_than(um.fs, n, grace, now, budget):
                        await _delete(um.fs, n, budget)
                        stats["orphans_deleted"] += 1
            step = key
    except BudgetSpent:
        return PurgeResult(stats, step)
    return PurgeResult(stats)


async def purge(store: MailStore, users: list[str], *, grace: float | None = None
                ) -> dict[str, int]:
    """Reclaim space for ``users``: everything :func:`purge_user` finds, and (mdbox) storage
    objects none of whose messages is referenced any more, rewriting partly dead ones.
    Only objects older than the orphan grace period are touched."""
    grace = store.settings.orphan_grace if grace is None else grace
    stats = _new_stats()
    for user in users:
        for k, v in (await purge_user(store, user, grace=grace)).stats.items():
            stats[k] += v
    if store.settings.layout == "mdbox":
        done = await purge_storage(store, users, grace=grace)
        for k, v in done.stats.items():
            stats[k] += v
    return stats


async def purge_storage(store: MailStore, users: list[str], *, grace: float | None = None,
                        budget: PurgeBudget | None = None, resume: str | None = None
                        ) -> PurgeResult:
    """mdbox storage objects: delete those none of whose messages a mailbox of ``users``
    holds (a message naming another user is kept), rewrite those partly dead.  With a
    ``budget``, objects go in name order and ``cursor`` is the last one done."""
    grace = store.settings.orphan_grace if grace is None else grace
    budget = budget or PurgeBudget()
    stats = _new_stats()
    now = time.time()
    boxes: dict[tuple[str, str], Mailbox] = {}
    #: Mailboxes whose index is damaged: their references count as unknown.
    unsure: set[tuple[str, str]] = set()
    scanned = set(users)
    last = resume or ""
    try:
        # Mailboxes opened for this purge alone are let go at the end.
        async with contextlib.AsyncExitStack() as stack:
            for user in users:
                um = store.cached_user(user) or await store.user(user)
                budget.spend(2)
                await um.refresh_list()
                for entry in um.list_mailboxes():
                    box = await stack.enter_async_context(_looking_at(um, entry.guid))
                    if box is None:
                        unsure.add((user, entry.guid))
                        continue
                    budget.spend(2)
                    await box.refresh()
                    boxes[(user, entry.guid)] = box
                    if box.log.damage or box.log.problems:
                        unsure.add((user, entry.guid))
            budget.spend()
            paths = sorted([p async for p in store.fs.iter("storage/")])
            budget.spend(len(paths) // 1000)
            for path in paths:
                if path <= last:
                    continue
                await _purge_storage_object(store, path, boxes, unsure, scanned, grace, now,
                                            stats, budget)
                last = path
    except BudgetSpent:
        return PurgeResult(stats, last)
    return PurgeResult(stats)


async def _purge_storage_object(store: MailStore, path: str,
                                boxes: dict[tuple[str, str], Mailbox],
                                unsure: set[tuple[str, str]], scanned: set[str],
                                grace: float, now: float, stats: dict[str, int],
                                budget: PurgeBudget) -> None:
    oid = path[len("storage/"):]
    if objects.object_age(oid, now) < grace:
        return
    budget.spend()
    try:
        data = await store_io(store.fs.read(path))
    except FsNotFound:
        return
    live: list[tuple[objects.StoredMeta, list[Mailbox]]] = []
    dead: list[tuple[objects.StoredMeta, list[Mailbox]]] = []
    metas = list(objects.parse_objects(data))
    for meta in metas:
        loc = f"@{oid}:{meta.offset}"
        holders = [h for user, mguid in meta.refs
                   if (h := boxes.get((user, mguid))) is not None and loc in h.state.by_loc]
        # A message referenced by a user this purge did not look at, or by a mailbox
        # whose index is damaged, is kept.
        unknown = any(user not in scanned or (user, mguid) in unsure
                      for user, mguid in meta.refs)
        (live if holders or unknown else dead).append((meta, holders))
    if not dead or not await _older_than(store.fs, path, grace, now, budget):
        return
    if live:
        items = [(data[m.offset:m.offset + m.size], m) for m, _ in live]
        new_oid = objects.new_object_id()
        parts, moves, pos = [], {}, 0
        for raw, meta in items:
            old_loc = f"@{oid}:{meta.offset}"
            blob = objects.encode_message(meta, raw)
            moves[old_loc] = f"@{new_oid}:{pos + meta.offset}"
            parts.append(blob)
            pos += len(blob)
        budget.spend(1 + len(live))
        await store_io(store.fs.write(f"storage/{new_oid}", b"".join(parts)))
        for box in {id(b): b for _, hs in live for b in hs}.values():
            await box.log.commit([["m", moves]])
        stats["storage_rewritten"] += 1
    else:
        stats["storage_deleted"] += 1
    await _delete(store.fs, path, budget)
    forget: dict[tuple[str, str], list[str]] = {}
    for meta, _ in dead:
        for user, mguid in meta.refs:
            forget.setdefault((user, mguid), []).append(meta.guid)
    for key, guids in forget.items():
        owner = boxes.get(key)
        if owner is not None and guids:
            await owner.log.commit([["p", guids]])
    log.info("purge: %s %s (%d dead, %d live messages)", "rewrote" if live else
             "deleted", path, len(dead), len(live))


class BackgroundPurge:
    """The server's periodic purge: every ``interval`` seconds, :func:`purge_user` for each
    user this process has open (those it serves are those that make garbage), each within
    ``budget`` requests per run and resumed where it stopped at the next run; then, with
    ``storage`` (mdbox, one process of a server), :func:`purge_storage` likewise."""

    def __init__(self, store: MailStore, interval: float, budget: int, *,
                 storage: bool = True) -> None:
        self.store = store
        self.interval = interval
        self.budget = budget
        self.storage = storage and store.settings.layout == "mdbox"
        #: Where each user's purge stopped for want of budget.
        self.cursors: dict[str, str] = {}
        self.storage_cursor: str | None = None
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="background purge")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        # The first run is spread over the interval, so that processes started together
        # (the workers of a server, a restart of many) do not purge all at once.
        delay = self.interval * random.uniform(0.5, 1.0)
        while True:
            await asyncio.sleep(delay)
            delay = self.interval
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - a failed run is logged; the next one retries
                log.exception("background purge failed; trying again in %.0f s",
                              self.interval)

    async def run_once(self) -> dict[str, int]:
        """One run over the users open now and those left unfinished."""
        stats = _new_stats()
        users = list(dict.fromkeys([*self.cursors, *self.store.recent_users()]))
        for user in users:
            try:
                res = await purge_user(self.store, user, budget=PurgeBudget(self.budget),
                                       resume=self.cursors.pop(user, None))
            except (StorageUnavailable, CorruptMailbox, FsError) as exc:
                log.warning("background purge of user=%s: %s", user, exc)
                continue
            if res.cursor is not None:
                self.cursors[user] = res.cursor
            for k, v in res.stats.items():
                stats[k] += v
        if self.storage and users:
            res = await purge_storage(self.store, users, budget=PurgeBudget(self.budget),
                                      resume=self.storage_cursor)
            self.storage_cursor = res.cursor
            for k, v in res.stats.items():
                stats[k] += v
        self.runs += 1
        if any(stats.values()):
            log.info("background purge: %s", ", ".join(f"{k} {v}" for k, v in stats.items()
                                                         if v))
        return stats


__all__ = ["BackgroundPurge", "BudgetSpent", "PurgeBudget", "PurgeResult", "ResyncReport",
           "StorageUnavailable", "dead_generations", "force_resync", "purge", "purge_storage",
           "purge_user"]
