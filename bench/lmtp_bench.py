"""LMTP deliveries per second: cloudcote on each storage backend beside Debian's Dovecot LMTP.

    .venv/bin/python bench/lmtp_bench.py        # posix,seaweedfs,cassandra,postgresql,mysql
    .venv/bin/python bench/lmtp_bench.py --targets posix,mysql --clients 8 --duration 10 \\
        --rounds 5 --dovecot-format sdbox

All servers run at once on loopback ports: for each ``--targets`` backend one cloudcote
server in a child process of its own (``bench/cc_server.py``: the same ``Server`` that
``cloudcote serve`` runs, from a TOML configuration, with a ``metrics`` stage on top of
the chain and the driver's own request counter read over a pipe), and one Dovecot
(``dovecot-lmtpd``, installed with apt-get when missing) configured by
``bench/dovecot.py`` with ``--dovecot-format`` (maildir by default, ``mail_fsync =
optimized``) on posix storage in a temporary directory.  cloudcote's posix storage fsyncs
every object and every log append that commits a save (``fsync=optimized``, the default).

Each of ``--clients`` concurrent clients holds one LMTP connection (TCP_NODELAY, LHLO,
MAIL/RCPT/DATA pipelined as RFC 2920 allows when the server offers PIPELINING, which both
do; MAIL with SIZE when the server offers it) and delivers messages one after the other
until ``--duration`` seconds are up; each message goes to ``--rcpts`` recipients picked
round robin from ``--users`` users.  The
messages are ``--messages`` realistic mails made by ``gen_mbox.py`` (plain,
multipart/alternative, UTF-8 headers, ~15% with attachments; median ~3 KB, mean ~20 KB,
up to ~340 KB), the same on every server.  A recipient's 250 after DATA counts as one
delivery; any other reply counts as an error (shown).

Before the first round every user receives one message on every server (mailboxes
created, processes warm).  Rounds alternate the order of the servers; the table shows the
median of ``--rounds`` rounds of deliveries per second, the CPU the server used (all of
Dovecot's processes; 100% = one core), this client's CPU, and for cloudcote the calls into
libfs and the requests its driver sent to the store (S3 API calls, CQL or SQL statements;
posix counts none) per delivered message.  The ratio cloudcote/Dovecot on posix is the
issue's figure (target >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cc_server import ServerProcess  # noqa: E402
from dovecot import Dovecot, DovecotError  # noqa: E402
from imap_mixed import _proc_cpu, load_messages  # noqa: E402
from libfs_bench import spec_for  # noqa: E402
from servers import ensure_test_buckets  # noqa: E402

TARGETS = ["posix", "seaweedfs", "cassandra", "postgresql", "mysql"]
ALL_TARGETS = ["posix", "seaweedfs", "moto", "cassandra", "postgresql", "mysql"]
PASSWORD = "bench-secret"
DOMAIN = "example.com"
TARGET_RATIO = 0.5


# --- the LMTP client -------------------------------------------------------------------------

class LmtpError(Exception):
    """The server broke the protocol or refused the session."""


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    """One (possibly multi-line) reply: its code and its text lines."""
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise LmtpError(f"connection closed in a reply: {b''.join(lines) + line!r}")
        lines.append(line[4:].rstrip(b"\r\n"))
        if line[3:4] != b"-":
            try:
                return int(line[:3]), lines
            except ValueError:
                raise LmtpError(f"not a reply: {line!r}") from None


@dataclass
class ClientStats:
    delivered: int = 0
    messages: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def stuff(raw: bytes) -> bytes:
    """DATA's form of a message (RFC 5321 4.5.2 dot-stuffing), final ``.`` included."""
    raw = raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", raw) + b".\r\n"


