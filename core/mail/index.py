"""A mailbox's index: the state its transaction log describes.

Log records (JSON lists; the first element names the kind):

``["a", guid, loc, size, internaldate, tz, flags, cache]``
    a saved (appended, copied, moved) message.  Its UID is the mailbox's next UID at this
    point of the log: UIDs come from log order, so every process agrees without a counter.
``["f", uid_ranges, mode, flags, unchangedsince]``
    a STORE: ``mode`` is ``"+"``, ``"-"`` or ``"="``; with ``unchangedsince`` (CONDSTORE,
    RFC 7162 3.1.3) a message whose MODSEQ is higher is left alone and reported.
``["x", uid_ranges]``
    an expunge.
``["m", {old_loc: new_loc}]``
    messages moved to another storage object by ``purge`` (mdbox).
``["p", guids]``
    purge reclaimed these expunged mdbox messages' space.
``["pad", ...]``, ``["reset", k]``
    filler that closes a log, and a rebuilt index to load from ``snap.<k>`` (both written
    by force-resync; the log handles them).

Every record that changes something takes the next MODSEQ (RFC 7162): all messages a
record changes share it.  Expunged UIDs are remembered with their MODSEQ for QRESYNC's
VANISHED (EARLIER), compacted into ranges when the list grows.
"""

from __future__ import annotations

import bisect
import gc
import json
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}
_NO_FLAGS: frozenset[str] = frozenset()
#: Loose cache entries are moved into a chunk object of their own at a rotation once
#: there are this many.
CACHE_CHUNK_MIN = 64
#: Expunge history entries kept before the oldest are merged (RFC 7162 allows reporting
#: more VANISHED UIDs than strictly needed, never fewer).
EXPUNGE_HISTORY = 2000


def normalize_flag(flag: str) -> str:
    """System flags in their canonical spelling (flags compare case-insensitively);
    keywords as given."""
    return _SYSTEM_BY_LOWER.get(flag.lower(), flag)


