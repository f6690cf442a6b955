"""A real cloudcote server in a child process, for benchmarks that also want its counters.

    with ServerProcess(fs="latency:20ms:posix:/tmp/m", users=["bench"],
                       protocols=("imap", "pop3"), prefetch_count=64) as srv:
        srv.ports["imap"]          # where it listens
        srv.requests()             # store requests so far, by operation
        srv.reset_requests()

The child runs the same ``Server`` that ``cloudcote serve`` runs (configuration written as
TOML and loaded by ``load_config``), on its own event loop in its own process, so the
benchmark client never shares a core's GIL with it.  A pipe carries three commands:
``requests`` (what the store was asked: every libfs call, counted by a ``metrics`` stage
put on top of the chain, plus the requests the driver itself sent, e.g. S3 API calls),
``reset`` and ``stop``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PASSWORD = "bench-secret"
PROTOCOLS = ("imap", "imaps", "pop3", "pop3s", "lmtp")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _chain_counters(fs: Any) -> dict[str, float]:
    """libfs calls (``metrics`` stage) and driver requests, over the whole chain."""
    out: dict[str, float] = {}
    stage = fs
    while stage is not None:
        snap = getattr(stage, "snapshot", None)
        if callable(snap) and getattr(stage, "name", "") == "metrics":
            for op, stats in snap().items():
                out[f"fs.{op}"] = out.get(f"fs.{op}", 0) + stats["calls"]
        requests = getattr(stage, "requests", None)
        if isinstance(requests, dict):
            for op, n in requests.items():
                out[f"store.{op}"] = out.get(f"store.{op}", 0) + n
        stage = getattr(stage, "parent", None)
    return out


def _reset_counters(fs: Any) -> None:
    stage = fs
    while stage is not None:
        if getattr(stage, "name", "") == "metrics":
            stage.reset()
        requests = getattr(stage, "requests", None)
        if isinstance(requests, dict):
            requests.clear()
        stage = getattr(stage, "parent", None)


def _child(config_path: str, conn: multiprocessing.connection.Connection) -> None:
    from cloudcote.config import load_config
    from cloudcote.server import Server

    async def main() -> None:
        server = Server(load_config(config_path))
        try:
            await server.start()
        except Exception as exc:  # reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", None))
        try:
            while True:
                cmd = await asyncio.to_thread(conn.recv)
                if cmd == "requests":
                    conn.send(("requests", _chain_counters(server.fs)))
                elif cmd == "reset":
                    _reset_counters(server.fs)
                    conn.send(("reset", None))
                else:
                    break
        finally:
            await server.stop()
            conn.send(("stopped", None))

    profile = os.environ.get("CLOUDCOTE_BENCH_PROFILE")
    if not profile:
        asyncio.run(main())
        return
    # A cProfile dump per server process, to see where a benchmark's server time goes.
    import cProfile

    cProfile.runctx("asyncio.run(main())", globals(), locals(), f"{profile}.{os.getpid()}")


class ServerProcess:
    """See the module docstring.  ``extra`` is TOML appended to the configuration (e.g.
    ``[lmtp]`` keys); ``passdb`` defaults to a passwd-file with ``users``."""

    def __init__(self, fs: str, *, users: Sequence[str] = (), layout: str = "sdbox",
                 protocols: Sequence[str] = ("imap",), prefetch_count: int = 16,
                 extra: str = "", host: str = "127.0.0.1", poll_interval: float = 2.0,
                 passdb: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cc-bench-srv-"))
        self.host = host
        self.ports = {p: free_port(host) for p in protocols}
        passwd = self.dir / "passwd"
        passwd.write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}::::::\n" for u in users))
        listen = "".join(
            f"[{p}]\nlisten = {[f'{host}:{self.ports[p]}'] if p in self.ports else []}\n"
            .replace("'", '"') for p in PROTOCOLS)
        # A metrics stage on top of the chain counts every libfs call the server makes.
        self.config = self.dir / "cloudcote.toml"
        self.config.write_text(
            f'data_dir = "{self.dir / "data"}"\n'
            f'[storage]\nfs = "metrics:{fs}"\nlayout = "{layout}"\n'
            f"prefetch_count = {prefetch_count}\n"
            f"[mail]\npoll_interval = {poll_interval}\n"
            f'[auth]\npassdb = "{passdb or f"passwd-file:{passwd}"}"\nfailure_delay = 0.0\n'
            f"{listen}[log]\nlevel = \"warning\"\npath = \"{self.dir / 'server.log'}\"\n"
            f"{extra}")
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(str(self.config), child), daemon=True)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.proc.start()
        if not self._conn.poll(120):
            self.stop()
            raise RuntimeError("cloudcote did not start within 120 s")
        kind, detail = self._conn.recv()
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"cloudcote did not start: {detail}")

    def _ask(self, cmd: str) -> Any:
        self._conn.send(cmd)
        kind, value = self._conn.recv()
        if kind != cmd:
            raise RuntimeError(f"server answered {kind!r} to {cmd!r}")
        return value

    def requests(self) -> dict[str, float]:
        return dict(self._ask("requests"))

    def reset_requests(self) -> None:
        self._ask("reset")

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self._conn.send("stop")
                if self._conn.poll(30):
                    self._conn.recv()
            except (OSError, EOFError):
                pass
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)
