"""Transaction logs on libfs: append-only frames in rotating log objects, plus snapshots.

Dovecot keeps ``dovecot.index.log`` and rotates it under a lock.  Here there is no lock: the
only primitives are libfs's atomic append (which says at which byte offset a record
landed) and atomic create-if-absent.  Objects under a log's base path ``B``::

    B/log.<k>    the k-th log object (k = 1, 2, ...), built by appends only
    B/snap.<k>   the state as of the start of log k, written create-if-absent

**Frames.** Every append is one frame: ``CCL1`` magic, a flags byte (1 = zlib), the payload
length and its CRC-32 (both 32-bit big-endian), then the payload: a JSON list of records.
A reader trusts only whole frames whose checksum matches; it stops before a frame that is
still incomplete (a torn tail) and skips, once and loudly, bytes it cannot parse (scanning
for the next valid frame), so that one damaged spot never hides later acknowledged frames.

**Rotation without a lock.** A frame of log ``k`` counts only if it *starts* before
``limit`` bytes.  Appends are totally ordered and each appender learns its frame's offset,
so every process agrees which frames count: once the valid region ends at or beyond
``limit``, later frames of log ``k`` are void, and their writers (who see an offset
``>= limit``) append them again to log ``k + 1``.  A reader that has read log ``k`` up to
``limit`` continues with log ``k + 1`` from offset 0 and never looks at log ``k`` again.
The process whose frame closed a log (or whose frame was void) writes ``snap.<k+1>``,
the state exactly at the boundary; two such writers compute the same state, and
create-if-absent keeps one.  Opening reads the newest snapshot that loads, then the logs
from there on: one snapshot plus a short tail.  Since an append creates an absent object, a
writer that stalled while the log it appends to was rotated away checks, before it
acknowledges, that its frame is not in a re-created object nobody reads (docs/storage.md).

**Group commit.** Records committed while an append for the same log is in flight wait and
go out together as the next frame, so a busy mailbox costs one append per batch, not per
record.  A writer whose frame starts where its view of the log ends applies its own records
without reading the log back.

**Durability.** A frame is acknowledged once ``Fs.sync`` of its log returns, unless every
record in it is of a kind the log was told may wait (``deferrable``: a mailbox's flag
changes and \\Recent claims).  Such a frame becomes durable with the next synced frame of
the same log object (a sync covers every byte before it), and every process syncs a log
before it crosses into the next one, so a power loss can take only a tail of deferrable
frames, never a log's closing frame that later logs depend on (docs/storage.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import cachetools

from cloudcote.libfs.api import Feature, Fs, FsError, FsExists, FsNotFound

from .errors import CorruptMailbox, StorageUnavailable, store_io

log = logging.getLogger("cloudcote.core.mail.txlog")

MAGIC = b"CCL1"
HEADER = struct.Struct(">4sBII")
FLAG_ZLIB = 1
#: Payloads above this many bytes are compressed when that makes them smaller.
COMPRESS_ABOVE = 200
#: A frame larger than this is refused as corrupt (a bad length field).
MAX_FRAME = 256 * 1024 * 1024
#: Log rotation limit where reading a log range is one request (posix, SQL, Cassandra).
LIMIT_BATCH_READ = 1024 * 1024
#: Log rotation limit where every record is an object of its own (S3).  Opening reads the
#: tail's segments concurrently, so a longer tail costs requests more than time.  A
#: rotation costs about three requests (snapshot, new log head, its listing): 32 KiB (some
#: 65 single saves) makes that 0.04 per save, where 64 KiB would save 0.02 more per save
#: for some 30 more reads per opening (docs/storage.md).
LIMIT_SEGMENTED = 32 * 1024

_NAME = re.compile(r"^(log|snap)\.(\d{8})$")
#: Times an opener lists and reads again a log whose snapshots are listed but not yet
#: readable (it is being created this moment).
OPEN_RETRIES = 5


#: Log generations (and their snapshots) kept behind the newest, for readers that are
#: behind; one further behind catches up from the newest snapshot.  Rotation deletes
#: nothing: purge deletes the older generations (resync.py ``dead_generations``).
KEEP_GENERATIONS = 4


class _StillCreating(Exception):
    """Snapshots are listed, none can be read yet, and there is no log."""


class _LogVanished(CorruptMailbox):
    """A log this reader had not finished was deleted: the reader fell more than the kept
    generations behind (a process that stalled while others rotated)."""


def default_limit(fs: Fs) -> int:
    """The rotation limit that suits ``fs``: large where reading a log range costs one
    request, small where each record costs one."""
    batch = getattr(Feature, "BATCH_LOG_READ", None)
    if batch is not None and batch in fs.features:
        return LIMIT_BATCH_READ
    if Feature.APPEND in fs.features:
        return LIMIT_BATCH_READ
    return LIMIT_SEGMENTED


def encode_frame(records: list[Any], *, compress: bool = True) -> bytes:
    """One frame holding ``records`` (JSON values)."""
    payload = json.dumps(records, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    flags = 0
    if compress and len(payload) > COMPRESS_ABOVE:
        packed = zlib.compress(payload, 6)
        if len(packed) < len(payload):
            payload, flags = packed, FLAG_ZLIB
    return HEADER.pack(MAGIC, flags, len(payload), zlib.crc32(payload)) + payload


def _decode_payload(flags: int, payload: bytes) -> list[Any]:
    if flags & FLAG_ZLIB:
        payload = zlib.decompress(payload)
    value = json.loads(payload)
    if not isinstance(value, list):
        raise ValueError("frame payload is not a list")
    return value


@dataclass
class Frame:
    """A parsed frame: where it starts and ends in its log, and its records."""

    start: int
    end: int
    records: list[Any]


@dataclass
class ParseResult:
    frames: list[Frame]
    #: Offset up to which the buffer was consumed (the start of a torn tail, if any).
    end: int
    #: Byte ranges skipped as unparseable.
    damaged: list[tuple[int, int]]


def parse_frames(buf: bytes, base: int) -> ParseResult:
    """Parse the frames in ``buf`` (which starts at log offset ``base``)."""
    frames: list[Frame] = []
    damaged: list[tuple[int, int]] = []
    pos = 0
    n = len(buf)
    while pos < n:
        frame = _frame_at(buf, pos)
        if frame is None or frame is False:
            # Incomplete (a torn tail, or an append still arriving) or not a frame at all.
            # Unless a valid frame follows, stop here and look again next time; if one
            # does, the span up to it is damaged.
            nxt = _next_valid(buf, pos + 1)
            if nxt is None:
                break
            damaged.append((base + pos, base + nxt))
            pos = nxt
            continue
        assert isinstance(frame, tuple)
        flags, length = frame
        payload = buf[pos + HEADER.size:pos + HEADER.size + length]
        try:
            records = _decode_payload(flags, payload)
        except (ValueError, zlib.error):
            nxt = _next_valid(buf, pos + 1)
            end = nxt if nxt is not None else n
            damaged.append((base + pos, base + end))
            pos = end
            continue
        end = pos + HEADER.size + length
        frames.append(Frame(base + pos, base + end, records))
        pos = end
    return ParseResult(frames, base + pos, damaged)


def _frame_at(buf: bytes, pos: int) -> tuple[int, int] | None | bool:
    """(flags, length) of a whole valid frame at ``pos``; None if it may still be
    arriving (too short); False if it is not a frame."""
    if len(buf) - pos < HEADER.size:
        return None if MAGIC.startswith(bytes(buf[pos:pos + 4])[:4]) else False
    magic, flags, length, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC or length > MAX_FRAME or flags & ~FLAG_ZLIB:
        return False
    if len(buf) - pos - HEADER.size < length:
        return None
    if zlib.crc32(buf[pos + HEADER.size:pos + HEADER.size + length]) != crc:
        return False
    return flags, length


def _next_valid(buf: bytes, pos: int) -> int | None:
    while True:
        pos = buf.find(MAGIC, pos)
        if pos < 0:
            return None
        got = _frame_at(buf, pos)
        if isinstance(got, tuple):
            return pos
        pos += 1


class LogState(Protocol):
    """What a transaction log's state machine offers the log."""

    def apply(self, records: list[Any], where: tuple[int, int]) -> list[Any]:
        """Apply one frame's records (``where``: log number, frame start); return one
        result per record."""
        ...

    def encode_snapshot(self) -> bytes:
        """The whole state, for ``snap.<k>``."""
        ...


