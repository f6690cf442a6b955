"""IDLE at scale: many users each holding one IDLE session, cloudcote beside Dovecot.

    .venv/bin/python bench/idle_scale.py                       # cloudcote 1k/5k/10k, Dovecot 1k
    .venv/bin/python bench/idle_scale.py --servers cloudcote --sessions 1000 --workers 1
    .venv/bin/python bench/idle_scale.py --servers dovecot --dovecot-sessions 1000,2000
    .venv/bin/python bench/idle_scale.py --replot a.json b.json   # the PNG from saved runs

For each server and each session count N, on a fresh server (a temporary directory):

1. ``--client-procs`` client processes (asyncio, a small IMAP state machine per
   connection; not imaplib, which blocks) open N connections as N distinct users
   ``user0`` .. ``user{N-1}``: LOGIN, SELECT INBOX, IDLE.  A first pass (``--warm``, on by
   default) logs every user in once and out again, so the measured pass finds the users'
   mail already created, as a server does whose users reconnect; its time is shown as
   "first login".  The measured pass's time runs from the start until the last connection
   got ``+ idling``.  At most ``--concurrency`` connections per client process are being
   set up at once.
2. After ``--settle`` seconds with every session idle: the server's memory, the sum of the
   proportional set size (``Pss`` of /proc/PID/smaps_rollup) of all its processes
   (cloudcote's master and workers; every Dovecot process), and the CPU the server used
   meanwhile (100% = one core) - what holding N idle sessions costs.
3. One message by LMTP to each of ``--deliveries`` randomly chosen users of those N
   (``--lmtp-clients`` concurrent LMTP connections, one transaction per recipient); per
   user, the time from the delivery's ``250`` to the client process seeing ``* 1 EXISTS``
   on that user's IDLE (both on the machine's monotonic clock; a session may hear of the
   message a little before the LMTP client has read its 250: then the time is negative).
   Sessions that do not hear within ``--push-timeout`` seconds count as missed.

cloudcote runs as ``cloudcote --config FILE serve`` with ``[server] workers =
--workers``, posix storage, the static passdb (any user name, one password), IMAP and
LMTP on loopback, ``[mail] poll_interval`` at its default and log level warning.  Dovecot
runs as ``bench/dovecot.py`` sets it up (maildir, LMTP, high-performance login), with
the limits raised for N sessions: ``service imap { process_limit }`` (one process per
session) and ``default_client_limit`` (anvil, stats and the login processes keep one
connection per session) to N + 1000, ``service auth { client_limit }`` to N + 2000 (every
imap process holds a connection to auth; below that, logins fail past about 4,600
sessions with "client_limit reached").  The machine's inotify limit is left as it is
(``fs.inotify.max_user_instances``, 128 by default): Dovecot's IDLE uses one inotify
instance per session and falls back to checking every ``mailbox_idle_check_interval``
(30 s) when it gets none - the bench counts the log lines that say so.

``--log-level info`` (cloudcote) also splits the push times by whether the user's IMAP
session and its LMTP delivery ran on the same worker or on different ones (from the log's
session ids, ``imap-w1.17``).

``--tracemalloc`` (cloudcote only, one worker) runs the server under tracemalloc and
compares snapshots taken before the first login and with the N sessions idle (tracing
starts at the first): the allocations that grew, divided by N and put on the innermost line
of cloudcote's code that made them - where each session's (and here each user's) bytes go.

The table shows one row per run, the ratio to Dovecot where both ran the same N, and
``--png`` (bench/idle_scale.png) plots memory and push latency against session count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dovecot import (  # noqa: E402
    LMTP_PROCESS_LIMIT,
    Dovecot,
    DovecotError,
    ensure_dovecot,
    free_port,
    group_pids,
)

PASSWORD = "bench-secret"
HERE = Path(__file__).resolve().parent
MESSAGE = (b"From: Sender <sender@example.org>\r\n"
           b"To: someone@example.com\r\n"
           b"Subject: new mail for an idle session\r\n"
           b"Date: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <idle-scale-%d@example.org>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           + b"The phone should hear of this at once.\r\n" * 20)


# --- the client process ----------------------------------------------------------------

class _Conn(asyncio.Protocol):
    """One user's session: greeting, LOGIN, SELECT INBOX, then IDLE (or LOGOUT when only
    warming up).  Lines are handled as they come; no literals are expected."""

    def __init__(self, owner: _Client, user: str, idle: bool) -> None:
        self.owner = owner
        self.user = user
        self.idle = idle
        self.buf = b""
        self.stage = 0  # 0 greeting, 1 LOGIN sent, 2 SELECT sent, 3 IDLE sent, 4 idling
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, text: bytes) -> None:
        assert self.transport is not None
        self.transport.write(text + b"\r\n")

    def _fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            line, self.buf = self.buf[:end], self.buf[end + 2:]
            self._line(line)

    def _line(self, line: bytes) -> None:
        stage = self.stage
        if stage == 4:
            if line.startswith(b"* ") and line.endswith(b" EXISTS"):
                self.owner.seen.setdefault(self.user, time.monotonic())
            return
        if stage == 0:
            if not line.startswith(b"* OK"):
                self._fail(f"greeting {line[:60]!r}")
                return
            self._send(b'a1 LOGIN %s "%s"' % (self.user.encode(), PASSWORD.encode()))
            self.stage = 1
        elif line.startswith(b"* ") or line.startswith(b"+ ") and stage != 3:
            return
        elif stage == 1:
            if not line.startswith(b"a1 OK"):
                self._fail(f"LOGIN: {line[:80]!r}")
                return
            self._send(b"a2 SELECT INBOX")
            self.stage = 2
        elif stage == 2:
            if not line.startswith(b"a2 OK"):
                self._fail(f"SELECT: {line[:80]!r}")
                return
            if self.idle:
                self._send(b"a3 IDLE")
                self.stage = 3
            else:
                self._send(b"a3 LOGOUT")
                self.stage = 5
        elif stage == 3:
            if line.startswith(b"+"):
                self.stage = 4
                if not self.done.done():
                    self.done.set_result(None)
            else:
                self._fail(f"IDLE: {line[:80]!r}")
        elif stage == 5 and line.startswith(b"a3 "):
            if not self.done.done():
                self.done.set_result(None)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.stage == 4:
            self.owner.dropped += 1
        self._fail(f"connection closed ({exc or 'by the server'})")


class _Client:
    """The state of one client process."""

    def __init__(self) -> None:
        self.conns: list[_Conn] = []
        self.seen: dict[str, float] = {}
        self.dropped = 0

    async def open_all(self, host: str, port: int, users: list[str], concurrency: int,
                       timeout: float, idle: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        errors: Counter[str] = Counter()
        t0 = time.monotonic()
        last = t0
        times: list[float] = []

        async def one(user: str) -> None:
            nonlocal last
            async with sem:
                started = time.monotonic()
                conn = _Conn(self, user, idle)
                try:
                    await asyncio.wait_for(
                        loop.create_connection(lambda: conn, host, port), timeout)
                    await asyncio.wait_for(asyncio.shield(conn.done), timeout)
                    last = max(last, time.monotonic())
                    times.append(last - started)
                    if idle:
                        self.conns.append(conn)
                except (OSError, RuntimeError, TimeoutError) as exc:
                    errors[(str(exc) or type(exc).__name__)[:100]] += 1
                    if conn.transport is not None:
                        conn.transport.close()

        await asyncio.gather(*(one(u) for u in users))
        return {"ok": len(users) - sum(errors.values()), "errors": dict(errors),
                "start": t0, "end": last, "times": times}

    def close_all(self) -> None:
        for conn in self.conns:
            if conn.transport is not None and not conn.lost:
                conn.transport.abort()
        self.conns.clear()


def _client_main(conn: multiprocessing.connection.Connection) -> None:
    """A client process: commands from the parent over ``conn``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_client_loop(conn))


