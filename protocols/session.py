"""What every line-based protocol session shares: bounded reads, shutdown, auth plumbing."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cloudcote.core.auth import AuthError, AuthPenalty, UserEntry, user_fields
from cloudcote.core.auth.userdb import redact_chain
from cloudcote.core.mail.errors import StorageUnavailable
from cloudcote.core.mail.storage import MailStore, QuotaLimits, StorageSettings
from cloudcote.libfs import FsError
from cloudcote.libfs.chain import open_fs

from .imap.limits import ImapLimits
from .listener import MAX_LINE, Connection
from .lmtp.settings import LmtpSettings
from .pop3.settings import Pop3Settings

if TYPE_CHECKING:
    from cloudcote.core.mail.storage import UserMail

log = logging.getLogger("cloudcote.session")
T = TypeVar("T")

#: Seconds a client may stay silent before the session ends (RFC 3501 5.4: >= 30 min).
IDLE_TIMEOUT = 30 * 60
#: Invalid commands tolerated before the server hangs up.
MAX_BAD_COMMANDS = 20
#: Characters of a client-supplied user name that go into a log line.
MAX_LOGGED_USER = 100


class PassDb(Protocol):
    async def authenticate(
        self, user: str, password: str, *, remote_ip: str | None = None
    ) -> Any: ...

    async def user_lookup(self, user: str) -> Any: ...


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
    pop3: Pop3Settings = field(default_factory=Pop3Settings)
    lmtp: LmtpSettings = field(default_factory=LmtpSettings)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    #: Failed logins per client and the delay they earn (``[auth]`` failure_delay).
    auth_penalty: AuthPenalty = field(default_factory=AuthPenalty)
    #: Stores of users whose userdb ``mail`` names another chain, by chain string.
    _user_stores: dict[str, asyncio.Future[MailStore]] = field(
        default_factory=dict, init=False, repr=False)
    _user_stores_closed: bool = field(default=False, init=False, repr=False)

    async def user_mail(self, entry: UserEntry) -> UserMail:
        """The mail of the user a passdb returned: on the store its userdb ``mail`` names
        (opened once per distinct chain) or on ``self.mail``, with its ``quota_rule`` or
        the default quota.  Raises ``StorageUnavailable`` (a ``MailError``) if the userdb
        fields are unusable or the store cannot be opened."""
        try:
            fields = user_fields(entry)
        except AuthError as exc:
            raise StorageUnavailable(f"userdb: {exc}") from exc
        if fields.mail is not None:
            store = await self._user_store(fields.mail)
        elif self.mail is not None:
            store = self.mail
        else:
            raise StorageUnavailable("no mail storage configured")
        settings = store.settings
        quota = fields.quota or QuotaLimits(settings.quota_bytes, settings.quota_messages)
        return await store.user(entry.user, quota)

    async def _user_store(self, chain: str) -> MailStore:
        if self._user_stores_closed:
            raise StorageUnavailable("the server is stopping")
        opening = self._user_stores.get(chain)
        if opening is None:
            opening = asyncio.ensure_future(self._open_user_store(chain))
            self._user_stores[chain] = opening
        try:
            return await asyncio.shield(opening)
        except Exception:
            if opening.done() and self._user_stores.get(chain) is opening:
                del self._user_stores[chain]  # the next login tries again
            raise

    async def _open_user_store(self, chain: str) -> MailStore:
        try:
            fs = await open_fs(chain)
        except FsError as exc:
            raise StorageUnavailable(f"userdb mail {redact_chain(chain)!r}: "
                                     f"{redact_chain(str(exc))}") from exc
        settings = self.mail.settings if self.mail is not None else StorageSettings()
        return MailStore(fs, settings)

    async def close_user_stores(self) -> None:
        """Close the stores ``user_mail`` opened; the server calls this when it stops."""
        self._user_stores_closed = True
        openings = list(self._user_stores.values())
        self._user_stores.clear()
        for opening in openings:
            opening.cancel()  # no-op once opened
        if openings:
            await asyncio.wait(openings)
        for opening in openings:
            if opening.cancelled() or opening.exception() is not None:
                continue
            store = opening.result()
            try:
                await store.close()
                await store.fs.close()
            except Exception as exc:
                log.warning("closing a userdb mail store failed: %s", exc)


class LineTooLong(Exception):
    """The client sent a line longer than the protocol allows."""


class Shutdown(Exception):
    """The server is stopping and the session is between commands."""


class IdleTimeout(EOFError):
    """The client sent nothing for the session's idle timeout."""