S = TypeVar("S", bound=LogState)


class TransactionLog(Generic[S]):
    """One log (a mailbox's, or a user's mailbox list) as seen by this process.

    ``decode`` builds a state from snapshot bytes.  All state changes happen through
    frames, in log order; ``state`` is the state as of ``(k, offset)``.
    """

    def __init__(
        self,
        fs: Fs,
        base: str,
        decode: Callable[[bytes], S],
        *,
        limit: int | None = None,
        what: str = "",
        before_snapshot: Callable[[S], list[tuple[str, bytes]]] | None = None,
        deferrable: frozenset[str] = frozenset(),
    ) -> None:
        self.fs = fs
        self.base = base
        self.decode = decode
        self.limit = limit if limit is not None else default_limit(fs)
        self.what = what or base
        self.before_snapshot = before_snapshot
        #: Record kinds whose frames are not synced on their own (see the module doc).
        self.deferrable = deferrable
        self.state: S | None = None
        self.k = 0
        self.offset = 0
        #: (k, start) of every damaged span reported, so each is logged once.
        self.damage: list[tuple[int, int, int]] = []
        #: Problems found while opening (missing or unreadable snapshots), and incomplete
        #: frames seen at a log's end.
        self.problems: list[str] = []
        self.torn: set[tuple[int, int, int]] = set()
        self._mutex = asyncio.Lock()
        #: Results of this process's recent commits by (log, offset), for a writer that
        #: re-reads its own frame; the oldest go first.
        self._recent: cachetools.FIFOCache[tuple[int, int], list[Any]] = \
            cachetools.FIFOCache(4096)
        self._queue: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._snapshot_duty: set[int] = set()
        self._captured: list[tuple[int, list[tuple[str, bytes]], bytes]] = []
        self._void: set[int] = set()
        #: Frames of other writers applied by refreshes (for change notification).
        self.generation = 0

    # -- names ----------------------------------------------------------------------------

    def log_path(self, k: int) -> str:
        return f"{self.base}/log.{k:08d}"

    def snap_path(self, k: int) -> str:
        return f"{self.base}/snap.{k:08d}"

    async def list_objects(self) -> tuple[list[int], list[int]]:
        """(snapshot numbers, log numbers) present, ascending."""
        snaps: list[int] = []
        logs: list[int] = []
        async for name in self.fs.iter(self.base + "/"):
            m = _NAME.match(name[len(self.base) + 1:])
            if m:
                (logs if m.group(1) == "log" else snaps).append(int(m.group(2)))
        return sorted(snaps), sorted(logs)

    # -- open -----------------------------------------------------------------------------

    async def create(self, state: S) -> None:
        """Start a new log with ``state`` as ``snap.1``.  FsExists if it exists."""
        await self._io(self.fs.write(self.snap_path(1), state.encode_snapshot()))
        self.state, self.k, self.offset = state, 1, 0

    async def open(self) -> S:
        """Load the newest snapshot that loads and read the logs after it.  Raises
        CorruptMailbox when no snapshot loads (force-resync rebuilds), FsNotFound when
        there is nothing at all.

        A store may list an object a moment before it can be read (the Cassandra driver
        writes the listing entry first): a log that shows only snapshots, none of them
        readable yet, is being created right now, so it is listed and read again."""
        for attempt in range(OPEN_RETRIES + 1):
            snaps, logs = await self._io(self.list_objects())
            if not snaps and not logs:
                raise FsNotFound(f"{self.what}: no log", path=self.base)
            try:
                await self._open_listed(snaps, logs)
                break
            except _StillCreating:
                if attempt == OPEN_RETRIES:
                    raise CorruptMailbox(f"{self.what}: snapshots {snaps} are listed but "
                                         "none can be read") from None
                await asyncio.sleep(0.02 * (attempt + 1))
        await self._write_captured()
        assert self.state is not None
        return self.state

    async def _open_listed(self, snaps: list[int], logs: list[int]) -> None:
        async with self._mutex:
            # The newest log is read while its snapshot is: one round trip, not two.
            ahead: asyncio.Future[bytes] | None = asyncio.ensure_future(
                self.fs.read_range(self.log_path(snaps[-1]), 0)) if snaps else None
            try:
                await self._open_from(snaps, logs, ahead)
            finally:
                if ahead is not None and not ahead.done():
                    ahead.cancel()
                if ahead is not None:
                    with contextlib.suppress(BaseException):
                        await ahead  # retrieved, whatever became of it

    async def _open_from(self, snaps: list[int], logs: list[int],
                         ahead: asyncio.Future[bytes] | None) -> None:
        missing = 0
        for j in reversed(snaps):
            try:
                data = await self._io(self.fs.read(self.snap_path(j)))
                state = self.decode(data)
            except FsNotFound:
                missing += 1
                continue
            except (ValueError, KeyError, TypeError, zlib.error) as exc:
                self._report(f"snapshot {self.snap_path(j)} unreadable ({exc}); "
                             "using an older one")
                continue
            if j != snaps[-1]:
                self._report(f"newest snapshot snap.{snaps[-1]:08d} unusable; "
                             f"opened from snap.{j:08d}")
            self.state, self.k, self.offset = state, j, 0
            # A log without its snapshot (its closer crashed, or the snapshot was
            # lost): write it on the way, from the state at that boundary.
            lacking = [k for k in logs if k > j and k not in snaps]
            if lacking:
                log.warning("%s: snapshots %s missing; writing them", self.what,
                            ", ".join(f"snap.{k:08d}" for k in lacking))
                self._snapshot_duty.update(lacking)
            await self._read_forward(ahead=ahead if j == snaps[-1] else None)
            if logs and self.k < logs[-1]:
                raise CorruptMailbox(f"{self.what}: stopped at log.{self.k:08d} but "
                                     f"log.{logs[-1]:08d} exists (a log is missing)")
            return
        if not logs and missing == len(snaps):
            raise _StillCreating()
        raise CorruptMailbox(f"{self.what}: no usable snapshot "
                             f"(snapshots {snaps}, logs {logs})")

    # -- reading --------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Read what other processes appended since.  True if anything was applied."""
        async with self._mutex:
            before = (self.k, self.offset)
            try:
                await self._read_forward()
            except _LogVanished as exc:
                await self._catch_up(exc)
            changed = (self.k, self.offset) != before
        await self._write_captured()
        return changed

    async def _catch_up(self, exc: _LogVanished) -> None:
        """Behind by more than the generations kept: go on from the newest snapshot, as an
        opening would.  Caller holds the mutex."""
        log.warning("%s; reading the newest snapshot", exc)
        snaps, logs = await self._io(self.list_objects())
        await self._open_from(snaps, logs, None)
        self.generation += 1

    async def _read_forward(self, until: tuple[int, int] | None = None,
                            ahead: asyncio.Future[bytes] | None = None) -> None:
        """Apply frames from (k, offset) on, crossing into later logs as they close.
        ``ahead``: a read of the current log from the current offset, already started.
        Caller holds the mutex."""
        while True:
            if until is not None and (self.k, self.offset) > until:
                return
            try:
                if ahead is not None:
                    first, ahead = ahead, None
                    data = await self._io(first)
                else:
                    data = await self._io(self.fs.read_range(self.log_path(self.k),
                                                             self.offset))
            except FsNotFound:
                if self.offset == 0:
                    return  # not created yet
                raise _LogVanished(f"{self.what}: log.{self.k:08d} vanished at offset "
                                   f"{self.offset} (deleted by a newer rotation?)") from None
            if not data:
                return
            base = self.offset
            res = parse_frames(data, base)
            for a, b in res.damaged:
                self._report_damage(self.k, a, b)
            closed = False
            reset = None
            for frame in res.frames:
                if frame.start >= self.limit:
                    closed = True
                    self._void.add(self.k)
                    break
                if frame.records and frame.records[0][:1] == ["reset"]:
                    reset = int(frame.records[0][1])
                    break
                self._apply(frame.records, frame.start)
                self.offset = frame.end
            if reset is not None:
                await self._load_reset(reset)
                continue
            if not closed:
                # Damaged spans before the stopping point are skipped for good.
                self.offset = max(self.offset, res.end)
                if res.end < base + len(data):
                    key = (self.k, res.end, base + len(data))
                    if key not in self.torn:
                        self.torn.add(key)
                        log.warning("%s: log.%08d ends in an incomplete frame at offset %d "
                                    "(an append still arriving, or a crash)",
                                    self.what, self.k, res.end)
            if closed or self.offset >= self.limit:
                await self._sync(self.k)
                self._cross()
                continue
            return

    def _apply(self, records: list[Any], start: int) -> list[Any]:
        assert self.state is not None
        results = self.state.apply(records, (self.k, start))
        self._recent[(self.k, start)] = results
        self.generation += 1
        return results

    def _cross(self) -> None:
        """Log k is closed: continue at log k + 1 (capturing its snapshot if it is ours
        to write)."""
        self.k += 1
        self.offset = 0
        if self.k in self._snapshot_duty:
            self._snapshot_duty.discard(self.k)
            assert self.state is not None
            extra = self.before_snapshot(self.state) if self.before_snapshot else []
            self._captured.append((self.k, extra, self.state.encode_snapshot()))

    async def _write_captured(self) -> None:
        while self._captured:
            k, extra, data = self._captured.pop(0)
            try:
                # Objects the snapshot refers to (cache chunks) go first.
                for path, blob in extra:
                    await self._io(self.fs.write(path, blob))
                await self._io(self.fs.write(self.snap_path(k), data))
            except FsExists:
                continue
            except StorageUnavailable:
                log.warning("%s: could not write snap.%08d now; a later rotation will",
                            self.what, k)
                continue
            # Generations older than KEEP_GENERATIONS behind are left to purge: deleting
            # them here cost every rotation two to four requests on the commit path.

    # -- writing --------------------------------------------------------------------------

    async def commit(self, records: list[Any]) -> list[Any]:
        """Append ``records`` as (part of) one frame; return their results once they are
        durable and applied.  Batches with concurrent commits of this process."""
        if self.state is None:
            raise RuntimeError("commit before open")
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((records, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            records: list[Any] = []
            for recs, _ in batch:
                records.extend(recs)
            durable = any(rec[0] not in self.deferrable for rec in records)
            try:
                results = await self._append_frame(records, durable)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            i = 0
            for recs, fut in batch:
                if not fut.done():
                    fut.set_result(results[i:i + len(recs)])
                i += len(recs)

    async def _append_frame(self, records: list[Any], durable: bool = True) -> list[Any]:
        data = encode_frame(records)
        for _ in range(64):
            # The view the append is made from: where this process believes log k ends.
            k, seen = self.k, self.offset
            start = await self._io(self.fs.append(self.log_path(k), data))
            if durable and start < self.limit:
                await self._sync(k)
            async with self._mutex:
                if start < self.limit and (start < seen or seen == 0):
                    # A log never shrinks, so a frame before our view is in an object that
                    # is not the log we read; and a frame appended at the very start of a
                    # log may have created that log again after a rotation deleted it.
                    # Either way the frame counts only if log k is still the one readers
                    # follow: one listing, at most once per log and process.
                    if await self._rotated_away(k):
                        await self._bury(k)
                        continue
                    if start < seen:
                        # Log k shrank (it was damaged): read it again from its snapshot.
                        self._recent.pop((k, start), None)
                        snaps, logs = await self._io(self.list_objects())
                        await self._open_from(snaps, logs, None)
                        self.generation += 1
                if start < self.limit:
                    if (k, start) in self._recent:
                        results = self._recent[(k, start)]
                    elif k == self.k and start == self.offset:
                        results = self._apply(records, start)
                        self.offset = start + len(data)
                        if self.offset >= self.limit:
                            self._snapshot_duty.add(k + 1)
                            await self._sync(k)
                            self._cross()
                    else:
                        if start + len(data) >= self.limit:
                            self._snapshot_duty.add(k + 1)
                        damage = len(self.damage)
                        try:
                            await self._read_forward(until=(k, start))
                        except _LogVanished as exc:
                            # This process fell behind and log k went with a rotation:
                            # the frame may be in it (applied by the others) or in a log
                            # nobody reads any more.  Catch up and write it again: records
                            # apply idempotently (an append by its object, flags and
                            # expunges by value), so the second one is the one reported.
                            await self._catch_up(exc)
                            continue
                        if any(d[0] == k for d in self.damage[damage:]) \
                                and await self._rotated_away(k):
                            # Bytes that are not frames between our view and our frame:
                            # log k may be an object that stalled writers appended to
                            # after a rotation deleted the log.
                            await self._bury(k)
                            continue
                        if (k, start) not in self._recent:
                            raise CorruptMailbox(f"{self.what}: own frame at log.{k:08d} "
                                                 f"offset {start} not found on reading")
                        results = self._recent[(k, start)]
                else:
                    # Void: log k closed before our frame.  Catch up, then write again in
                    # the next log.
                    if k not in self._void:
                        self._snapshot_duty.add(k + 1)
                    self._void.add(k)
                    if self.k == k:
                        await self._read_forward(until=(k, self.limit))
                    results = None
            await self._write_captured()
            if results is not None:
                return results
        raise StorageUnavailable(f"{self.what}: could not place a frame after 64 rotations")

    async def _rotated_away(self, k: int) -> bool:
        """Whether log k may have been deleted by a rotation: a snapshot or log
        ``KEEP_GENERATIONS`` past it exists (one listing).  Caller holds the mutex."""
        snaps, logs = await self._io(self.list_objects())
        return max([0, *snaps, *logs]) >= k + KEEP_GENERATIONS

    async def _bury(self, k: int) -> None:
        """Our frame went to log k after a rotation deleted it, so no reader follows that
        object: delete it again (a reader as far behind then catches up instead of reading
        it), catch up from the newest snapshot, and let the caller write the frame anew.
        Caller holds the mutex."""
        log.warning("%s: a frame appended to log.%08d after the log was rotated away; "
                    "writing it again to the current log", self.what, k)
        with contextlib.suppress(FsError, StorageUnavailable):
            await self._io(self.fs.delete(self.log_path(k)))
        await self._catch_up(_LogVanished(f"{self.what}: log.{k:08d} was rotated away"))

    async def seal(self) -> None:
        """Close the current log now (force-resync does this so that the next frame and a
        fresh snapshot start a new log): append one filler frame that reaches the limit."""
        async with self._mutex:
            await self._read_forward()
        pad = max(0, self.limit - self.offset)
        # Uncompressed, so that the stored frame really reaches the limit.
        filler = encode_frame([["pad", "x" * pad]], compress=False)
        k = self.k
        start = await self._io(self.fs.append(self.log_path(k), filler))
        await self._sync(k)
        async with self._mutex:
            if start < self.limit:
                self._snapshot_duty.add(k + 1)
            await self._read_forward()
        await self._write_captured()

    async def _load_reset(self, k: int) -> None:
        """A reset frame: the index was rebuilt into ``snap.<k>``; load it."""
        data = await self._io(self.fs.read(self.snap_path(k)))
        self.state = self.decode(data)
        self.k, self.offset = k, 0
        self.generation += 1

    async def reset_to(self, k: int) -> None:
        """Tell every reader of this log to load ``snap.<k>`` (written by the caller) in
        place of what the log says: a frame in the current log that also closes it."""
        pad = max(0, self.limit - self.offset)
        frame = encode_frame([["reset", k], ["pad", "x" * pad]], compress=False)
        await self._io(self.fs.append(self.log_path(k - 1), frame))
        await self._sync(k - 1)

    # -- helpers --------------------------------------------------------------------------

    async def _sync(self, k: int) -> None:
        """Make log k durable as far as it was appended (a no-op on most stores)."""
        await self._io(self.fs.sync(self.log_path(k)))

    async def _io(self, coro: Any) -> Any:
        return await store_io(coro, self.what)

    def _report(self, text: str) -> None:
        self.problems.append(text)
        log.error("%s: %s", self.what, text)

    def _report_damage(self, k: int, a: int, b: int) -> None:
        key = (k, a, b)
        if key in self.damage:
            return
        self.damage.append(key)
        self._report(f"log.{k:08d} bytes {a}-{b} are not valid frames; skipped them "
                     "(force-resync repairs what they held)")
