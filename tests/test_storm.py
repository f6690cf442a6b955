"""Reconnect storms and shutdown at scale, with the real ``cloudcote serve``: the listen
backlog that ``[server] listen_backlog`` configures reaches the kernel on every listening
socket (workers included); 5,000 clients connecting at once are all greeted and log in;
SIGTERM with them open says BYE to each and logs no error."""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudcote.config import ConfigError, kernel_somaxconn, load_config
from cloudcote.server import warn_backlog_cap

from .conftest import cannot_run
from .test_workers import PASSWORD, serve

#: Simultaneous connections of the storm.
STORM = 5000
#: Distinct users they log in as (several sessions each, as phones and desktops do).
USERS = 200


def listen_backlogs(port: int | None = None, path: str | None = None) -> list[int]:
    """The backlog of each listening socket on ``port`` (TCP) or at ``path`` (unix), as the
    kernel holds it: ``ss``'s Send-Q of a listening socket."""
    if port is not None:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                             text=True, check=True).stdout
    else:
        out = subprocess.run(["ss", "-Hlx"], capture_output=True, text=True,
                             check=True).stdout
        out = "\n".join(line for line in out.splitlines() if f" {path} " in f"{line} ")
    found = []
    for line in out.splitlines():
        fields = line.split()
        # TCP: State Recv-Q Send-Q Local Peer; unix: Netid State Recv-Q Send-Q Local ...
        found.append(int(fields[2] if port is not None else fields[3]))
    return found


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_listen_backlog_setting(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert kernel_somaxconn() == somaxconn
    cfg = load_config(write_config(tmp_path, "[server]\n"))
    assert cfg.server.listen_backlog == 0 and cfg.server.backlog() == somaxconn
    assert "listen_backlog = 0" in cfg.to_toml()
    cfg = load_config(write_config(tmp_path, "[server]\nlisten_backlog = 50\n"))
    assert cfg.server.backlog() == 50
    assert "listen_backlog = 50" in cfg.to_toml()
    # Above the kernel's cap: the kernel lowers it without a word, the server says so.
    if somaxconn < 65535:
        cfg = load_config(write_config(tmp_path, "[server]\nlisten_backlog = 65535\n"))
        warn_backlog_cap(cfg)
        assert f"listen_backlog 65535 is above the kernel's net.core.somaxconn ({somaxconn})" \
            in caplog.text
    for bad in ("-1", "70000", "true", "'4096'", "1.5"):
        with pytest.raises(ConfigError) as info:
            load_config(write_config(tmp_path, f"[server]\nlisten_backlog = {bad}\n"))
        assert "server.listen_backlog" in str(info.value)
        assert "expected 0 (the kernel's net.core.somaxconn) or 1-65535" in str(info.value)


@pytest.mark.parametrize("workers", [1, 2])
def test_listen_backlog_reaches_the_kernel(tmp_path: Path, workers: int) -> None:
    """Every listener, TCP and unix, with and without workers, listens with the configured
    backlog (a worker that listens again on the master's socket must not lower it)."""
    sock_path = tmp_path / "lmtp.sock"
    with serve(tmp_path, workers=workers, extra="listen_backlog = 37",
               lmtp_extra=f'"{sock_path}"') as run:
        for port in (run.imap, run.pop3, run.lmtp):
            assert listen_backlogs(port=port) == [37], port
        assert listen_backlogs(path=str(sock_path)) == [37]
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(60) == 0


# --- the storm ---------------------------------------------------------------------------

@pytest.fixture
def nofile() -> Iterator[int]:
    """This process's open file limit raised to its hard limit (the clients' sockets);
    the server raises its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = STORM + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        cannot_run(f"the hard open file limit ({hard}) is below the {need} descriptors "
                   f"{STORM} client connections need (raise it: ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class _Session(asyncio.Protocol):
    """One client: greeting, LOGIN, SELECT INBOX, IDLE (counted as ``logged_in`` at
    ``+ idling``), then it stays until the server says BYE and closes."""

    def __init__(self, storm: _Storm, user: str) -> None:
        self.storm = storm
        self.user = user
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.greeted = self.logged_in = self.bye = self.closed = False
        self.unexpected: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            self.line(line)

    def line(self, line: bytes) -> None:
        assert self.transport is not None
        if not self.greeted and line.startswith(b"* OK"):
            self.greeted = True
            self.storm.count("greeted")
            self.transport.write(b'a1 LOGIN %s "%s"\r\n' % (self.user.encode(),
                                                             PASSWORD.encode()))
        elif line.startswith(b"a1 OK"):
            self.transport.write(b"a2 SELECT INBOX\r\n")
        elif line.startswith(b"a2 OK"):
            self.transport.write(b"a3 IDLE\r\n")
        elif line.startswith(b"+ idling"):
            self.logged_in = True
            self.storm.count("logged_in")
        elif line.startswith(b"* BYE"):
            self.bye = True
        elif not line.startswith(b"* ") or self.logged_in:
            self.unexpected.append(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.storm.count("closed")


class _Stalled(_Session):
    """A client that stops reading in the middle of a large reply (the server is stuck
    writing to it, in a command, when the shutdown comes) and reads again later."""

    def __init__(self, storm: _Storm, user: str) -> None:
        super().__init__(storm, user)
        self.paused = False

    def line(self, line: bytes) -> None:
        assert self.transport is not None
        if self.paused or self.logged_in:
            if line.startswith(b"* BYE"):
                self.bye = True
        elif not self.greeted and line.startswith(b"* OK"):
            self.greeted = True
            self.storm.count("greeted")
            self.transport.write(b'a1 LOGIN %s "%s"\r\n' % (self.user.encode(),
                                                             PASSWORD.encode()))
        elif line.startswith(b"a1 OK"):
            self.transport.write(b"a2 APPEND INBOX {%d+}\r\n%s\r\n" % (len(BIG), BIG))
        elif line.startswith(b"a2 OK"):
            self.transport.write(b"a3 SELECT INBOX\r\n")
        elif line.startswith(b"a3 OK"):
            self.paused = True
            self.transport.pause_reading()
            self.transport.write(b"a4 FETCH 1 BODY[]\r\n" * 4)
            self.logged_in = True
            self.storm.count("logged_in")


#: The message the stalled clients fetch (4 times: more than the socket buffers on both
#: sides hold, so the server's write waits for the client).
BIG = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\n\r\n"
       + (b"x" * 998 + b"\r\n") * 2000)
#: Clients that stall (among the ``STORM``).
STALLED = 4


class _Storm:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {"greeted": 0, "logged_in": 0, "closed": 0}
        self.changed = asyncio.Event()

    def count(self, what: str) -> None:
        self.counts[what] += 1
        self.changed.set()

    async def until(self, what: str, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.counts[what] < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass
        return True


async def _storm(port: int, stop: Callable[[], None],
                 timeout: float) -> tuple[list[_Session], dict[str, float]]:
    """``STORM`` connections at once; once all are logged in, ``stop()`` (SIGTERM to the
    server); then the time until every one was closed."""
    loop = asyncio.get_running_loop()
    storm = _Storm()
    sessions = [_Session(storm, f"user{i % USERS}") for i in range(STORM - STALLED)]
    stalled = [_Stalled(storm, f"stalled{i}") for i in range(STALLED)]
    sessions += stalled
    times: dict[str, float] = {}
    t0 = time.monotonic()

    async def connect(session: _Session) -> None:
        if not isinstance(session, _Stalled):
            await loop.create_connection(lambda: session, "127.0.0.1", port)
            return
        # A small receive buffer (set before the handshake, which sizes the window).
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.create_connection(lambda: session, sock=sock)

    results = await asyncio.gather(*(connect(s) for s in sessions), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} connects failed, e.g. {failed[0]!r}"
    times["connected"] = time.monotonic() - t0
    await storm.until("logged_in", STORM, timeout)
    times["logged_in"] = time.monotonic() - t0
    if storm.counts["logged_in"] == STORM:
        t1 = time.monotonic()
        stop()
        await storm.until("closed", STORM - STALLED, timeout)
        times["closed"] = time.monotonic() - t1
        # The server gives a session stuck in a command 10 s after the last one ended,
        # then cancels it; its client reads again a little later and must find BYE.
        await asyncio.sleep(12.5)
        for one in stalled:
            assert one.transport is not None
            one.transport.resume_reading()
        await storm.until("closed", STORM, timeout)
        times["stalled_closed"] = time.monotonic() - t1
    for s in sessions:
        if s.transport is not None and not s.closed:
            s.transport.abort()
    return sessions, times


def test_storm_of_connections_and_shutdown(tmp_path: Path, nofile: int) -> None:
    """5,000 clients at once on 2 workers: every one is greeted, logs in and idles; SIGTERM
    with all of them open (a few stuck in a large FETCH they do not read): each hears BYE,
    the server exits 0 and logs no error."""
    with serve(tmp_path, workers=2, log_level="warning") as run:
        sessions, times = asyncio.run(_storm(run.imap, lambda: run.proc.send_signal(
            signal.SIGTERM), timeout=60))
        greeted = sum(s.greeted for s in sessions)
        logged_in = sum(s.logged_in for s in sessions)
        assert greeted == STORM and logged_in == STORM, (greeted, logged_in, times)
        no_bye = [s for s in sessions if not s.bye]
        assert not no_bye, (f"{len(no_bye)} sessions without BYE", times,
                            no_bye[0].unexpected)
        assert sum(s.closed for s in sessions) == STORM, times
        assert run.proc.wait(60) == 0
        stderr = run.proc.stderr.read() if run.proc.stderr else ""
        log = run.log
        assert "Traceback" not in stderr and "Traceback" not in log, (stderr + log)[-3000:]
        errors = [line for line in (stderr + log).splitlines()
                  if re.search(r"\b(ERROR|CRITICAL)\b", line)]
        assert not errors, errors[:10]
