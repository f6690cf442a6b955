"""Opening and listing a large mailbox against store latency: SELECT plus
``FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)``.

    .venv/bin/python bench/metadata_latency.py                      # 10,000 messages, 20 ms
    .venv/bin/python bench/metadata_latency.py --messages 2000 --latency 20 --counts 16,64

The mailbox (small messages, 2 KB to 20 KB) is built once through the storage API on
posix; then for each ``prefetch_count`` a real server process (bench/cc_server.py) runs on
``latency:<ms>:posix`` and one client logs in, SELECTs INBOX and fetches the metadata of
every message over a real IMAP connection.  Reported: the wall time of LOGIN, of SELECT
and of the FETCH, and the store requests each made (every libfs call, counted by a
``metrics`` stage), each round on a freshly started server, so nothing is in its memory
yet.  The FETCH must read no message object: its reads are the cache
chunks (one per 64 messages or more), so a read count far below the message count shows
that no message was opened.  ``select cpu`` and ``fetch cpu`` are the server process's CPU
time for the two commands, steadier than wall time on a shared machine.  ``--rounds``
rounds, medians shown.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cc_server import PASSWORD, ServerProcess  # noqa: E402
from latency_common import (  # noqa: E402
    USER,
    ImapClient,
    bar_plot,
    build_mailbox,
    cpu_seconds,
    make_messages,
    median,
    message_sizes,
    with_latency,
)


async def session(srv: ServerProcess, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    srv.reset_requests()
    t0 = time.perf_counter()
    client = await ImapClient.connect(srv.host, srv.ports["imap"])
    await client.command(f'LOGIN {USER} "{PASSWORD}"')
    out["login_s"] = time.perf_counter() - t0
    out["login_req"] = sum(srv.requests().values())
    srv.reset_requests()
    t0, c0 = time.perf_counter(), cpu_seconds(srv.pid)
    await client.command("SELECT INBOX")
    out["select_s"] = time.perf_counter() - t0
    out["select_cpu"] = cpu_seconds(srv.pid) - c0
    out["select_req"] = sum(srv.requests().values())
    srv.reset_requests()
    t0, c0 = time.perf_counter(), cpu_seconds(srv.pid)
    lines = await client.command("FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)")
    out["fetch_s"] = time.perf_counter() - t0
    out["fetch_cpu"] = cpu_seconds(srv.pid) - c0
    reqs = srv.requests()
    out["fetch_req"] = sum(reqs.values())
    out["fetch_reads"] = sum(v for k, v in reqs.items() if k in ("fs.read", "fs.read_range",
                                                                  "fs.read_stream"))
    if len(lines) != n:
        raise RuntimeError(f"FETCH gave {len(lines)} responses for {n} messages")
    await client.command("LOGOUT")
    await client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--latency", type=float, default=20.0, help="ms")
    ap.add_argument("--counts", default="1,16,64", help="prefetch_count values")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plot", default=str(Path(__file__).with_name("metadata_latency.png")))
    args = ap.parse_args(argv)
    n = args.messages
    tmp = Path(tempfile.mkdtemp(prefix="cc-metalat-"))
    base = f"posix:{tmp / 'mail'}"
    t0 = time.perf_counter()
    asyncio.run(build_mailbox(base, make_messages(n, sizes=message_sizes(n, high=20_000))))
    print(f"built {n} messages in {time.perf_counter() - t0:.0f} s; store latency "
          f"{args.latency:g} ms per request")
    print(f"{'count':>5} {'login s':>8} {'select s':>8} {'fetch s':>8} {'login req':>9} "
          f"{'select req':>10} {'fetch req':>9} {'fetch reads':>11} {'select cpu':>10} "
          f"{'fetch cpu':>9}")
    rows: list[tuple[int, dict[str, float]]] = []
    for count in [int(x) for x in args.counts.split(",")]:
        runs = []
        for _ in range(args.rounds):  # a fresh server each round: nothing in memory yet
            with ServerProcess(with_latency(base, args.latency), users=[USER],
                               prefetch_count=count) as srv:
                runs.append(asyncio.run(session(srv, n)))
        med = {k: median([r[k] for r in runs]) for k in runs[0]}
        print(f"{count:5d} {med['login_s']:8.3f} {med['select_s']:8.3f} {med['fetch_s']:8.3f} "
              f"{med['login_req']:9.0f} {med['select_req']:10.0f} {med['fetch_req']:9.0f} "
              f"{med['fetch_reads']:11.0f} {med['select_cpu']:10.3f} {med['fetch_cpu']:9.3f}",
              flush=True)
        rows.append((count, med))
    bar_plot(args.plot, f"LOGIN, SELECT and FETCH 1:* metadata of {n} messages at "
             f"{args.latency:g} ms", [f"prefetch_count {c}" for c, _ in rows],
             {step: [m[f"{step}_s"] for _, m in rows] for step in ("login", "select", "fetch")},
             "wall time, s")
    print("\ntarget: at 20 ms, SELECT + FETCH of 10,000 messages under 0.5 s, reading no "
          "message object")
    return 0


if __name__ == "__main__":
    sys.exit(main())
