"""A real server for tests: cloudcote's IMAP, POP3 and LMTP listeners and sessions on a
storage backend, run in a background thread with its own event loop, reached with stdlib
imaplib, poplib and smtplib.LMTP.

One server per test module and backend (the ``imap_server`` fixture of a test module
builds it with :func:`start_server`); tests stay apart by logging in as fresh users (the
static passdb accepts any user name with the password ``PASSWORD``).
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trustme

from cloudcote.core.auth.passdb import StaticPassDb
from cloudcote.core.mail import api
from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs import open_fs
from cloudcote.protocols.imap.limits import ImapLimits
from cloudcote.protocols.imap.session import imap_session
from cloudcote.protocols.listener import Listener
from cloudcote.protocols.lmtp.session import lmtp_session
from cloudcote.protocols.lmtp.settings import LmtpSettings
from cloudcote.protocols.pop3.session import pop3_session
from cloudcote.protocols.pop3.settings import Pop3Settings
from cloudcote.protocols.session import ServerContext

from .conftest import driver_spec

PASSWORD = "secret"
#: Backends every IMAP test runs on: the in-memory mail backend (no store at all: the
#: protocol code on its own, fast) and the libfs backend on posix and on S3.
IMAP_BACKENDS = ["memory", "posix", "seaweedfs"]


@dataclass
class ImapServer:
    """A running server: ``port`` (IMAP, STARTTLS offered), ``tls_port`` (imaps),
    ``pop3_port`` (STLS offered), ``pop3s_port``, ``lmtp_port`` and ``lmtp_path`` (the
    LMTP unix socket)."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    ctx: ServerContext
    host: str = "127.0.0.1"
    port: int = 0
    tls_port: int = 0
    client_tls: ssl.SSLContext = field(default_factory=ssl.create_default_context)
    listeners: list[Listener] = field(default_factory=list)
    fs: Any = None
    pop3_port: int = 0
    pop3s_port: int = 0
    lmtp_port: int = 0
    lmtp_path: str = ""

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop (e.g. to reach the store directly)."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def new_user(self) -> str:
        return f"u{uuid.uuid4().hex[:12]}"

    def connect(self) -> imaplib.IMAP4:
        return imaplib.IMAP4(self.host, self.port, timeout=60)

    def login(self, user: str | None = None) -> imaplib.IMAP4:
        m = self.connect()
        m.login(user or self.new_user(), PASSWORD)
        return m

    def connect_tls(self) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(self.host, self.tls_port, ssl_context=self.client_tls,
                                 timeout=60)


def run_client_threads(target: Callable[[int], None], count: int,
                       errors: list[BaseException], timeout: float = 600) -> None:
    """Run ``target(0..count-1)`` in threads (real clients at once), wait for them, and
    raise the first error they put into ``errors``."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    if errors:
        raise errors[0]


def libfs_only(srv: ImapServer, why: str) -> None:
    """Skip a test about the libfs backend's internals (its chain, objects, stages of the
    test's own) on the in-memory backend, which has no libfs chain."""
    if srv.fs is None:
        pytest.skip(f"libfs internals ({why}): the in-memory backend has no chain")


def mailbox_class(srv: ImapServer) -> type[Any]:
    """The mailbox class of the server's backend (for tests that patch a method of it)."""
    if srv.fs is None:
        from cloudcote.core.mail.memory import MemoryMailbox

        return MemoryMailbox
    from cloudcote.core.mail.storage import Mailbox

    return Mailbox


def fs_spec_for(backend: str, request: pytest.FixtureRequest, base: Path) -> str:
    """The storage chain of ``backend`` (any target of ``conftest.driver_spec``)."""
    return driver_spec(backend, request, base)


