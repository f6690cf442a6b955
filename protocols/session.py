"""What every line-based protocol session shares: bounded reads, shutdown, auth plumbing."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .listener import MAX_LINE, Connection

from .imap.limits import ImapLimits

if TYPE_CHECKING:
    from cloudcote.core.mail.storage import MailStore

log = logging.getLogger("cloudcote.session")

#: Seconds a client may stay silent before the session ends (RFC 3501 5.4: >= 30 min).
IDLE_TIMEOUT = 30 * 60
#: Invalid commands tolerated before the server hangs up.
MAX_BAD_COMMANDS = 20


class PassDb(Protocol):
    async def authenticate(
        self, user: str, password: str, *, remote_ip: str | None = None
    ) -> Any: ...


@dataclass
class ServerContext:
    """What sessions get from the server: auth, TLS policy and the shutdown signal."""

    passdb: PassDb
    ssl_context: ssl.SSLContext | None
    disable_plaintext_auth: bool
    hostname: str = "cloudcote"
    #: Mail storage shared by every session of this process (cloudcote.core.mail).
    mail: MailStore | None = None
    imap_limits: ImapLimits = field(default_factory=ImapLimits)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)


class LineTooLong(Exception):
    """The client sent a line longer than the protocol allows."""


class Shutdown(Exception):
    """The server is stopping and the session is between commands."""


class LineSession:
    """Base of IMAP/POP3/LMTP sessions: one ``Connection``, read a line, answer it."""

    protocol = "line"

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        self.conn = conn
        self.ctx = ctx
        self.user: str | None = None
        self.bad_commands = 0

    @property
    def plaintext_allowed(self) -> bool:
        return self.conn.secured or not self.ctx.disable_plaintext_auth

    async def send(self, text: str | bytes) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.conn.writer.write(data)
        await self.conn.writer.drain()

    async def read_line(self) -> bytes:
        """The next line without its CRLF; raises Shutdown, LineTooLong or EOFError."""
        read = asyncio.ensure_future(self.conn.reader.readuntil(b"\n"))
        stop = asyncio.ensure_future(self.ctx.shutdown.wait())
        try:
            done, _ = await asyncio.wait({read, stop}, timeout=IDLE_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if read not in done:
            read.cancel()
            if stop in done:
                raise Shutdown()
            raise EOFError("idle timeout")
        try:
            line = read.result()
        except asyncio.LimitOverrunError:
            await self._discard_long_line()
            raise LineTooLong() from None
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed") from exc
        if len(line) > MAX_LINE:
            raise LineTooLong()
        return line.rstrip(b"\r\n")

    async def _discard_long_line(self) -> None:
        """Skip the rest of an over-long line so the next command parses cleanly."""
        while True:
            try:
                await self.conn.reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self.conn.reader.readexactly(exc.consumed)

    async def read_exactly(self, n: int) -> bytes:
        return await self.conn.reader.readexactly(n)

    async def check_password(self, user: str, password: str) -> bool | None:
        """True on success, False on bad credentials, None when the passdb itself failed
        (answered as a temporary failure, not as a wrong password)."""
        remote_ip = self.conn.peer.rpartition(":")[0] or None
        try:
            entry = await self.ctx.passdb.authenticate(user, password, remote_ip=remote_ip)
        except Exception as exc:
            log.error("%s %s: passdb failed for %r: %s", self.conn.session_id, self.conn.peer,
                      user, exc)
            return None
        if entry is None:
            log.info("%s %s: authentication failed for %r", self.conn.session_id,
                     self.conn.peer, user)
            await asyncio.sleep(1.0)  # slow down guessing, as Dovecot's auth_failure_delay
            return False
        self.user = user
        log.info("%s %s: user %s logged in", self.conn.session_id, self.conn.peer, user)
        return True


def decode_sasl_plain(b64: str) -> tuple[str, str, str] | None:
    """RFC 4616: ``authzid NUL authcid NUL passwd`` in base64; None if malformed."""
    try:
        raw = base64.b64decode(b64, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    parts = raw.split("\0")
    if len(parts) != 3 or not parts[1]:
        return None
    return parts[0], parts[1], parts[2]
