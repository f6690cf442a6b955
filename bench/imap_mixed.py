"""Mixed IMAP workload: cloudcote beside Debian's Dovecot, same machine, same messages.

    .venv/bin/python bench/imap_mixed.py                    # 10 clients, 20 s, 3 rounds
    .venv/bin/python bench/imap_mixed.py --clients 50 --duration 30 --rounds 5 --messages 500

Both servers run at once on loopback ports, each from a fresh temporary directory:
cloudcote as a real ``cloudcote --config FILE serve`` subprocess on posix storage, Dovecot
(``dovecot-imapd``, installed with apt-get when missing) as configured by
``bench/dovecot.py`` with ``--dovecot-format`` (maildir by default) in its
high-performance mode.  Every client logs in as its own user; each user's INBOX is seeded
over IMAP with the same ``--messages`` messages made by ``gen_mbox.py`` (realistic mail:
plain, multipart/alternative, threads, UTF-8 headers, attachments).

Each of ``--clients`` concurrent clients loops over one session until the time is up:

    LOGIN, SELECT INBOX, FETCH 1:* (FLAGS), three FETCH n (BODY.PEEK[]) of random
    messages, STORE n +FLAGS (\\Seen or \\Flagged), APPEND INBOX (a message of the set),
    STORE n +FLAGS.SILENT (\\Deleted), EXPUNGE, LOGOUT

so the mailbox keeps its size.  Every IMAP command answered OK within ``--duration``
seconds counts as one operation; a command answered NO or BAD counts as an error (and is
shown).  Rounds alternate the order of the servers; the table shows the median of
``--rounds`` rounds, the CPU the server used (all of Dovecot's processes; 100% = one
core) and the CPU of this client, which must stay clearly below what the server gets,
or the client is the bottleneck (``--client-procs`` spreads the clients over processes).

The client is a small asyncio IMAP client of its own (one event loop per client process,
TCP_NODELAY, LITERAL+ for APPEND): stdlib imaplib in threads would cost more CPU than a
fast server.  ``--servers cloudcote,cloudcote-always,dovecot`` adds cloudcote with posix
``fsync=always`` beside its default (``optimized``).  ``--workers`` is passed to
cloudcote as ``[server] workers`` when its configuration knows that key, and ignored
otherwise.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import mailbox
import multiprocessing
import multiprocessing.pool
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dovecot import (  # noqa: E402
    Dovecot,
    DovecotError,
    ensure_dovecot,
    free_port,
    group_pids,
)

GEN_MBOX = Path("/work/shared/tools/gen_mbox.py")
PASSWORD = "bench-secret"
#: Commands in one session of the workload (LOGIN ... LOGOUT).
SESSION_COMMANDS = 11


# --- a small IMAP client ---------------------------------------------------------------

class ImapError(Exception):
    """A NO or BAD answer, or a broken connection."""


_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS\r\n$")


class ImapClient:
    """Just enough IMAP for the benchmark: tagged commands, literals in responses, an
    APPEND literal sent with LITERAL+ (or after the continuation without it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tag = 0
        self.literal_plus = False
        self.exists = 0
        self.logged_out = False

    @classmethod
    async def connect(cls, host: str, port: int) -> ImapClient:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(reader, writer)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            writer.close()
            raise ImapError(f"greeting {greeting!r}")
        client.literal_plus = b"LITERAL+" in greeting.upper()
        return client

    async def _read_response(self, tag: bytes) -> tuple[bytes, list[bytes]]:
        """(tagged status line, untagged lines with their literals inlined)."""
        untagged: list[bytes] = []
        readline = self.reader.readline
        while True:
            line = await readline()
            if not line:
                raise ImapError("connection closed")
            found = _LITERAL.search(line)
            while found:  # a literal, then the rest of the line
                line += await self.reader.readexactly(int(found.group(1)))
                more = await readline()
                line += more
                found = _LITERAL.search(more)
            if line.startswith(tag):
                return line, untagged
            if line.startswith(b"* "):
                exists = _EXISTS.match(line)
                if exists:
                    self.exists = int(exists.group(1))
            untagged.append(line)

    async def command(self, text: str, literal: bytes | None = None) -> list[bytes]:
        self.tag += 1
        tag = b"A%d " % self.tag
        if literal is None:
            self.writer.write(tag + text.encode() + b"\r\n")
        elif self.literal_plus:
            self.writer.write(tag + text.encode() + b" {%d+}\r\n" % len(literal) + literal +
                              b"\r\n")
        else:
            self.writer.write(tag + text.encode() + b" {%d}\r\n" % len(literal))
            cont = await self.reader.readline()
            if not cont.startswith(b"+"):
                raise ImapError(f"{text}: no continuation but {cont!r}")
            self.writer.write(literal + b"\r\n")
        status, untagged = await self._read_response(tag)
        if not status[len(tag):].startswith(b"OK"):
            raise ImapError(f"{text.split(' ')[0]}: {status[len(tag):].strip().decode()}")
        return untagged

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


# --- the workload ----------------------------------------------------------------------

@dataclass
class Tally:
    ops: int = 0
    sessions: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class _TimeUp(Exception):
    """The round ended before a command was sent."""


async def timed(client: ImapClient, tally: Tally, end: float, text: str,
                literal: bytes | None = None) -> list[bytes]:
    """One command, counted when answered OK before ``end``."""
    loop = asyncio.get_running_loop()
    if loop.time() >= end:
        raise _TimeUp
    untagged = await client.command(text, literal)
    if loop.time() < end:
        tally.ops += 1
    return untagged


async def one_session(client: ImapClient, user: str, messages: list[bytes], end: float,
                      tally: Tally, rnd: random.Random) -> None:
    await timed(client, tally, end, f'LOGIN {user} "{PASSWORD}"')
    await timed(client, tally, end, "SELECT INBOX")
    count = client.exists
    if count == 0:
        raise ImapError(f"{user}: INBOX is empty")
    await timed(client, tally, end, "FETCH 1:* (FLAGS)")
    for _ in range(3):
        await timed(client, tally, end, f"FETCH {rnd.randint(1, count)} (BODY.PEEK[])")
    flag = rnd.choice(("\\Seen", "\\Flagged"))
    await timed(client, tally, end, f"STORE {rnd.randint(1, count)} +FLAGS ({flag})")
    await timed(client, tally, end, "APPEND INBOX", rnd.choice(messages))
    await timed(client, tally, end, f"STORE {rnd.randint(1, count)} +FLAGS.SILENT (\\Deleted)")
    await timed(client, tally, end, "EXPUNGE")
    await timed(client, tally, end, "LOGOUT")
    client.logged_out = True


async def session_loop(host: str, port: int, user: str, messages: list[bytes], end: float,
                       tally: Tally, rnd: random.Random) -> None:
    """Sessions of the mixed workload until ``end`` (the event loop's clock)."""
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        client = None
        try:
            client = await ImapClient.connect(host, port)
            await one_session(client, user, messages, end, tally, rnd)
            if loop.time() < end:
                tally.sessions += 1
        except _TimeUp:
            pass
        except (ImapError, OSError, asyncio.IncompleteReadError) as exc:
            if loop.time() < end:
                tally.errors[str(exc)[:200]] += 1
                await asyncio.sleep(0.05)  # a refusing server must not spin the client
        finally:
            if client is not None:
                if not client.logged_out and not client.writer.is_closing():
                    try:
                        await asyncio.wait_for(client.command("LOGOUT"), 10)
                    except (ImapError, OSError, asyncio.IncompleteReadError, TimeoutError):
                        pass
                await client.close()


async def run_clients(host: str, port: int, users: Sequence[str], messages: list[bytes],
                      duration: float, seed: int) -> tuple[Tally, float]:
    """All ``users`` at once for ``duration`` seconds: (tally, client CPU seconds)."""
    loop = asyncio.get_running_loop()
    tally = Tally()
    cpu0 = time.process_time()
    end = loop.time() + duration
    await asyncio.gather(*(session_loop(host, port, user, messages, end, tally,
                                        random.Random(f"{seed}-{user}")) for user in users))
    return tally, time.process_time() - cpu0


def _client_process(args: tuple[str, int, list[str], list[bytes], float, int, float],
                    ) -> tuple[int, int, dict[str, int], float]:
    host, port, users, messages, duration, seed, start_at = args
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    tally, cpu = asyncio.run(run_clients(host, port, users, messages, duration, seed))
    return tally.ops, tally.sessions, dict(tally.errors), cpu


def measure(host: str, port: int, users: list[str], messages: list[bytes], duration: float,
            seed: int, procs: int, pool: multiprocessing.pool.Pool | None,
            ) -> tuple[Tally, float]:
    if procs <= 1 or pool is None:
        return asyncio.run(run_clients(host, port, users, messages, duration, seed))
    start_at = time.time() + 0.5
    chunks = [users[i::procs] for i in range(procs)]
    results = pool.map(_client_process, [(host, port, chunk, messages, duration, seed, start_at)
                                         for chunk in chunks if chunk])
    tally = Tally()
    cpu = 0.0
    for ops, sessions, errors, used in results:
        tally.ops += ops
        tally.sessions += sessions
        tally.errors.update(errors)
        cpu += used
    return tally, cpu


async def seed_users(host: str, port: int, users: Sequence[str],
                     messages: list[bytes]) -> None:
    async def one(user: str) -> None:
        client = await ImapClient.connect(host, port)
        try:
            await client.command(f'LOGIN {user} "{PASSWORD}"')
            await client.command("SELECT INBOX")
            if client.exists:
                raise ImapError(f"{user}'s INBOX is not empty ({client.exists})")
            for raw in messages:
                await client.command("APPEND INBOX", raw)
            await client.command("LOGOUT")
        finally:
            await client.close()

    sem = asyncio.Semaphore(8)

    async def bounded(user: str) -> None:
        async with sem:
            await one(user)

    await asyncio.gather(*(bounded(u) for u in users))


# --- CPU of a server's processes -------------------------------------------------------

_CLK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """utime + stime + reaped children's, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / _CLK


def group_cpu(pids: Callable[[], list[int]]) -> dict[int, float]:
    return {pid: _proc_cpu(pid) for pid in pids()}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that ended meanwhile was reaped by its parent, whose children's time
    # includes it; one that started meanwhile counts from zero.
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


# --- the servers -----------------------------------------------------------------------

class Server(abc.ABC):
    """A server under test: cloudcote or Dovecot."""

    name = ""
    host = "127.0.0.1"
    port = 0

    @abc.abstractmethod
    def pids(self) -> list[int]: ...

    @abc.abstractmethod
    def describe(self) -> str: ...

    @abc.abstractmethod
    def stop(self) -> None: ...


class DovecotServer(Server):
    name = "dovecot"

    def __init__(self, users: list[str], mail_format: str, fsync: str) -> None:
        self.dc = Dovecot({u: PASSWORD for u in users}, mail_format=mail_format,
                          fsync="never" if fsync == "never" else "optimized").start()
        self.port = self.dc.port
        self.fsync = fsync

    def pids(self) -> list[int]:
        return self.dc.pids()

    def describe(self) -> str:
        version = subprocess.run([self.dc.binary, "--version"], capture_output=True,
                                 text=True).stdout.split()[0]
        return (f"Dovecot {version} on {self.host}:{self.port}, {self.dc.mail_format} in "
                f"{self.dc.dir}, mail_fsync={'never' if self.fsync == 'never' else 'optimized'}")

    def stop(self) -> None:
        self.dc.stop()


class CloudcoteServer(Server):
    name = "cloudcote"

    def __init__(self, users: list[str], workers: int | None, fsync: str,
                 layout: str, name: str = "cloudcote") -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="cc-bench-"))
        self.fsync = fsync
        self.layout = layout
        passwd = self.dir / "passwd"
        # Dovecot's passwd-file format, PLAIN scheme: what `cloudcote user add --scheme
        # PLAIN` writes, without one process start per user.
        passwd.write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}::::::\n" for u in users))
        self.workers_note = ""
        self.proc: subprocess.Popen[bytes] | None = None
        for _attempt in range(3):
            self.port = free_port()
            config = self._write_config(workers)
            if workers is not None and not self._config_ok(config):
                self.workers_note = "cloudcote has no [server] workers key: --workers ignored"
                workers = None
                config = self._write_config(None)
            self.workers = workers
            self.log = self.dir / "server.log"
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "cloudcote", "--config", str(config), "serve"],
                    cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready():
                return
            if self.proc.returncode != 69:  # 69: port taken meanwhile, try another
                break
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        self.stop()
        raise RuntimeError(f"cloudcote did not start:\n{tail}")

    def _write_config(self, workers: int | None) -> Path:
        config = self.dir / "cloudcote.toml"
        spec = f"posix:path={self.dir / 'mail'}" + (f",fsync={self.fsync}"
                                                     if self.fsync != "default" else "")
        text = (f'data_dir = "{self.dir / "data"}"\n'
                f'[storage]\nfs = "{spec}"\nlayout = "{self.layout}"\n'
                f'[auth]\npassdb = "passwd-file:{self.dir / "passwd"}"\n'
                f'[imap]\nlisten = ["{self.host}:{self.port}"]\n'
                "[imaps]\nlisten = []\n[pop3]\nlisten = []\n[pop3s]\nlisten = []\n"
                "[lmtp]\nlisten = []\n")
        if workers is not None:
            text += f"[server]\nworkers = {workers}\n"
        config.write_text(text)
        return config

    def _config_ok(self, config: Path) -> bool:
        check = subprocess.run([sys.executable, "-m", "cloudcote", "--config", str(config),
                                "config"], capture_output=True, text=True)
        return check.returncode == 0

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    s.settimeout(10)
                    if s.recv(1024).startswith(b"* OK"):
                        return True
            except OSError:
                time.sleep(0.1)
        return False

    def pids(self) -> list[int]:
        return [] if self.proc is None else group_pids(self.proc.pid)

    def describe(self) -> str:
        workers = f", workers={self.workers}" if self.workers is not None else ""
        return (f"cloudcote on {self.host}:{self.port}, posix {self.layout} in {self.dir}"
                f"{workers}, fsync={'optimized' if self.fsync == 'default' else self.fsync}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- messages --------------------------------------------------------------------------

def load_messages(count: int, mbox_path: str | None, seed: int) -> list[bytes]:
    """``count`` messages with CRLF line ends, from ``--mbox`` or made by gen_mbox.py."""
    with tempfile.TemporaryDirectory(prefix="cc-bench-mbox-") as tmp:
        if mbox_path is None:
            if not GEN_MBOX.is_file():
                raise SystemExit(f"imap_mixed.py: {GEN_MBOX} is missing; give --mbox FILE")
            mbox_path = str(Path(tmp) / "bench.mbox")
            subprocess.run([sys.executable, str(GEN_MBOX), mbox_path, str(count), str(seed)],
                           check=True, stdout=subprocess.DEVNULL)
        box = mailbox.mbox(mbox_path, create=False)
        out = []
        for key in box.keys():
            raw = box.get_bytes(key)
            out.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            if len(out) == count:
                break
        box.close()
    if len(out) < count:
        raise SystemExit(f"imap_mixed.py: only {len(out)} messages in {mbox_path}")
    return out


# --- main ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Mixed IMAP workload: cloudcote vs Dovecot.")
    ap.add_argument("--clients", type=int, default=10, help="concurrent clients (default 10)")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds per round and server (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown (3)")
    ap.add_argument("--messages", type=int, default=200,
                    help="messages seeded into each client's INBOX (default 200)")
    ap.add_argument("--workers", type=int, default=None,
                    help="cloudcote [server] workers, when that key exists")
    ap.add_argument("--servers", default="cloudcote,dovecot",
                    help="comma-separated: cloudcote, cloudcote-always (posix fsync=always), "
                         "dovecot (default: cloudcote,dovecot)")
    ap.add_argument("--dovecot-format", choices=("maildir", "sdbox", "mdbox"),
                    default="maildir", help="Dovecot's mail_location format (maildir)")
    ap.add_argument("--layout", choices=("sdbox", "mdbox"), default="sdbox",
                    help="cloudcote's [storage] layout (sdbox)")
    ap.add_argument("--fsync", choices=("default", "never"), default="default",
                    help="default: each server's own (cloudcote fsync=optimized, Dovecot "
                         "mail_fsync=optimized); never: both without fsync")
    ap.add_argument("--client-procs", type=int, default=1,
                    help="client processes the clients are spread over (default 1)")
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="seconds of unmeasured workload per server first (default 3)")
    ap.add_argument("--mbox", help="take the messages from this mbox instead of gen_mbox.py")
    ap.add_argument("--seed", type=int, default=4242)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if not names or any(n not in ("cloudcote", "cloudcote-always", "dovecot") for n in names):
        ap.error("--servers: cloudcote, cloudcote-always and/or dovecot")
    if args.clients < 1 or args.rounds < 1 or args.messages < 1 or args.duration <= 0:
        ap.error("--clients, --rounds, --messages and --duration must be positive")

    if "dovecot" in names:
        try:
            ensure_dovecot()
        except DovecotError as exc:
            print(f"imap_mixed.py: {exc}", file=sys.stderr)
            return 1

    users = [f"bench{i:04d}" for i in range(args.clients)]
    t0 = time.monotonic()
    messages = load_messages(args.messages, args.mbox, args.seed)
    size = sum(len(m) for m in messages)
    print(f"{len(messages)} messages, {size / len(messages) / 1024:.1f} KiB on average, "
          f"into the INBOX of each of {len(users)} users per server "
          f"({time.monotonic() - t0:.1f} s to make)", flush=True)

    servers: list[Server] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pool = multiprocessing.get_context("fork").Pool(args.client_procs) \
        if args.client_procs > 1 else None
    try:
        for name in names:
            t = time.monotonic()
            server: Server = (
                CloudcoteServer(users, args.workers,
                                "always" if name == "cloudcote-always" else args.fsync,
                                args.layout, name)
                if name.startswith("cloudcote")
                else DovecotServer(users, args.dovecot_format, args.fsync))
            servers.append(server)
            print(server.describe(), flush=True)
            if isinstance(server, CloudcoteServer) and server.workers_note:
                print(server.workers_note, flush=True)
            asyncio.run(seed_users(server.host, server.port, users, messages))
            print(f"  seeded in {time.monotonic() - t:.1f} s", flush=True)
            if args.warmup > 0:
                measure(server.host, server.port, users, messages, args.warmup, args.seed,
                        args.client_procs, pool)

        results: dict[str, list[tuple[float, float, float, Tally]]] = {s.name: [] for s in
                                                                       servers}
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            for server in order:
                before = group_cpu(server.pids)
                wall0 = time.monotonic()
                tally, client_cpu = measure(server.host, server.port, users, messages,
                                            args.duration, args.seed + r, args.client_procs,
                                            pool)
                wall = time.monotonic() - wall0
                server_cpu = cpu_delta(before, group_cpu(server.pids))
                rate = tally.ops / args.duration
                results[server.name].append((rate, 100 * server_cpu / wall,
                                             100 * client_cpu / wall, tally))
                err = sum(tally.errors.values())
                print(f"  round {r + 1} {server.name:<16} {rate:8.1f} ops/s  "
                      f"{tally.sessions / args.duration:6.1f} sessions/s  server CPU "
                      f"{100 * server_cpu / wall:4.0f}%  client CPU "
                      f"{100 * client_cpu / wall:4.0f}%  errors {err}", flush=True)
                for text, n in tally.errors.most_common(5):
                    print(f"      {n} x {text}", flush=True)
    finally:
        if pool is not None:
            pool.terminate()
        for server in servers:
            server.stop()

    print()
    print(f"{'server':<16} {'clients':>7} {'ops/s':>9} {'rounds':<26} {'server CPU':>10} "
          f"{'client CPU':>10} {'errors':>6}")
    medians: dict[str, float] = {}
    for name, rows in results.items():
        rates = [row[0] for row in rows]
        medians[name] = statistics.median(rates)
        errors = sum(sum(row[3].errors.values()) for row in rows)
        print(f"{name:<16} {args.clients:>7} {medians[name]:>9.1f} "
              f"{' '.join(f'{x:.1f}' for x in rates):<26} "
              f"{statistics.median(row[1] for row in rows):>9.0f}% "
              f"{statistics.median(row[2] for row in rows):>9.0f}% {errors:>6}")
    for name in medians:
        if name.startswith("cloudcote") and medians.get("dovecot"):
            print(f"\n{name}/Dovecot: {medians[name] / medians['dovecot']:.2f} "
                  f"({SESSION_COMMANDS} commands per session; {os.cpu_count()} cores shared "
                  "by servers and client)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
