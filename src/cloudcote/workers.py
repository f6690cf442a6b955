"""Worker processes: ``[server] workers = N``.

The master binds every listener once, then forks the workers; each worker runs its own
event loop, opens storage and auth itself and accepts on the shared listening sockets (the
kernel hands each new connection to one of them).  Workers share nothing but the sockets
and the storage: the store has no locks, and sessions of one user on two workers see each
other's changes through the store, as two servers would.

The master starts worker 0 first and waits for it to be ready (storage opened, passdb
read): a configuration that cannot work stops the start with the worker's one-line error
and exit code.  Then it starts the rest and supervises them: a worker that dies is
replaced (after a pause that grows while workers keep dying at once).  SIGTERM or SIGINT
to the master is passed on to every worker, which finish their commands in flight and
exit; the master waits for them.  A worker asks the kernel for SIGKILL if the master
dies, so killing the master never leaves workers behind holding the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudcote.protocols.listener import remove_stale_socket

from .config import Config
from .server import (
    StartupError,
    prepare_data_dir,
    raise_nofile,
    run_server,
    warn_backlog_cap,
)

log = logging.getLogger("cloudcote.master")

#: Seconds a worker has to get ready (open storage and auth).
READY_TIMEOUT = 120.0
#: Seconds the workers get to finish after SIGTERM before they are killed.
STOP_TIMEOUT = 30.0
#: Longest pause before replacing a worker that keeps dying at start.
MAX_RESTART_DELAY = 30.0
_PR_SET_PDEATHSIG = 1


@dataclass
class BoundListener:
    protocol: str
    address: str


@dataclass
class MasterView:
    """What the banner needs to know of a server run by workers."""

    config: Config
    listeners: list[BoundListener] = field(default_factory=list)


@dataclass
class _Worker:
    index: int
    pid: int
    started: float


def bind_listeners(config: Config) -> tuple[dict[str, socket.socket], list[BoundListener]]:
    """Every configured address bound and listening, by its address text."""
    sockets: dict[str, socket.socket] = {}
    bound: list[BoundListener] = []
    backlog = config.server.backlog()
    try:
        for section, addresses in config.listen.items():
            for address in addresses:
                key = str(address)
                try:
                    if address.path is not None:
                        remove_stale_socket(address.path)
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        sock.bind(address.path)
                        os.chmod(address.path, 0o660)
                        sock.listen(backlog)
                    else:
                        sock = socket.create_server(
                            (address.host or "", address.port or 0),
                            family=socket.AF_INET6 if ":" in (address.host or "")
                            else socket.AF_INET, backlog=backlog)
                except OSError as exc:
                    raise StartupError(f"[{section}] cannot listen on {key}: "
                                       f"{exc.strerror or exc}", 69) from exc
                sock.setblocking(False)
                sockets[key] = sock
                bound.append(BoundListener(section, key))
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets, bound


class Master:
    def __init__(self, config: Config, workers: int) -> None:
        self.config = config
        self.count = workers
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.failures = 0

    def run(self, ready: Callable[[MasterView], None] | None = None) -> int:
        soft, _ = raise_nofile()
        prepare_data_dir(self.config)
        warn_backlog_cap(self.config)
        self.sockets, bound = bind_listeners(self.config)
        old = {sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start_first()
            for index in range(1, self.count):
                self._spawn(index, wait=True)
            log.info("master: %d workers running (open file limit %d)", self.count, soft)
            if ready is not None:
                ready(MasterView(self.config, bound))
            while not self.stopping:
                self._reap()
                time.sleep(0.1)
            log.info("shutting down")
            return 0
        finally:
            self._stop_all()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for sock in self.sockets.values():
                sock.close()
            for addresses in self.config.listen.values():
                for address in addresses:
                    if address.path is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(address.path)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _start_first(self) -> None:
        """Worker 0 opens storage and auth first: its failure is the server's."""
        self._spawn(0, wait=True)

    def _spawn(self, index: int, wait: bool) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 70
            try:
                os.close(r)
                code = _worker_main(self.config, self.sockets, index, self.count, w)
            except BaseException:  # noqa: BLE001 - a worker never returns into the master
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        os.close(w)
        self.workers[index] = _Worker(index, pid, time.monotonic())
        try:
            if wait:
                self._wait_ready(index, r)
        finally:
            os.close(r)

    def _wait_ready(self, index: int, fd: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        data = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"R"):
                    return
            if self.stopping:
                return
        worker = self.workers.pop(index)
        if data.startswith(b"E"):
            code_text, _, message = data[1:].decode("utf-8", "replace").partition(" ")
            _wait_exit(worker.pid, 10)
            raise StartupError(message, int(code_text))
        with contextlib.suppress(OSError):
            os.kill(worker.pid, signal.SIGKILL)
        status = _wait_exit(worker.pid, 10)
        raise StartupError(f"worker {index} did not start ({_describe(status)})", 70)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers.values() if w.pid == pid), None)
            if worker is None:
                continue
            del self.workers[worker.index]
            if self.stopping:
                continue
            lived = time.monotonic() - worker.started
            self.failures = self.failures + 1 if lived < 5 else 0
            delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** self.failures) if self.failures else 0
            log.error("worker %d (pid %d) %s after %.0f s; starting another%s",
                      worker.index, pid, _describe(status), lived,
                      f" in {delay:.1f} s" if delay else "")
            self._sleep(delay)
            if not self.stopping:
                try:
                    self._spawn(worker.index, wait=False)
                except OSError as exc:
                    log.error("cannot start worker %d: %s", worker.index, exc)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _stop_all(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.workers and time.monotonic() < deadline:
            for worker in list(self.workers.values()):
                try:
                    pid, _ = os.waitpid(worker.pid, os.WNOHANG)
                except ChildProcessError:
                    pid = worker.pid
                if pid:
                    del self.workers[worker.index]
            time.sleep(0.05)
        for worker in self.workers.values():
            log.error("worker %d (pid %d) did not stop in %.0f s: killed", worker.index,
                      worker.pid, STOP_TIMEOUT)
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signal.SIGKILL)
            _wait_exit(worker.pid, 10)
        self.workers.clear()


def _worker_main(config: Config, sockets: dict[str, socket.socket], index: int,
                 count: int, ready_fd: int) -> int:
    """The worker process: its own event loop and server on the master's sockets."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        return 0  # the master is gone already
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)

    def ready(server: object) -> None:
        with contextlib.suppress(OSError):  # a replacement worker: nobody waits
            os.write(ready_fd, b"R")
            os.close(ready_fd)

    try:
        asyncio.run(run_server(config, ready, sockets=sockets, worker=index, workers=count))
    except StartupError as exc:
        with contextlib.suppress(OSError):
            os.write(ready_fd, f"E{exc.exit_code} {exc}".encode())
        return exc.exit_code
    return 0


def _wait_exit(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        time.sleep(0.05)
    return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return "ended"
