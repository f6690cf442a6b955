"""SORT and THREAD on a large mailbox: cloudcote beside Debian's Dovecot, same messages.

    .venv/bin/python bench/sort_thread_bench.py                 # 10,000 messages
    .venv/bin/python bench/sort_thread_bench.py --messages 2000 --rounds 3

``--messages`` realistic messages from ``gen_mbox.py`` (threads with References, UTF-8
subjects, attachments) go into one INBOX of each server: cloudcote's is built through the
storage API on posix (then served by a real server process, bench/cc_server.py, at 0 and
at 20 ms of injected store latency), Dovecot's (``dovecot-imapd``, maildir, as configured
by bench/dovecot.py) is filled over IMAP.  For each command -- ``SORT (ARRIVAL)``,
``SORT (DATE)``, ``SORT (SUBJECT)``, ``SORT (FROM)``, ``THREAD REFERENCES`` of ``ALL``,
and ``SORT (SUBJECT)`` and ``THREAD REFERENCES`` of ``ALL`` and ``2:*`` in turn (so that
no round repeats the one before, which cloudcote would answer from the result it keeps)
-- a client logs in, SELECTs and times the command; ``--rounds`` rounds, the median
shown.  The first round of each command is cold on both servers (cloudcote: a fresh
server process per command; Dovecot: its cache file fills on first use), so the table
shows the cold time and the median of the warm ones.  The three runs of a command
follow each other (Dovecot's mailbox is filled first), so a change of the machine's load
mid-run touches all three alike.  cloudcote's store requests are counted by a
``metrics`` stage: no message object may be read (the target), and the ratio to Dovecot
on posix should stay within 3x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cc_server import PASSWORD, ServerProcess  # noqa: E402
from dovecot import Dovecot, ensure_dovecot  # noqa: E402
from imap_mixed import ImapClient, load_messages, seed_users  # noqa: E402
from latency_common import USER, build_mailbox, median, with_latency  # noqa: E402

COMMANDS = ["SORT (ARRIVAL) UTF-8 ALL", "SORT (DATE) UTF-8 ALL", "SORT (SUBJECT) UTF-8 ALL",
            "SORT (FROM) UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL",
            # Another set of messages than the round before: no kept result to answer from.
            "SORT (SUBJECT) UTF-8 ALL|2:*", "THREAD REFERENCES UTF-8 ALL|2:*"]


def round_command(command: str, round_no: int) -> str:
    """``command`` of round ``round_no``: "A|B" is A in even rounds, B in odd ones."""
    head, _, alternatives = command.rpartition(" ")
    choices = alternatives.split("|")
    return f"{head} {choices[round_no % len(choices)]}"


async def timed(port: int, password: str, command: str, n: int) -> float:
    client = await ImapClient.connect("127.0.0.1", port)
    try:
        await client.command(f'LOGIN {USER} "{password}"')
        await client.command("SELECT INBOX")
        if client.exists != n:
            raise RuntimeError(f"INBOX has {client.exists} messages, not {n}")
        t0 = time.perf_counter()
        lines = await client.command(command)
        elapsed = time.perf_counter() - t0
        if not lines or not lines[-1].startswith((b"* SORT", b"* THREAD")):
            raise RuntimeError(f"{command}: no result ({lines[-1:]!r})")
        await client.command("LOGOUT")
        return elapsed
    finally:
        await client.close()


def rounds_of(port: int, password: str, command: str, n: int, rounds: int) -> list[float]:
    return [asyncio.run(timed(port, password, round_command(command, r), n))
            for r in range(rounds)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=6, help="1 cold + the rest warm")
    ap.add_argument("--latency", type=float, default=20.0, help="ms, the second cloudcote run")
    ap.add_argument("--no-dovecot", action="store_true")
    args = ap.parse_args(argv)
    n = args.messages
    tmp = Path(tempfile.mkdtemp(prefix="cc-sortbench-"))
    messages = load_messages(n, None, 1)
    base = f"posix:{tmp / 'mail'}"
    t0 = time.perf_counter()
    asyncio.run(build_mailbox(base, messages))
    print(f"{n} messages ({sum(map(len, messages)) / 1e6:.1f} MB) built in "
          f"{time.perf_counter() - t0:.0f} s")
    runs = (("cloudcote posix", 0.0), (f"cloudcote +{args.latency:g} ms", args.latency))
    results: dict[str, dict[str, tuple[float, float, float]]] = {label: {} for label, _ in runs}
    with contextlib.ExitStack() as stack:
        dc = None
        if not args.no_dovecot:
            ensure_dovecot()
            dc = stack.enter_context(Dovecot({USER: PASSWORD}, mail_format="maildir"))
            t0 = time.perf_counter()
            asyncio.run(seed_users("127.0.0.1", dc.port, [USER], messages))
            print(f"Dovecot filled over IMAP in {time.perf_counter() - t0:.0f} s")
            results["Dovecot maildir"] = {}
        for command in COMMANDS:
            for label, lat in runs:
                with ServerProcess(with_latency(base, lat), users=[USER]) as srv:
                    port = srv.ports["imap"]
                    srv.reset_requests()
                    times = rounds_of(port, PASSWORD, command, n, args.rounds)
                    reads = srv.requests()
                per = sum(v for k, v in reads.items() if k in ("fs.read", "fs.read_range"))
                results[label][command] = (times[0], median(times[1:] or times), per)
                print(f"{label:22} {command:30} cold {times[0]:7.3f} s  warm "
                      f"{median(times[1:] or times):7.3f} s  reads {per:.0f}", flush=True)
            if dc is not None:
                times = rounds_of(dc.port, PASSWORD, command, n, args.rounds)
                results["Dovecot maildir"][command] = (times[0], median(times[1:] or times), 0)
                print(f"{'Dovecot maildir':22} {command:30} cold {times[0]:7.3f} s  warm "
                      f"{median(times[1:] or times):7.3f} s", flush=True)
    labels = [label for label, _ in runs]
    print("\n| command | " + " | ".join(f"{k} cold / warm" for k in results)
          + " | warm ratio (posix / +latency) |")
    print("|---|" + "---|" * (len(results) + 1))
    for command in COMMANDS:
        cells = [f"{v[command][0] * 1000:.0f} / {v[command][1] * 1000:.0f} ms"
                 for v in results.values()]
        ratio = ""
        if "Dovecot maildir" in results:
            theirs = results["Dovecot maildir"][command][1]
            ratio = " / ".join(f"{results[label][command][1] / theirs:.2f}x" for label in labels)
        print(f"| {command.replace('|', ' / ')} | " + " | ".join(cells) + f" | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