async def _client_loop(conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    client = _Client()
    while True:
        cmd, arg = await commands.get()
        if cmd == "open":
            conn.send(("open", await client.open_all(**arg)))
        elif cmd == "seen":
            conn.send(("seen", {u: t for u, t in client.seen.items() if u in arg}))
        elif cmd == "status":
            conn.send(("status", {"open": sum(1 for c in client.conns if not c.lost),
                                  "dropped": client.dropped}))
        else:
            client.close_all()
            await asyncio.sleep(0.2)
            conn.send(("close", None))
            return


class Clients:
    """``procs`` client processes, each with its share of the users."""

    def __init__(self, procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(child,), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def ask(self, cmd: str, args: list[Any], timeout: float) -> list[Any]:
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((cmd, arg))
        out = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"client process silent for {timeout:.0f} s after {cmd}")
            kind, value = pipe.recv()
            assert kind == cmd, (kind, cmd)
            out.append(value)
        return out

    def open(self, host: str, port: int, users: list[str], concurrency: int,
             timeout: float, idle: bool) -> dict[str, Any]:
        n = len(self.pipes)
        results = self.ask("open", [
            {"host": host, "port": port, "users": users[i::n], "concurrency": concurrency,
             "timeout": timeout, "idle": idle} for i in range(n)], timeout * 4 + 600)
        errors: Counter[str] = Counter()
        times: list[float] = []
        for r in results:
            errors.update(r["errors"])
            times += r["times"]
        times.sort()

        def pct(q: float) -> float:
            return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")

        return {"ok": sum(r["ok"] for r in results), "errors": errors,
                "seconds": max(r["end"] for r in results) - min(r["start"] for r in results),
                "per_session": f"one session from connect to its last reply: median "
                               f"{pct(0.5):.3f} s, p90 {pct(0.9):.3f} s, p99 {pct(0.99):.3f} s, "
                               f"max {pct(1.0):.3f} s"}

    def seen(self, users: set[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for part in self.ask("seen", [users] * len(self.pipes), 60):
            out.update(part)
        return out

    def status(self) -> tuple[int, int]:
        parts = self.ask("status", [None] * len(self.pipes), 60)
        return sum(p["open"] for p in parts), sum(p["dropped"] for p in parts)

    def close(self) -> None:
        try:
            self.ask("close", [None] * len(self.pipes), 60)
        except (TimeoutError, OSError, EOFError):
            pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# --- LMTP deliveries -------------------------------------------------------------------

async def _lmtp_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("LMTP connection closed")
        if line[3:4] != b"-":
            return line


async def deliver(host: str, port: int, recipients: list[str], clients: int,
                  ) -> tuple[dict[str, float], Counter[str]]:
    """One message to each of ``recipients`` (addresses); {address: time of its 250}."""
    done: dict[str, float] = {}
    errors: Counter[str] = Counter()
    queue = list(reversed(recipients))

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            greeting = await _lmtp_reply(reader)
            if not greeting.startswith(b"220"):
                raise ConnectionError(f"LMTP greeting {greeting!r}")
            writer.write(b"LHLO bench.example.org\r\n")
            await _lmtp_reply(reader)
            while queue:
                rcpt = queue.pop()
                writer.write(b"MAIL FROM:<sender@example.org>\r\n")
                reply = await _lmtp_reply(reader)
                writer.write(b"RCPT TO:<%s>\r\n" % rcpt.encode())
                reply = await _lmtp_reply(reader)
                if not reply.startswith(b"250"):
                    errors[f"RCPT {reply.decode(errors='replace').strip()}"[:100]] += 1
                    writer.write(b"RSET\r\n")
                    await _lmtp_reply(reader)
                    continue
                writer.write(b"DATA\r\n")
                reply = await _lmtp_reply(reader)
                if not reply.startswith(b"354"):
                    errors[f"DATA {reply.decode(errors='replace').strip()}"[:100]] += 1
                    continue
                writer.write(MESSAGE % random.randrange(1 << 30) + b".\r\n")
                reply = await _lmtp_reply(reader)
                if reply.startswith(b"250"):
                    done[rcpt] = time.monotonic()
                else:
                    errors[f"after DATA {reply.decode(errors='replace').strip()}"[:100]] += 1
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()

    await asyncio.gather(*(worker(k) for k in range(clients)))
    return done, errors


# --- the servers -----------------------------------------------------------------------

def pss_kib(pids: list[int]) -> tuple[int, int]:
    """(sum of Pss, sum of Rss) in KiB over ``pids``."""
    pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return pss, rss


_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            out[pid] = sum(int(x) for x in fields[11:15]) / _CLK
        except OSError:
            continue
    return out


class CloudcoteUnderTest:
    name = "cloudcote"

    def __init__(self, workers: int, tracemalloc_dir: Path | None = None,
                 log_level: str = "warning") -> None:
        self.workers = workers
        self.dir = Path(tempfile.mkdtemp(prefix="cc-idle-"))
        self.host = "127.0.0.1"
        self.port = free_port()
        self.lmtp_port = free_port()
        self.tracemalloc_dir = tracemalloc_dir
        self.config = self.dir / "cloudcote.toml"
        self.config.write_text(
            f'data_dir = "{self.dir / "data"}"\n'
            f"[server]\nworkers = {workers}\n"
            f'[storage]\nfs = "posix:path={self.dir / "mail"}"\n'
            f'[auth]\npassdb = "static:password={PASSWORD}"\nfailure_delay = 0.0\n'
            f'[imap]\nlisten = ["{self.host}:{self.port}"]\n[imaps]\nlisten = []\n'
            "[pop3]\nlisten = []\n[pop3s]\nlisten = []\n"
            f'[lmtp]\nlisten = ["{self.host}:{self.lmtp_port}"]\n'
            f'[log]\nlevel = "{log_level}"\npath = "{self.dir / "server.log"}"\n')
        cmd = [sys.executable, "-m", "cloudcote", "--config", str(self.config), "serve"]
        env = dict(os.environ)
        if tracemalloc_dir is not None:
            # A hook of the bench, not of the server: tracemalloc from the first SIGUSR1,
            # and a snapshot written on each (single process: workers = 1).
            env["IDLE_SCALE_TRACEMALLOC"] = str(tracemalloc_dir)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-traced",
                   str(self.config)]
        self.out = open(self.dir / "serve.out", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        pending = [(self.port, b"* OK"), (self.lmtp_port, b"220")]
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("cloudcote exited: " +
                                   (self.dir / "serve.out").read_text(errors="replace"))
            port, start = pending[0]
            try:
                with socket.create_connection((self.host, port), timeout=2) as s:
                    s.settimeout(10)
                    if s.recv(1024).startswith(start):
                        pending.pop(0)
                        continue
            except OSError:
                pass
            time.sleep(0.1)
        # Every worker up (the master starts them after the first is ready).
        while time.monotonic() < deadline and len(self.pids()) < (
                self.workers + 1 if self.workers > 1 else 1):
            time.sleep(0.1)
        if pending:
            self.stop()
            raise RuntimeError("cloudcote did not start within 120 s")
        time.sleep(0.5)

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid) if self.proc.poll() is None else []

    def rcpt(self, user: str) -> str:
        return user

    def describe(self) -> str:
        return f"cloudcote serve, workers={self.workers}, posix in {self.dir}"

    def log_notes(self) -> list[str]:
        try:
            lines = (self.dir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return []
        counts = Counter(" ".join(x.split()[3:])[:120] for x in lines
                         if " WARNING " in x or " ERROR " in x)
        return [f"{n} x {text}" for text, n in counts.most_common(6)]

    def workers_of(self) -> tuple[dict[str, str], dict[str, str]]:
        """From an info log: {user: worker of its last IMAP login}, {user: worker of the
        LMTP session that saved its mail}."""
        imap: dict[str, str] = {}
        lmtp: dict[str, str] = {}
        try:
            lines = (self.dir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return imap, lmtp
        for line in lines:
            words = line.split()
            sid = next((w for w in words if w.startswith(("imap-", "lmtp-"))), "")
            worker = sid.split(".")[0].split("-")[-1]
            if sid.startswith("imap-") and line.endswith(" logged in"):
                imap[words[-3]] = worker
            elif sid.startswith("lmtp-") and ": saved mail to " in line:
                at = words.index(sid)
                lmtp[words[at + 2].rstrip(":")] = worker
        return imap, lmtp

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.out.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class ScaledDovecot(Dovecot):
    """bench/dovecot.py's instance with the limits raised for ``sessions`` sessions."""

    def __init__(self, users: dict[str, str], sessions: int) -> None:
        super().__init__(users, lmtp=True)
        self.sessions = sessions

    def _write_config(self) -> None:
        super()._write_config()
        text = self.conf_path.read_text()
        limit = self.sessions + 1000
        text = text.replace("  process_limit = 4096\n",
                            f"  process_limit = {max(4096, limit)}\n", 1)
        text += f"default_client_limit = {max(1000, limit)}\n"
        # Every imap process keeps a connection to auth (auth-master) as long as it lives.
        text = text.replace("service auth {\n",
                            f"service auth {{\n  client_limit = {limit + 1000}\n", 1)
        text = text.replace(
            f"  client_limit = {4096 + 300 + LMTP_PROCESS_LIMIT}\n", "", 1)
        self.conf_path.write_text(text)


class DovecotUnderTest:
    name = "dovecot"

    def __init__(self, users: list[str]) -> None:
        ensure_dovecot(lmtp=True)
        self.dc = ScaledDovecot({u: PASSWORD for u in users}, len(users)).start()
        self.host = self.dc.host
        self.port = self.dc.port
        self.lmtp_port = self.dc.lmtp_port
        self.version = subprocess.run([self.dc.binary, "--version"], capture_output=True,
                                      text=True).stdout.split()[0]

    def pids(self) -> list[int]:
        return self.dc.pids()

    def rcpt(self, user: str) -> str:
        return f"{user}@example.org"

    def describe(self) -> str:
        return f"Dovecot {self.version}, maildir in {self.dc.dir}"

    def log_notes(self) -> list[str]:
        text = self.dc.log_path.read_text(errors="replace") if self.dc.dir else ""
        notes = []
        inotify = sum(1 for x in text.splitlines() if "inotify" in x)
        if inotify:
            notes.append(f"{inotify} log lines about inotify, e.g. " + next(
                x for x in text.splitlines() if "inotify" in x)[:200])
        warn = Counter(x.split(": ", 2)[-1][:120] for x in text.splitlines()
                       if ("Warning" in x or "Error" in x or "Fatal" in x)
                       and "inotify" not in x)
        notes += [f"{n} x {t}" for t, n in warn.most_common(5)]
        return notes

    def stop(self) -> None:
        self.dc.stop()


# --- one run ---------------------------------------------------------------------------

@dataclass
class Result:
    server: str
    sessions: int
    workers: int = 0
    idling: int = 0
    first_login_s: float = 0.0
    login_s: float = 0.0
    pss_mib: float = 0.0
    rss_mib: float = 0.0
    processes: int = 0
    idle_cpu_pct: float = 0.0
    delivered: int = 0
    heard: int = 0
    push_median_s: float = float("nan")
    push_max_s: float = float("nan")
    within_2s: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_one(name: str, n: int, args: argparse.Namespace) -> Result:
    users = [f"user{i}" for i in range(n)]
    result = Result(name, n, workers=args.workers if name == "cloudcote" else 0)
    traced = Path(tempfile.mkdtemp(prefix="cc-idle-tm-")) if args.tracemalloc else None
    server: CloudcoteUnderTest | DovecotUnderTest = (
        CloudcoteUnderTest(args.workers, traced, args.log_level) if name == "cloudcote"
        else DovecotUnderTest(users))
    print(f"{name} N={n}: {server.describe()}", flush=True)
    clients = Clients(args.client_procs)
    errors: Counter[str] = Counter()
    try:
        if traced is not None:
            # The first snapshot before any user logged in: per-user state kept after the
            # first login counts as the sessions' too.
            assert isinstance(server, CloudcoteUnderTest)
            time.sleep(2)
            server.signal(signal.SIGUSR1)
            time.sleep(3)
        if args.warm:
            warm = clients.open(server.host, server.port, users, args.concurrency,
                                args.timeout, idle=False)
            result.first_login_s = warm["seconds"]
            errors.update({f"first login: {k}": v for k, v in warm["errors"].items()})
            print(f"  first login (LOGIN, SELECT, LOGOUT) of {warm['ok']}/{n} users: "
                  f"{warm['seconds']:.1f} s; {warm['per_session']}", flush=True)
        opened = clients.open(server.host, server.port, users, args.concurrency,
                              args.timeout, idle=True)
        result.idling = opened["ok"]
        result.login_s = opened["seconds"]
        errors.update(opened["errors"])
        print(f"  {opened['ok']}/{n} sessions idling after {opened['seconds']:.1f} s; "
              f"{opened['per_session']}", flush=True)
        result.notes.append(f"IDLE pass: {opened['per_session']}")
        for text, count in opened["errors"].most_common(5):
            print(f"      {count} x {text}", flush=True)
        pids = server.pids()
        before = cpu_seconds(pids)
        t = time.monotonic()
        time.sleep(args.settle)
        pids = server.pids()
        after = cpu_seconds(pids)
        result.idle_cpu_pct = 100 * sum(after[p] - before.get(p, 0.0) for p in after) / (
            time.monotonic() - t)
        pss, rss = pss_kib(pids)
        result.pss_mib, result.rss_mib, result.processes = pss / 1024, rss / 1024, len(pids)
        print(f"  memory: PSS {pss / 1024:.0f} MiB, RSS {rss / 1024:.0f} MiB in {len(pids)} "
              f"processes ({pss * 1024 / max(1, opened['ok']):.0f} B PSS per session); "
              f"idle CPU {result.idle_cpu_pct:.0f}%", flush=True)
        if traced is not None:
            assert isinstance(server, CloudcoteUnderTest)
            server.signal(signal.SIGUSR1)
            time.sleep(10)
            result.notes += tracemalloc_report(traced, opened["ok"])
        rng = random.Random(args.seed + n)
        targets = rng.sample(users, min(args.deliveries, n))
        by_rcpt = {server.rcpt(u): u for u in targets}
        t250, lmtp_errors = asyncio.run(deliver(server.host, server.lmtp_port, list(by_rcpt),
                                                args.lmtp_clients))
        errors.update({f"LMTP {k}": v for k, v in lmtp_errors.items()})
        for text, count in lmtp_errors.most_common(3):
            print(f"      LMTP: {count} x {text}", flush=True)
        delivered = {by_rcpt[r]: t for r, t in t250.items()}
        result.delivered = len(delivered)
        want = set(delivered)
        deadline = time.monotonic() + args.push_timeout
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            seen = clients.seen(want)
            if len(seen) >= len(want):
                break
            time.sleep(0.5)
        lat = sorted(seen[u] - delivered[u] for u in seen)
        result.heard = len(lat)
        if lat:
            result.push_median_s = statistics.median(lat)
            result.push_max_s = lat[-1]
        result.within_2s = sum(1 for x in lat if x <= 2.0)
        missed = len(want) - len(lat)
        print(f"  {len(delivered)}/{len(targets)} delivered; {len(lat)} heard: median "
              f"{result.push_median_s:.3f} s, max {result.push_max_s:.3f} s, "
              f"{result.within_2s} within 2 s"
              + (f", {missed} not within {args.push_timeout:.0f} s" if missed else ""),
              flush=True)
        if isinstance(server, CloudcoteUnderTest) and args.log_level in ("info", "debug"):
            imap_w, lmtp_w = server.workers_of()
            groups: dict[str, list[float]] = {}
            for u in delivered:
                same = imap_w.get(u) == lmtp_w.get(u)
                key = "same worker" if same else "other worker"
                groups.setdefault(key, []).append(seen[u] - delivered[u] if u in seen
                                                  else float("inf"))
            for key, values in sorted(groups.items()):
                values.sort()
                note = (f"IMAP session and LMTP delivery on the {key}: {len(values)}, median "
                        f"{statistics.median(values):.3f} s, max {values[-1]:.3f} s, "
                        f"{sum(1 for v in values if v > 2)} over 2 s")
                print(f"  {note}", flush=True)
                result.notes.append(note)
        still, dropped = clients.status()
        if dropped:
            errors[f"{dropped} idling sessions closed by the server"] += 1
            print(f"  {dropped} idling sessions were closed by the server", flush=True)
        result.notes += server.log_notes()
        for note in result.notes:
            print(f"  note: {note}", flush=True)
    finally:
        try:
            clients.close()
        finally:
            server.stop()
        if traced is not None:
            shutil.rmtree(traced, ignore_errors=True)
    result.errors = dict(errors)
    return result


# --- tracemalloc hook (bench only) -----------------------------------------------------

def serve_traced(config: str) -> int:
    """``cloudcote --config FILE serve`` under tracemalloc, a snapshot per SIGUSR1."""
    import tracemalloc

    out = Path(os.environ["IDLE_SCALE_TRACEMALLOC"])
    count = [0]

    def dump(_sig: int, _frame: object) -> None:
        # Tracing starts at the first signal (the start-up under tracemalloc takes
        # minutes): what was allocated before is not traced and not in the difference.
        if not tracemalloc.is_tracing():
            tracemalloc.start(8)
        count[0] += 1
        tracemalloc.take_snapshot().dump(str(out / f"snap{count[0]}.pickle"))

    signal.signal(signal.SIGUSR1, dump)
    from cloudcote.cli import main

    return main(["--config", config, "serve"])


def tracemalloc_report(directory: Path, sessions: int, top: int = 15) -> list[str]:
    import tracemalloc

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (directory / "snap2.pickle").exists():
        time.sleep(0.5)
    time.sleep(2)
    try:
        first = tracemalloc.Snapshot.load(str(directory / "snap1.pickle"))
        second = tracemalloc.Snapshot.load(str(directory / "snap2.pickle"))
    except (OSError, EOFError) as exc:
        return [f"tracemalloc: no snapshots ({exc})"]
    diff = second.compare_to(first, "traceback")
    total = sum(d.size_diff for d in diff)
    root = str(HERE.parent) + "/"

    def short(frame: tracemalloc.Frame) -> str:
        name = frame.filename
        name = name[len(root):] if name.startswith(root) else name.split("/")[-1]
        return f"{name}:{frame.lineno}"

    # Each allocation is put on the innermost line of cloudcote's own code that led to it
    # (asyncio's and the standard library's lines say little), with that innermost line.
    by_site: dict[tuple[str, str], list[int]] = {}
    for d in diff:
        frames = list(reversed(d.traceback))  # most recent call first
        own = next((f for f in frames if f.filename.startswith(root)
                    and "/.venv/" not in f.filename), None)
        key = (short(own) if own else "(no cloudcote frame)", short(frames[0]))
        acc = by_site.setdefault(key, [0, 0])
        acc[0] += d.size_diff
        acc[1] += d.count_diff
    per = max(1, sessions)
    by_file: dict[str, int] = {}
    for (own_site, _inner), (size, _count) in by_site.items():
        name = own_site.rpartition(":")[0] or own_site
        by_file[name] = by_file.get(name, 0) + size
    files = ", ".join(f"{name} {size / per:.0f}" for name, size in
                      sorted(by_file.items(), key=lambda kv: -kv[1])[:10])
    lines = [f"tracemalloc: {total / 1024 / 1024:.1f} MiB more traced with {sessions} "
             f"sessions idle than before the first login = {total / per:.0f} B per session; "
             "top sites (cloudcote line <- allocating line):"]
    for (own_site, inner), (size, count) in sorted(by_site.items(),
                                                   key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {size / per:8.0f} B/session {count / per:6.1f} blocks/session  "
                     f"{own_site} <- {inner}")
    lines.append(f"  by file (B/session): {files}")
    return lines


# --- output ----------------------------------------------------------------------------

def table(results: list[Result]) -> str:
    head = (f"{'server':<16} {'sessions':>8} {'idling':>7} {'1st login':>9} {'login':>7} "
            f"{'PSS MiB':>8} {'KiB/sess':>8} {'procs':>6} {'idle CPU':>8} {'push med':>8} "
            f"{'push max':>8} {'<=2 s':>8}")
    rows = [head]
    for r in results:
        label = r.server + (f" w={r.workers}" if r.server == "cloudcote" else "")
        rows.append(
            f"{label:<16} {r.sessions:>8} {r.idling:>7} {r.first_login_s:>8.1f}s "
            f"{r.login_s:>6.1f}s {r.pss_mib:>8.0f} {r.pss_mib * 1024 / max(1, r.idling):>8.0f} "
            f"{r.processes:>6} {r.idle_cpu_pct:>7.0f}% {r.push_median_s:>7.2f}s "
            f"{r.push_max_s:>7.2f}s {r.within_2s:>4}/{r.delivered:<3}")
    by = {(r.server, r.sessions): r for r in results}
    for (server, n), r in sorted(by.items()):
        dc = by.get(("dovecot", n))
        if server == "cloudcote" and dc is not None and dc.pss_mib and dc.login_s:
            nan = float("nan")
            med = r.push_median_s / dc.push_median_s if dc.push_median_s else nan
            top = r.push_max_s / dc.push_max_s if dc.push_max_s else nan
            rows.append(
                f"cloudcote/Dovecot at {n}: memory {r.pss_mib / dc.pss_mib:.2f}x, login time "
                f"{r.login_s / dc.login_s:.2f}x, push median {med:.2f}x, push max {top:.2f}x")
    return "\n".join(rows)


def plot(results: list[Result], path: str) -> None:
    from latency_common import pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, (mem, push) = plt.subplots(1, 2, figsize=(11, 4.5))
    series: dict[str, list[Result]] = {}
    for r in results:
        label = "Dovecot" if r.server == "dovecot" else f"cloudcote, {r.workers} workers"
        series.setdefault(label, []).append(r)
    for label, rows in series.items():
        rows.sort(key=lambda r: r.sessions)
        xs = [r.sessions for r in rows]
        mem.plot(xs, [r.pss_mib for r in rows], marker="o", label=label)
        # A log scale: times below 1 ms (or negative, see above) are drawn at 1 ms.
        push.plot(xs, [max(r.push_median_s, 0.001) for r in rows], marker="o",
                  label=f"{label}: median")
        push.plot(xs, [max(r.push_max_s, 0.001) for r in rows], marker="^", linestyle="--",
                  label=f"{label}: max")
    mem.axhline(1024, color="grey", linestyle=":", linewidth=1)
    mem.text(0.01, 1024, "1 GiB target", va="bottom", fontsize=8, color="grey",
             transform=mem.get_yaxis_transform())
    push.axhline(2.0, color="grey", linestyle=":", linewidth=1)
    push.text(0.01, 2.0, "2 s target", va="bottom", fontsize=8, color="grey",
              transform=push.get_yaxis_transform())
    mem.set_xlabel("IDLE sessions (one per user)")
    mem.set_ylabel("server memory, sum of PSS (MiB)")
    mem.set_title("Memory holding N IDLE sessions")
    push.set_xlabel("IDLE sessions (one per user)")
    push.set_ylabel("LMTP 250 to * EXISTS (s)")
    push.set_yscale("log")
    push.set_title("Push latency, 200 deliveries")
    counts = sorted({r.sessions for r in results})
    for ax in (mem, push):
        ax.set_xticks(counts, [f"{n:,}" for n in counts])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="IDLE at scale: cloudcote vs Dovecot.")
    ap.add_argument("--servers", default="cloudcote,dovecot",
                    help="comma-separated: cloudcote, dovecot (default both)")
    ap.add_argument("--sessions", default="1000,5000,10000",
                    help="cloudcote's session counts (default 1000,5000,10000)")
    ap.add_argument("--dovecot-sessions", default="1000",
                    help="Dovecot's session counts (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="cloudcote [server] workers (2)")
    ap.add_argument("--client-procs", type=int, default=2,
                    help="client processes holding the sessions (default 2)")
    ap.add_argument("--concurrency", type=int, default=100,
                    help="connections being set up at once per client process (100)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds one connection may take to reach IDLE (120)")
    ap.add_argument("--no-warm", dest="warm", action="store_false",
                    help="no first LOGIN/SELECT/LOGOUT pass: measure first logins")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds idle before the memory is read (idle CPU over them; 10)")
    ap.add_argument("--deliveries", type=int, default=200, help="users given a message (200)")
    ap.add_argument("--lmtp-clients", type=int, default=4, help="LMTP connections (4)")
    ap.add_argument("--push-timeout", type=float, default=75.0,
                    help="seconds to wait for every EXISTS (75)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="cloudcote under tracemalloc (workers forced to 1): bytes per session")
    ap.add_argument("--log-level", default="warning",
                    help="cloudcote's log level; info also shows the push times by whether "
                         "the IMAP session and the delivery were on the same worker")
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--png", default=str(HERE / "idle_scale.png"),
                    help="the plot (default bench/idle_scale.png; '' for none)")
    ap.add_argument("--replot", nargs="+", metavar="JSON",
                    help="no runs: table and plot from the --json files of earlier runs")
    ap.add_argument("--serve-traced", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_traced:
        return serve_traced(args.serve_traced)
    if args.replot:
        saved = [Result(**row) for path in args.replot
                 for row in json.loads(Path(path).read_text())]
        print(table(saved))
        if args.png:
            plot(saved, args.png)
        return 0
    if args.tracemalloc:
        args.workers = 1
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if any(n not in ("cloudcote", "dovecot") for n in names):
        ap.error("--servers: cloudcote and/or dovecot")
    counts = {"cloudcote": [int(x) for x in args.sessions.split(",") if x.strip()],
              "dovecot": [int(x) for x in args.dovecot_sessions.split(",") if x.strip()]}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    biggest = max(n for name in names for n in counts[name])
    if biggest / args.client_procs > hard - 100:
        ap.error(f"{biggest} sessions over {args.client_procs} client processes: more than the "
                 f"open file limit ({hard}) each; raise --client-procs")
    if "dovecot" in names:
        try:
            ensure_dovecot(lmtp=True)
        except DovecotError as exc:
            print(f"idle_scale.py: {exc}", file=sys.stderr)
            return 1
    print(f"{os.cpu_count()} cores; open file limit {hard}; inotify max_user_instances "
          f"{Path('/proc/sys/fs/inotify/max_user_instances').read_text().strip()}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[Result] = []
    for name in names:
        for n in counts[name]:
            results.append(run_one(name, n, args))
            if args.json:
                Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    print()
    print(table(results))
    if args.png and not args.tracemalloc:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
