"""One conformance suite for every libfs driver and wrapper chain, against real servers.

Each test runs once per target of ``conftest.ALL_TARGETS``; races run in separate OS
processes on the targets whose store promises atomic create (``RACE_TARGETS``).  The
functional tests also run on each remote driver in its README form
(``conftest.README_TARGETS``: no prefix, default names), whose namespace other runs share:
there every path a test uses starts with a stem of its own (``r``, empty elsewhere, so
that the paths and listings of the isolated forms are exactly the plain ones).
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest

from cloudcote.libfs import (
    CREATE,
    REPLACE,
    Feature,
    Fs,
    FsError,
    FsExists,
    FsInvalidSpec,
    FsNotFound,
    open_fs,
)

from .conftest import (
    ALL_TARGETS,
    DRIVER_TARGETS,
    RACE_TARGETS,
    README_TARGETS,
    shared_namespace,
    unique_prefix,
)

targets = pytest.mark.parametrize("fs_spec", ALL_TARGETS, indirect=True)
#: The functional tests: every target, and every remote driver in its README form.
functional = pytest.mark.parametrize("fs_spec", ALL_TARGETS + README_TARGETS, indirect=True)
race_targets = pytest.mark.parametrize("fs_spec", RACE_TARGETS, indirect=True)
# randomfail fails calls at random and a stream cannot be replayed, so the streaming
# large-object test runs on every chain but that one.
stream_targets = pytest.mark.parametrize(
    "fs_spec", [t for t in ALL_TARGETS if t != "randomfail"], indirect=True
)


def stem(request: pytest.FixtureRequest) -> str:
    """What this test's paths start with: a name of its own in a shared namespace (a
    README form), else nothing."""
    return f"{unique_prefix()}-" if shared_namespace(request) else ""


def with_fs(body: Callable[[Fs, str], Awaitable[None]]) -> Callable[..., None]:
    """Run ``body(fs, r)`` on a freshly opened chain in its own event loop; ``r`` is
    the stem of every path the test uses (see ``stem``)."""

    def test(fs_spec: str, request: pytest.FixtureRequest) -> None:
        r = stem(request)

        async def main() -> None:
            fs = await open_fs(fs_spec)
            try:
                await body(fs, r)
            finally:
                await fs.close()

        asyncio.run(main())

    # Not functools.wraps: pytest would then see body's signature instead of fs_spec.
    test.__name__ = body.__name__
    test.__qualname__ = body.__qualname__
    test.__doc__ = body.__doc__
    return test


async def listing(fs: Fs, prefix: str = "") -> list[str]:
    return sorted([name async for name in fs.iter(prefix)])


def assert_at_offsets(log: bytes, placed: list[tuple[bytes, int]]) -> None:
    """Each ``(record, offset)`` that ``append`` returned is where the record really is in
    the log, and the records tile the log exactly (no gap, no overlap)."""
    for rec, offset in placed:
        assert log[offset:offset + len(rec)] == rec, (offset, rec[:40])
    ordered = sorted(placed, key=lambda p: p[1])
    assert [off for _, off in ordered] == [
        sum(len(r) for r, _ in ordered[:k]) for k in range(len(ordered))]
    assert sum(len(r) for r, _ in placed) == len(log)


# --- basic operations ------------------------------------------------------------------


@functional
@with_fs
async def test_create_read_stat(fs: Fs, r: str) -> None:
    data = os.urandom(10_000)
    await fs.write(f"{r}a/b/msg", data, metadata={"guid": "0123abcd", "size": "10000"})
    assert await fs.read(f"{r}a/b/msg") == data
    st = await fs.stat(f"{r}a/b/msg")
    assert st.size == len(data)
    assert st.mtime > time.time() - 3600
    assert dict(st.metadata).get("guid") == "0123abcd"
    assert await fs.exists(f"{r}a/b/msg")
    assert not await fs.exists(f"{r}a/b/other")


@functional
@with_fs
async def test_create_refuses_existing(fs: Fs, r: str) -> None:
    await fs.write(f"{r}x", b"first")
    with pytest.raises(FsExists):
        await fs.write(f"{r}x", b"second", CREATE)
    assert await fs.read(f"{r}x") == b"first"


@functional
@with_fs
async def test_replace(fs: Fs, r: str) -> None:
    await fs.write(f"{r}x", b"first", REPLACE)
    await fs.write(f"{r}x", b"second and longer", REPLACE, metadata={"k": "v"})
    assert await fs.read(f"{r}x") == b"second and longer"
    assert dict((await fs.stat(f"{r}x")).metadata).get("k") == "v"


@functional
@with_fs
async def test_not_found(fs: Fs, r: str) -> None:
    for call in (fs.read(f"{r}nope"), fs.read_range(f"{r}nope", 0, 5), fs.stat(f"{r}nope")):
        with pytest.raises(FsNotFound):
            await call
    with pytest.raises(FsNotFound):
        await fs.copy(f"{r}nope", f"{r}dst")
    with pytest.raises(FsNotFound):
        async for _ in fs.read_stream(f"{r}nope"):
            pass


@functional
@with_fs
async def test_read_range(fs: Fs, r: str) -> None:
    data = bytes(range(256)) * 40
    await fs.write(f"{r}r", data)
    assert await fs.read_range(f"{r}r", 0, 10) == data[:10]
    assert await fs.read_range(f"{r}r", 1000, 2000) == data[1000:2000]
    assert await fs.read_range(f"{r}r", 5000) == data[5000:]
    assert await fs.read_range(f"{r}r", 10_000, 20_000) == data[10_000:]
    assert await fs.read_range(f"{r}r", 20_000, 30_000) == b""


@functional
@with_fs
async def test_empty_object(fs: Fs, r: str) -> None:
    await fs.write(f"{r}empty", b"")
    assert await fs.read(f"{r}empty") == b""
    assert (await fs.stat(f"{r}empty")).size == 0
    assert [c async for c in fs.read_stream(f"{r}empty")] == []


@functional
@with_fs
async def test_delete_idempotent(fs: Fs, r: str) -> None:
    await fs.write(f"{r}d", b"x")
    await fs.delete(f"{r}d")
    await fs.delete(f"{r}d")
    await fs.delete(f"{r}never-was")
    assert not await fs.exists(f"{r}d")
    await fs.write(f"{r}d", b"again")  # a deleted name can be created again
    assert await fs.read(f"{r}d") == b"again"


@functional
@with_fs
async def test_copy(fs: Fs, r: str) -> None:
    await fs.write(f"{r}src", b"payload", metadata={"guid": "abc"})
    await fs.copy(f"{r}src", f"{r}dir/dst")
    assert await fs.read(f"{r}dir/dst") == b"payload"
    assert dict((await fs.stat(f"{r}dir/dst")).metadata).get("guid") == "abc"
    with pytest.raises(FsExists):
        await fs.copy(f"{r}src", f"{r}dir/dst")
    await fs.write(f"{r}src2", b"other")
    await fs.copy(f"{r}src2", f"{r}dir/dst", REPLACE)
    assert await fs.read(f"{r}dir/dst") == b"other"


@functional
@with_fs
async def test_listing(fs: Fs, r: str) -> None:
    names = [f"{r}{n}" for n in ["m/INBOX/1", "m/INBOX/2", "m/Sent/1", "m/INBOXES/9", "n/1"]]
    for name in names:
        await fs.write(name, name.encode())
    await fs.append(f"{r}m/INBOX/log", b"rec1\n")
    await fs.append(f"{r}m/INBOX/log", b"rec2\n")

    async def ls(prefix: str = "") -> list[str]:
        return [n[len(r):] for n in await listing(fs, r + prefix)]

    assert await ls("m/INBOX/") == ["m/INBOX/1", "m/INBOX/2", "m/INBOX/log"]
    assert await ls("m/INBOX") == [
        "m/INBOX/1", "m/INBOX/2", "m/INBOX/log", "m/INBOXES/9"]
    assert await ls("m/") == sorted(
        ["m/INBOX/1", "m/INBOX/2", "m/INBOX/log", "m/INBOXES/9", "m/Sent/1"])
    # The whole store (in a shared namespace: what starts with this test's stem, which
    # also walks the top level).
    assert await listing(fs, r) == sorted(names + [f"{r}m/INBOX/log"])
    assert await ls("zzz/") == []
    await fs.delete(f"{r}m/INBOX/1")
    await fs.delete(f"{r}m/INBOX/log")
    assert await ls("m/INBOX/") == ["m/INBOX/2"]


@functional
@with_fs
async def test_odd_names(fs: Fs, r: str) -> None:
    names = ["sp ace/x y", "ünïcødé/名前", "per%cent/100%", ".hidden/.dot", "a+b=c&d", "q'uo\"te",
             "semi;colon", "star*?[x]", "tab\tname"]
    names = [r + n for n in names]
    for i, name in enumerate(names):
        await fs.write(name, str(i).encode(), metadata={"n": str(i)})
    for i, name in enumerate(names):
        assert await fs.read(name) == str(i).encode()
        assert dict((await fs.stat(name)).metadata).get("n") == str(i)
    assert await listing(fs, r) == sorted(names)


@functional
@with_fs
async def test_invalid_paths(fs: Fs, r: str) -> None:
    for bad in ["", "/abs", "trailing/", "a//b", "a/./b", "a/../b", ".."]:
        with pytest.raises(FsError):
            await fs.write(bad, b"x")


@functional
@with_fs
async def test_write_unique(fs: Fs, r: str) -> None:
    paths = await asyncio.gather(*(fs.write_unique(f"{r}u/msg-", b"%d" % i) for i in range(20)))
    assert len(set(paths)) == 20
    assert all(p.startswith(f"{r}u/msg-") for p in paths)
    for i, p in enumerate(paths):
        assert await fs.read(p) == b"%d" % i


@functional
@with_fs
async def test_append_order_and_read(fs: Fs, r: str) -> None:
    records = [b"record %03d|%s\n" % (i, b"x" * (i * 37 % 500)) for i in range(60)]
    offsets = [await fs.append(f"{r}log", rec) for rec in records]
    whole = b"".join(records)
    # Each append returns where its record starts: the first at 0, then back to back.
    assert offsets == [len(b"".join(records[:i])) for i in range(len(records))]
    assert await fs.read(f"{r}log") == whole
    assert_at_offsets(whole, list(zip(records, offsets, strict=True)))
    assert (await fs.stat(f"{r}log")).size == len(whole)
    assert await fs.read_range(f"{r}log", 100, 5000) == whole[100:5000]
    assert b"".join([c async for c in fs.read_stream(f"{r}log", 1000)]) == whole
    with pytest.raises(FsExists):
        await fs.write(f"{r}log", b"whole", CREATE)
    await fs.delete(f"{r}log")
    assert not await fs.exists(f"{r}log")
    assert await fs.append(f"{r}log", b"fresh\n") == 0  # a new log starts at 0 again
    assert await fs.append(f"{r}log", b"second\n") == len(b"fresh\n")
    assert await fs.read(f"{r}log") == b"fresh\nsecond\n"


@functional
@with_fs
async def test_concurrent_appends_in_one_process(fs: Fs, r: str) -> None:
    records = [b"c%04d|%s\n" % (i, b"y" * (i * 53 % 200)) for i in range(100)]
    # Concurrent appends are group-committed where the driver does that: each record of a
    # batch must still get its own offset.
    offsets = await asyncio.gather(*(fs.append(f"{r}clog", rec) for rec in records))
    log = await fs.read(f"{r}clog")
    got = log.splitlines(keepends=True)
    assert sorted(got) == sorted(records)
    assert_at_offsets(log, list(zip(records, offsets, strict=True)))
    # A second wave, on a log that now exists and that this process has partly seen.
    more = [b"d%04d\n" % i for i in range(40)]
    offsets += await asyncio.gather(*(fs.append(f"{r}clog", rec) for rec in more))
    assert_at_offsets(await fs.read(f"{r}clog"), list(zip(records + more, offsets, strict=True)))


@functional
def test_append_offsets_with_two_clients(fs_spec: str, request: pytest.FixtureRequest) -> None:
    """Two chains opened on one store (as two processes would be) append in turns: each
    learns of the records the other added only through the store, yet knows its offset."""
    r = stem(request)

    async def main() -> None:
        async with await open_fs(fs_spec) as a, await open_fs(fs_spec) as b:
            placed = []
            for i in range(30):
                writer = b if i % 3 == 1 else a
                rec = b"w%02d|%s\n" % (i, b"q" * (i * 29 % 120))
                placed.append((rec, await writer.append(f"{r}wlog", rec)))
            assert placed[0][1] == 0
            assert_at_offsets(await a.read(f"{r}wlog"), placed)
            assert await b.read(f"{r}wlog") == await a.read(f"{r}wlog")

    asyncio.run(main())


# moto checks and stores in two steps without a lock: two winners are possible there.
@pytest.mark.parametrize("fs_spec", [t for t in ALL_TARGETS + README_TARGETS if t != "moto"],
                         indirect=True)
@with_fs
async def test_concurrent_creators_in_one_process(fs: Fs, r: str) -> None:
    async def create(i: int) -> bool:
        try:
            await fs.write(f"{r}one", b"writer %d" % i)
        except FsExists:
            return False
        return True

    wins = await asyncio.gather(*(create(i) for i in range(16)))
    assert sum(wins) == 1
    assert await fs.read(f"{r}one") == b"writer %d" % wins.index(True)


# --- large objects ---------------------------------------------------------------------

LARGE = 64 * 1024 * 1024
CHUNK = 1024 * 1024
#: The biggest buffer a driver may keep while streaming (S3's 5 MB minimum part size).
DRIVER_CHUNK = 5 * 1024 * 1024


def _pattern_chunk(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest() * (CHUNK // 32)


@stream_targets
@pytest.mark.slow
@with_fs
async def test_large_object_streams_in_bounded_memory(fs: Fs, r: str) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(LARGE // CHUNK):
            yield _pattern_chunk(i)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        size = await fs.write_stream(f"{r}big", chunks())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        total = 0
        async for chunk in fs.read_stream(f"{r}big", CHUNK):
            assert len(chunk) <= CHUNK
            digest.update(chunk)
            total += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256()
    for i in range(LARGE // CHUNK):
        expected.update(_pattern_chunk(i))
    assert size == LARGE and total == LARGE
    assert digest.hexdigest() == expected.hexdigest()
    limit = 3 * DRIVER_CHUNK + 8 * 1024 * 1024
    assert write_peak < limit, f"write_stream peaked at {write_peak} bytes"
    assert read_peak < limit, f"read_stream peaked at {read_peak} bytes"
    assert (await fs.stat(f"{r}big")).size == LARGE


# --- races between OS processes ----------------------------------------------------------


def _spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def _race_create(spec: str, path: str, i: int, barrier, results) -> None:  # type: ignore[no-untyped-def]
    async def main() -> str:
        fs = await open_fs(spec)
        try:
            await fs.exists("warm-up")  # connect before the start line
            barrier.wait()
            try:
                await fs.write(path, b"winner is %d" % i)
                return "won"
            except FsExists:
                return "exists"
        finally:
            await fs.close()

    try:
        results.put((i, asyncio.run(main())))
    except BaseException as exc:  # report, don't hang the parent
        results.put((i, f"error: {exc!r}"))


@race_targets
@pytest.mark.slow
def test_create_race_between_processes(fs_spec: str) -> None:
    ctx = _spawn()
    n = 16
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_create, args=(fs_spec, "race/obj", i, barrier, results))
             for i in range(n)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(30)
    outcomes = sorted(got.values())
    assert outcomes.count("won") == 1, outcomes
    assert outcomes.count("exists") == n - 1, outcomes
    winner = next(i for i, r in got.items() if r == "won")

    async def check() -> None:
        async with await open_fs(fs_spec) as fs:
            assert await fs.read("race/obj") == b"winner is %d" % winner

    asyncio.run(check())


APPENDERS = 8
APPENDS = 200


def _record(proc: int, i: int) -> bytes:
    body = b"p%02d-%05d-" % (proc, i) + b"z" * ((proc * 131 + i * 17) % 300)
    return body + b"#" + hashlib.md5(body).hexdigest().encode() + b"\n"


def _parse_records(data: bytes) -> list[bytes]:
    """Split a log into records, asserting each one is whole (not torn or interleaved)."""
    lines = data.splitlines(keepends=True)
    for line in lines:
        body, _, digest = line.rstrip(b"\n").rpartition(b"#")
        assert line.endswith(b"\n") and hashlib.md5(body).hexdigest().encode() == digest, line
    return lines


def _race_append(spec: str, path: str, proc: int, count: int, barrier, results) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        fs = await open_fs(spec)
        try:
            await fs.exists("warm-up")
            barrier.wait()
            for i in range(count):
                offsets.append(await fs.append(path, _record(proc, i)))
        finally:
            await fs.close()

    offsets: list[int] = []
    try:
        asyncio.run(main())
        results.put((proc, "ok", offsets))
    except BaseException as exc:
        results.put((proc, f"error: {exc!r}", offsets))


def _race_reader(spec: str, path: str, stop, snapshots) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        fs = await open_fs(spec)
        try:
            while not stop.is_set():
                try:
                    data = await fs.read(path)
                except FsNotFound:
                    data = b""
                snapshots.put(hashlib.sha256(data).hexdigest() + ":" + str(len(data)))
                await asyncio.sleep(0.05)
        finally:
            await fs.close()

    try:
        asyncio.run(main())
    finally:
        snapshots.put(None)


@race_targets
@pytest.mark.slow
def test_append_race_between_processes(fs_spec: str) -> None:
    ctx = _spawn()
    barrier = ctx.Barrier(APPENDERS)
    results = ctx.Queue()
    snapshots = ctx.Queue()
    stop = ctx.Event()
    procs = [ctx.Process(target=_race_append,
                         args=(fs_spec, "race/log", p, APPENDS, barrier, results))
             for p in range(APPENDERS)]
    reader = ctx.Process(target=_race_reader, args=(fs_spec, "race/log", stop, snapshots))
    reader.start()
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=900) for _ in procs]
    stop.set()
    seen = []
    while (item := snapshots.get(timeout=60)) is not None:
        seen.append(item)
    for proc in procs + [reader]:
        proc.join(30)
    assert all(r == "ok" for _, r, _ in outcomes), [o[:2] for o in outcomes]

    async def read_twice() -> tuple[bytes, bytes]:
        async with await open_fs(fs_spec) as a, await open_fs(fs_spec) as b:
            return await a.read("race/log"), await b.read("race/log")

    first, second = asyncio.run(read_twice())
    assert first == second  # every reader sees the same order
    records = _parse_records(first)
    expected = {_record(p, i) for p in range(APPENDERS) for i in range(APPENDS)}
    assert len(records) == len(expected) == APPENDERS * APPENDS
    assert set(records) == expected  # every record exactly once
    # Each appender's own records appear in the order it appended them.
    for p in range(APPENDERS):
        mine = [r for r in records if r.startswith(b"p%02d-" % p)]
        assert mine == [_record(p, i) for i in range(APPENDS)]
    # Every offset an appender was told is where its record is in the final log.
    assert_at_offsets(first, [(_record(p, i), off) for p, _, offs in outcomes
                              for i, off in enumerate(offs)])
    # Every snapshot a concurrent reader took is a prefix of the final log.
    prefixes = {hashlib.sha256(first[:n]).hexdigest() + ":" + str(n)
                for n in [0] + [len(b"".join(records[:k])) for k in range(1, len(records) + 1)]}
    assert seen and all(s in prefixes for s in seen)


SIZE_1MB = 1024 * 1024


def _replacer(spec: str, path: str, rounds: int, done) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with await open_fs(spec) as fs:
            for i in range(rounds):
                await fs.write(path, bytes([65 + i % 26]) * SIZE_1MB, REPLACE)

    try:
        asyncio.run(main())
    finally:
        done.set()


# The cache stage never shows another process's replace (documented), so a reader behind it
# cannot overlap a writer in another process: the test would prove nothing there.
@pytest.mark.parametrize("fs_spec", [t for t in RACE_TARGETS if t != "cache"], indirect=True)
@pytest.mark.slow
def test_replace_is_atomic_for_readers(fs_spec: str) -> None:
    async def seed() -> None:
        async with await open_fs(fs_spec) as fs:
            await fs.write("rep", b"@" * SIZE_1MB)

    asyncio.run(seed())
    ctx = _spawn()
    done = ctx.Event()
    writer = ctx.Process(target=_replacer, args=(fs_spec, "rep", 40, done))
    writer.start()

    async def read_loop() -> set[int]:
        kinds = set()
        async with await open_fs(fs_spec) as fs:
            while not done.is_set():
                for data in (await fs.read("rep"),
                             b"".join([c async for c in fs.read_stream("rep", 256 * 1024)])):
                    assert len(data) == SIZE_1MB
                    assert data == data[:1] * SIZE_1MB, "a reader saw a mix of two versions"
                    kinds.add(data[0])
        return kinds

    try:
        kinds = asyncio.run(read_loop())
    finally:
        writer.join(120)
    assert writer.exitcode == 0
    assert len(kinds) >= 2  # the reader really overlapped the writer


# --- opening chains ----------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("", "empty libfs chain"),
    ("nosuch:/x", "unknown libfs stage 'nosuch'"),
    ("latency:20ms", "needs a parent stage"),
    ("posix:/tmp/x,bogus=1", "posix: unknown setting 'bogus'"),
    ("latency:abc:posix:/tmp/x", "latency: "),
    ("randomfail:2:posix:/tmp/x", "randomfail: "),
    ("compress:lz99:posix:/tmp/x", "compress: "),
])
def test_invalid_specs_name_the_stage(spec: str, message: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = spec.replace("/tmp/x", str(tmp_path))
    with pytest.raises(FsInvalidSpec) as info:
        asyncio.run(open_fs(spec))
    assert message in str(info.value)


def test_chain_from_toml_tables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        fs = await open_fs([{"stage": "latency", "delay": "1ms"},
                            {"stage": "posix", "path": str(tmp_path), "fsync": "never"}])
        async with fs:
            await fs.write("k", b"v")
            assert await fs.read("k") == b"v"
            assert fs.describe().startswith("latency:")

    asyncio.run(main())


@pytest.mark.parametrize("spec, module, extra", [
    ("s3:bucket=b", "aiobotocore", "s3"),
    ("cassandra:127.0.0.1", "cassandra", "cassandra"),
    ("postgresql:postgresql://u@127.0.0.1/db", "asyncpg", "sql"),
])
def test_missing_library_names_the_extra(spec: str, module: str, extra: str) -> None:
    """A driver whose library is not installed says which extra to install."""
    import subprocess
    import sys

    code = (f"import sys, asyncio; sys.modules[{module!r}] = None\n"
            "from cloudcote.libfs import open_fs, FsInvalidSpec\n"
            f"try:\n    asyncio.run(open_fs({spec!r}))\n"
            "except FsInvalidSpec as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert f"pip install 'cloudcote[{extra}]'" in out.stdout, out.stdout + out.stderr


def test_wrapper_refuses_parent_lacking_what_it_needs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """compress keeps the raw size in metadata: a parent without metadata is refused."""
    from cloudcote.libfs.compress import CompressFs
    from cloudcote.libfs.posix import PosixFs

    with pytest.raises(FsInvalidSpec, match="compress: parent stage .* lacks metadata"):
        CompressFs(PosixFs(str(tmp_path), xattrs=False))


def test_uncertain_writes_are_detected_not_repeated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every write and append really happens and then reports failure; the retry stage
    must notice each one instead of doing it twice."""

    async def main() -> None:
        spec = f"retry:attempts=20:randomfail:write=1,append=0.5,after=1:posix:{tmp_path}"
        async with await open_fs(spec) as fs:
            for i in range(20):
                await fs.write(f"obj{i}", b"data %d" % i)
            records = [b"rec %03d\n" % i for i in range(100)]
            offsets = [await fs.append("log", rec) for rec in records]
            # An uncertain append found in the re-read log reports where it was found.
            assert offsets == [8 * i for i in range(100)]
            randomfail = fs.parent  # type: ignore[attr-defined]
            assert randomfail.injected["write-after"] >= 20
            assert randomfail.injected["append-after"] > 20
        async with await open_fs(f"posix:{tmp_path}") as plain:
            for i in range(20):
                assert await plain.read(f"obj{i}") == b"data %d" % i
            assert await plain.read("log") == b"".join(records)  # once each, in order
            # Someone else's object is still FsExists, not mistaken for ours.
            async with await open_fs(spec) as fs:
                with pytest.raises(FsExists):
                    await fs.write("obj0", b"other data")

    asyncio.run(main())


