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
        self.server: asyncio.AbstractServer | None = None
        self.sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            if self.sock is not None:
                if self.sock.family == socket.AF_UNIX:
                    self.server = await asyncio.start_unix_server(
                        self._accept, sock=self.sock, ssl=self.ssl_context, limit=MAX_LINE * 2)
                else:
                    self.server = await asyncio.start_server(
                        self._accept, sock=self.sock, ssl=self.ssl_context, limit=MAX_LINE * 2)
            elif self.path is not None:
                remove_stale_socket(self.path)
                self.server = await asyncio.start_unix_server(
                    self._accept, path=self.path, ssl=self.ssl_context, limit=MAX_LINE * 2)
                os.chmod(self.path, 0o660)
            else:
                self.server = await asyncio.start_server(
                    self._accept, host=self.host, port=self.port, ssl=self.ssl_context,
                    reuse_address=True, limit=MAX_LINE * 2)
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
        if self.gate is not None and not self.gate.enter():
            with contextlib.suppress(Exception):
                writer.write(REFUSALS.get(self.protocol, b""))
                await asyncio.wait_for(writer.drain(), 5)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
            return
        task = asyncio.current_task()
        assert task is not None
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
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("%s %s: connection ended: %s", conn.session_id, peer_text, exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s %s: session failed", conn.session_id, peer_text)
        finally:
            if self.gate is not None:
                self.gate.leave()
            self.sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; give sessions ``grace`` seconds, then cancel the rest."""
        if self.server is not None:
            self.server.close()
        if self.sessions:
            _, pending = await asyncio.wait(set(self.sessions), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        if self.path is not None and self.sock is None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


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
