"""The segmented append log of the remote drivers: what they share of it.

A remote store has no append, so a log is a sequence of immutable records ("segments")
numbered 0, 1, 2...: each is created if absent at the next free number (an S3 object with
``If-None-Match``, a Cassandra row by LWT, an SQL row by primary key), and the loser of a
race for a number re-reads the tail and takes the next one.  This module holds the parts
that do not depend on the store:

- :class:`RecordIndex`: the sizes of the first records of one log generation (immutable
  while it lives), hence every record's offset and which records a byte range spans;
- :class:`GroupCommit`: appends waiting in this process for the same log go to the store
  as one batch, written by the first of them, which then hands the lead to the next;
- :func:`claim`: the race for the next free number, over a driver's "create record n" and
  "where is the tail now" primitives.

How each driver maps these onto its store: docs/libfs.md.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .api import FsError, FsUnavailable

K = TypeVar("K", bound=Hashable)


class RecordIndex:
    """Known sizes of records ``0..count-1`` of one log generation, as their running ends.

    Records are immutable while their generation lives, so this only ever grows and what
    it says stays true; ``mtime`` is the newest record's time as far as known."""

    ends: list[int]  # ends[n]: the log's size through record n
    mtime: float

    def __init__(self, mtime: float = 0.0) -> None:
        self.ends = []
        self.mtime = mtime

    @property
    def count(self) -> int:
        return len(self.ends)

    @property
    def size(self) -> int:
        return self.ends[-1] if self.ends else 0

    def start(self, n: int) -> int:
        """Offset of record ``n`` (``n == count``: the size known)."""
        return self.ends[n - 1] if n else 0

    def record_size(self, n: int) -> int:
        return self.ends[n] - self.start(n)

    def add(self, size: int, mtime: float = 0.0) -> None:
        """Record ``count`` holds ``size`` bytes."""
        self.ends.append(self.size + size)
        if mtime > self.mtime:
            self.mtime = mtime

    def note(self, n: int, size: int, mtime: float = 0.0) -> None:
        """Record ``n`` holds ``size`` bytes: kept when it is the next one (a record after
        a gap is not), its time noted either way."""
        if n == self.count:
            self.add(size, mtime)
        elif mtime > self.mtime:
            self.mtime = mtime

    def span(self, start: int, stop: int) -> range:
        """The records holding bytes ``[start, stop)`` (empty when ``start >= stop``)."""
        if start >= stop:
            return range(0)
        first = bisect.bisect_right(self.ends, start)
        last = bisect.bisect_left(self.ends, stop)  # the record holding byte stop-1
        return range(first, min(last, self.count - 1) + 1)

    def cut(self, n: int, start: int, stop: int) -> tuple[int, int]:
        """Bytes ``[start, stop)`` of the log as a range within record ``n``."""
        lo = self.start(n)
        return max(start, lo) - lo, min(stop, self.ends[n]) - lo


# --- group commit ---------------------------------------------------------------------

#: What a waiting append's future is set to when its caller is to lead the next batch.
_LEAD = object()


@dataclass(eq=False)
class _Waiting:
    data: bytes
    done: asyncio.Future[Any]


def batch_error(exc: BaseException, path: str) -> FsError:
    """The failure of a batch as the other callers whose records it carried see it (each
    gets its own exception object)."""
    if isinstance(exc, FsError):
        return type(exc)(str(exc), path=exc.path, op=exc.op)
    return FsUnavailable(f"the append batch carrying this record was interrupted "
                         f"({type(exc).__name__}); it may or may not have been written",
                         path=path, op="append")


class GroupCommit(Generic[K]):
    """Appends to one log waiting in this process, written together.

    ``write(key, path, records)`` stores ``records`` at consecutive positions of the log,
    all or none, and returns each one's offset.  The first caller for a key writes its own
    record and those queued behind it (up to ``max_records`` and ``max_bytes``; a record
    alone may be larger); the others wait, and when the batch is done the next waiter
    leads.  No task is spawned: cancelling a leader fails its batch for the others with
    FsUnavailable (their records may or may not be in), as any interrupted write would.
    """

    def __init__(
        self,
        write: Callable[[K, str, list[bytes]], Awaitable[list[int]]],
        *,
        max_records: int,
        max_bytes: int,
    ) -> None:
        self._write = write
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._queues: dict[K, deque[_Waiting]] = {}
        self._leading: set[K] = set()

    async def append(self, key: K, path: str, data: bytes) -> int:
        """Append ``data`` to the log at ``key``; its offset."""
        me = _Waiting(data, asyncio.get_running_loop().create_future())
        queue = self._queues.setdefault(key, deque())
        queue.append(me)
        if key in self._leading:
            # Another call is writing to this log: it takes our record into its batch, or
            # hands us the lead when it is done.
            try:
                result = await me.done
            except asyncio.CancelledError:
                if me.done.done() and not me.done.cancelled() \
                        and me.done.result() is _LEAD:
                    self._hand_on(key, queue)  # cancelled as the lead came: pass it on
                raise
            if result is not _LEAD:
                return int(result)
        else:
            self._leading.add(key)
        batch = self._take(queue)
        try:
            offsets = await self._write(key, path, [w.data for w in batch])
        except BaseException as exc:
            for other in batch[1:]:
                if not other.done.done():
                    other.done.set_exception(batch_error(exc, path))
            raise
        else:
            for other, offset in zip(batch[1:], offsets[1:], strict=True):
                if not other.done.done():
                    other.done.set_result(offset)
        finally:
            self._hand_on(key, queue)
        return offsets[0]

    def _take(self, queue: deque[_Waiting]) -> list[_Waiting]:
        """The leader's record (the head) and those queued behind it, up to one batch."""
        batch = [queue.popleft()]
        size = len(batch[0].data)
        while queue and len(batch) < self.max_records:
            if queue[0].done.done():  # skip callers cancelled while waiting
                queue.popleft()
                continue
            if size + len(queue[0].data) > self.max_bytes:
                break
            other = queue.popleft()
            batch.append(other)
            size += len(other.data)
        return batch

    def _hand_on(self, key: K, queue: deque[_Waiting]) -> None:
        while queue and queue[0].done.done():  # cancelled while waiting
            queue.popleft()
        if queue:
            queue[0].done.set_result(_LEAD)
        else:
            self._leading.discard(key)
            if self._queues.get(key) is queue:
                del self._queues[key]


# --- the race for the next number -------------------------------------------------------


async def claim(
    n: int,
    create: Callable[[int], Awaitable[bool]],
    tail: Callable[[int], Awaitable[int]],
    *,
    rounds: int,
    pause: Callable[[int], Awaitable[None]] | None = None,
    what: str = "append",
    path: str = "",
) -> int:
    """Take the first free record number from ``n`` on: ``create(n)`` creates record ``n``
    if absent (True: ours); a loser asks ``tail(n)`` for the next number worth trying
    (it re-reads the tail; it may return ``n`` again when the winner is not visible yet)
    and, with ``pause``, steps back a moment first (``pause(losses)``) so that losers do
    not all come back together.  Raises FsUnavailable after ``rounds`` losses."""
    for lost in range(rounds):
        if await create(n):
            return n
        if pause is not None:
            await pause(lost + 1)
        n = await tail(n)
    raise FsUnavailable(f"{what} {path!r}: lost {rounds} races for the next record in a row",
                        path=path, op="append")
