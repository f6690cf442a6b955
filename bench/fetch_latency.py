"""FETCH of whole messages against store latency, by prefetch_count.

    .venv/bin/python bench/fetch_latency.py                 # posix at 0/5/20/50 ms, and S3
    .venv/bin/python bench/fetch_latency.py --messages 300 --latencies 0,20 --counts 1,64 --no-s3

A mailbox of ``--messages`` messages (log-normal sizes, 2 KB to 200 KB) is built once per
store; then for every injected latency (the ``latency`` libfs wrapper on top of the chain)
and every ``prefetch_count`` a real server process (bench/cc_server.py) is started and one
client sends ``FETCH 1:N BODY.PEEK[]`` over a real IMAP connection, ``--rounds`` times
(fewer when one round would take long; the table says how many).  Reported per run: the
median wall time, the ideal ``N x latency / prefetch_count + transfer`` (transfer: the
same count's time at 0 ms on that store) and their ratio, and the store requests per
message.  Also over S3 (SeaweedFS from scripts/services.sh) with and without 20 ms.  A
PNG plot goes to ``--plot`` (default bench/fetch_latency.png).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cc_server import PASSWORD, ServerProcess  # noqa: E402
from latency_common import (  # noqa: E402
    USER,
    build_mailbox,
    imap_login,
    make_messages,
    median,
    pyplot,
    s3_spec,
    with_latency,
)


async def fetch_all(port: int, n: int, expect_bytes: int) -> float:
    client = await imap_login(port, PASSWORD)
    try:
        await client.command("SELECT INBOX")
        t0 = time.perf_counter()
        lines = await client.command(f"FETCH 1:{n} BODY.PEEK[]")
        elapsed = time.perf_counter() - t0
        got = sum(len(x) for x in lines)
        if len(lines) != n or got < expect_bytes:
            raise RuntimeError(f"FETCH returned {len(lines)} messages, {got} bytes")
        await client.command("LOGOUT")
        return elapsed
    finally:
        await client.close()


def measure(spec: str, count: int, n: int, expect: int, rounds: int,
            guess: float) -> tuple[float, int, float]:
    rounds = 1 if guess > 15 else rounds
    with ServerProcess(spec, users=[USER], prefetch_count=count) as srv:
        times = []
        srv.reset_requests()
        for _ in range(rounds):
            times.append(asyncio.run(fetch_all(srv.ports["imap"], n, expect)))
        reqs = srv.requests()
    reads = sum(v for k, v in reqs.items() if k.startswith("fs.")) / rounds / n
    return median(times), rounds, reads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--latencies", default="0,5,20,50", help="ms, comma-separated")
    ap.add_argument("--counts", default="1,4,16,64,256", help="prefetch_count values")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS runs")
    ap.add_argument("--plot", default=str(Path(__file__).with_name("fetch_latency.png")))
    args = ap.parse_args(argv)
    lats = [float(x) for x in args.latencies.split(",")]
    counts = [int(x) for x in args.counts.split(",")]
    n = args.messages
    messages = make_messages(n)
    expect = sum(len(m) for m in messages)
    print(f"{n} messages, {expect / 1e6:.1f} MB, median size "
          f"{median([len(m) for m in messages]) / 1000:.1f} KB")
    results: list[dict[str, object]] = []
    tmp = Path(tempfile.mkdtemp(prefix="cc-fetchlat-"))
    stores = [("posix", f"posix:{tmp / 'mail'}", lats)]
    if not args.no_s3:
        stores.append(("s3", s3_spec(f"fetchlat-{uuid.uuid4().hex[:8]}"),
                       [x for x in (0.0, 20.0)]))
    print(f"{'store':6} {'lat ms':>6} {'count':>5} {'rounds':>6} {'wall s':>8} {'ideal s':>8} "
          f"{'ratio':>6} {'req/msg':>7}")
    for store, base, store_lats in stores:
        asyncio.run(build_mailbox(base, messages))
        transfer: dict[int, float] = {}
        for lat in sorted(store_lats):
            for count in counts:
                guess = n * lat / 1000 / count + transfer.get(count, 0.0)
                wall, rounds, reqs = measure(with_latency(base, lat), count, n, expect,
                                             args.rounds, guess)
                if lat == 0:
                    transfer[count] = wall
                ideal = n * lat / 1000 / count + transfer.get(count, wall)
                row = {"store": store, "latency": lat, "count": count, "wall": wall,
                       "ideal": ideal, "ratio": wall / ideal, "rounds": rounds, "req": reqs}
                results.append(row)
                print(f"{store:6} {lat:6g} {count:5d} {rounds:6d} {wall:8.3f} {ideal:8.3f} "
                      f"{wall / ideal:6.2f} {reqs:7.2f}", flush=True)
    summary(results, n)
    plot(results, args.plot, n)
    return 0


def summary(results: list[dict[str, object]], n: int) -> None:
    def find(store: str, lat: float, count: int) -> dict[str, object] | None:
        for r in results:
            if r["store"] == store and r["latency"] == lat and r["count"] == count:
                return r
        return None

    one, many = find("posix", 20.0, 1), find("posix", 20.0, 64)
    if one and many:
        speedup = float(one["wall"]) / float(many["wall"])  # type: ignore[arg-type]
        print(f"\nposix at 20 ms: prefetch_count 64 is {speedup:.1f}x faster than 1 "
              f"(target >= 30x); {float(many['ratio']):.2f}x the ideal "  # type: ignore[arg-type]
              "(target <= 2x)")


def plot(results: list[dict[str, object]], path: str, n: int) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, float], list[dict[str, object]]] = {}
    for r in results:
        series.setdefault((str(r["store"]), float(r["latency"])), []).append(r)  # type: ignore[arg-type]
    for (store, lat), rows in sorted(series.items()):
        xs = [int(r["count"]) for r in rows]  # type: ignore[call-overload]
        line, = ax.plot(xs, [float(r["wall"]) for r in rows], marker="o",  # type: ignore[arg-type]
                        label=f"{store}, {lat:g} ms")
        ax.plot(xs, [float(r["ideal"]) for r in rows], linestyle=":",  # type: ignore[arg-type]
                color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prefetch_count")
    ax.set_ylabel(f"FETCH 1:{n} BODY.PEEK[] wall time, s (dotted: ideal)")
    ax.set_title("Whole-message FETCH against injected store latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
