"""IMAP4rev1 sessions (RFC 3501) with the extensions clients rely on.

One :class:`ImapSession` per connection: a state machine (not authenticated,
authenticated, selected, logout) that reads a command with its literals (:mod:`.wire`),
parses it (:mod:`.parser`, no I/O) and runs the handler :mod:`.commands` registered for
it in this state; ``LineSession.run`` is the loop around them.  The session holds the
connection's state; the selected mailbox's view and its updates live in :mod:`.selected`,
the commands in ``commands/``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from cloudcote.core.mail.api import (
    InvalidMailboxName,
    MailboxNotFound,
    MailError,
    StorageUnavailable,
    normalize_name,
)

from .. import sasl
from . import utf7
from .commands import COMMANDS
from .commands.notify import read_command_notifying
from .fetch import FetchRequest
from .limits import ImapLimits
from .parser import (
    Command,
    ImapParseError,
    Token,
    as_string,
    parse_command,
    parse_date_time,
    tag_of,
)
from .responses import CTL, Bad, No, mail_error, resp_code
from .selected import MailboxView, Selected
from .values import astring, string, utf8_astring

if TYPE_CHECKING:
    from cloudcote.core.mail import api

    from ..listener import Connection
    from ..session import ServerContext
    from . import notify as notifymod
    from .commands.notify import Notified

log = logging.getLogger("cloudcote.imap")

#: Command name -> the states it is valid in (the registry's view, for tests and tools).
_STATES: dict[str, tuple[str, ...]] = {name: spec.states for name, spec in COMMANDS.items()}


class ImapSession(MailboxView):
    protocol = "imap"
    log = log

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        super().__init__(conn, ctx)
        self.limits: ImapLimits = ctx.imap_limits or ImapLimits()
        self.idle_timeout = self.limits.idle_timeout
        self.max_bad_commands = self.limits.max_bad_commands
        #: The tag of the command being run (None while a command is read and parsed).
        self.tag: str | None = None
        self.state = "not-authenticated"
        self.mail: api.User | None = None
        self.sel: Selected | None = None
        self.condstore = False
        self.qresync = False
        #: ENABLE IMAP4rev2 (RFC 9051): UTF-8 names, ESEARCH, no \Recent.
        self.rev2 = False
        #: NOTIFY (RFC 5465): what the client wants to hear of, and what it has heard.
        self.notify: notifymod.NotifySpec | None = None
        self.notified: Notified | None = None
        #: A command's first line has been read (no unsolicited responses until it ends).
        self.command_started = False
        self.bytes_in = 0
        self.fetched = 0
        self.deleted = 0
        self.started = time.monotonic()

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.ctx.ssl_context is not None and not self.conn.tls \
                and self.state == "not-authenticated":
            caps.append("STARTTLS")
        if self.state == "not-authenticated":
            if self.plaintext_allowed:
                caps += ["AUTH=" + mech for mech in sasl.MECHANISMS]
            else:
                caps.append("LOGINDISABLED")
        else:
            caps += ["NAMESPACE", "UIDPLUS", "MOVE", "SPECIAL-USE", "CREATE-SPECIAL-USE",
                     "CONDSTORE", "QRESYNC", "UNSELECT", "CHILDREN", "LIST-EXTENDED",
                     "LIST-STATUS", "ESEARCH", "QUOTA", "QUOTA=RES-STORAGE",
                     "QUOTA=RES-MESSAGE", "STATUS=SIZE", "WITHIN", "MULTIAPPEND",
                     "SORT", "SORT=DISPLAY", "ESORT", "THREAD=ORDEREDSUBJECT",
                     "THREAD=REFERENCES", "THREAD=REFS", "SEARCHRES", "CONTEXT=SEARCH",
                     "CONTEXT=SORT", "UNAUTHENTICATE", "NOTIFY", "CATENATE",
                     "BINARY"]
        return " ".join(caps)


    # -- the session (LineSession.run is the loop) ----------------------------------------

    def greeting(self) -> str:
        return f"* OK [CAPABILITY {self.capabilities()}] {self.ctx.hostname} ready.\r\n"

    async def read_command(self) -> tuple[list[bytes], list[bytes]] | None:
        """The next command's lines and literals, reporting NOTIFY's changes while the
        client is silent; None when the command was answered while being read.  What is
        buffered (the greeting, the answer to a failed command) goes out first."""
        await self.flush()
        self.tag = None
        try:
            if self.notify is not None:
                return await read_command_notifying(self)
            return await self.read_lines()
        except ImapParseError as exc:
            await self.bad(None, str(exc))
            return None

    async def dispatch(self, command: tuple[list[bytes], list[bytes]]) -> None:
        await self.execute(*command)
        await self.flush()

    def internal_error(self, exc: Exception) -> None:
        # Without a tag the failure was in reading or parsing the command, and the input
        # may be out of step: the session ends.
        self.internal_error_ends_session = self.tag is None
        super().internal_error(exc)

    def internal_error_reply(self, exc: Exception) -> str:
        """A command that failed unexpectedly: tagged NO as Dovecot words it (a storage
        fault as its response code says), and the session goes on; a failure before the
        command's tag was known: BYE."""
        if self.tag is None:
            return ("* BYE Internal error occurred. Refer to server log for more "
                    "information.\r\n")
        no = mail_error(exc) if isinstance(exc, MailError) else No(
            "Internal error occurred. Refer to server log for more information.",
            "SERVERBUG")
        return f"{self.tag} NO {resp_code(no.code)}{no}\r\n"

    async def finish(self) -> None:
        self.log_logout()

    def log_logout(self) -> None:
        if self.user is None:
            return
        log.info("%s %s: user %s logged out: in=%d out=%d fetched=%d deleted=%d "
                 "seconds=%.1f", self.conn.session_id, self.conn.peer, self.user,
                 self.bytes_in, self.bytes_out, self.fetched, self.deleted,
                 time.monotonic() - self.started)

    async def execute(self, lines: list[bytes], literals: list[bytes]) -> None:
        try:
            cmd = parse_command(lines, literals, max_depth=self.limits.max_nesting)
        except ImapParseError as exc:
            await self.bad(tag_of(lines[0]), f"Error in IMAP command: {exc}")
            return
        self.tag, self.command = cmd.tag, cmd.name
        spec = COMMANDS.get(cmd.name)
        if spec is None or self.state not in spec.states:
            await self.bad(cmd.tag, f"Error in IMAP command {cmd.name[:40]}: Unknown "
                           "command" if spec is None else
                           f"Command {cmd.name} is not valid in this state")
            return
        try:
            await spec.handler(self, cmd)
        except ImapParseError as exc:
            await self.bad(cmd.tag, f"Error in IMAP command {cmd.name}: {exc}")
        except Bad as exc:
            await self.bad(cmd.tag, str(exc))
        except No as exc:
            await self.after_command(cmd)
            self.emit(f"{cmd.tag} NO {resp_code(exc.code)}{CTL.sub(' ', str(exc))}\r\n")
        except MailError as exc:
            no = mail_error(exc)
            if no.code == "SERVERBUG" or isinstance(exc, StorageUnavailable):
                self.log_failure(exc)
            self.emit(f"{cmd.tag} NO {resp_code(no.code)}{no}\r\n")
        # Anything else (a bug in a handler) is logged and answered by LineSession.step
        # (internal_error_reply), and the session goes on.

    async def after_command(self, cmd: Command) -> None:
        """Report other sessions' changes before the tagged reply (RFC 3501 7)."""
        if self.sel is None:
            return
        allow_expunge = cmd.name not in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD")
        await self.sync(allow_expunge=allow_expunge)

    def ok(self, cmd: Command, text: str = "", code: str | None = None) -> None:
        self.emit(f"{cmd.tag} OK {resp_code(code)}{text or cmd.name.title() + ' completed'}"
                  ".\r\n")

    # -- mailbox names ----------------------------------------------------------------------

    def mailbox_name(self, tok: Token) -> str:
        """A mailbox name argument: modified UTF-7 (RFC 3501 5.1.3), or UTF-8 under
        IMAP4rev2 (RFC 9051 5.1); INBOX in any case is INBOX."""
        raw = as_string(tok, "mailbox name")
        try:
            if self.rev2:  # RFC 9051 5.1: UTF-8 names
                name = raw.decode("utf-8")
            else:
                name = utf7.decode(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise No(f"Mailbox name is not valid {'UTF-8' if self.rev2 else 'modified UTF-7'}"
                     f": {exc}", "CANNOT") from None
        if name.upper() == "INBOX":
            return "INBOX"
        return name

    def wire_name(self, name: str) -> bytes:
        """A mailbox name as the client reads it: modified UTF-7, or UTF-8 under IMAP4rev2."""
        return utf8_astring(name) if self.rev2 else astring(utf7.encode(name))

    def text_name(self, name: str) -> str:
        """A mailbox name inside response text."""
        return name if self.rev2 else utf7.encode(name)

    def canon(self, name: str) -> str:
        try:
            return normalize_name(name)
        except InvalidMailboxName as exc:
            raise No(f"Invalid mailbox name: {exc}.", "CANNOT") from None

    async def open_box(self, name: str) -> api.Mailbox:
        """The mailbox ``name``; NO [NONEXISTENT] if there is none."""
        assert self.mail is not None
        canon = self.canon(name)
        try:
            return await self.mail.mailbox(canon)
        except MailboxNotFound:
            raise No("Mailbox doesn't exist: " + self.text_name(canon) + ".",
                     "NONEXISTENT") from None


async def imap_session(conn: Connection, ctx: ServerContext) -> None:
    await ImapSession(conn, ctx).run()


__all__ = ["FetchRequest", "ImapSession", "imap_session", "parse_date_time", "string"]
