"""libfs benchmark: ops/second and store requests per op, per driver, with and without
injected latency.

    .venv/bin/python bench/libfs_bench.py                      # every target, 0 and 20 ms
    .venv/bin/python bench/libfs_bench.py --targets posix,seaweedfs --n 300 --repeat 3

Operations (4 KiB objects, ``--concurrency`` calls in flight from one process):
create (CREATE of a fresh path), read (whole object), append (records to ONE path: the
contended case of a mailbox's transaction log), list (``iter`` over the N objects).
Requests per op come from the driver's own ``requests`` counter where it keeps one
(S3 API calls, CQL statements, SQL statements).  Each figure is the median of
``--repeat`` runs; ``ratio`` compares a latency run with the same target at 0 ms, measured
in the same run of this script.  Needs the servers of ``scripts/services.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

from servers import S3_TEST_BUCKET, SERVICES, ensure_test_buckets

from cloudcote.libfs import Fs, open_fs

TARGETS = ["posix", "seaweedfs", "moto", "cassandra", "postgresql", "mysql"]
OPS = ["create", "read", "append", "list"]


def spec_for(target: str, prefix: str, tmp: str) -> str:
    s = SERVICES
    if target == "posix":
        return f"posix:{tmp}/{prefix}"
    if target == "seaweedfs":
        return (f"s3:bucket={S3_TEST_BUCKET},prefix={prefix},"
                f"endpoint={s['CLOUDCOTE_SEAWEEDFS_ENDPOINT']},"
                f"access_key={s['CLOUDCOTE_SEAWEEDFS_ACCESS_KEY']},"
                f"secret_key={s['CLOUDCOTE_SEAWEEDFS_SECRET_KEY']}")
    if target == "moto":
        return (f"s3:bucket={S3_TEST_BUCKET},prefix={prefix},"
                f"endpoint={s['CLOUDCOTE_MOTO_ENDPOINT']},access_key=testing,"
                "secret_key=testing,atomic_create=no")
    if target == "cassandra":
        hosts = s["CLOUDCOTE_CASSANDRA_HOSTS"]
        return f"cassandra:{hosts},keyspace=cloudcote_bench,prefix={prefix}"
    if target == "postgresql":
        return f"postgresql:{s['CLOUDCOTE_PG_DSN']},prefix={prefix}"
    if target == "mysql":
        return f"mysql:{s['CLOUDCOTE_MYSQL_DSN']},prefix={prefix}"
    raise SystemExit(f"unknown target {target}")


def driver_of(fs: Fs) -> Any:
    while hasattr(fs, "parent"):
        fs = fs.parent  # type: ignore[attr-defined]
    return fs


def request_count(fs: Fs) -> int | None:
    counter = getattr(driver_of(fs), "requests", None)
    return None if counter is None else int(sum(counter.values()))


async def run_once(spec: str, n: int, concurrency: int) -> dict[str, tuple[float, float | None]]:
    """{op: (ops per second, store requests per op)}"""
    fs = await open_fs(spec)
    sem = asyncio.Semaphore(concurrency)
    payload = os.urandom(4096)
    out: dict[str, tuple[float, float | None]] = {}

    async def limited(coro: Any) -> Any:
        async with sem:
            return await coro

    async def measure(op: str, make: Any, count: int) -> None:
        before = request_count(fs)
        start = time.perf_counter()
        await asyncio.gather(*(limited(make(i)) for i in range(count)))
        elapsed = time.perf_counter() - start
        after = request_count(fs)
        per_op = None if before is None or after is None else (after - before) / count
        out[op] = (count / elapsed, per_op)

    try:
        await measure("create", lambda i: fs.write(f"objs/{i:06d}", payload), n)
        await measure("read", lambda i: fs.read(f"objs/{i:06d}"), n)
        await measure("append",
                      lambda i: fs.append("log", b"%06d " % i + payload[:200] + b"\n"), n)

        async def list_all(_: int) -> None:
            names = [x async for x in fs.iter("objs/")]
            assert len(names) == n, len(names)

        await measure("list", list_all, 3)
        # Leave the store as we found it.
        await asyncio.gather(*(limited(fs.delete(f"objs/{i:06d}")) for i in range(n)))
        await fs.delete("log")
    finally:
        await fs.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--latency", default="0,20ms", help="comma-separated delays")
    ap.add_argument("--n", type=int, default=200, help="objects per operation")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ensure_test_buckets(("seaweedfs", "moto"))
    latencies = [x.strip() for x in args.latency.split(",")]
    print(f"# libfs_bench n={args.n} concurrency={args.concurrency} repeat={args.repeat}"
          " (median ops/s; req/op = store requests per op; ratio = ops/s vs 0 ms)")
    print(f"| target | latency | {' | '.join(f'{op} ops/s | req/op' for op in OPS)} |"
          f" {' | '.join(f'{op} ratio' for op in OPS)} |")
    print("|---|---|" + "---|---|" * len(OPS) + "---|" * len(OPS))
    tmp = tempfile.mkdtemp(prefix="libfs-bench-")
    for target in args.targets.split(","):
        baseline: dict[str, float] = {}
        for lat in latencies:
            runs = []
            for _ in range(args.repeat):
                prefix = f"bench-{uuid.uuid4().hex[:8]}"
                spec = spec_for(target, prefix, tmp)
                if lat not in ("0", "0ms"):
                    spec = f"latency:{lat}:{spec}"
                runs.append(asyncio.run(run_once(spec, args.n, args.concurrency)))
            cells, ratios = [], []
            for op in OPS:
                rate = statistics.median(r[op][0] for r in runs)
                reqs = [r[op][1] for r in runs if r[op][1] is not None]
                req = f"{statistics.median(reqs):.2f}" if reqs else "n/a"
                cells.append(f"{rate:,.0f} | {req}")
                if lat in ("0", "0ms"):
                    baseline[op] = rate
                ratios.append(f"{rate / baseline[op]:.2f}" if op in baseline else "n/a")
            print(f"| {target} | {lat} | {' | '.join(cells)} | {' | '.join(ratios)} |",
                  flush=True)


if __name__ == "__main__":
    main()
