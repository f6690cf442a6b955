"""The prefetch engine (core/mail/prefetch.py): order, bounds, errors, early stop."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from cloudcote.core.mail.prefetch import Prefetch, ReadCancelled
from cloudcote.core.mail.storage import SaveRequest, StorageSettings
from cloudcote.libfs.api import ForwardingFs, Fs

from .imap_support import PASSWORD, start_server, stop_server


class Reads:
    """A fake-free reader: real asyncio sleeps and real byte strings, counting overlap."""

    def __init__(self, delays: dict[int, float] | None = None,
                 fail: set[int] | None = None, sizes: dict[int, int] | None = None) -> None:
        self.delays = delays or {}
        self.fail = fail or set()
        self.sizes = sizes or {}
        self.running = 0
        self.peak = 0
        self.running_bytes = 0
        self.peak_bytes = 0
        self.started: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []

    async def __call__(self, job: int) -> bytes:
        size = self.sizes.get(job, 10)
        self.started.append(job)
        self.running += 1
        self.running_bytes += size
        self.peak = max(self.peak, self.running)
        self.peak_bytes = max(self.peak_bytes, self.running_bytes)
        try:
            await asyncio.sleep(self.delays.get(job, 0.001))
            if job in self.fail:
                raise OSError(f"read {job} failed")
            return bytes(size)
        except asyncio.CancelledError:
            self.cancelled.append(job)
            raise
        finally:
            self.running -= 1
            self.running_bytes -= size
            self.finished.append(job)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_order_kept_with_random_latency() -> None:
    rng = random.Random(7)
    reads = Reads(delays={i: rng.uniform(0, 0.02) for i in range(200)})

    async def main() -> list[int]:
        out = []
        async with Prefetch(range(200), reads, count=16) as ahead:
            async for done in ahead:
                assert done.result() == bytes(10)
                out.append(done.job)
        return out

    assert run(main()) == list(range(200))
    assert 1 < reads.peak <= 16


@pytest.mark.parametrize("count", [1, 4, 64])
def test_count_bound(count: int) -> None:
    reads = Reads()

    async def main() -> Prefetch[int, bytes]:
        async with Prefetch(range(100), reads, count=count) as ahead:
            async for _ in ahead:
                await asyncio.sleep(0)
        return ahead

    ahead = run(main())
    assert reads.peak <= count
    assert ahead.peak_count == min(count, 100)


def test_overlap_hides_latency() -> None:
    """100 reads of 20 ms each with 50 in flight take a few rounds, not 100."""
    reads = Reads(delays={i: 0.02 for i in range(100)})

    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with Prefetch(range(100), reads, count=50) as ahead:
            async for done in ahead:
                done.result()
        return loop.time() - t0

    elapsed = run(main())
    assert reads.peak == 50
    # Not a timing assertion on the machine's speed: 100 sequential sleeps would take
    # at least 2 s of event-loop time; overlapped they are done in a few 20 ms rounds.
    assert elapsed < 100 * 0.02


def test_byte_bound_with_50mb_messages() -> None:
    """Six 50 MB messages among small ones, a 64 MB budget: never two large ones at once,
    and the bytes held (running, waiting, and the one being consumed) stay in budget."""
    big = 50 * 1024 * 1024
    sizes = {i: (big if i % 5 == 0 else 2000) for i in range(30)}
    reads = Reads(sizes=sizes)
    budget = 64 * 1024 * 1024

    async def main() -> Prefetch[int, bytes]:
        async with Prefetch(range(30), reads, count=16, max_bytes=budget,
                            size=sizes.__getitem__) as ahead:
            async for done in ahead:
                assert len(done.result()) == sizes[done.job]
                assert ahead.bytes_in_flight <= budget
                await asyncio.sleep(0.001)  # the consumer writes it out
        return ahead

    ahead = run(main())
    assert ahead.peak_bytes <= budget
    assert reads.peak_bytes <= budget
    assert reads.peak > 1  # small ones still overlap


def test_one_job_larger_than_the_budget_still_runs() -> None:
    sizes = {0: 10, 1: 1000, 2: 10}
    reads = Reads(sizes=sizes)

    async def main() -> list[int]:
        async with Prefetch(range(3), reads, count=8, max_bytes=100,
                            size=sizes.__getitem__) as ahead:
            return [len(d.result()) async for d in ahead]

    assert run(main()) == [10, 1000, 10]


def test_error_reported_for_that_job_only() -> None:
    reads = Reads(fail={3, 7})

    async def main() -> list[str]:
        out = []
        async with Prefetch(range(10), reads, count=4) as ahead:
            async for done in ahead:
                try:
                    done.result()
                    out.append("ok")
                except OSError as exc:
                    out.append(str(exc))
        return out

    got = run(main())
    assert got[3] == "read 3 failed" and got[7] == "read 7 failed"
    assert got.count("ok") == 8


def test_early_stop_cancels_and_leaves_no_task() -> None:
    reads = Reads(delays={i: 0.01 if i <= 5 else 5.0 for i in range(1000)})

    async def main() -> set[asyncio.Task[Any]]:
        before = asyncio.all_tasks()
        async with Prefetch(range(1000), reads, count=32) as ahead:
            async for done in ahead:
                if done.job == 5:
                    break
        return asyncio.all_tasks() - before

    left = run(main())
    assert left == set()
    # Reads stopped right after the consumer did: never the whole range.
    assert len(reads.started) < 6 + 32 + 1
    assert sorted(reads.finished) == sorted(reads.started)
    assert reads.cancelled


def test_consumer_cancelled_leaves_no_task() -> None:
    """A session task cancelled mid-FETCH (client gone): the reads go with it."""
    reads = Reads(delays={i: 0.05 for i in range(1000)})

    async def consumer() -> None:
        async with Prefetch(range(1000), reads, count=16) as ahead:
            async for done in ahead:
                done.result()

    async def main() -> set[asyncio.Task[Any]]:
        before = asyncio.all_tasks()
        task = asyncio.ensure_future(consumer())
        await asyncio.sleep(0.12)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return asyncio.all_tasks() - before

    assert run(main()) == set()
    assert reads.running == 0
    assert len(reads.started) < 1000


def test_job_cancelled_on_its_own_is_its_error() -> None:
    async def fetch(job: int) -> int:
        if job == 2:
            raise asyncio.CancelledError()
        await asyncio.sleep(0)
        return job

    async def main() -> list[Any]:
        async with Prefetch(range(5), fetch, count=3) as ahead:
            out: list[Any] = []
            async for done in ahead:
                out.append(done.error if done.error else done.value)
            return out

    got = run(main())
    assert [g for g in got if not isinstance(g, ReadCancelled)] == [0, 1, 3, 4]
    assert isinstance(got[2], ReadCancelled)


def test_jobs_are_taken_lazily() -> None:
    """The job list may be a generator: only what fits the window is pulled from it."""
    pulled: list[int] = []

    def jobs() -> Any:
        for i in range(100):
            pulled.append(i)
            yield i

    async def main() -> None:
        async with Prefetch(jobs(), Reads(), count=4) as ahead:
            async for done in ahead:
                if done.job == 1:
                    break

    run(main())
    assert len(pulled) <= 4 + 2 + 1


# -- through a real IMAP server -------------------------------------------------------------

class InFlight(ForwardingFs):
    """A stage on top of the store: reads (and their bytes) in flight, and their peaks."""

    name = "in-flight"

    def __init__(self, parent: Fs) -> None:
        super().__init__(parent)
        self.reads = 0
        self.bytes = 0
        self.peak_bytes = 0
        #: Seconds each read waits first (a slow store, switched on by a test).
        self.delay = 0.0

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        size = (end - start) if end is not None else 0
        self.reads += 1
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self.parent.read_range(path, start, end)
        finally:
            self.reads -= 1
            self.bytes -= size


def _big(i: int, size: int) -> bytes:
    head = f"From: a@example.com\r\nSubject: big {i}\r\n\r\n".encode()
    line = b"x" * 998 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


def test_fetch_memory_bound_with_50mb_messages(tmp_path: Path) -> None:
    """A FETCH of every body of a mailbox with two 50 MB messages among small ones never
    has both large ones in flight: the store reads in flight stay within prefetch_bytes."""
    budget = 64 * 1024 * 1024
    settings = StorageSettings(max_message_size=60 * 1024 * 1024, prefetch_count=16,
                               prefetch_bytes=budget)
    srv = start_server(f"posix:{tmp_path / 'fs'}", settings=settings, fs_wrap=InFlight)
    try:
        user = srv.new_user()
        big = 50 * 1024 * 1024
        raws = [_big(i, big) if i in (1, 3) else _big(i, 20_000) for i in range(8)]

        async def fill() -> None:
            assert srv.ctx.mail is not None
            um = await srv.ctx.mail.user(user)
            box = await um.mailbox("INBOX")
            for raw in raws:
                await box.save(raw)

        srv.call(fill(), timeout=300)
        watch = srv.fs
        assert isinstance(watch, InFlight)
        watch.peak_bytes = 0
        m = srv.login(user)
        try:
            m.select("INBOX", readonly=True)
            typ, data = m.fetch("1:*", "(BODY.PEEK[])")
            assert typ == "OK"
            bodies = [part[1] for part in data if isinstance(part, tuple)]
            assert [len(b) for b in bodies] == [len(r) for r in raws]
            assert bodies == raws
        finally:
            m.logout()
        assert big < watch.peak_bytes <= budget, watch.peak_bytes
    finally:
        stop_server(srv)


def test_client_gone_mid_fetch_leaves_no_read_behind(tmp_path: Path) -> None:
    """A client that disconnects during a long FETCH: by the time its session has ended,
    the reads it had in flight ahead were cancelled, not left running."""
    srv = start_server(f"posix:{tmp_path / 'fs'}",
                       settings=StorageSettings(prefetch_count=32), fs_wrap=InFlight)
    try:
        user = srv.new_user()

        async def fill() -> None:
            assert srv.ctx.mail is not None
            um = await srv.ctx.mail.user(user)
            box = await um.mailbox("INBOX")
            await box.save_many([SaveRequest(_big(i, 30_000)) for i in range(200)])

        srv.call(fill(), timeout=120)
        watch = srv.fs
        assert isinstance(watch, InFlight)
        sock = socket.create_connection((srv.host, srv.port), timeout=30)
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(f"a LOGIN {user} {PASSWORD}\r\nb SELECT INBOX\r\n".encode())
        while not f.readline().startswith(b"b OK"):
            pass
        watch.delay = 2.0  # every read now takes 2 s: reads ahead are surely in flight
        sock.sendall(b"c FETCH 1:* BODY.PEEK[]\r\n")
        f.readline()  # the first messages are on their way; the window refills behind
        deadline = time.monotonic() + 10
        while watch.reads <= 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.reads > 1
        f.close()
        sock.close()

        def sessions() -> int:
            return sum(len(lst.sessions) for lst in srv.listeners)

        deadline = time.monotonic() + 30
        while sessions() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sessions() == 0
        # Had the reads been left running, they would still be in their 2 s wait.
        assert watch.reads == 0
    finally:
        stop_server(srv)