@pytest.mark.parametrize("target, settings, message", [
    ("seaweedfs", "bucket=no-such-bucket-cc", "no-such-bucket-cc"),
    ("seaweedfs", "secret_key=wrong", "s3"),
    ("cassandra", "keyspace=no_such_ks_cc,create_schema=no", "no_such_ks_cc"),
    ("postgresql", "table=no_such_table_cc,create_schema=no", "no_such_table_cc"),
    ("mysql", "table=no_such_table_cc,create_schema=no", "no_such_table_cc"),
])
def test_open_fails_clearly_on_missing_store_objects_and_credentials(
    target: str, settings: str, message: str, request: pytest.FixtureRequest, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from .conftest import driver_spec

    stage, _, args = driver_spec(target, request, tmp_path).partition(":")
    for item in settings.split(","):
        key = item.split("=", 1)[0]
        args = ",".join(p for p in args.split(",") if not p.startswith(key + "="))
        args += "," + item
    spec = f"{stage}:{args}"
    with pytest.raises(FsInvalidSpec) as info:
        asyncio.run(open_fs(spec))
    text = str(info.value)
    assert text.startswith(stage) and message in text, text
    assert "\n" not in text


# --- append offsets through wrapper chains -------------------------------------------------

#: Every wrapper at once, over each driver.  randomfail fails appends both before and after
#: the store did the work; for the latter, retry finds the record in the re-read log and
#: returns where it found it.  The reads in between fill the cache, which appends must drop.
STACKED = ("metrics:cache:size=1MB:latency:1ms:compress:zstd:retry:attempts=50:"
           "randomfail:append=0.3,read=0.05,after=0.7,seed=7:")


@pytest.mark.parametrize("fs_spec", DRIVER_TARGETS, indirect=True)
def test_append_offsets_exact_through_wrapper_chains(fs_spec: str) -> None:
    async def main() -> None:
        async with await open_fs(STACKED + fs_spec) as fs, await open_fs(fs_spec) as plain:
            records = [b"o%03d|%s\n" % (i, os.urandom(i * 7 % 90).hex().encode())
                       for i in range(60)]
            placed = []
            for rec in records[:30]:
                placed.append((rec, await fs.append("olog", rec)))
                if len(placed) % 6 == 0:
                    assert_at_offsets(await fs.read("olog"), placed)
            offsets = await asyncio.gather(*(fs.append("olog", r) for r in records[30:]))
            placed += zip(records[30:], offsets, strict=True)
            log = await fs.read("olog")
            assert_at_offsets(log, placed)
            assert (await fs.stat("olog")).size == len(log)
            rec, off = placed[40]
            assert await fs.read_range("olog", off, off + len(rec)) == rec
            # compress stores appended records as they are: the driver holds the same bytes.
            assert await plain.read("olog") == log
            stage: Fs = fs
            while stage.name != "randomfail":
                stage = stage.parent  # type: ignore[attr-defined]
            assert stage.injected.get("append-after", 0) > 0  # type: ignore[attr-defined]

    asyncio.run(main())


@pytest.mark.parametrize("chain", [
    "compress:zstd:", "cache:size=1MB:", "latency:1ms:", "metrics:",
    "retry:attempts=50:randomfail:append=0.5,after=1:",
])
def test_append_offsets_exact_through_each_wrapper(chain: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with await open_fs(f"{chain}posix:{tmp_path}") as fs:
            records = [b"e%03d|%s\n" % (i, b"v" * (i * 11 % 70)) for i in range(40)]
            offsets = [await fs.append("elog", rec) for rec in records]
            assert offsets == [len(b"".join(records[:i])) for i in range(len(records))]
            assert_at_offsets(await fs.read("elog"), list(zip(records, offsets, strict=True)))

    asyncio.run(main())


def test_compress_writes_objects_compressed_and_appends_raw(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cloudcote.libfs.compress import MAGIC

    async def main() -> None:
        async with await open_fs(f"compress:zstd:posix:{tmp_path}") as fs, \
                await open_fs(f"posix:{tmp_path}") as plain:
            whole = b"whole object " * 1000
            await fs.write("obj", whole)
            stored = await plain.read("obj")
            assert stored.startswith(MAGIC) and len(stored) < len(whole)  # compressed
            assert await fs.read("obj") == whole
            assert await fs.read_range("obj", 13, 26) == whole[13:26]
            records = [b"first\n", b"a CCZ1 inside a record is fine\n", b"third\n"]
            offsets = [await fs.append("log", rec) for rec in records]
            assert offsets == [0, 6, 6 + len(records[1])]
            assert await plain.read("log") == b"".join(records)  # raw
            assert await fs.read("log") == b"".join(records)
            assert await fs.read_range("log", offsets[1], offsets[2]) == records[1]
            assert (await fs.stat("log")).size == len(b"".join(records))
            # A record that would make a log look like frames is refused, whatever its size.
            for bad in (MAGIC + b" record\n", MAGIC, MAGIC[:2], MAGIC[:1]):
                with pytest.raises(FsError, match="magic"):
                    await fs.append("log2", bad)
            assert not await plain.exists("log2")
            assert await fs.append("log2", MAGIC[:3] + b"x") == 0

    asyncio.run(main())


#: The drivers that read any byte range of a log in a bounded number of requests; S3 reads
#: one segment object per record.
BATCH_LOG_READ_TARGETS = {"posix", "cassandra", "postgresql", "mysql"}


@targets
def test_batch_log_read_is_claimed_exactly_by_the_drivers_that_have_it(
    fs_spec: str, request: pytest.FixtureRequest
) -> None:
    target = request.node.callspec.params["fs_spec"]
    # Wrapper targets run on posix.
    expected = target in BATCH_LOG_READ_TARGETS or target not in DRIVER_TARGETS

    async def main() -> None:
        async with await open_fs(fs_spec) as fs, await open_fs(f"metrics:{fs_spec}") as wrapped:
            assert (Feature.BATCH_LOG_READ in fs.features) == expected, target
            assert wrapped.features == fs.features  # wrappers report their parent's

    asyncio.run(main())
