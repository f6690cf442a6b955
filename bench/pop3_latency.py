"""POP3 RETR of a whole maildrop against store latency, pipelined and one at a time.

    .venv/bin/python bench/pop3_latency.py                  # 500 messages, 20 ms
    .venv/bin/python bench/pop3_latency.py --messages 200 --latency 50 --counts 16,64

A maildrop of ``--messages`` messages (log-normal sizes, 2-200 KB) is built once on posix;
a real server process (bench/cc_server.py) serves it on ``latency:<ms>:posix``.  One POP3
client (TCP_NODELAY) logs in and reads every message with RETR, either one command at a
time (send, read the reply to its final dot, send the next) or pipelined (RFC 2449: all
RETRs in one write, then the replies).  Median of ``--rounds`` rounds per mode and
``prefetch_count``; a fresh login each round.  Target: pipelined at least 20x faster
than one at a time at 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cc_server import PASSWORD, ServerProcess  # noqa: E402
from latency_common import (  # noqa: E402
    USER,
    bar_plot,
    build_mailbox,
    make_messages,
    median,
    with_latency,
)


async def read_multiline(reader: asyncio.StreamReader) -> int:
    """One RETR reply: the status line, then lines up to the lone dot; its octets."""
    status = await reader.readline()
    if not status.startswith(b"+OK"):
        raise RuntimeError(f"RETR: {status!r}")
    total = 0
    while True:
        line = await reader.readline()
        if line == b".\r\n":
            return total
        if not line:
            raise RuntimeError("connection closed inside a reply")
        total += len(line)


async def retr_all(port: int, n: int, pipelined: bool) -> tuple[float, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await reader.readline()
    writer.write(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
    for _ in range(2):
        line = await reader.readline()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"login: {line!r}")
    t0 = time.perf_counter()
    octets = 0
    if pipelined:
        writer.write(b"".join(b"RETR %d\r\n" % i for i in range(1, n + 1)))
        for _ in range(n):
            octets += await read_multiline(reader)
    else:
        for i in range(1, n + 1):
            writer.write(b"RETR %d\r\n" % i)
            octets += await read_multiline(reader)
    elapsed = time.perf_counter() - t0
    writer.write(b"QUIT\r\n")
    await reader.readline()
    writer.close()
    return elapsed, octets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--latency", type=float, default=20.0, help="ms")
    ap.add_argument("--counts", default="16,64", help="prefetch_count values")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plot", default=str(Path(__file__).with_name("pop3_latency.png")))
    args = ap.parse_args(argv)
    n = args.messages
    tmp = Path(tempfile.mkdtemp(prefix="cc-pop3lat-"))
    base = f"posix:{tmp / 'mail'}"
    messages = make_messages(n)
    asyncio.run(build_mailbox(base, messages))
    print(f"{n} messages, {sum(map(len, messages)) / 1e6:.1f} MB; store latency "
          f"{args.latency:g} ms per request")
    print(f"{'count':>5} {'one at a time s':>15} {'pipelined s':>11} {'speedup':>7}")
    rows: list[tuple[int, float, float]] = []
    for count in [int(x) for x in args.counts.split(",")]:
        with ServerProcess(with_latency(base, args.latency), users=[USER],
                           protocols=("pop3",), prefetch_count=count) as srv:
            port = srv.ports["pop3"]
            serial = [asyncio.run(retr_all(port, n, False))[0]
                      for _ in range(1 if n * args.latency > 5000 else args.rounds)]
            piped = [asyncio.run(retr_all(port, n, True))[0] for _ in range(args.rounds)]
        s, p = median(serial), median(piped)
        print(f"{count:5d} {s:15.3f} {p:11.3f} {s / p:6.1f}x", flush=True)
        rows.append((count, s, p))
    bar_plot(args.plot, f"POP3 RETR of {n} messages at {args.latency:g} ms store latency",
             [f"prefetch_count {c}" for c, _, _ in rows],
             {"one at a time": [s for _, s, _ in rows], "pipelined": [p for _, _, p in rows]},
             "wall time, s", log=True)
    print("\ntarget: pipelined RETR of 500 messages at 20 ms at least 20x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
