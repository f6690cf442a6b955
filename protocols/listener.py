"""Listening sockets and connection lifetimes, shared by IMAP, POP3 and LMTP.

A :class:`Listener` binds one address (TCP or unix socket, optionally implicit TLS), runs a
session per connection, and on shutdown stops accepting, lets each session finish the
command it is in (a delivery in flight completes), then closes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("cloudcote.listener")
_session_ids = itertools.count(1)

#: The longest command line any protocol accepts before answering with an error.
MAX_LINE = 8192
#: Seconds a closing connection waits for its client to read what is still buffered.
CLOSE_TIMEOUT = 10.0


class ListenError(Exception):
    """A listener could not be bound (address in use, permission, bad path)."""


@dataclass
class Connection:
    """One accepted client connection, as a session sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    session_id: str
    peer: str
    local_is_loopback: bool
    tls: bool

    @property
    def secured(self) -> bool:
        """TLS, or a loopback connection: where plaintext auth is allowed (as Dovecot)."""
        return self.tls or self.local_is_loopback

    def buffered(self) -> bytes | bytearray:
        """What the client sent that no read has taken yet (a pipelined command, the rest
        of DATA), looked at in place, never copied.  asyncio's StreamReader has no public
        way to show it; this is the one place that reads its private ``_buffer``."""
        buffer: bytes | bytearray = getattr(self.reader, "_buffer", b"")
        return buffer

    async def start_tls(self, context: ssl.SSLContext) -> int:
        """Upgrade in place after STARTTLS/STLS (RFC 3501 6.2.1, RFC 2595 4).  Whatever the
        client pipelined in plaintext after the command is dropped first, so that nothing
        sent before the handshake counts as said over TLS (CVE-2011-0411); returns how many
        bytes that was."""
        pending = len(self.buffered())
        if pending:
            await self.reader.readexactly(pending)
        await self.writer.start_tls(context)
        self.tls = True
        return pending


SessionFactory = Callable[[Connection], Awaitable[None]]

#: What a client hears when the server holds all the connections it may: the protocol's
#: own way of saying "not now" (RFC 3501 7.1.5, RFC 2449 8.1.2 SYS/TEMP, RFC 5321 421).
REFUSALS = {
    "imap": b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n",
    "imaps": b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n",
    "pop3s": b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n",
    "lmtp": b"421 4.3.2 Too many connections, try again later\r\n",
}


class ConnectionGate:
    """The connections a process holds at once, across all its listeners: beyond
    ``limit`` a new one is refused with its protocol's refusal and closed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.refused = 0

    def enter(self) -> bool:
        if self.count >= self.limit:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("connection limit %d reached: refused %d connection(s) so far",
                            self.limit, self.refused)
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


class Listener:
    """One bound address of one protocol."""

    def __init__(
        self,
        protocol: str,
        address: str,
        handler: SessionFactory,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
        gate: ConnectionGate | None = None,
        id_prefix: str = "",
        backlog: int = 4096,
    ) -> None:
        self.protocol = protocol
        self.address = address
        self.handler = handler
        self.host, self.port, self.path = host, port, path
        self.ssl_context = ssl_context
        #: A socket bound (and listening) already: by the master, shared by the workers.
        self.sock = sock
        self.gate = gate
        self.id_prefix = id_prefix
        #: The listen backlog, also on a socket from the master: asyncio listens again on
        #: it, with its own default of 100 unless told.
        self.backlog = backlog
        self.server: asyncio.AbstractServer | None = None
        self.sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        tls, limit, backlog = self.ssl_context, MAX_LINE * 2, self.backlog
        try:
            if self.sock is not None:
                if self.sock.family == socket.AF_UNIX:
                    self.server = await asyncio.start_unix_server(
                        self._accept, sock=self.sock, ssl=tls, limit=limit, backlog=backlog)
                else:
                    self.server = await asyncio.start_server(
                        self._accept, sock=self.sock, ssl=tls, limit=limit, backlog=backlog)
            elif self.path is not None:
                remove_stale_socket(self.path)
                self.server = await asyncio.start_unix_server(
                    self._accept, path=self.path, ssl=tls, limit=limit, backlog=backlog)
                os.chmod(self.path, 0o660)
            else:
                self.server = await asyncio.start_server(
                    self._accept, host=self.host, port=self.port, ssl=tls, limit=limit,
                    backlog=backlog, reuse_address=True)
        except OSError as exc:
            raise ListenError(
                f"[{self.protocol}] cannot listen on {self.address}: {exc.strerror or exc}"
            ) from exc
        if self.port == 0 and self.server.sockets:
            self.port = self.server.sockets[0].getsockname()[1]
            self.address = f"{self.host}:{self.port}"
        log.info("%s listening on %s%s", self.protocol, self.address,
                 " (TLS)" if self.ssl_context else "")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection's task, from accept to close.  It never ends by an exception, nor
        cancelled: asyncio would report that through the loop's exception handler (a
        traceback per connection when a shutdown cancels many)."""
        if self.gate is not None and not self.gate.enter():
            try:
                with contextlib.suppress(Exception):
                    writer.write(REFUSALS.get(self.protocol, b""))
                    await asyncio.wait_for(writer.drain(), 5)
                await _close(writer)
            except asyncio.CancelledError:
                writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        # Tracked until the connection is closed, not only until the session ends: a
        # shutdown waits for the last replies (BYE) to go out.
        self.sessions.add(task)
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"
        conn = Connection(
            reader=reader, writer=writer,
            session_id=f"{self.protocol}-{self.id_prefix}{next(_session_ids)}",
            peer=peer_text, local_is_loopback=_is_loopback(writer),
            tls=self.ssl_context is not None,
        )
        try:
            try:
                await self.handler(conn)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                log.debug("%s %s: connection ended: %s", conn.session_id, peer_text, exc)
            except asyncio.CancelledError:
                # The shutdown grace ran out in the middle of a command: the session said
                # why it ends; what it wrote still goes out while the client reads.
                task.uncancel()
            except Exception:
                log.exception("%s %s: session failed", conn.session_id, peer_text)
            await _close(writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            if self.gate is not None:
                self.gate.leave()
            self.sessions.discard(task)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; wait for the sessions to end (they end at once unless in a
        command), however many they are, until ``grace`` seconds pass without one ending;
        then cancel the rest (each still says its goodbye) and wait for their close."""
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        count, last_progress = len(self.sessions), loop.time()
        while self.sessions and loop.time() - last_progress < grace:
            await asyncio.sleep(0.05)
            if len(self.sessions) < count:
                count, last_progress = len(self.sessions), loop.time()
        pending = set(self.sessions)
        if pending:
            log.info("%s %s: %d session(s) still busy %.0f s after the last one ended: "
                     "cancelled", self.protocol, self.address, len(pending), grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT + 2)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        if self.path is not None and self.sock is None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection once the client has taken what is still buffered for it, but
    wait at most ``CLOSE_TIMEOUT`` seconds for a client that does not read."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
    except TimeoutError:
        writer.transport.abort()
    except Exception:  # noqa: BLE001 - the connection failed while closing: it is closed
        pass


def _is_loopback(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("sockname")
    if not isinstance(sock, tuple):
        return True  # unix socket: local by definition
    host = sock[0]
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous run; refuse to remove anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(17, f"{path} exists and is not a socket")
    os.unlink(path)