async def lmtp_client(host: str, port: int, payloads: list[bytes], sizes: list[int],
                      recipients: list[list[str]], first: int, deadline: float,
                      stats: ClientStats, pipelining: bool = True,
                      limit: int | None = None) -> None:
    """Deliver messages ``first``, ``first + 1``, ... (wrapping) until ``deadline``, or
    ``limit`` of them."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        code, text = await read_reply(reader)
        if code != 220:
            raise LmtpError(f"greeting {code} {text}")
        writer.write(b"LHLO bench.test\r\n")
        code, text = await read_reply(reader)
        if code != 250:
            raise LmtpError(f"LHLO: {code} {text}")
        pipelining = pipelining and any(t.upper().startswith(b"PIPELINING") for t in text)
        size_ext = any(t.upper().split(b" ")[0] == b"SIZE" for t in text)
        i = first
        while time.monotonic() < deadline and (limit is None or i - first < limit):
            n = i % len(payloads)
            rcpts = recipients[i % len(recipients)]
            i += 1
            size = f" SIZE={sizes[n]}" if size_ext else ""  # RFC 1870, when offered
            cmds = [f"MAIL FROM:<bench@example.org>{size}\r\n".encode()]
            cmds += [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
            cmds.append(b"DATA\r\n")
            replies = []
            if pipelining:
                writer.write(b"".join(cmds))
                for _ in cmds:
                    replies.append((await read_reply(reader))[0])
            else:
                for cmd in cmds:
                    writer.write(cmd)
                    replies.append((await read_reply(reader))[0])
            accepted = sum(1 for c in replies[1:-1] if c == 250)
            if replies[0] != 250 or replies[-1] != 354:
                stats.errors[f"MAIL {replies[0]} / DATA {replies[-1]}"] += 1
                if replies[-1] == 354:  # no recipient left, yet DATA started: end it
                    writer.write(b".\r\n")
                    await read_reply(reader)
                writer.write(b"RSET\r\n")
                await read_reply(reader)
                if not stats.delivered and sum(stats.errors.values()) > 20:
                    raise LmtpError(f"the server refuses every delivery: {dict(stats.errors)}")
                continue
            for c in replies[1:-1]:
                if c != 250:
                    stats.errors[f"RCPT {c}"] += 1
            writer.write(payloads[n])
            for _ in range(accepted):
                code, text = await read_reply(reader)
                if code == 250:
                    stats.delivered += 1
                else:
                    stats.errors[f"DATA {code} {b' '.join(text)[:60].decode(errors='replace')}"] \
                        += 1
            stats.messages += 1
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def run_clients(host: str, port: int, payloads: list[bytes], sizes: list[int],
                      recipients: list[list[str]], clients: int, duration: float,
                      pipelining: bool) -> tuple[ClientStats, float]:
    """``clients`` connections for ``duration`` seconds: their totals and the wall time
    until the last transaction ended."""
    stats = [ClientStats() for _ in range(clients)]
    start = time.monotonic()
    await asyncio.gather(*(
        lmtp_client(host, port, payloads, sizes, recipients, k * 7919, start + duration,
                    stats[k], pipelining) for k in range(clients)))
    elapsed = time.monotonic() - start
    total = ClientStats()
    for s in stats:
        total.delivered += s.delivered
        total.messages += s.messages
        total.errors.update(s.errors)
    return total, elapsed


# --- the servers -------------------------------------------------------------------------------

class Subject(Protocol):
    name: str
    storage: str
    port: int

    def pids(self) -> list[int]: ...

    def counters(self) -> dict[str, float]: ...

    def reset(self) -> None: ...

    def stop(self) -> None: ...


class CloudcoteSubject:
    def __init__(self, target: str, layout: str, tmp: str) -> None:
        prefix = f"lmtpbench{uuid.uuid4().hex[:10]}"
        spec = spec_for(target, prefix, tmp)
        self.name = "cloudcote"
        self.storage = f"{target}, {layout}"
        self.target = target
        self.srv = ServerProcess(spec, protocols=("lmtp",), layout=layout,
                                 passdb=f"static:password={PASSWORD}")
        self.srv.start()
        self.port = self.srv.ports["lmtp"]

    def pids(self) -> list[int]:
        return [self.srv.pid] if self.srv.pid is not None else []

    def counters(self) -> dict[str, float]:
        return self.srv.requests()

    def reset(self) -> None:
        self.srv.reset_requests()

    def stop(self) -> None:
        self.srv.stop()


class DovecotSubject:
    def __init__(self, users: list[str], mail_format: str) -> None:
        self.dc = Dovecot({u: PASSWORD for u in users}, mail_format=mail_format,
                          lmtp=True).start()
        self.name = "Dovecot"
        self.storage = f"posix, {mail_format}"
        self.port = self.dc.lmtp_port

    def pids(self) -> list[int]:
        return self.dc.pids()

    def counters(self) -> dict[str, float]:
        return {}

    def reset(self) -> None:
        pass

    def stop(self) -> None:
        self.dc.stop()


def group_cpu(pids: list[int]) -> dict[int, float]:
    return {pid: _proc_cpu(pid) for pid in pids}


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class RoundResult:
    rate: float
    delivered: int
    server_cpu: float
    client_cpu: float
    fs_calls: float | None
    store_requests: float | None
    errors: Counter[str]


async def measure(subject: Subject, payloads: list[bytes], sizes: list[int],
                  recipients: list[list[str]], args: argparse.Namespace) -> RoundResult:
    subject.reset()
    cpu0, me0 = group_cpu(subject.pids()), self_cpu()
    stats, elapsed = await run_clients("127.0.0.1", subject.port, payloads, sizes, recipients,
                                       args.clients, args.duration, not args.no_pipelining)
    cpu1, me1 = group_cpu(subject.pids()), self_cpu()
    counters = subject.counters()
    server_cpu = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1) / elapsed
    per_msg = max(stats.messages, 1)
    fs_calls = store = None
    if counters:
        fs_calls = sum(v for k, v in counters.items() if k.startswith("fs.")) / per_msg
        store_keys = [k for k in counters if k.startswith("store.")]
        if store_keys:
            store = sum(counters[k] for k in store_keys) / per_msg
    return RoundResult(stats.delivered / elapsed, stats.delivered, server_cpu,
                       (me1 - me0) / elapsed, fs_calls, store, stats.errors)


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"cloudcote backends, comma-separated, of {','.join(ALL_TARGETS)}")
    ap.add_argument("--no-dovecot", action="store_true", help="cloudcote only")
    ap.add_argument("--dovecot-format", choices=("maildir", "sdbox", "mdbox"),
                    default="maildir")
    ap.add_argument("--layout", choices=("sdbox", "mdbox"), default="sdbox",
                    help="cloudcote's mailbox layout")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    ap.add_argument("--messages", type=int, default=200, help="distinct messages")
    ap.add_argument("--mbox", help="take the messages from this mbox instead of gen_mbox.py")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--no-pipelining", action="store_true",
                    help="wait for each reply before the next command")
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in ALL_TARGETS:
            ap.error(f"unknown target {t}")

    raw = load_messages(args.messages, args.mbox, args.seed)
    payloads = [stuff(m) for m in raw]
    sizes = [len(m) for m in raw]
    users = [f"lmtpbench{i:03d}" for i in range(args.users)]
    addrs = [f"{u}@{DOMAIN}" for u in users]
    recipients = [[addrs[(i + k) % len(addrs)] for k in range(args.rcpts)]
                  for i in range(len(addrs))]
    print(f"{len(raw)} messages, {sum(sizes) / len(sizes) / 1024:.1f} KiB average "
          f"(median {statistics.median(sizes) / 1024:.1f}, max {max(sizes) / 1024:.0f}); "
          f"{args.clients} clients, {args.users} users, {args.rcpts} recipient(s) per message, "
          f"{args.duration:.0f} s x {args.rounds} rounds", flush=True)

    ensure_test_buckets(targets)

    subjects: list[Any] = []
    results: dict[int, list[RoundResult]] = {}
    with tempfile.TemporaryDirectory(prefix="cc-lmtp-bench-") as tmp:
        try:
            if not args.no_dovecot:
                try:
                    subjects.append(DovecotSubject(users, args.dovecot_format))
                except DovecotError as exc:
                    print(f"lmtp_bench.py: {exc}", file=sys.stderr)
                    return 1
            for t in targets:
                subjects.append(CloudcoteSubject(t, args.layout, tmp))
            for s in subjects:
                # Mailboxes created and processes warm: every user gets one message.
                asyncio.run(warm_up(s, payloads, sizes, addrs, args))
                print(f"  {s.name} ({s.storage}) on 127.0.0.1:{s.port}: ready", flush=True)
            for r in range(args.rounds):
                order = list(range(len(subjects)))
                if r % 2:
                    order.reverse()
                for k in order:
                    s = subjects[k]
                    res = asyncio.run(measure(s, payloads, sizes, recipients, args))
                    results.setdefault(k, []).append(res)
                    errs = f", errors {dict(res.errors)}" if res.errors else ""
                    print(f"  round {r + 1}: {s.name:9} {s.storage:22} {res.rate:8.1f} "
                          f"deliveries/s, server CPU {res.server_cpu:.0%}, store requests/msg "
                          f"{fmt(res.store_requests)}{errs}", flush=True)
        finally:
            for s in subjects:
                s.stop()

    print()
    print("| server | storage | clients | deliveries/s (median) | rounds | server CPU "
          "| client CPU | libfs calls/msg | store requests/msg | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    medians: dict[int, float] = {}
    for k, s in enumerate(subjects):
        rs = results.get(k, [])
        if not rs:
            continue
        medians[k] = statistics.median(r.rate for r in rs)
        fs_calls = [r.fs_calls for r in rs if r.fs_calls is not None]
        store = [r.store_requests for r in rs if r.store_requests is not None]
        errors = sum(sum(r.errors.values()) for r in rs)
        print(f"| {s.name} | {s.storage} | {args.clients} | {medians[k]:.1f} | "
              f"{' / '.join(f'{r.rate:.0f}' for r in rs)} | "
              f"{statistics.median(r.server_cpu for r in rs):.0%} | "
              f"{statistics.median(r.client_cpu for r in rs):.0%} | "
              f"{fmt(statistics.median(fs_calls) if fs_calls else None)} | "
              f"{fmt(statistics.median(store) if store else None)} | {errors} |")
    dovecot = next((k for k, s in enumerate(subjects) if s.name == "Dovecot"), None)
    posix = next((k for k, s in enumerate(subjects)
                  if s.name == "cloudcote" and s.storage.startswith("posix")), None)
    if dovecot is not None and posix is not None and medians.get(dovecot):
        ratio = medians[posix] / medians[dovecot]
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"\nRatio cloudcote/Dovecot on posix: {ratio:.2f} (target {TARGET_RATIO}: "
              f"{verdict})")
    return 0


async def warm_up(subject: Subject, payloads: list[bytes], sizes: list[int],
                  addrs: list[str], args: argparse.Namespace) -> None:
    """One message to every user, a few clients at a time (mailboxes created)."""
    stats = ClientStats()
    for start in range(0, len(addrs), args.clients):
        batch = addrs[start:start + args.clients]
        await asyncio.gather(*(
            lmtp_client("127.0.0.1", subject.port, payloads, sizes, [[a]], 0,
                        time.monotonic() + 600, stats, not args.no_pipelining, limit=1)
            for a in batch))
    if stats.errors:
        raise LmtpError(f"{subject.name} ({subject.storage}): warm-up errors "
                        f"{dict(stats.errors)}")


if __name__ == "__main__":
    sys.exit(main())
