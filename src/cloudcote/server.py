"""``cloudcote serve``: open storage and auth, bind every listener, run until a signal.

Everything is checked before the first client is accepted: the storage chain opens, the
passdb parses, every address binds.  Anything wrong stops the start with one line naming
the cause, and nothing is left half-started.  SIGTERM or SIGINT stops accepting, lets the
commands in flight finish (deliveries complete), closes every session and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import resource
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

from cloudcote.core.auth import AuthPenalty, open_passdb
from cloudcote.core.auth.userdb import redact_chain
from cloudcote.core.mail import api
from cloudcote.core.mail.errors import StorageUnavailable
from cloudcote.core.mail.resync import BackgroundPurge
from cloudcote.core.mail.storage import (
    DEFAULT_AUTOCREATE,
    MailStore,
    StorageSettings,
    parse_quota_rule,
)
from cloudcote.libfs import FsError, open_fs
from cloudcote.protocols.imap.limits import ImapLimits
from cloudcote.protocols.imap.session import imap_session
from cloudcote.protocols.listener import Connection, ConnectionGate, Listener, ListenError
from cloudcote.protocols.lmtp.session import lmtp_session
from cloudcote.protocols.pop3.session import pop3_session
from cloudcote.protocols.session import ServerContext

from .config import Config, kernel_somaxconn

log = logging.getLogger("cloudcote.server")

SESSIONS: dict[str, Callable[[Connection, ServerContext], Awaitable[None]]] = {
    "imap": imap_session,
    "imaps": imap_session,
    "pop3": pop3_session,
    "pop3s": pop3_session,
    "lmtp": lmtp_session,
}
IMPLICIT_TLS = ("imaps", "pop3s")
#: Allocations between two collections of the youngest generation (Python's default: 700).
GC_THRESHOLD = 20_000


async def _run_session(
    session: Callable[[Connection, ServerContext], Awaitable[None]],
    ctx: ServerContext,
    conn: Connection,
) -> None:
    await session(conn, ctx)


class StartupError(Exception):
    """The server cannot start; ``exit_code`` follows sysexits.h."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def prepare_data_dir(config: Config) -> None:
    """Create ``data_dir`` (and an empty passwd-file for the embedded default)."""
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        probe = config.data_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"data_dir {str(config.data_dir)!r} is not usable: {exc.strerror or exc}", 73
        ) from exc
    kind, _, path = config.auth.passdb.partition(":")
    if kind == "passwd-file" and config.source is None and not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)


def storage_settings(config: Config) -> StorageSettings:
    """Mail storage settings from ``[storage]`` and ``[mail]``."""
    quota = parse_quota_rule(config.mail.quota_rule) if config.mail.quota_rule else None
    return StorageSettings(
        layout=config.storage.layout,
        autocreate=dict(DEFAULT_AUTOCREATE) if config.mail.autocreate else {},
        quota_bytes=quota.bytes if quota else 0,
        quota_messages=quota.messages if quota else 0,
        max_message_size=config.mail.max_message_size,
        poll_interval=config.mail.poll_interval,
        feed_poll_interval=config.mail.feed_poll_interval,
        prefetch_count=config.storage.prefetch_count,
    )


def imap_limits(config: Config) -> ImapLimits:
    """IMAP session bounds from ``[imap_limits]``; APPEND follows ``[mail]``
    max_message_size unless set."""
    return config.imap_limits.limits(config.mail.max_message_size)


def store_opener(settings: StorageSettings) -> Callable[[str], Awaitable[api.Store]]:
    """What ``ServerContext.open_store`` calls for a userdb ``mail`` spec: the store it
    names (a libfs chain, or another mail backend), with the process's storage
    ``settings``; ``StorageUnavailable`` (secrets redacted) if it cannot be opened."""

    async def opener(spec: str) -> api.Store:
        try:
            return await api.open_store(spec, settings)
        except (FsError, ValueError) as exc:
            raise StorageUnavailable(f"userdb mail {redact_chain(spec)!r}: "
                                     f"{redact_chain(str(exc))}") from exc

    return opener


def make_ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls.cert is None or config.tls.key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(config.tls.cert), str(config.tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"tls: cannot load {config.tls.cert} / {config.tls.key}: {exc}",
                           78) from exc
    return ctx