def start_server(spec: str, *, settings: StorageSettings | None = None,
                 limits: ImapLimits | None = None, passdb: Any = None,
                 disable_plaintext_auth: bool = True, host: str = "127.0.0.1",
                 pop3: Pop3Settings | None = None, lmtp: LmtpSettings | None = None,
                 socket_dir: Path | None = None,
                 fs_wrap: Callable[[Any], Any] | None = None) -> ImapServer:
    """``host``: the address to listen on (a non-loopback one to test what the server
    allows only on secured connections); the test certificate names it.  The LMTP unix
    socket goes into ``socket_dir`` (a fresh temporary directory if None).  ``fs_wrap``
    puts a stage of the test's own on top of the opened chain (e.g. to observe calls)."""
    sock_dir = socket_dir or Path(tempfile.mkdtemp(prefix="cc-lmtp-"))
    ca = trustme.CA()
    cert = ca.issue_cert(*dict.fromkeys(("127.0.0.1", "localhost", host)))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    loop = asyncio.new_event_loop()
    ready: Future[ImapServer] = Future()

    async def main() -> None:
        try:
            store_settings = settings or StorageSettings(poll_interval=0.3)
            fs = None
            if spec.startswith("memory"):
                mail: api.Store = await api.open_store(spec, store_settings)
            else:
                fs = await open_fs(spec)
                if fs_wrap is not None:
                    fs = fs_wrap(fs)
                mail = MailStore(fs, store_settings)
            ctx = ServerContext(
                passdb=passdb or StaticPassDb(PASSWORD), ssl_context=server_tls,
                disable_plaintext_auth=disable_plaintext_auth,
                mail=mail,
                imap_limits=limits or ImapLimits(), pop3=pop3 or Pop3Settings(),
                lmtp=lmtp or LmtpSettings())
            srv = ImapServer(loop=loop, thread=threading.current_thread(), ctx=ctx,
                             host=host, client_tls=client_tls, fs=fs)
            for tls in (False, True):
                lst = Listener("imap", "test", partial(imap_session, ctx=ctx),
                               host=host, port=0,
                               ssl_context=server_tls if tls else None)
                await lst.start()
                srv.listeners.append(lst)
                port = int(lst.address.rpartition(":")[2])
                if tls:
                    srv.tls_port = port
                else:
                    srv.port = port
            for name, tls in (("pop3_port", False), ("pop3s_port", True)):
                lst = Listener("pop3", "test", partial(pop3_session, ctx=ctx), host=host,
                               port=0, ssl_context=server_tls if tls else None)
                await lst.start()
                srv.listeners.append(lst)
                setattr(srv, name, int(lst.address.rpartition(":")[2]))
            lst = Listener("lmtp", "test", partial(lmtp_session, ctx=ctx), host=host, port=0)
            await lst.start()
            srv.listeners.append(lst)
            srv.lmtp_port = int(lst.address.rpartition(":")[2])
            srv.lmtp_path = str(sock_dir / "lmtp.sock")
            lst = Listener("lmtp", srv.lmtp_path, partial(lmtp_session, ctx=ctx),
                           path=srv.lmtp_path)
            await lst.start()
            srv.listeners.append(lst)
            ready.set_result(srv)
        except BaseException as exc:  # reported to the test thread
            ready.set_exception(exc)

    thread = threading.Thread(target=loop.run_forever, daemon=True, name="imap-server")
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop)
    srv = ready.result(60)
    srv.thread = thread
    return srv


def stop_server(srv: ImapServer) -> None:
    async def stop() -> None:
        srv.ctx.shutdown.set()
        for lst in srv.listeners:
            await lst.stop(grace=2.0)
        if srv.fs is not None:
            await srv.fs.close()
        elif srv.ctx.mail is not None:
            await srv.ctx.mail.close()

    try:
        srv.call(stop())
    finally:
        srv.loop.call_soon_threadsafe(srv.loop.stop)
        srv.thread.join(10)
        srv.loop.close()


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (every CI runner has one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks a route
            addr = s.getsockname()[0]
            if not addr.startswith("127.") and addr != "0.0.0.0":
                return str(addr)
        except OSError:
            pass
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return m.group(1) if m else None


def remote_server_fixture(request: pytest.FixtureRequest, tmp: Path,
                          **kw: Any) -> Iterator[ImapServer]:
    """A server on this machine's non-loopback address with plaintext auth disabled (the
    default off loopback); skipped on a machine without such an address."""
    host = non_loopback_address()
    if host is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    srv = start_server(fs_spec_for(request.param, request, tmp), host=host,
                       disable_plaintext_auth=True, **kw)
    try:
        yield srv
    finally:
        stop_server(srv)


def server_fixture(request: pytest.FixtureRequest, tmp: Path, **kw: Any) -> Iterator[ImapServer]:
    srv = start_server(fs_spec_for(request.param, request, tmp), **kw)
    try:
        yield srv
    finally:
        stop_server(srv)