class Disconnect(Exception):
    """End the session now: what had to be said was said, or the client went away."""


class LineSession:
    """Base of IMAP/POP3/LMTP sessions: one ``Connection``, read a line, answer it."""

    protocol = "line"
    #: Seconds a client may stay silent; the longest line (CRLF included).
    idle_timeout: float = IDLE_TIMEOUT
    max_line: int = MAX_LINE

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        self.conn = conn
        self.ctx = ctx
        self.user: str | None = None
        #: What the passdb returned for ``self.user`` (userdb fields in ``extra``).
        self.user_entry: UserEntry | None = None
        self.bad_commands = 0
        #: Replies not written yet, and their size; octets written in all.
        self.out: list[bytes] = []
        self.out_size = 0
        self.bytes_out = 0

    @property
    def plaintext_allowed(self) -> bool:
        return self.conn.secured or not self.ctx.disable_plaintext_auth

    # -- output: replies are buffered and written in one go ------------------------------

    def emit(self, data: bytes | str) -> None:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self.out.append(raw)
        self.out_size += len(raw)

    async def flush(self) -> None:
        """Write what is buffered; wait while the client reads it, but not for a client
        that stopped reading (idle timeout: Disconnect)."""
        if not self.out:
            return
        data = b"".join(self.out)
        self.out.clear()
        self.out_size = 0
        self.bytes_out += len(data)
        writer = self.conn.writer
        if writer.transport.is_closing():
            raise Disconnect()  # the client went away: stop what this session was doing
        writer.write(data)
        if not writer.transport.get_write_buffer_size():
            return
        try:
            async with asyncio.timeout(self.idle_timeout):
                await writer.drain()
        except TimeoutError:
            self.stalled()
            writer.transport.abort()  # a close would wait for the unread data to go out
            raise Disconnect() from None

    def stalled(self) -> None:
        """The client stopped reading replies for the idle timeout (logged here)."""
        log.info("%s %s: client stopped reading for %.0f seconds", self.conn.session_id,
                 self.conn.peer, self.idle_timeout)

    async def send(self, text: str | bytes) -> None:
        self.emit(text)
        await self.flush()

    def input_waiting(self) -> bool:
        """A complete line is already received (so a pipelining client gets one write
        per batch: RFC 2920, RFC 2449).  StreamReader keeps it in ``_buffer``."""
        return b"\n" in getattr(self.conn.reader, "_buffer", b"")

    async def wait_or_stop(self, aw: Awaitable[T]) -> T:
        """``aw``'s result, unless the server stops first (Shutdown) or the client stays
        silent for ``idle_timeout`` seconds (IdleTimeout); ``aw`` is cancelled then."""
        read = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self.ctx.shutdown.wait())
        try:
            done, _ = await asyncio.wait({read, stop}, timeout=self.idle_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if read not in done:
            read.cancel()
            if stop in done:
                raise Shutdown()
            raise IdleTimeout("idle timeout")
        return read.result()

    async def read_line(self) -> bytes:
        """The next line without its CRLF; raises Shutdown, LineTooLong or EOFError
        (IdleTimeout when the client was silent too long)."""
        try:
            line = await self.wait_or_stop(self.conn.reader.readuntil(b"\n"))
        except asyncio.LimitOverrunError:
            await self._discard_long_line()
            raise LineTooLong() from None
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed") from exc
        if len(line) > self.max_line:
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
        (answered as a temporary failure, not as a wrong password).

        A failure is answered after the delay the client's earlier failures earned
        (``ServerContext.auth_penalty``); a success clears them and sets ``self.user`` (the
        passdb's name for the user, which may differ from the login name in case) and
        ``self.user_entry``.
        """
        remote_ip = self.conn.peer.rpartition(":")[0] or None
        try:
            entry = await self.ctx.passdb.authenticate(user, password, remote_ip=remote_ip)
        except Exception as exc:
            log.error("%s %s: passdb failed for %r: %s", self.conn.session_id, self.conn.peer,
                      user[:MAX_LOGGED_USER], exc)
            return None
        if entry is None:
            log.info("%s %s: authentication failed for %r", self.conn.session_id,
                     self.conn.peer, user[:MAX_LOGGED_USER])
            delay = self.ctx.auth_penalty.failed(remote_ip, password)
            if delay > 0:
                await asyncio.sleep(delay)  # slow down guessing, as Dovecot's auth_penalty
            return False
        self.ctx.auth_penalty.succeeded(remote_ip)
        if isinstance(entry, UserEntry):
            self.user_entry = entry
            user = entry.user or user
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