def new_guid() -> str:
    """A 128-bit GUID as 32 lowercase hex digits."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class Message:
    """One message as the index knows it: everything but the bytes."""

    uid: int
    guid: str
    loc: str
    size: int
    internaldate: int
    tz: int
    flags: frozenset[str]
    modseq: int

    def to_json(self) -> list[Any]:
        return [self.uid, self.guid, self.loc, self.size, self.internaldate, self.tz,
                sorted(self.flags), self.modseq]

    @classmethod
    def from_json(cls, v: list[Any]) -> Message:
        return cls(int(v[0]), str(v[1]), str(v[2]), int(v[3]), int(v[4]), int(v[5]),
                   frozenset(v[6]), int(v[7]))


def ranges_of(uids: Iterable[int]) -> list[list[int]]:
    """Sorted UIDs as ``[[lo, hi], ...]`` ranges (compact in log records)."""
    out: list[list[int]] = []
    for uid in sorted(set(uids)):
        if out and out[-1][1] + 1 == uid:
            out[-1][1] = uid
        else:
            out.append([uid, uid])
    return out


def iter_ranges(ranges: Iterable[Iterable[int]]) -> Iterator[int]:
    for lo, hi in ranges:
        yield from range(int(lo), int(hi) + 1)


class MailboxState:
    """The index of one mailbox: header values, messages by UID, expunge history, and
    the cache of the fields clients ask for all the time."""

    def __init__(self, guid: str, uidvalidity: int) -> None:
        self.guid = guid
        self.uidvalidity = uidvalidity
        self.next_uid = 1
        self.highest_modseq = 1
        self.uids: list[int] = []
        self.messages: dict[int, Message] = {}
        #: UID of each stored location: a second record for the same object (force-resync
        #: linked an object whose save was still in flight) is the same message.
        self.by_loc: dict[str, int] = {}
        #: [modseq, lo, hi]: UIDs lo..hi expunged at (at most) modseq.
        self.expunged: list[list[int]] = []
        self.keywords: set[str] = set()
        self.unseen = 0
        self.total_size = 0
        #: Cache entries by message GUID that are not in a chunk yet.
        self.loose_cache: dict[str, dict[str, Any]] = {}
        #: Cache chunk objects: [name, number of entries].
        self.cache_chunks: list[list[Any]] = []
        #: Chunk name of each GUID whose cache entry is in a chunk.
        self.cache_where: dict[str, str] = {}
        #: UID of the first message no session has claimed as \\Recent (RFC 3501 2.3.2):
        #: ``["r", upto]`` records claim the UIDs below ``upto``, first come first served
        #: in log order, so exactly one session sees each message as recent.
        self.recent_from = 1
        self.changes = 0
        #: mdbox: GUIDs of expunged messages whose storage slots purge has not reclaimed
        #: yet (so force-resync does not link them again).
        self.purgeable: set[str] = set()

    # -- derived values -------------------------------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.uids)

    def by_seq(self, seq: int) -> Message:
        return self.messages[self.uids[seq - 1]]

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def __iter__(self) -> Iterator[Message]:
        for uid in self.uids:
            yield self.messages[uid]

    def expunged_since(self, modseq: int) -> list[int]:
        """UIDs expunged with a MODSEQ above ``modseq`` (may include a few more)."""
        out: list[int] = []
        for ms, lo, hi in self.expunged:
            if ms > modseq:
                out.extend(range(lo, hi + 1))
        return sorted(set(out))

    # -- applying records -----------------------------------------------------------------

    def apply(self, records: list[Any], where: tuple[int, int]) -> list[Any]:
        return [self._apply_one(rec) for rec in records]

    def _apply_one(self, rec: list[Any]) -> Any:
        kind = rec[0]
        self.changes += 1
        if kind == "a":
            return self._append(rec)
        if kind == "f":
            return self._store(rec)
        if kind == "x":
            return self._expunge(rec[1])
        if kind == "p":
            self.purgeable.difference_update(rec[1])
            return None
        if kind == "r":
            lo = self.recent_from
            hi = max(lo, min(int(rec[1]), self.next_uid))
            self.recent_from = hi
            return [lo, hi]
        if kind == "m":
            for msg in self.messages.values():
                new = rec[1].get(msg.loc)
                if new is not None:
                    self.by_loc.pop(msg.loc, None)
                    msg.loc = new
                    self.by_loc[new] = msg.uid
            return None
        return None

    def _append(self, rec: list[Any]) -> int:
        _, guid, loc, size, idate, tz, flags, cache = rec[:8]
        if loc in self.by_loc:
            return self.by_loc[loc]
        uid = self.next_uid
        self.next_uid += 1
        self.highest_modseq += 1
        fl = frozenset(normalize_flag(f) for f in flags) if flags else _NO_FLAGS
        msg = Message(uid, guid, loc, int(size), int(idate), int(tz), fl, self.highest_modseq)
        self.uids.append(uid)
        self.messages[uid] = msg
        self.by_loc[loc] = uid
        self.total_size += msg.size
        if "\\Seen" not in fl:
            self.unseen += 1
        if fl:
            self.keywords.update(f for f in fl if not f.startswith("\\"))
        if cache and guid not in self.cache_where:
            self.loose_cache[guid] = cache
        return uid

    def _store(self, rec: list[Any]) -> dict[str, list[int]]:
        _, ranges, mode, flags, unchangedsince = rec[:5]
        fl = frozenset(normalize_flag(f) for f in flags)
        changed: list[int] = []
        failed: list[int] = []
        modseq = self.highest_modseq + 1
        for uid in iter_ranges(ranges):
            msg = self.messages.get(uid)
            if msg is None:
                continue
            if unchangedsince is not None and msg.modseq > int(unchangedsince):
                failed.append(uid)
                continue
            if mode == "+":
                new = msg.flags | fl
            elif mode == "-":
                new = msg.flags - fl
            else:
                new = fl
            if new == msg.flags:
                continue
            if ("\\Seen" in msg.flags) != ("\\Seen" in new):
                self.unseen += 1 if "\\Seen" in msg.flags else -1
            msg.flags = new
            msg.modseq = modseq
            changed.append(uid)
        if changed:
            self.highest_modseq = modseq
            self.keywords.update(f for f in fl if not f.startswith("\\"))
        return {"changed": changed, "failed": failed}

    def _expunge(self, ranges: list[Any]) -> list[int]:
        gone: list[int] = []
        for uid in iter_ranges(ranges):
            msg = self.messages.pop(uid, None)
            if msg is None:
                continue
            self.by_loc.pop(msg.loc, None)
            gone.append(uid)
            self.total_size -= msg.size
            if "\\Seen" not in msg.flags:
                self.unseen -= 1
            self.loose_cache.pop(msg.guid, None)
            if msg.loc.startswith("@"):
                self.purgeable.add(msg.guid)
        if gone:
            gone_set = set(gone)
            self.uids = [u for u in self.uids if u not in gone_set]
            self.highest_modseq += 1
            for lo, hi in ranges_of(gone):
                self.expunged.append([self.highest_modseq, lo, hi])
            if len(self.expunged) > EXPUNGE_HISTORY:
                # Merge the oldest half into one entry per range, at the newest of their
                # MODSEQs: reports can then only include more UIDs, never miss one.
                half = len(self.expunged) // 2
                old, self.expunged = self.expunged[:half], self.expunged[half:]
                top = max(e[0] for e in old)
                merged = ranges_of(u for _, lo, hi in old for u in range(lo, hi + 1))
                self.expunged[:0] = [[top, lo, hi] for lo, hi in merged]
        return gone

    # -- cache ----------------------------------------------------------------------------

    def cache_entry_loose(self, guid: str) -> dict[str, Any] | None:
        return self.loose_cache.get(guid)

    def take_cache_chunk(self, base: str) -> list[tuple[str, bytes]]:
        """At a rotation: move the loose cache entries into a new chunk object once there
        are enough of them; returns the objects to write before the snapshot."""
        live = {m.guid for m in self.messages.values()}
        for guid in [g for g in self.loose_cache if g not in live]:
            del self.loose_cache[guid]
        if len(self.loose_cache) < CACHE_CHUNK_MIN:
            return []
        name = f"{base}/cache/{uuid.uuid4().hex}"
        blob = zlib.compress(json.dumps(self.loose_cache, separators=(",", ":")).encode(), 6)
        for guid in self.loose_cache:
            self.cache_where[guid] = name
        self.cache_chunks.append([name, len(self.loose_cache)])
        self.loose_cache = {}
        return [(name, blob)]

    # -- snapshots ------------------------------------------------------------------------

    def encode_snapshot(self) -> bytes:
        """Snapshot version 2: the messages as columns (one JSON list per field, flags as
        indexes into the distinct flag sets, the cache chunk of each as an index into the
        chunk list), which loads several times faster than one list per message."""
        msgs = [self.messages[uid] for uid in self.uids]
        where = self.cache_where
        live_chunks = set(where[m.guid] for m in msgs if m.guid in where)
        chunks = [c for c in self.cache_chunks if c[0] in live_chunks]
        chunk_ix = {c[0]: i for i, c in enumerate(chunks)}
        flagsets: dict[frozenset[str], int] = {}
        doc = {
            "v": 2,
            "guid": self.guid,
            "uidvalidity": self.uidvalidity,
            "next_uid": self.next_uid,
            "hms": self.highest_modseq,
            "rf": self.recent_from,
            "uid": list(self.uids),
            "mguid": [m.guid for m in msgs],
            "loc": [m.loc for m in msgs],
            "size": [m.size for m in msgs],
            "idate": [m.internaldate for m in msgs],
            "tz": [m.tz for m in msgs],
            "fl": [flagsets.setdefault(m.flags, len(flagsets)) for m in msgs],
            "flagsets": [sorted(f) for f in flagsets],
            "ms": [m.modseq for m in msgs],
            "chunk": [chunk_ix.get(where.get(m.guid, ""), -1) for m in msgs],
            "exp": self.expunged,
            "kw": sorted(self.keywords),
            "pg": sorted(self.purgeable),
            "loose": self.loose_cache,
            "chunks": chunks,
        }
        return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)

    @classmethod
    def decode_snapshot(cls, data: bytes) -> MailboxState:
        # Building a large mailbox's objects would start many garbage collections that
        # can find nothing (none of these objects is garbage yet): a quarter of the time.
        paused = gc.isenabled()
        gc.disable()
        try:
            return cls._decode_snapshot(data)
        finally:
            if paused:
                gc.enable()

    @classmethod
    def _decode_snapshot(cls, data: bytes) -> MailboxState:
        doc = json.loads(zlib.decompress(data))
        version = doc.get("v")
        if version not in (1, 2):
            raise ValueError(f"unknown snapshot version {doc.get('v')!r}")
        st = cls(str(doc["guid"]), int(doc["uidvalidity"]))
        st.next_uid = int(doc["next_uid"])
        st.highest_modseq = int(doc["hms"])
        st.recent_from = int(doc.get("rf", st.next_uid))
        st.expunged = [list(map(int, e)) for e in doc["exp"]]
        st.keywords = set(doc["kw"])
        st.purgeable = set(doc.get("pg", ()))
        st.loose_cache = dict(doc["loose"])
        st.cache_chunks = [list(c) for c in doc["chunks"]]
        if version == 1:
            for v in doc["msgs"]:
                msg = Message.from_json(v)
                st.uids.append(msg.uid)
                st.messages[msg.uid] = msg
                st.by_loc[msg.loc] = msg.uid
                st.total_size += msg.size
                if "\\Seen" not in msg.flags:
                    st.unseen += 1
            st.uids.sort()
            st.cache_where = dict(doc["where"])
            return st
        cols = [doc[k] for k in ("uid", "mguid", "loc", "size", "idate", "tz", "fl", "ms")]
        flagsets = [frozenset(normalize_flag(f) for f in fs) for fs in doc["flagsets"]]
        messages = st.messages
        for uid, guid, loc, size, idate, tz, fl, ms in zip(*cols, strict=True):
            messages[uid] = Message(uid, guid, loc, size, idate, tz, flagsets[fl], ms)
        st.uids = sorted(messages)
        st.by_loc = dict(zip(cols[2], cols[0], strict=True))
        st.total_size = sum(cols[3])
        unseen_sets = {i for i, fs in enumerate(flagsets) if "\\Seen" not in fs}
        st.unseen = sum(1 for fl in cols[6] if fl in unseen_sets)
        names = [c[0] for c in st.cache_chunks]
        st.cache_where = {guid: names[ix] for guid, ix in zip(cols[1], doc["chunk"], strict=True)
                          if ix >= 0}
        return st