def raise_nofile() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard limit (as Dovecot's master does);
    returns (soft, hard) as they are then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open file limit from %d to %d: %s", soft, want, exc)
    return soft, hard


def warn_backlog_cap(config: Config) -> None:
    """Say so when ``listen_backlog`` is above what the kernel allows (it caps it silently)."""
    somaxconn = kernel_somaxconn()
    if config.server.listen_backlog > somaxconn:
        log.warning("listen_backlog %d is above the kernel's net.core.somaxconn (%d): the "
                    "kernel queues at most %d connections per listener",
                    config.server.listen_backlog, somaxconn, somaxconn)


def connection_limit(config: Config, workers: int, nofile: int) -> int:
    """Connections one process may hold: its share of ``[server] max_connections``, and
    never so many that its descriptors run out (an eighth of them, at least 64, stay for
    storage, logs and the listeners)."""
    by_fds = max(1, nofile - max(64, nofile // 8))
    if config.server.max_connections:
        return min(by_fds, math.ceil(config.server.max_connections / workers))
    return by_fds


class Server:
    """The running server: storage, auth and listeners, opened and closed in one place.
    A worker gets its listening sockets from the master (``sockets``, by address)."""

    def __init__(self, config: Config, sockets: dict[str, socket.socket] | None = None,
                 worker: int | None = None, workers: int = 1) -> None:
        self.config = config
        self.sockets = sockets
        self.worker = worker
        self.workers = workers
        self.listeners: list[Listener] = []
        self.ctx: ServerContext | None = None
        self.stack = contextlib.AsyncExitStack()
        self.purger: BackgroundPurge | None = None

    async def start(self) -> None:
        config = self.config
        if self.sockets is None:
            prepare_data_dir(config)
            warn_backlog_cap(config)
        soft, hard = raise_nofile()
        limit = connection_limit(config, self.workers, soft)
        gate = ConnectionGate(limit)
        try:
            passdb = open_passdb(config.auth.passdb_spec)
            if hasattr(passdb, "load"):
                passdb.load()
        except Exception as exc:  # the auth layer's errors are one line already
            raise StartupError(f"auth.passdb: {exc}", 78) from exc
        self.stack.push_async_callback(passdb.close)  # an SQL pool; closed last
        try:
            fs = await open_fs(config.storage.fs)
        except FsError as exc:
            raise StartupError(f"storage.fs: {exc}", 78) from exc
        self.stack.push_async_callback(fs.close)
        self.fs = fs
        ssl_context = make_ssl_context(config)
        mail = MailStore(fs, storage_settings(config))
        self.stack.push_async_callback(mail.close)
        if config.storage.purge_interval:
            # mdbox storage objects are shared by every user: one process purges them.
            self.purger = BackgroundPurge(mail, config.storage.purge_interval,
                                          config.storage.purge_budget,
                                          storage=self.worker in (None, 0))
            self.purger.start()
            self.stack.push_async_callback(self.purger.close)
        self.ctx = ServerContext(passdb=passdb, ssl_context=ssl_context,
                                 disable_plaintext_auth=config.tls.disable_plaintext_auth,
                                 hostname=socket.gethostname(), mail=mail,
                                 imap_limits=imap_limits(config),
                                 pop3=config.pop3, lmtp=config.lmtp,
                                 open_store=store_opener(mail.settings),
                                 auth_penalty=AuthPenalty(config.auth.failure_delay,
                                                          config.auth.failure_delay_max))
        # Stores that userdb ``mail`` fields opened: closed after the listeners stop.
        self.stack.push_async_callback(self.ctx.close_user_stores)
        self.stack.push_async_callback(self._stop_listeners)
        for section, addresses in config.listen.items():
            for address in addresses:
                handler = partial(_run_session, SESSIONS[section], self.ctx)
                listener = Listener(
                    section, str(address), handler, host=address.host, port=address.port,
                    path=address.path,
                    ssl_context=ssl_context if section in IMPLICIT_TLS else None,
                    sock=self.sockets.get(str(address)) if self.sockets is not None else None,
                    gate=gate,
                    id_prefix=f"w{self.worker}." if self.worker is not None else "",
                    backlog=config.server.backlog(),
                )
                try:
                    await listener.start()
                except ListenError as exc:
                    raise StartupError(str(exc), 69) from exc
                self.listeners.append(listener)
        # A server holds large, long-lived indexes and caches: collect young objects less
        # often, and leave what start-up loaded (modules, config) out of every collection.
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)
        # Once started: a start that fails says only why (one line).
        log.info("%sopen file limit %d (hard %s): at most %d connections%s",
                 f"worker {self.worker} (pid {os.getpid()}): " if self.worker is not None
                 else "", soft,
                 "unlimited" if hard == resource.RLIM_INFINITY else hard, limit,
                 " in this worker" if self.worker is not None else "")

    async def _stop_listeners(self) -> None:
        """All listeners at once: their sessions end together, within one grace."""
        await asyncio.gather(*(listener.stop() for listener in self.listeners))

    async def stop(self) -> None:
        if self.ctx is not None:
            self.ctx.shutdown.set()
        await self.stack.aclose()


def banner(config: Config, listeners: list[tuple[str, str]], workers: int = 1) -> str:
    """What ``cloudcote serve`` prints once it accepts clients: ``listeners`` are
    (protocol, address)."""
    lines = ["cloudcote is running" + (f" ({workers} worker processes)." if workers > 1
                                       else ".")]
    for protocol, address in listeners:
        lines.append(f"  {protocol:<5} {address}")
    kind, _, path = config.auth.passdb.partition(":")
    if kind == "passwd-file":
        config_arg = f" --config {config.source}" if config.source else ""
        lines.append(f"Add a user:  cloudcote{config_arg} user add alice")
        lines.append(f"  (users live in {path})")
    imap = next((a for p, a in listeners if p == "imap"), None)
    if imap is not None:
        lines.append(f"Connect an IMAP client to {imap} (plain; TLS when configured).")
    lines.append("Stop with Ctrl-C or SIGTERM.")
    return "\n".join(lines)


async def run_server(config: Config, ready: Callable[[Server], None] | None = None, *,
                     sockets: dict[str, socket.socket] | None = None,
                     worker: int | None = None, workers: int = 1) -> None:
    server = Server(config, sockets, worker, workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        if ready is not None:
            ready(server)
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
