"""What every line-based protocol session shares: the command loop (bad-command budget,
unexpected errors, idle timeout, shutdown, the last flush), bounded reads, password checks,
and the ServerContext the application hands to every session."""

from __future__ import annotations

import abc
import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cloudcote.core.auth import AuthError, AuthPenalty, UserEntry, user_fields
from cloudcote.core.mail import api
from cloudcote.core.mail.errors import MailError, StorageUnavailable

from .listener import MAX_LINE, Connection

__all__ = [
    "BadCommand", "Disconnect", "IdleTimeout", "LineSession", "LineTooLong", "PassDb",
    "ServerContext", "Shutdown", "StoreOpener",
]

log = logging.getLogger("cloudcote.session")
T = TypeVar("T")

#: Seconds a client may stay silent before the session ends (RFC 3501 5.4: >= 30 min).
IDLE_TIMEOUT = 30 * 60
#: Invalid commands tolerated before the server hangs up.
MAX_BAD_COMMANDS = 20
#: Characters of a client-supplied user name that go into a log line.
MAX_LOGGED_USER = 100

#: Opens the store a userdb ``mail`` chain names; the application passes it in (protocols
#: know the mail-storage API only).  Closing the store it returns releases what it opened.
StoreOpener = Callable[[str], Awaitable[api.Store]]


class PassDb(Protocol):
    async def authenticate(
        self, user: str, password: str, *, remote_ip: str | None = None
    ) -> Any: ...

    async def user_lookup(self, user: str) -> Any: ...


@dataclass
class ServerContext:
    """What sessions get from the server: auth, TLS policy, mail storage, each protocol's
    settings and the shutdown signal."""

    passdb: PassDb
    ssl_context: ssl.SSLContext | None
    disable_plaintext_auth: bool
    hostname: str = "cloudcote"
    #: Mail storage shared by every session of this process.
    mail: api.Store | None = None
    #: Each protocol's settings as the application read them (``ImapLimits``,
    #: ``Pop3Settings``, ``LmtpSettings`` of its package); None: that protocol's defaults.
    imap_limits: Any = None
    pop3: Any = None
    lmtp: Any = None
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    #: Failed logins per client and the delay they earn (``[auth]`` failure_delay).
    auth_penalty: AuthPenalty = field(default_factory=AuthPenalty)
    #: Opens the stores of users whose userdb ``mail`` names another chain.
    open_store: StoreOpener | None = None
    #: Those stores, by chain string.
    _user_stores: dict[str, asyncio.Future[api.Store]] = field(
        default_factory=dict, init=False, repr=False)
    _user_stores_closed: bool = field(default=False, init=False, repr=False)

    @property
    def storage_settings(self) -> api.StorageSettings:
        """The ``[mail]``/``[storage]`` settings of this process (every store has them)."""
        return self.mail.settings if self.mail is not None else api.StorageSettings()

    async def store_for(self, entry: UserEntry) -> api.Store:
        """The store the user a passdb returned keeps mail on: the one its userdb ``mail``
        names (opened once per distinct chain) or ``self.mail``.  Raises
        ``StorageUnavailable`` if the userdb fields are unusable or the store cannot be
        opened."""
        try:
            fields = user_fields(entry)
        except AuthError as exc:
            raise StorageUnavailable(f"userdb: {exc}") from exc
        return await self._store_of(fields.mail)

    async def user_mail(self, entry: UserEntry) -> api.User:
        """The mail of the user a passdb returned, on ``store_for(entry)``, with its
        ``quota_rule`` or the default quota.  Raises ``StorageUnavailable`` (a
        ``MailError``) as ``store_for``."""
        try:
            fields = user_fields(entry)
        except AuthError as exc:
            raise StorageUnavailable(f"userdb: {exc}") from exc
        store = await self._store_of(fields.mail)
        settings = store.settings
        quota = fields.quota or api.QuotaLimits(settings.quota_bytes, settings.quota_messages)
        return await store.user(entry.user, quota)

    async def _store_of(self, chain: str | None) -> api.Store:
        if chain is not None:
            return await self._user_store(chain)
        if self.mail is None:
            raise StorageUnavailable("no mail storage configured")
        return self.mail

    async def _user_store(self, chain: str) -> api.Store:
        if self._user_stores_closed:
            raise StorageUnavailable("the server is stopping")
        if self.open_store is None:
            raise StorageUnavailable("userdb mail names a store, but none can be opened here")
        opening = self._user_stores.get(chain)
        if opening is None:
            opening = asyncio.ensure_future(self.open_store(chain))
            self._user_stores[chain] = opening
        try:
            return await asyncio.shield(opening)
        except Exception:
            if opening.done() and self._user_stores.get(chain) is opening:
                del self._user_stores[chain]  # the next login tries again
            raise

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
            try:
                await opening.result().close()
            except Exception as exc:
                log.warning("closing a userdb mail store failed: %s", exc)


