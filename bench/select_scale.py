"""SELECT and ``FETCH 1:* (FLAGS)`` of a very large mailbox on posix.

    .venv/bin/python bench/select_scale.py                      # 100,000 messages
    .venv/bin/python bench/select_scale.py --messages 20000 --rounds 5

The mailbox (small messages, a few hundred bytes, the first half \\Seen) is built once
through the storage API (``save_many`` in batches) on posix.  Each round starts a fresh
server process (bench/cc_server.py) on that store and one client logs in and measures:

* cold SELECT: the first SELECT of the process (nothing of the mailbox in its memory;
  the kernel's page cache is warm, as on a busy server);
* ``FETCH 1:* (FLAGS)`` right after it;
* warm SELECT: a second session SELECTs the same mailbox in the same process.

Wall times, and the server process's CPU time for the same commands (steadier when other
work shares the machine).  Medians over ``--rounds`` rounds.  ``--keep DIR`` builds the
mailbox in DIR once and reuses it on later runs (the on-disk format must be one the running
tree reads).
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
from latency_common import USER, ImapClient, build_mailbox, cpu_seconds, median  # noqa: E402


def small_messages(n: int) -> list[bytes]:
    return [(f"From: sender{i % 97}@example.org\r\nTo: {USER}@example.org\r\n"
             f"Subject: message {i}\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
             f"Message-ID: <{i}@example.org>\r\n\r\nbody {i}\r\n").encode()
            for i in range(n)]


async def build(base: str, n: int) -> None:
    await build_mailbox(base, small_messages(n), batch=1000)


async def bulk_command(client: ImapClient, text: str) -> int:
    """Sends a command whose responses hold no literal and counts its untagged lines,
    reading in large blocks: a line-by-line Python client would time itself more than
    the server."""
    client.tag += 1
    tag = b"A%d " % client.tag
    client.writer.write(tag + text.encode() + b"\r\n")
    buf = b""
    lines = 0
    while True:
        block = await client.reader.read(1 << 20)
        if not block:
            raise RuntimeError("connection closed")
        buf += block
        end = buf.rfind(b"\r\n")
        if end < 0:
            continue
        done, buf = buf[:end + 2], buf[end + 2:]
        lines += done.count(b"\r\n")
        pos = done.find(b"\r\n" + tag)
        if done.startswith(tag) or pos >= 0:
            status = done[(pos + 2 if pos >= 0 else 0):].split(b"\r\n", 1)[0]
            if not status.startswith(tag + b"OK"):
                raise RuntimeError(f"{text}: {status!r}")
            return lines - 1


async def login(srv: ServerProcess) -> ImapClient:
    client = await ImapClient.connect(srv.host, srv.ports["imap"])
    await client.command(f'LOGIN {USER} "{PASSWORD}"')
    return client


async def session(srv: ServerProcess, n: int, seen: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    first = await login(srv)
    if seen:
        await first.command("SELECT INBOX")
        await first.command(f"STORE 1:{n // 2} +FLAGS.SILENT (\\Seen)")
        return out
    t0, c0 = time.perf_counter(), cpu_seconds(srv.pid)
    await first.command("SELECT INBOX")
    out["cold_select_s"] = time.perf_counter() - t0
    out["cold_select_cpu"] = cpu_seconds(srv.pid) - c0
    t0, c0 = time.perf_counter(), cpu_seconds(srv.pid)
    lines = await bulk_command(first, "FETCH 1:* (FLAGS)")
    out["fetch_flags_s"] = time.perf_counter() - t0
    out["fetch_flags_cpu"] = cpu_seconds(srv.pid) - c0
    if lines != n:
        raise RuntimeError(f"FETCH gave {lines} responses for {n} messages")
    second = await login(srv)
    t0, c0 = time.perf_counter(), cpu_seconds(srv.pid)
    await second.command("SELECT INBOX")
    out["warm_select_s"] = time.perf_counter() - t0
    out["warm_select_cpu"] = cpu_seconds(srv.pid) - c0
    t0 = time.perf_counter()
    await bulk_command(second, "FETCH 1:* (FLAGS)")
    out["warm_fetch_flags_s"] = time.perf_counter() - t0
    for c in (first, second):
        await c.command("LOGOUT")
        await c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", help="build the mailbox here once and reuse it")
    args = ap.parse_args(argv)
    n = args.messages
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cc-selscale-"))
    base = f"posix:{root / 'mail'}"
    if not (root / "built").exists():
        t0 = time.perf_counter()
        asyncio.run(build(base, n))
        with ServerProcess(base, users=[USER]) as srv:  # the first half \Seen
            asyncio.run(session(srv, n, seen=True))
        (root / "built").write_text(str(n))
        print(f"built {n} messages in {time.perf_counter() - t0:.0f} s in {root}")
    runs = []
    for _ in range(args.rounds):
        with ServerProcess(base, users=[USER]) as srv:  # a fresh process each round
            runs.append(asyncio.run(session(srv, n, seen=False)))
    med = {k: median([r[k] for r in runs]) for k in runs[0]}
    print(f"{'messages':>8} {'cold SELECT s':>13} {'FETCH FLAGS s':>13} {'warm SELECT s':>13} "
          f"{'warm FETCH s':>12}")
    print(f"{n:8d} {med['cold_select_s']:13.3f} {med['fetch_flags_s']:13.3f} "
          f"{med['warm_select_s']:13.3f} {med['warm_fetch_flags_s']:12.3f}")
    print(f"{'server CPU':>8} {med['cold_select_cpu']:13.3f} {med['fetch_flags_cpu']:13.3f} "
          f"{med['warm_select_cpu']:13.3f}")
    print("\ntarget: SELECT under 1 s cold and 200 ms warm, FETCH 1:* (FLAGS) under 1 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
