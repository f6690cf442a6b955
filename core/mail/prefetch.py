"""The prefetch engine: read ahead of a consumer, in order, bounded (Dovecot's
``mail_prefetch_count``).

A cloud store answers in tens of milliseconds; a protocol command that reads many
messages one at a time spends nearly all of its time waiting.  :class:`Prefetch` takes an
ordered list of jobs (messages, and what will be read of each), keeps up to ``count`` of
them running, and hands their results to the consumer strictly in the order given::

    async with Prefetch(jobs, read_one, count=settings.prefetch_count,
                        max_bytes=settings.prefetch_bytes, size=lambda j: j.size) as ahead:
        async for done in ahead:
            out.write(done.result())      # raises that job's own error, if it had one

Bounds:

- at most ``count`` jobs run at once;
- the sizes (``size(job)``, e.g. a message's stored size) of the jobs running or finished
  and not yet taken, plus the one the consumer is working on, stay within ``max_bytes``;
  one job is always let through even when it alone is larger, so a 50 MB message is read,
  just never next to others;
- nothing is read after the consumer stops: leaving the ``async with`` early (a client
  that disconnected, an error, ``break``) cancels the jobs still running and waits for
  them, so no task outlives the command.

An error of one job is kept for that job (:meth:`Fetched.result` raises it); the jobs
after it go on.  Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: [storage] prefetch_count by default: enough to hide 20-50 ms of store latency behind
#: the transfer of typical messages (bench/fetch_latency.py).
DEFAULT_COUNT = 64
#: Bytes of jobs in flight by default: a few large messages, many small ones.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class ReadCancelled(Exception):
    """A job's read was cancelled by something other than the consumer."""


@dataclass
class Fetched(Generic[K, V]):
    """One job's outcome: its value or its error."""

    job: K
    value: V | None = None
    error: BaseException | None = None

    def result(self) -> V:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class Prefetch(Generic[K, V]):
    """Runs ``fetch(job)`` for the jobs ahead of the consumer; see the module docstring."""

    def __init__(self, jobs: Iterable[K], fetch: Callable[[K], Awaitable[V]], *,
                 count: int = DEFAULT_COUNT, max_bytes: int = DEFAULT_MAX_BYTES,
                 size: Callable[[K], int] | None = None) -> None:
        if count < 1:
            raise ValueError("prefetch count must be at least 1")
        self._jobs: Iterator[K] = iter(jobs)
        self._fetch = fetch
        self.count = count
        self.max_bytes = max_bytes
        self._size = size or (lambda _job: 0)
        self._running: deque[tuple[K, int, asyncio.Task[V]]] = deque()
        self._next: tuple[K, int] | None = None
        self._exhausted = False
        self._closed = False
        #: Bytes of jobs started and not yet given to the consumer, plus the one it holds.
        self.bytes_in_flight = 0
        self._held = 0
        #: The most bytes and jobs ever in flight at once (for tests and benchmarks).
        self.peak_bytes = 0
        self.peak_count = 0

    async def __aenter__(self) -> Prefetch[K, V]:
        self._fill()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Prefetch[K, V]:
        return self

    def _peek(self) -> tuple[K, int] | None:
        if self._next is None and not self._exhausted:
            try:
                job = next(self._jobs)
            except StopIteration:
                self._exhausted = True
                return None
            self._next = (job, max(0, int(self._size(job))))
        return self._next

    def _fill(self) -> None:
        while not self._closed and len(self._running) < self.count:
            nxt = self._peek()
            if nxt is None:
                return
            job, size = nxt
            busy = bool(self._running) or self._held > 0
            if busy and self.bytes_in_flight + size > self.max_bytes:
                return
            self._next = None
            self._running.append((job, size, asyncio.ensure_future(self._fetch(job))))
            self.bytes_in_flight += size
            self.peak_bytes = max(self.peak_bytes, self.bytes_in_flight)
            self.peak_count = max(self.peak_count, len(self._running))

    async def __anext__(self) -> Fetched[K, V]:
        # The consumer is done with the job it held: its bytes make room for more.
        self.bytes_in_flight -= self._held
        self._held = 0
        self._fill()
        if not self._running:
            raise StopAsyncIteration
        job, size, task = self._running.popleft()
        self._held = size
        try:
            value = await task
        except asyncio.CancelledError:
            cur = asyncio.current_task()
            if not task.cancelled() or (cur is not None and cur.cancelling()):
                raise  # the consumer itself is being cancelled
            # The job was cancelled on its own: that is this job's error only.
            self._fill()
            return Fetched(job, error=ReadCancelled("the read was cancelled"))
        except Exception as exc:  # noqa: BLE001 - kept for this job only
            self._fill()
            return Fetched(job, error=exc)
        self._fill()
        return Fetched(job, value=value)

    async def aclose(self) -> None:
        """Cancel what still runs and wait for it; idempotent."""
        self._closed = True
        tasks = [t for _, _, t in self._running]
        self._running.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.bytes_in_flight = 0
        self._held = 0
