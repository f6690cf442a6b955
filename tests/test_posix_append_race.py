"""posix: a reader racing an ``O_APPEND`` writer in another process never gets part of a
record, through any read path (libfs's append contract, DESIGN.md invariant 3).

``write(2)`` copies a record folio by folio and moves the file size after each one, so a
record that straddles a 4 KiB boundary can be read half-copied; records of 1-20 KiB
straddle most of the time.  A plain ``pread`` up to the size runs in the same loop as a
control: it must see torn records, or the race did not race.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest

from cloudcote.libfs import Fs, FsNotFound, open_fs

HEADER = struct.Struct(">4sII")  # magic, sequence number in its log, body length
MAGIC = b"REC1"
#: Records per log before the writer moves on to the next one (bounds what a read reads).
PER_LOG = 24
#: The race runs until the control saw this many torn reads (at least MIN_SECONDS) or for
#: MAX_SECONDS.
ENOUGH_TORN = 20
MIN_SECONDS = 1.0
MAX_SECONDS = 4.5


def _record(seq: int, rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randint(1024, 20 * 1024))
    return HEADER.pack(MAGIC, seq, len(body)) + body + struct.pack(">I", zlib.crc32(body))


def _whole(data: bytes, first_seq: int) -> tuple[int, bool]:
    """(records parsed, whether ``data`` is whole records only).  A record out of order or
    failing its checksum is not a torn read but corruption: that fails at once."""
    pos, seq = 0, first_seq
    while pos < len(data):
        if len(data) - pos < HEADER.size:
            return seq - first_seq, False
        magic, got, n = HEADER.unpack_from(data, pos)
        assert (magic, got) == (MAGIC, seq), f"record {seq} expected at {pos}: {magic!r} {got}"
        end = pos + HEADER.size + n + 4
        if end > len(data):
            return seq - first_seq, False
        body = data[pos + HEADER.size:end - 4]
        assert struct.unpack(">I", data[end - 4:end])[0] == zlib.crc32(body), f"record {seq}"
        pos, seq = end, seq + 1
    return seq - first_seq, True


def _log(g: int) -> str:
    return f"log.{g:06d}"


def _writer(root: str, stop, ready) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        fs = await open_fs(f"posix:path={root},fsync=never")
        rng = random.Random(16)
        try:
            g = 0
            ready.set()
            while not stop.is_set():
                for seq in range(PER_LOG):
                    await fs.append(_log(g), _record(seq, rng))
                g += 1
                if g >= 3:
                    await fs.delete(_log(g - 3))  # readers keep up with the newest
        finally:
            await fs.close()

    asyncio.run(main())


def _newest(root: str) -> int | None:
    names = [n for n in os.listdir(root) if n.startswith("log.")]
    return max(int(n[4:]) for n in names) if names else None


def _control_torn(root: str, g: int) -> bool:
    """A plain read up to the size fstat reports (no protection): torn or not."""
    try:
        fd = os.open(os.path.join(root, _log(g)), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _whole(os.pread(fd, os.fstat(fd).st_size, 0), 0)[1]
    finally:
        os.close(fd)


async def _read_paths(fs: Fs, root: str) -> tuple[Counter[str], Counter[str], int, int]:
    """Loop over every read path while the writer appends; count reads and torn reads."""
    reads: Counter[str] = Counter()
    torn: Counter[str] = Counter()
    control = control_torn = 0
    tail: tuple[int, int, int] = (-1, 0, 0)  # (log, offset, next sequence number)

    def sample(g: int) -> None:
        # A control read beside every protected one: same moments, no protection.
        nonlocal control, control_torn
        control += 1
        control_torn += _control_torn(root, g)

    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if elapsed > MAX_SECONDS or (elapsed > MIN_SECONDS and control_torn >= ENOUGH_TORN):
            break
        g = _newest(root)
        if g is None:
            await asyncio.sleep(0.001)
            continue
        path = _log(g)
        if tail[0] != g:
            tail = (g, 0, 0)
        got: dict[str, tuple[bytes, int]] = {}
        try:
            sample(g)
            got["read"] = (await fs.read(path), 0)
            sample(g)
            got["read_range"] = (await fs.read_range(path, 0), 0)
            sample(g)
            # An end past the end of the file: clipped there.
            got["read_range_end"] = (await fs.read_range(path, 0, 1 << 30), 0)
            sample(g)
            # As the log reader does: from the end of what it has, to the end.
            got["read_range_tail"] = (await fs.read_range(path, tail[1]), tail[2])
            sample(g)
            got["read_stream"] = (b"".join([c async for c in fs.read_stream(path, 16384)]),
                                  0)
            sample(g)
            got["read_stream_default"] = (b"".join([c async for c in fs.read_stream(path)]),
                                          0)
            sample(g)
            size = (await fs.stat(path)).size
            got["stat_size"] = (await fs.read_range(path, 0, size), 0)
        except FsNotFound:
            pass  # the writer moved on and deleted this log: read the newest
        for name, (data, first) in got.items():
            reads[name] += 1
            count, whole = _whole(data, first)
            torn[name] += not whole
            if name == "read_range_tail" and whole:
                tail = (g, tail[1] + len(data), first + count)
    return reads, torn, control, control_torn


@pytest.mark.slow
def test_no_read_path_returns_part_of_a_record_being_appended(tmp_path: Path) -> None:
    root = str(tmp_path / "fs")
    ctx = multiprocessing.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_writer, args=(root, stop, ready))
    writer.start()
    try:
        assert ready.wait(30), "the writer did not start"

        async def main() -> tuple[Counter[str], Counter[str], int, int]:
            async with await open_fs(f"posix:path={root},fsync=never") as fs:
                return await _read_paths(fs, root)

        reads, torn, control, control_torn = asyncio.run(main())
    finally:
        stop.set()
        writer.join(30)
    assert writer.exitcode == 0
    assert all(reads[name] > 50 for name in reads) and len(reads) == 7, reads
    assert sum(torn.values()) == 0, (
        f"torn reads {dict(torn)} of {dict(reads)}; control: {control_torn} of {control}")
    # The race raced: unprotected reads at the same moments ended inside records.
    assert control_torn > 0, f"no torn control read in {control} reads"
