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

``purge(store)`` (``doveadm purge``): for mdbox, deletes storage objects none of whose
messages is referenced any more and rewrites objects that are partly dead; for both
layouts, removes cache chunks and objects that nothing refers to once they are older than
the orphan grace period.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudcote.libfs.api import FsError, FsNotFound

from . import objects
from .entries import cache_entry_of
from .errors import CorruptMailbox, StorageUnavailable, store_io
from .index import MailboxState, ranges_of
from .layout import object_path

if TYPE_CHECKING:
    from .mailbox import Mailbox
    from .store import MailStore, UserMail

log = logging.getLogger("cloudcote.core.mail.resync")


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
        from .txlog import parse_frames

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


async def purge(store: MailStore, users: list[str]) -> dict[str, int]:
    """Reclaim space: mdbox storage objects nothing references (rewriting partly dead ones),
    cache chunks and message objects nothing references, objects of deleted mailboxes.
    Only objects older than the orphan grace period are touched."""
    grace = store.settings.orphan_grace
    stats = {"storage_deleted": 0, "storage_rewritten": 0, "orphans_deleted": 0}
    now = time.time()
    boxes: dict[tuple[str, str], Mailbox] = {}
    scanned = set(users)
    for user in users:
        um = await store.user(user)
        await um.refresh_list()
        for entry in um.list_mailboxes():
            box = await um.mailbox_by_guid(entry.guid)
            await box.refresh()
            boxes[(user, entry.guid)] = box
        stats["orphans_deleted"] += await _purge_user_orphans(um, grace, now)
    if store.settings.layout != "mdbox":
        return stats
    async for path in store.fs.iter("storage/"):
        oid = path[len("storage/"):]
        if objects.object_age(oid, now) < grace:
            continue
        try:
            data = await store_io(store.fs.read(path))
        except FsNotFound:
            continue
        live: list[tuple[objects.StoredMeta, list[Mailbox]]] = []
        dead: list[tuple[objects.StoredMeta, list[Mailbox]]] = []
        metas = list(objects.parse_objects(data))
        for meta in metas:
            loc = f"@{oid}:{meta.offset}"
            holders = [h for user, mguid in meta.refs
                       if (h := boxes.get((user, mguid))) is not None and loc in h.state.by_loc]
            # A message referenced by a user this purge did not look at is kept.
            unknown = any(user not in scanned for user, _ in meta.refs)
            (live if holders or unknown else dead).append((meta, holders))
        if not dead:
            continue
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
            await store_io(store.fs.write(f"storage/{new_oid}", b"".join(parts)))
            for box in {id(b): b for _, hs in live for b in hs}.values():
                await box.log.commit([["m", moves]])
            stats["storage_rewritten"] += 1
        else:
            stats["storage_deleted"] += 1
        await store.fs.delete(path)
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
    return stats


async def _purge_user_orphans(um: UserMail, grace: float, now: float) -> int:
    """Objects under the user's prefix that nothing refers to: mailboxes no longer in the
    list, cache chunks no snapshot names."""
    removed = 0
    prefix = f"{um.prefix}/mbox/"
    live = set(um.list_state.by_guid)
    async for path in um.fs.iter(prefix):
        guid = path[len(prefix):].split("/", 1)[0]
        if guid in live:
            continue
        try:
            st = await um.fs.stat(path)
        except FsError:
            continue
        if now - st.mtime < grace:
            continue
        await um.fs.delete(path)
        removed += 1
    return removed


__all__ = ["ResyncReport", "StorageUnavailable", "force_resync", "purge"]