class LineTooLong(Exception):
    """The client sent a line longer than the protocol allows."""


class BadCommand(Exception):
    """An invalid command: answered with the protocol's reply to this text and counted
    against the bad-command budget."""


class Shutdown(Exception):
    """The server is stopping and the session is between commands."""


class IdleTimeout(EOFError):
    """The client sent nothing for the session's idle timeout."""


class Disconnect(Exception):
    """End the session now: what had to be said was said, or the client went away."""


class LineSession(abc.ABC):
    """Base of IMAP/POP3/LMTP sessions: one ``Connection``; read a command, dispatch it.

    ``run`` owns the loop: the greeting, the bad-command budget, unexpected errors (logged
    once, answered with the protocol's internal-error reply), the idle timeout, shutdown
    and the last flush.  A protocol supplies ``read_command`` and ``dispatch`` and its
    replies: ``greeting``, ``bad_command_reply``, ``internal_error_reply``,
    ``timeout_reply``, ``shutdown_reply``; ``finish`` runs when the session ends."""

    protocol = "line"
    #: Seconds a client may stay silent; the longest line (CRLF included).
    idle_timeout: float = IDLE_TIMEOUT
    max_line: int = MAX_LINE
    #: Invalid commands tolerated; the last one's reply says the connection closes.
    max_bad_commands: int = MAX_BAD_COMMANDS
    #: The bad-command text for an over-long line.
    line_too_long = "Line too long"
    #: Whether an unexpected error ends the session (when the input may be out of step
    #: after it) or only the command.
    internal_error_ends_session = False
    #: Where this protocol's sessions log.
    log = log

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        self.conn = conn
        self.ctx = ctx
        self.user: str | None = None
        #: What the passdb returned for ``self.user`` (userdb fields in ``extra``).
        self.user_entry: UserEntry | None = None
        self.bad_commands = 0
        #: The session ends after the command in progress (QUIT, LOGOUT).
        self.done = False
        #: The command being run, for log lines; why the session ended.
        self.command = ""
        self.end_reason = "Connection closed"
        #: Replies not written yet, and their size; octets written in all.
        self.out: list[bytes] = []
        self.out_size = 0
        self.bytes_out = 0

    @property
    def ip(self) -> str:
        """The client's address without its port (for log lines)."""
        return self.conn.peer.rpartition(":")[0] or self.conn.peer

    # -- the protocol's part --------------------------------------------------------------

    @abc.abstractmethod
    def greeting(self) -> str:
        ...

    async def read_command(self) -> Any:
        """The next command (None: it was answered while being read); raises what
        ``read_line`` raises."""
        return await self.read_line()

    @abc.abstractmethod
    async def dispatch(self, command: Any) -> None:
        ...

    @abc.abstractmethod
    def bad_command_reply(self, text: str, last: bool) -> str:
        """The reply to an invalid command; ``last``: the budget is spent and the
        connection closes after it."""

    @abc.abstractmethod
    def internal_error_reply(self, exc: Exception) -> str:
        ...

    @abc.abstractmethod
    def timeout_reply(self) -> str:
        ...

    @abc.abstractmethod
    def shutdown_reply(self) -> str:
        ...

    async def finish(self) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """The session ended (whatever ended it): release what it holds, log it."""

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        self.emit(self.greeting())
        try:
            while not self.done:
                await self.step()
            await self.flush()
        except Shutdown:
            self.end_reason = "Server shutting down"
            self.emit(self.shutdown_reply())
            await self.final_flush()
        except IdleTimeout:
            self.end_reason = "Disconnected for inactivity"
            self.emit(self.timeout_reply())
            await self.final_flush()
        except Disconnect:
            await self.final_flush()
        except EOFError:
            self.end_reason = "Connection closed"
        except (ConnectionError, OSError) as exc:
            self.end_reason = f"Connection error: {exc}"
        except asyncio.CancelledError:
            # The shutdown grace ran out while a command (or a write to a client that does
            # not read) was in progress: the goodbye joins what is buffered, without waiting.
            self.end_reason = "Server shutting down"
            self.emit(self.shutdown_reply())
            self.write_buffered()
            raise
        finally:
            await self.finish()

    async def step(self) -> None:
        """Read one command and run it; an invalid one costs from the budget, an
        unexpected error is answered as the protocol's internal error."""
        self.command = ""
        try:
            command = await self.read_command()
            if command is not None:
                await self.dispatch(command)
        except LineTooLong:
            self.bad_command(self.line_too_long)
        except BadCommand as exc:
            self.bad_command(str(exc))
        except (Disconnect, Shutdown, EOFError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - answered and logged in internal_error
            self.internal_error(exc)

    def bad_command(self, text: str) -> None:
        """An invalid command: its reply, and Disconnect once the budget is spent."""
        self.bad_commands += 1
        last = self.bad_commands >= self.max_bad_commands
        self.emit(self.bad_command_reply(text, last))
        if last:
            self.end_reason = "Too many bad commands"
            raise Disconnect()

    def internal_error(self, exc: Exception) -> None:
        """A command failed in a way it did not answer itself: logged once with the user,
        the session and the cause (a storage fault in one line, anything else, a bug,
        with its traceback), then the protocol's reply."""
        self.log_failure(exc)
        self.emit(self.internal_error_reply(exc))
        if self.internal_error_ends_session:
            self.end_reason = "Internal error"
            raise Disconnect() from None

    def log_failure(self, exc: Exception) -> None:
        """The one log line of a failed command: the session, the user, the client, the
        command and the cause (a storage fault without, anything else with its traceback)."""
        what = self.command or "command"
        if isinstance(exc, MailError):
            self.log.error("%s user=%s ip=%s: %s failed: %s", self.conn.session_id,
                           self.user, self.ip, what, exc)
        else:
            self.log.error("%s user=%s ip=%s: %s failed: %r", self.conn.session_id,
                           self.user, self.ip, what, exc, exc_info=exc)

    async def final_flush(self) -> None:
        """The last replies of a session that ends, if the client still reads them."""
        try:
            await self.flush()
        except (Disconnect, ConnectionError, OSError):
            pass

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

    def write_buffered(self) -> None:
        """Hand what is buffered to the connection without waiting for the client."""
        data = b"".join(self.out)
        self.out.clear()
        self.out_size = 0
        if data and not self.conn.writer.transport.is_closing():
            self.bytes_out += len(data)
            self.conn.writer.write(data)

    async def send(self, text: str | bytes) -> None:
        self.emit(text)
        await self.flush()

    def input_waiting(self) -> bool:
        """A complete line is already received (so a pipelining client gets one write
        per batch: RFC 2920, RFC 2449)."""
        return b"\n" in self.conn.buffered()

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
        (IdleTimeout when the client was silent too long).  The buffered replies go out
        first unless another complete command is already waiting (RFC 2920, RFC 2449
        PIPELINING: one write per batch)."""
        if not self.input_waiting():
            await self.flush()
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
