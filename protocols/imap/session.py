"""IMAP4rev1 sessions (RFC 3501) with the extensions clients rely on.

One :class:`ImapSession` per connection: a state machine (not authenticated,
authenticated, selected, logout) that reads a command with its literals, parses it
(:mod:`.parser`, no I/O) and runs ``do_<name>``.  Mailbox work goes to
``cloudcote.core.mail``; this module only speaks the protocol.

A selected session keeps its own *view*: the UIDs in the order that gives the sequence
numbers the client knows.  Other sessions' changes reach the view only at the points
RFC 3501 7 allows (after a command; never an EXPUNGE during FETCH, STORE or SEARCH).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloudcote.core.mail import mime
from cloudcote.core.mail import search as searchmod
from cloudcote.core.mail import sort as sortmod
from cloudcote.core.mail.errors import (
    InvalidMailboxName,
    MailboxNotFound,
    MailError,
    MessageExpunged,
    StorageUnavailable,
)
from cloudcote.core.mail.mailbox_list import SEP, normalize_name
from cloudcote.core.mail.prefetch import Prefetch
from cloudcote.core.mail.recent import claim_recent
from cloudcote.core.mail.storage import SaveRequest, search_mailbox

from ..session import Disconnect, decode_sasl_plain
from . import catenate, sorting, utf7
from . import notify as notifymod
from .fetch import FetchRequest, UnknownCte, flags_list, parse_fetch_items, render
from .limits import ImapLimits
from .listing import ListOptions, list_responses, parse_list_command, parse_status_items
from .parser import (
    Command,
    ImapParseError,
    Token,
    as_atom,
    as_list,
    as_number,
    as_string,
    parse_command,
    parse_date_time,
    parse_flags,
    tag_of,
)
from .responses import (
    CTL,
    Bad,
    No,
    ReturnOptions,
    all_flags,
    esearch_line,
    mail_error,
    resp_code,
    result_modseq,
    saved_of,
    seqset_text,
)
from .search_args import expand_saved, return_options
from .values import astring, string, utf8_astring
from .wire import ImapWire

if TYPE_CHECKING:
    from cloudcote.core.mail.index import Message
    from cloudcote.core.mail.storage import Mailbox, UserMail

    from ..listener import Connection
    from ..session import ServerContext

log = logging.getLogger("cloudcote.imap")

#: Searches one session keeps up to date (RFC 5267 UPDATE); NOUPDATE beyond.
MAX_CONTEXTS = 16


@dataclass
class Selected:
    box: Mailbox
    readonly: bool
    #: UIDs in sequence-number order, as this session's client knows them.
    view: list[int]
    recent: set[int] = field(default_factory=set)
    #: MODSEQ up to which flag changes were reported.
    known_modseq: int = 0
    #: UID -> MODSEQ this session already reported for it (its own STOREs).
    reported: dict[int, int] = field(default_factory=dict)
    keywords: frozenset[str] = frozenset()
    version: tuple[int, int, int] = (0, 0, 0)
    #: The saved search result ``$`` (RFC 5182), as UIDs.
    saved: list[int] = field(default_factory=list)
    #: Searches the client asked to keep up to date (RFC 5267 UPDATE), by tag.
    contexts: dict[str, SearchContext] = field(default_factory=dict)


@dataclass
class SearchContext:
    """A SEARCH or SORT with ``RETURN (UPDATE)``: what it found (UIDs, in result order)
    and what it needs to be run again when the mailbox changes."""

    key: searchmod.SearchKey
    by_uid: bool
    sort_keys: list[tuple[str, bool]] | None
    found: list[int]
    version: tuple[int, int, int]


@dataclass
class _Notified:
    """What a NOTIFY client was last told: the list (GUID -> name), the subscriptions, and
    the status of each watched mailbox that is not selected."""

    names: dict[str, str]
    subscriptions: set[str]
    status: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _renumber(node: sortmod.ThreadNode, to: Callable[[int], int]) -> sortmod.ThreadNode:
    """A thread tree with its sequence numbers mapped (UID THREAD)."""
    return sortmod.ThreadNode(None if node.seq is None else to(node.seq),
                              [_renumber(c, to) for c in node.children])


class ImapSession(ImapWire):
    protocol = "imap"

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        super().__init__(conn, ctx)
        self.limits: ImapLimits = ctx.imap_limits
        self.idle_timeout = self.limits.idle_timeout
        self.state = "not-authenticated"
        self.mail: UserMail | None = None
        self.sel: Selected | None = None
        self.condstore = False
        self.qresync = False
        #: ENABLE IMAP4rev2 (RFC 9051): UTF-8 names, ESEARCH, no \Recent.
        self.rev2 = False
        #: NOTIFY (RFC 5465): what the client wants to hear of, and what it has heard.
        self.notify: notifymod.NotifySpec | None = None
        self.notified: _Notified | None = None
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
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
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

    async def run(self) -> None:
        self.emit(f"* OK [CAPABILITY {self.capabilities()}] {self.ctx.hostname} ready.\r\n")
        await self.flush()
        try:
            while self.state != "logout":
                try:
                    if self.notify is not None:
                        got = await self._read_command_notifying()
                    else:
                        got = await self.read_command()
                except ImapParseError as exc:
                    await self.bad(None, str(exc))
                    continue
                if got is None:
                    continue
                await self.execute(*got)
                await self.flush()
        except (Disconnect, EOFError, ConnectionError):
            pass
        finally:
            self._log_logout()

    def _log_logout(self) -> None:
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
        handler = self._handler(cmd.name)
        if handler is None:
            await self.bad(cmd.tag, f"Error in IMAP command {cmd.name[:40]}: Unknown "
                            "command" if not self._known(cmd.name) else
                            f"Command {cmd.name} is not valid in this state")
            return
        try:
            await handler(cmd)
        except ImapParseError as exc:
            await self.bad(cmd.tag, f"Error in IMAP command {cmd.name}: {exc}")
        except Bad as exc:
            await self.bad(cmd.tag, str(exc))
        except No as exc:
            await self._after_command(cmd)
            self.emit(f"{cmd.tag} NO {resp_code(exc.code)}{CTL.sub(' ', str(exc))}\r\n")
        except MailError as exc:
            no = mail_error(exc)
            if no.code == "SERVERBUG" or isinstance(exc, StorageUnavailable):
                log.error("%s user=%s: %s failed: %s", self.conn.session_id, self.user,
                          cmd.name, exc)
            self.emit(f"{cmd.tag} NO {resp_code(no.code)}{no}\r\n")
        except (Disconnect, EOFError, OSError):
            raise
        except Exception:
            # A bug in a handler: logged with its traceback; the client gets what Dovecot
            # says and the session goes on.
            log.exception("%s user=%s: %s failed", self.conn.session_id, self.user, cmd.name)
            self.emit(f"{cmd.tag} NO [SERVERBUG] Internal error occurred. "
                      "Refer to server log for more information.\r\n")

    def _known(self, name: str) -> bool:
        return hasattr(self, "do_" + name.lower().replace(" ", "_").replace("-", "_"))

    def _handler(self, name: str) -> Callable[[Command], Awaitable[None]] | None:
        if not self._known(name):
            return None
        allowed = _STATES.get(name)
        if allowed is not None and self.state not in allowed:
            return None
        fn: Callable[[Command], Awaitable[None]] = getattr(
            self, "do_" + name.lower().replace(" ", "_").replace("-", "_"))
        return fn

    async def _after_command(self, cmd: Command) -> None:
        """Report other sessions' changes before the tagged reply (RFC 3501 7)."""
        if self.sel is None:
            return
        allow_expunge = cmd.name not in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD")
        await self.sync(allow_expunge=allow_expunge)

    def ok(self, cmd: Command, text: str = "", code: str | None = None) -> None:
        self.emit(f"{cmd.tag} OK {resp_code(code)}{text or cmd.name.title() + ' completed'}"
                  ".\r\n")

    # -- any state (RFC 3501 6.1) ---------------------------------------------------------

    async def do_capability(self, cmd: Command) -> None:
        self.emit(f"* CAPABILITY {self.capabilities()}\r\n")
        self.ok(cmd)

    async def do_noop(self, cmd: Command) -> None:
        await self._refresh(force=True)
        await self._after_command(cmd)
        self.ok(cmd)

    async def do_logout(self, cmd: Command) -> None:
        self.state = "logout"
        self.emit(f"* BYE Logging out.\r\n{cmd.tag} OK Logout completed.\r\n")

    async def do_id(self, cmd: Command) -> None:
        """RFC 2971: the client says who it is (logged); the server answers likewise."""
        if len(cmd.args) != 1:
            raise ImapParseError("ID needs a list or NIL")
        arg = cmd.args[0]
        if isinstance(arg, list):
            if len(arg) > 60:
                raise ImapParseError("too many ID fields")
            pairs = [as_string(t, "ID field").decode("utf-8", "replace")[:100]
                     if not (isinstance(t, str) and t.upper() == "NIL") else "NIL"
                     for t in arg]
            log.info("%s %s: client ID %s", self.conn.session_id, self.conn.peer,
                     " ".join(pairs)[:300])
        elif not (isinstance(arg, str) and arg.upper() == "NIL"):
            raise ImapParseError("ID needs a list or NIL")
        self.emit('* ID ("name" "cloudcote" "vendor" "cloudcote")\r\n')
        self.ok(cmd)

    # -- not authenticated (RFC 3501 6.2) -------------------------------------------------

    async def do_starttls(self, cmd: Command) -> None:
        if self.ctx.ssl_context is None or self.conn.tls:
            raise Bad("STARTTLS not available")
        self.ok(cmd, "Begin TLS negotiation now")
        await self.flush()
        self.bytes_in += await self.conn.start_tls(self.ctx.ssl_context)

    async def do_login(self, cmd: Command) -> None:
        if len(cmd.args) != 2:
            raise ImapParseError("LOGIN needs a user name and a password")
        user = as_string(cmd.args[0], "user").decode("utf-8", "replace")
        password = as_string(cmd.args[1], "password").decode("utf-8", "replace")
        if not self.plaintext_allowed:
            raise No("Plaintext authentication disallowed on non-secure (SSL/TLS) "
                     "connections.", "PRIVACYREQUIRED")
        await self._finish_auth(cmd, user, password)

    async def do_authenticate(self, cmd: Command) -> None:
        """RFC 3501 6.2.2 with SASL-IR (RFC 4959): PLAIN (RFC 4616) and LOGIN."""
        if not cmd.args or len(cmd.args) > 2:
            raise ImapParseError("AUTHENTICATE needs a mechanism")
        mech = as_atom(cmd.args[0], "mechanism").upper()
        if mech not in ("PLAIN", "LOGIN"):
            raise No("Unsupported authentication mechanism.")
        if not self.plaintext_allowed:
            raise No("Plaintext authentication disallowed on non-secure (SSL/TLS) "
                     "connections.", "PRIVACYREQUIRED")
        initial = (as_string(cmd.args[1], "initial response").decode("ascii", "replace")
                   if len(cmd.args) > 1 else None)
        if mech == "PLAIN":
            if initial is None:
                initial = await self._sasl_step("")
            try:
                base64.b64decode("" if initial == "=" else initial, validate=True)
            except binascii.Error:
                raise Bad("Invalid base64 data in SASL response") from None
            creds = decode_sasl_plain("" if initial == "=" else initial)
            if creds is None or (creds[0] and creds[0] != creds[1]):
                raise No("Invalid credentials.", "AUTHENTICATIONFAILED")
            await self._finish_auth(cmd, creds[1], creds[2])
            return
        try:
            if initial is None or initial == "=":
                initial = await self._sasl_step("VXNlcm5hbWU6")
            user = base64.b64decode(initial, validate=True).decode("utf-8")
            pw_line = await self._sasl_step("UGFzc3dvcmQ6")
            password = base64.b64decode(pw_line, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Bad("Invalid base64 data in SASL response") from None
        await self._finish_auth(cmd, user, password)

    async def _sasl_step(self, challenge: str) -> str:
        self.emit(f"+ {challenge}\r\n")
        await self.flush()
        line = (await self.read_line()).decode("ascii", "replace")
        if line == "*":
            raise Bad("Authentication aborted by client")
        return line

    async def _finish_auth(self, cmd: Command, user: str, password: str) -> None:
        ok = await self.check_password(user, password)
        if ok is None:
            raise No("Temporary authentication failure.", "UNAVAILABLE")
        if not ok:
            raise No("Authentication failed.", "AUTHENTICATIONFAILED")
        try:
            self.mail = await self._open_user_mail()
        except MailError as exc:
            log.error("%s user=%s: cannot open mail: %s", self.conn.session_id, self.user, exc)
            self.user = None
            raise No("Mail storage is temporarily unavailable.", "UNAVAILABLE") from None
        self.state = "authenticated"
        self.ok(cmd, "Logged in", f"CAPABILITY {self.capabilities()}")

    async def _open_user_mail(self) -> UserMail:
        assert self.user is not None
        entry = getattr(self, "user_entry", None)
        user_mail = getattr(self.ctx, "user_mail", None)
        if entry is not None and user_mail is not None:
            return await user_mail(entry)  # type: ignore[no-any-return]
        if self.ctx.mail is None:
            raise StorageUnavailable("no mail storage configured")
        return await self.ctx.mail.user(self.user)

    # -- authenticated (RFC 3501 6.3) -----------------------------------------------------

    def _mailbox_name(self, tok: Token) -> str:
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

    def _wire_name(self, name: str) -> bytes:
        """A mailbox name as the client reads it: modified UTF-7, or UTF-8 under IMAP4rev2."""
        return utf8_astring(name) if self.rev2 else astring(utf7.encode(name))

    def _text_name(self, name: str) -> str:
        """A mailbox name inside response text."""
        return name if self.rev2 else utf7.encode(name)

    def _canon(self, name: str) -> str:
        try:
            return normalize_name(name)
        except InvalidMailboxName as exc:
            raise No(f"Invalid mailbox name: {exc}.", "CANNOT") from None

    async def do_enable(self, cmd: Command) -> None:
        """RFC 5161."""
        if not cmd.args:
            raise ImapParseError("ENABLE needs capability names")
        enabled = []
        for tok in cmd.args:
            name = as_atom(tok, "capability").upper()
            if name == "CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append(name)
            elif name == "QRESYNC" and not self.qresync:
                self.qresync = True
                if not self.condstore:
                    self.condstore = True
                enabled.append(name)
            elif name == "IMAP4REV2" and not self.rev2:
                self.rev2 = True
                if self.sel is not None:
                    self.sel.recent.clear()
                enabled.append("IMAP4rev2")
        self.emit("* ENABLED" + "".join(" " + e for e in enabled) + "\r\n")
        self.ok(cmd)

    async def do_unauthenticate(self, cmd: Command) -> None:
        """RFC 8437: back to the not-authenticated state, as on a new connection (TLS
        stays)."""
        log.info("%s %s: user %s unauthenticated", self.conn.session_id, self.conn.peer,
                 self.user)
        self._log_logout()
        self.user = None
        self.user_entry = None
        self.mail = None
        self.sel = None
        self.condstore = self.qresync = self.rev2 = False
        self.state = "not-authenticated"
        self.ok(cmd)

    async def do_namespace(self, cmd: Command) -> None:
        """RFC 2342: one personal namespace, no others."""
        self.emit(f'* NAMESPACE (("" "{SEP}")) NIL NIL\r\n')
        self.ok(cmd)

    async def do_select(self, cmd: Command) -> None:
        await self._select(cmd, readonly=False)

    async def do_examine(self, cmd: Command) -> None:
        await self._select(cmd, readonly=True)

    async def _select(self, cmd: Command, readonly: bool) -> None:
        if not cmd.args or len(cmd.args) > 2:
            raise ImapParseError(f"{cmd.name} needs a mailbox name")
        name = self._mailbox_name(cmd.args[0])
        qresync: list[Token] | None = None
        if len(cmd.args) == 2:
            params = as_list(cmd.args[1], "select parameters")
            i = 0
            while i < len(params):
                p = as_atom(params[i], "select parameter").upper()
                if p == "CONDSTORE":
                    self.condstore = True
                elif p == "QRESYNC":
                    if not self.qresync:
                        raise Bad("QRESYNC must be enabled first")
                    if i + 1 >= len(params):
                        raise ImapParseError("QRESYNC needs parameters")
                    qresync = as_list(params[i + 1], "QRESYNC parameters")
                    i += 1
                else:
                    raise ImapParseError(f"unknown select parameter {p[:30]}")
                i += 1
        if self.sel is not None:
            self.sel = None
            self.state = "authenticated"
            self.emit("* OK [CLOSED] Previous mailbox closed.\r\n")
        assert self.mail is not None
        box = await self._open_box(name)
        await box.refresh()
        st = box.state
        view = list(st.uids)
        sel = Selected(box=box, readonly=readonly, view=view, known_modseq=st.highest_modseq,
                       keywords=frozenset(st.keywords))
        sel.version = (st.highest_modseq, st.next_uid, st.exists)
        self.emit(f"* FLAGS ({' '.join(all_flags(sel.keywords))})\r\n")
        if readonly:
            self.emit("* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n")
        else:
            self.emit(f"* OK [PERMANENTFLAGS ({' '.join(all_flags(sel.keywords))} \\*)] "
                      "Flags permitted.\r\n")
        self.emit(f"* {len(view)} EXISTS\r\n")
        if not self.rev2:
            sel.recent = await self._recent_of(box, view, readonly=readonly)
        if self.rev2:
            # RFC 9051 6.3.2: no RECENT nor UNSEEN; the mailbox's name as the server has it.
            self.emit(b'* LIST () "' + SEP.encode() + b'" ' + self._wire_name(box.name)
                      + b"\r\n")
        else:
            self.emit(f"* {len(sel.recent)} RECENT\r\n")
            first_unseen = next((i for i, uid in enumerate(view, 1)
                                 if uid in st.messages
                                 and "\\Seen" not in st.messages[uid].flags), None)
            if first_unseen is not None:
                self.emit(f"* OK [UNSEEN {first_unseen}] First unseen.\r\n")
        self.emit(f"* OK [UIDVALIDITY {st.uidvalidity}] UIDs valid\r\n"
                  f"* OK [UIDNEXT {st.next_uid}] Predicted next UID\r\n")
        self.emit(f"* OK [HIGHESTMODSEQ {st.highest_modseq}] Highest\r\n")
        self.sel = sel
        self.state = "selected"
        if qresync is not None:
            await self._qresync_select(qresync)
        self.ok(cmd, "Select completed" if not readonly else "Examine completed",
                "READ-ONLY" if readonly else "READ-WRITE")

    async def _qresync_select(self, params: list[Token]) -> None:
        """RFC 7162 3.2.5: what changed since the client's known MODSEQ."""
        assert self.sel is not None
        st = self.sel.box.state
        if len(params) < 2:
            raise ImapParseError("QRESYNC needs UIDVALIDITY and MODSEQ")
        uidvalidity = as_number(params[0], "UIDVALIDITY")
        modseq = as_number(params[1], "MODSEQ", 2**63 - 1)
        # known-uids name UIDs the client has, expunged ones included: not the view.
        known = [(1, st.next_uid - 1)]
        if len(params) >= 3 and isinstance(params[2], str):
            try:
                known = searchmod.parse_sequence_set(params[2]).resolve(st.next_uid - 1)
            except searchmod.SearchError:
                raise ImapParseError("invalid known-uids") from None
        if uidvalidity != st.uidvalidity:
            return
        vanished = [u for u in st.expunged_since(modseq)
                    if any(lo <= u <= hi for lo, hi in known)]
        if vanished:
            self.emit(f"* VANISHED (EARLIER) {seqset_text(vanished)}\r\n")
        for seq, uid in enumerate(self.sel.view, 1):
            m = st.messages[uid]
            if m.modseq > modseq and any(lo <= uid <= hi for lo, hi in known):
                self.emit(f"* {seq} FETCH (UID {uid} FLAGS "
                          f"{flags_list(m.flags).decode()} MODSEQ ({m.modseq}))\r\n")

    async def _recent_of(self, box: Mailbox, uids: list[int],
                         readonly: bool | None = None) -> set[int]:
        """Which of ``uids`` are \\Recent to this session (RFC 3501 2.3.2): a read-write
        session claims the messages no session has claimed yet (one log record, so that
        exactly one session sees each as recent); a read-only one (EXAMINE) sees them
        without claiming."""
        if readonly is None:
            readonly = self.sel.readonly if self.sel is not None else True
        st = box.state
        if readonly:
            return {u for u in uids if u >= st.recent_from}
        won = await claim_recent(box, max(uids) + 1) if uids else range(0)
        mine = self.sel.recent if self.sel is not None and self.sel.box is box else set()
        return {u for u in uids if u in won or u in mine}

    async def _open_box(self, name: str) -> Mailbox:
        assert self.mail is not None
        canon = self._canon(name)
        try:
            return await self.mail.mailbox(canon)
        except MailboxNotFound:
            raise No("Mailbox doesn't exist: " + self._text_name(canon) + ".",
                     "NONEXISTENT") from None

    async def do_create(self, cmd: Command) -> None:
        if not cmd.args or len(cmd.args) > 2:
            raise ImapParseError("CREATE needs a mailbox name")
        name = self._mailbox_name(cmd.args[0])
        if name.endswith(SEP):
            name = name.rstrip(SEP)  # RFC 3501 6.3.3: a trailing separator is a hint
        special: list[str] = []
        if len(cmd.args) == 2:  # RFC 6154 CREATE-SPECIAL-USE: (USE (\Sent ...))
            opts = as_list(cmd.args[1], "create parameters")
            if len(opts) != 2 or not isinstance(opts[0], str) or opts[0].upper() != "USE":
                raise ImapParseError("unknown CREATE parameter")
            special = [as_atom(t, "special-use") for t in as_list(opts[1], "USE list")]
        canon = self._canon(name)
        assert self.mail is not None
        if canon == "INBOX":
            raise No("Mailbox already exists.", "ALREADYEXISTS")
        try:
            await self.mail.create_mailbox(canon, special)
        except InvalidMailboxName as exc:
            if special and "special-use" in str(exc):
                raise No(f"{exc}.", "USEATTR") from None
            raise
        self.ok(cmd)

    async def do_delete(self, cmd: Command) -> None:
        if len(cmd.args) != 1:
            raise ImapParseError("DELETE needs a mailbox name")
        canon = self._canon(self._mailbox_name(cmd.args[0]))
        assert self.mail is not None
        if canon == "INBOX":
            raise No("INBOX can't be deleted.", "CANNOT")
        await self.mail.refresh_list()
        if self.sel is not None and self.sel.box.name == canon:
            self.sel = None
            self.state = "authenticated"
        await self.mail.delete_mailbox(canon)
        self.ok(cmd)

    async def do_rename(self, cmd: Command) -> None:
        if len(cmd.args) != 2:
            raise ImapParseError("RENAME needs two mailbox names")
        old = self._canon(self._mailbox_name(cmd.args[0]))
        new = self._canon(self._mailbox_name(cmd.args[1]))
        assert self.mail is not None
        await self.mail.refresh_list()
        if new == "INBOX":
            raise No("Mailbox already exists.", "ALREADYEXISTS")
        await self.mail.rename_mailbox(old, new)
        self.ok(cmd)

    async def do_subscribe(self, cmd: Command) -> None:
        if len(cmd.args) != 1:
            raise ImapParseError("SUBSCRIBE needs a mailbox name")
        assert self.mail is not None
        await self.mail.subscribe(self._canon(self._mailbox_name(cmd.args[0])))
        self.ok(cmd)

    async def do_unsubscribe(self, cmd: Command) -> None:
        if len(cmd.args) != 1:
            raise ImapParseError("UNSUBSCRIBE needs a mailbox name")
        assert self.mail is not None
        await self.mail.unsubscribe(self._canon(self._mailbox_name(cmd.args[0])))
        self.ok(cmd)

    async def do_list(self, cmd: Command) -> None:
        opts = parse_list_command(cmd.args, lsub=False, utf8=self.rev2)
        await self._list(cmd, opts)

    async def do_lsub(self, cmd: Command) -> None:
        opts = parse_list_command(cmd.args, lsub=True, utf8=self.rev2)
        await self._list(cmd, opts)

    async def _list(self, cmd: Command, opts: ListOptions) -> None:
        assert self.mail is not None
        await self.mail.refresh_list()
        for line, name in list_responses(self.mail, opts):
            self.emit(line)
            if name is not None and opts.status_items:
                try:
                    await self._status_line(name, opts.status_items)
                except No:
                    pass
            await self.maybe_flush()
        await self._after_command(cmd)
        self.ok(cmd)

    async def do_status(self, cmd: Command) -> None:
        if len(cmd.args) != 2:
            raise ImapParseError("STATUS needs a mailbox name and a list of items")
        name = self._mailbox_name(cmd.args[0])
        items = parse_status_items(cmd.args[1])
        await self._status_line(self._canon(name), items)
        await self._after_command(cmd)
        self.ok(cmd)

    async def _status_line(self, name: str, items: list[str]) -> None:
        box = await self._open_box(name)
        if self.sel is None or self.sel.box is not box:
            await box.refresh()
        st = box.state
        values = {
            "MESSAGES": st.exists,
            "RECENT": len(self.sel.recent) if self.sel is not None and self.sel.box is box
            else len(st.uids) - bisect.bisect_left(st.uids, st.recent_from),
            "UIDNEXT": st.next_uid,
            "UIDVALIDITY": st.uidvalidity,
            "UNSEEN": st.unseen,
            "HIGHESTMODSEQ": st.highest_modseq,
            "SIZE": st.total_size,
        }
        if "DELETED" in items:  # RFC 9051 6.3.11
            values["DELETED"] = sum(1 for m in st if "\\Deleted" in m.flags)
        if "HIGHESTMODSEQ" in items:
            self._enable_condstore()
        body = " ".join(f"{i} {values[i]}" for i in items)
        self.emit(b"* STATUS " + self._wire_name(name) + f" ({body})\r\n".encode())

    async def do_append(self, cmd: Command) -> None:
        """APPEND, with MULTIAPPEND (RFC 3502: every message is saved, or none is) and
        CATENATE (RFC 4469: a message put together from text and IMAP URLs)."""
        args = list(cmd.args)
        if len(args) < 2:
            raise ImapParseError("APPEND needs a mailbox name and a message")
        name = self._mailbox_name(args.pop(0))
        assert self.mail is not None and self.user is not None
        messages = self._append_messages(cmd, args)
        try:
            box = await self._open_box(name)
        except No:
            raise No("Mailbox doesn't exist: " + self._text_name(self._canon(name)) + ".",
                     "TRYCREATE") from None
        requests = []
        for flags, when, data in messages:
            if isinstance(data, list):
                try:
                    data = await catenate.assemble(
                        self.mail, self.user, data, cmd,
                        selected=self.sel.box.name if self.sel is not None else None,
                        limit=self.limits.max_append_literal)
                except catenate.CatenateError as exc:
                    raise No(str(exc), exc.code) from None
            # A binary part (RFC 3516 4.4) with NUL or bare CR/LF goes in as base64: the
            # store keeps CRLF lines, and BINARY[] still gives back its octets.
            requests.append(SaveRequest(mime.protect_binary(data), flags, when))
        if any(not r.raw for r in requests):
            raise No("Can't save an empty message.")
        # One save: a message over the quota or the size limit fails them all (RFC 3502 6).
        uids = await box.save_many(requests)
        await self._after_command(cmd)
        self.ok(cmd, "Append completed",
                f"APPENDUID {box.state.uidvalidity} {seqset_text(uids)}")

    def _append_messages(self, cmd: Command, args: list[Token],
                         ) -> list[tuple[list[str], dt.datetime | None, bytes | list[Token]]]:
        """The messages of APPEND's arguments after the mailbox name: each is
        ``[flag-list] [date-time] (literal / CATENATE (parts))`` (RFC 3502 6.3.11, RFC 4469
        5); a date-time is a quoted string (or a literal) followed by the message's literal
        or by CATENATE."""
        out: list[tuple[list[str], dt.datetime | None, bytes | list[Token]]] = []
        i = 0

        def catenate_at(j: int) -> bool:
            return j + 1 < len(args) and isinstance(args[j], str) \
                and str(args[j]).upper() == "CATENATE" and isinstance(args[j + 1], list)

        while i < len(args):
            flags: list[str] = []
            when: dt.datetime | None = None
            tok = args[i]
            if isinstance(tok, list):
                flags = parse_flags(tok)
                i += 1
            if i + 1 < len(args):
                tok = args[i]
                if isinstance(tok, bytes) and not cmd.is_literal(tok) \
                        and (cmd.is_literal(args[i + 1]) or catenate_at(i + 1)):
                    when = parse_date_time(tok.decode("ascii", "replace"))
                    i += 1
            if catenate_at(i):
                parts = args[i + 1]
                assert isinstance(parts, list)
                out.append((flags, when, parts))
                i += 2
                continue
            if i >= len(args):
                raise ImapParseError("APPEND needs the message as a literal")
            data = args[i]
            if not isinstance(data, bytes):
                raise ImapParseError("bad APPEND arguments")
            out.append((flags, when, data))
            i += 1
        return out

    async def do_idle(self, cmd: Command) -> None:
        """RFC 2177: changes as they happen, until DONE."""
        self.emit("+ idling\r\n")
        await self.flush()
        read = asyncio.ensure_future(self.read_raw_line())
        stop = asyncio.ensure_future(self.ctx.shutdown.wait())
        deadline = time.monotonic() + self.limits.idle_timeout
        try:
            while True:
                waits: set[asyncio.Future[object]] = {read, stop}  # type: ignore[arg-type]
                change: asyncio.Future[object] | None = None
                if self.notify is not None:
                    change = asyncio.ensure_future(self._notify_wait())  # type: ignore[assignment]
                elif self.sel is not None:
                    change = asyncio.ensure_future(self.sel.box.wait_for_change(60.0))
                if change is not None:
                    waits.add(change)
                left = deadline - time.monotonic()
                done, _ = await asyncio.wait(waits, timeout=max(left, 0),
                                             return_when=asyncio.FIRST_COMPLETED)
                if change is not None and change not in done:
                    change.cancel()
                if stop in done:
                    self.emit("* BYE Server shutting down.\r\n")
                    await self.flush()
                    raise Disconnect()
                if not done:
                    self.emit("* BYE Disconnected for inactivity.\r\n")
                    await self.flush()
                    raise Disconnect()
                if change is not None and change in done:
                    try:
                        change.result()
                        if self.notify is not None:
                            await self._notify_changes()
                        if self.sel is not None:
                            await self.sync(allow_expunge=True)
                    except MailError as exc:
                        log.warning("%s user=%s: IDLE refresh failed: %s",
                                    self.conn.session_id, self.user, exc)
                    await self.flush()
                if read in done:
                    line = read.result().rstrip(b"\r\n")
                    if line.upper() == b"DONE":
                        await self._after_command(cmd)
                        self.ok(cmd, "Idle completed")
                    else:
                        await self.bad(cmd.tag, "Expected DONE")
                    return
        finally:
            stop.cancel()
            if not read.done():
                read.cancel()

    # -- NOTIFY (RFC 5465) ------------------------------------------------------------------

    async def do_notify(self, cmd: Command) -> None:
        try:
            spec = notifymod.parse_notify(list(cmd.args), self._mailbox_name)
        except notifymod.BadEvent:
            raise No("Unsupported event.",
                     f"BADEVENT ({' '.join(notifymod.SUPPORTED_EVENTS)})") from None
        self.notify = spec
        self.notified = None
        if spec is not None:
            assert self.mail is not None
            await self.mail.refresh_list()
            self.notified = _Notified(
                {e.guid: e.name for e in self.mail.list_mailboxes()},
                set(self.mail.subscriptions()))
            for name, events in self._notify_watched():
                box = await self._open_box(name)
                self.notified.status[box.guid] = self._box_status(box)
                if spec.status:
                    self._notify_status_line(box, events)
        await self._after_command(cmd)
        self.ok(cmd)

    def _notify_watched(self) -> list[tuple[str, frozenset[str]]]:
        """The mailboxes (not the selected one) NOTIFY watches, with their events."""
        assert self.mail is not None and self.notify is not None
        subscribed = self.mail.subscriptions()
        selected = self.sel.box.name if self.sel is not None else None
        out = []
        for entry in self.mail.list_mailboxes():
            if entry.name == selected:
                continue
            events = self.notify.events_for(entry.name, subscribed)
            if events & {"MessageNew", "MessageExpunge", "FlagChange"}:
                out.append((entry.name, events))
                if len(out) >= notifymod.MAX_WATCHED:
                    break
        return out

    def _box_status(self, box: Mailbox) -> tuple[int, ...]:
        st = box.state
        return (st.uidvalidity, st.exists, st.next_uid, st.unseen, st.highest_modseq)

    def _notify_status_line(self, box: Mailbox, events: frozenset[str]) -> None:
        """RFC 5465 5.1-5.3: STATUS of a watched mailbox that changed."""
        st = box.state
        values = {"MESSAGES": st.exists, "UIDNEXT": st.next_uid,
                  "UIDVALIDITY": st.uidvalidity, "UNSEEN": st.unseen,
                  "HIGHESTMODSEQ": st.highest_modseq}
        items = notifymod.status_items(events, self.condstore)
        if not items:
            return
        body = " ".join(f"{k} {values[k]}" for k in items)
        self.emit(b"* STATUS " + self._wire_name(box.name) + f" ({body})\r\n".encode())

    async def _notify_wait(self) -> None:
        """Until something NOTIFY watches may have changed: a change of the selected or a
        watched mailbox (at once in this process, else within the poll interval), or a poll
        interval for the mailbox list."""
        assert self.mail is not None
        poll = 60.0  # each waits on its change feed, or polls at its own interval
        boxes: list[Mailbox] = []
        if self.sel is not None:
            boxes.append(self.sel.box)
        for name, _ in self._notify_watched():
            try:
                boxes.append(await self.mail.mailbox(name))
            except MailboxNotFound:
                continue
        waits = [asyncio.ensure_future(b.wait_for_change(poll)) for b in boxes]
        waits.append(asyncio.ensure_future(self.mail.wait_for_list_change(poll)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _notify_changes(self) -> None:
        """Untagged responses for what changed since the client last heard (RFC 5465 5):
        LIST for created, deleted and renamed mailboxes and for subscriptions, STATUS for
        the watched mailboxes, and the selected mailbox's EXISTS, EXPUNGE and FETCH."""
        spec, told = self.notify, self.notified
        if spec is None or told is None or self.mail is None:
            return
        mail = self.mail
        if spec.watches_list or spec.groups:
            await mail.refresh_list()
        subscribed = mail.subscriptions()
        names = {e.guid: e.name for e in mail.list_mailboxes()}
        selected = self.sel.box.name if self.sel is not None else None

        def events(name: str) -> frozenset[str]:
            if name == selected and spec.selected is not None:
                return spec.selected
            return spec.events_for(name, subscribed)

        sep = f' "{SEP}" '.encode()
        for guid, name in names.items():
            old = told.names.get(guid)
            if old == name or "MailboxName" not in events(name):
                continue
            if old is None:
                self.emit(b"* LIST ()" + sep + self._wire_name(name) + b"\r\n")
            else:
                self.emit(b"* LIST ()" + sep + self._wire_name(name) + b' ("OLDNAME" ('
                          + self._wire_name(old) + b"))\r\n")
        for guid, name in told.names.items():
            if guid not in names and "MailboxName" in events(name):
                self.emit(b"* LIST (\\NonExistent)" + sep + self._wire_name(name) + b"\r\n")
        for name in sorted(subscribed ^ told.subscriptions):
            if "SubscriptionChange" in events(name):
                attrs = b"(\\Subscribed)" if name in subscribed else b"()"
                self.emit(b"* LIST " + attrs + sep + self._wire_name(name) + b"\r\n")
        told.names, told.subscriptions = names, set(subscribed)
        for name, evs in self._notify_watched():
            try:
                box = await mail.mailbox(name)
            except MailboxNotFound:
                continue
            now = self._box_status(box)
            before = told.status.get(box.guid)
            told.status[box.guid] = now
            if before is None or before == now:
                continue
            # (uidvalidity, exists, next_uid, unseen, highest_modseq)
            new_mail = before[2] != now[2]
            expunged = now[1] < before[1] + (now[2] - before[2])
            wanted = set()
            if new_mail and "MessageNew" in evs:
                wanted.add("MessageNew")
            if expunged and "MessageExpunge" in evs:
                wanted.add("MessageExpunge")
            if not wanted and before[4] != now[4] and "FlagChange" in evs:
                wanted.add("FlagChange")
            if wanted or before[0] != now[0]:
                self._notify_status_line(box, frozenset(wanted) or evs)
        if self.sel is not None and spec.selected:
            before_view = len(self.sel.view)
            await self.sync(allow_expunge=not spec.delayed)
            new = self.sel.view[before_view:]
            if new and spec.fetch is not None and "MessageNew" in spec.selected:
                await self._notify_fetch(new, spec.fetch)

    async def _notify_fetch(self, uids: list[int], req: FetchRequest) -> None:
        """MessageNew's fetch attributes for new messages of the selected mailbox."""
        assert self.sel is not None
        box = self.sel.box
        st = box.state
        for uid in uids:
            m = st.messages.get(uid)
            if m is None:
                continue
            seq = bisect.bisect_left(self.sel.view, uid) + 1
            try:
                self.emit(await render(box, m, req, seq=seq, recent=uid in self.sel.recent,
                                       with_uid=True, with_modseq=self.condstore))
            except (MessageExpunged, UnknownCte):
                continue
            await self.maybe_flush()

    async def _read_command_notifying(self) -> tuple[list[bytes], list[bytes]] | None:
        """The next command, while reporting NOTIFY's changes as they come, up to the
        moment its first line is read."""
        read = asyncio.ensure_future(self.read_command())
        try:
            while True:
                wake = asyncio.ensure_future(self._notify_wait())
                done, _ = await asyncio.wait({read, wake},
                                             return_when=asyncio.FIRST_COMPLETED)
                if read in done:
                    wake.cancel()
                    await asyncio.gather(wake, return_exceptions=True)
                    return read.result()
                if self.command_started or self.notify is None:
                    continue
                try:
                    await self._notify_changes()
                except MailError as exc:
                    log.warning("%s user=%s: NOTIFY refresh failed: %s",
                                self.conn.session_id, self.user, exc)
                await self.flush()
        finally:
            if not read.done():
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)

    async def do_getquotaroot(self, cmd: Command) -> None:
        """RFC 9208: one quota root, "", for all of a user's mailboxes."""
        if len(cmd.args) != 1:
            raise ImapParseError("GETQUOTAROOT needs a mailbox name")
        name = self._canon(self._mailbox_name(cmd.args[0]))
        await self._open_box(name)
        assert self.mail is not None
        limits = self.mail.quota_limits
        enc = self._wire_name(name).decode("utf-8")
        if not limits.bytes and not limits.messages:
            self.emit(f"* QUOTAROOT {enc}\r\n")
        else:
            self.emit(f'* QUOTAROOT {enc} ""\r\n')
            await self._quota_line()
        self.ok(cmd)

    async def do_getquota(self, cmd: Command) -> None:
        if len(cmd.args) != 1:
            raise ImapParseError("GETQUOTA needs a quota root")
        root = as_string(cmd.args[0], "quota root")
        assert self.mail is not None
        limits = self.mail.quota_limits
        if root != b"" or (not limits.bytes and not limits.messages):
            raise No("No such quota root.", "NONEXISTENT")
        await self._quota_line()
        self.ok(cmd)

    async def do_setquota(self, cmd: Command) -> None:
        raise No("Quota is set by the administrator.", "NOPERM")

    async def _quota_line(self) -> None:
        assert self.mail is not None
        usage = await self.mail.quota_usage()
        limits = self.mail.quota_limits
        res = []
        if limits.bytes:
            res.append(f"STORAGE {usage.bytes // 1024} {limits.bytes // 1024}")
        if limits.messages:
            res.append(f"MESSAGE {usage.messages} {limits.messages}")
        self.emit(f'* QUOTA "" ({" ".join(res)})\r\n')

    # -- selected (RFC 3501 6.4) ----------------------------------------------------------

    async def _refresh(self, force: bool = False) -> None:
        if self.sel is None:
            return
        box = self.sel.box
        if force or box.needs_refresh():
            try:
                await box.refresh()
            except MailboxNotFound:
                self.emit("* BYE Selected mailbox was deleted, have to disconnect.\r\n")
                await self.flush()
                raise Disconnect() from None

    async def sync(self, allow_expunge: bool) -> None:
        """Untagged EXPUNGE/VANISHED, EXISTS, RECENT, FLAGS and FETCH for changes the
        client has not heard of."""
        sel = self.sel
        assert sel is not None
        st = sel.box.state
        version = (st.highest_modseq, st.next_uid, st.exists)
        if version == sel.version:
            if sel.contexts:
                await self._update_contexts()
            return
        view = sel.view
        if allow_expunge:
            gone = [uid for uid in view if uid not in st.messages]
            if gone:
                self._context_expunges(gone)
                if self.qresync:
                    self.emit(f"* VANISHED {seqset_text(gone)}\r\n")
                    goneset = set(gone)
                    view[:] = [u for u in view if u not in goneset]
                else:
                    for uid in reversed(gone):
                        i = bisect.bisect_left(view, uid)
                        self.emit(f"* {i + 1} EXPUNGE\r\n")
                        del view[i]
                for uid in gone:
                    sel.recent.discard(uid)
                    sel.reported.pop(uid, None)
        last = view[-1] if view else 0
        start = bisect.bisect_right(st.uids, last)
        new = st.uids[start:]
        self._announce_keywords()
        if st.highest_modseq > sel.known_modseq:
            for seq, uid in enumerate(view, 1):
                m = st.messages.get(uid)
                if m is None or m.modseq <= sel.known_modseq:
                    continue
                if sel.reported.get(uid) == m.modseq:
                    continue
                self.emit(self._flag_update(seq, m))
            sel.known_modseq = st.highest_modseq
            sel.reported.clear()
        if new:
            view.extend(new)
            self.emit(f"* {len(view)} EXISTS\r\n")
            if not self.rev2:  # IMAP4rev2 has no \Recent (RFC 9051 E.4)
                sel.recent.update(await self._recent_of(sel.box, new, readonly=sel.readonly))
                self.emit(f"* {len(sel.recent)} RECENT\r\n")
        if allow_expunge or len(view) == st.exists:
            sel.version = version
        await self._update_contexts()
        await self.maybe_flush()

    def _announce_keywords(self) -> None:
        """FLAGS and PERMANENTFLAGS when the mailbox has a keyword the client has not
        heard of, before any FETCH shows it (RFC 3501 7.2.6)."""
        sel = self.sel
        assert sel is not None
        st = sel.box.state
        if frozenset(st.keywords) == sel.keywords:
            return
        sel.keywords = frozenset(st.keywords)
        self.emit(f"* FLAGS ({' '.join(all_flags(sel.keywords))})\r\n")
        if not sel.readonly:
            self.emit(f"* OK [PERMANENTFLAGS ({' '.join(all_flags(sel.keywords))}"
                      " \\*)] Flags permitted.\r\n")

    def _flag_update(self, seq: int, m: Message) -> str:
        assert self.sel is not None
        parts = []
        if self.condstore:  # RFC 7162 3.1.4: UID and MODSEQ once CONDSTORE is on
            parts.append(f"UID {m.uid}")
        parts.append("FLAGS " + flags_list(m.flags, m.uid in self.sel.recent).decode())
        if self.condstore:
            parts.append(f"MODSEQ ({m.modseq})")
        return f"* {seq} FETCH ({' '.join(parts)})\r\n"

    def _seq_set(self, text: str) -> list[int]:
        """Sequence numbers of a sequence set, as UIDs of the view (RFC 3501 6.4.8); ``$``
        is the saved search result (RFC 5182)."""
        assert self.sel is not None
        if text == "$":
            return self._saved_uids()
        view = self.sel.view
        try:
            sset = searchmod.parse_sequence_set(text)
        except searchmod.SearchError:
            raise ImapParseError("invalid message sequence set") from None
        if not view:
            raise No("No messages.") if text != "*" else No("No messages.")
        out: list[int] = []
        for lo, hi in sset.resolve(len(view)):
            if hi > len(view):
                raise Bad("Invalid messageset: message sequence number out of range")
            out.extend(view[lo - 1:hi])
        return sorted(set(out))

    def _uid_set(self, text: str, allow_all: bool = True) -> list[int]:
        """UIDs of the view that a UID set names (missing UIDs are ignored); ``$`` is the
        saved search result (RFC 5182)."""
        assert self.sel is not None
        if text == "$":
            return self._saved_uids()
        view = self.sel.view
        try:
            sset = searchmod.parse_sequence_set(text)
        except searchmod.SearchError:
            raise ImapParseError("invalid UID set") from None
        largest = view[-1] if view else 0
        out: list[int] = []
        for lo, hi in sset.resolve(largest) if view or not allow_all else []:
            i = bisect.bisect_left(view, lo)
            j = bisect.bisect_right(view, hi)
            out.extend(view[i:j])
        if not view and allow_all:
            return []
        return sorted(set(out))

    def _set(self, cmd: Command, tok: Token) -> list[int]:
        text = as_atom(tok, "sequence set")
        if cmd.name.startswith("UID "):
            return self._uid_set(text)
        return self._seq_set(text)

    async def do_check(self, cmd: Command) -> None:
        await self._refresh(force=True)
        await self._after_command(cmd)
        self.ok(cmd)

    async def do_close(self, cmd: Command) -> None:
        assert self.sel is not None
        if not self.sel.readonly:
            gone = await self.sel.box.expunge(None)
            self.deleted += len(gone)
        self.sel = None
        self.state = "authenticated"
        self.ok(cmd)

    async def do_unselect(self, cmd: Command) -> None:
        self.sel = None
        self.state = "authenticated"
        self.ok(cmd)

    async def do_expunge(self, cmd: Command) -> None:
        await self._expunge(cmd, None)

    async def do_uid_expunge(self, cmd: Command) -> None:
        if len(cmd.args) != 1:
            raise ImapParseError("UID EXPUNGE needs a UID set")
        await self._expunge(cmd, self._uid_set(as_atom(cmd.args[0], "UID set")))

    async def _expunge(self, cmd: Command, uids: list[int] | None) -> None:
        assert self.sel is not None
        if self.sel.readonly:
            raise No("Mailbox is read-only.", "READ-ONLY")
        box = self.sel.box
        await box.refresh()
        if uids is None:
            victims = [m.uid for m in box.state if "\\Deleted" in m.flags]
        else:
            victims = [u for u in uids if u in box.state.messages
                       and "\\Deleted" in box.state.messages[u].flags]
        gone = await box.expunge(victims) if victims else []
        self.deleted += len(gone)
        await self.sync(allow_expunge=True)
        code = f"HIGHESTMODSEQ {box.state.highest_modseq}" if self.condstore else None
        self.ok(cmd, "Expunge completed", code)

    async def do_search(self, cmd: Command) -> None:
        await self._search(cmd, by_uid=False)

    async def do_uid_search(self, cmd: Command) -> None:
        await self._search(cmd, by_uid=True)

    async def _search(self, cmd: Command, by_uid: bool) -> None:
        """SEARCH with ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and CONTEXT=SEARCH
        (RFC 5267); under IMAP4rev2 the answer is always ESEARCH (RFC 9051 6.4.4)."""
        sel = self.sel
        assert sel is not None
        ret, args = return_options(list(cmd.args))
        if ret is None and self.rev2:
            ret = ReturnOptions(items={"ALL"})
        charset = "UTF-8"
        if len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "CHARSET":
            charset = as_string(args[1], "charset").decode("ascii", "replace")
            args = args[2:]
        args = expand_saved(args, self._saved_uids())
        if ret is not None and ret.save:
            sel.saved = []  # a SEARCH that fails leaves $ empty (RFC 5182 2.1)
        key, found = await self._matching(args, charset)
        numbers = [m.uid if by_uid else seq for seq, m in found]
        modseq = result_modseq(found, ret) if searchmod.uses_modseq(key) else None
        if modseq is not None:
            self._enable_condstore()
        if ret is None:
            line = "* SEARCH" + "".join(f" {n}" for n in numbers)
            if modseq is not None and numbers:
                line += f" (MODSEQ {modseq})"
            self.emit(line + "\r\n")
        else:
            text = esearch_line(cmd.tag, by_uid, numbers, ret, ordered=False, modseq=modseq)
            if text is not None:
                self.emit(text + "\r\n")
            if ret.save:
                sel.saved = saved_of(ret, [m.uid for _, m in found], ordered=False)
            if ret.update:
                self._keep_context(cmd.tag, SearchContext(
                    key, by_uid, None, [m.uid for _, m in found], self._version()))
        await self._after_command(cmd)
        self.ok(cmd)

    def _saved_uids(self) -> list[int]:
        """``$``: the saved result's messages that are still in the view."""
        assert self.sel is not None
        view = self.sel.view
        out = []
        for uid in self.sel.saved:
            i = bisect.bisect_left(view, uid)
            if i < len(view) and view[i] == uid:
                out.append(uid)
        return out

    def _version(self) -> tuple[int, int, int]:
        assert self.sel is not None
        st = self.sel.box.state
        return (st.highest_modseq, st.next_uid, st.exists)

    def _keep_context(self, tag: str, ctx: SearchContext) -> None:
        """RFC 5267 4.2: a search kept up to date; NOUPDATE past the limit."""
        assert self.sel is not None
        contexts = self.sel.contexts
        if tag not in contexts and len(contexts) >= MAX_CONTEXTS:
            self.emit(f'* NO [NOUPDATE "{tag}"] Too many search contexts.\r\n')
            return
        contexts[tag] = ctx

    def _context_expunges(self, gone: list[int]) -> None:
        """REMOVEFROM for expunged messages of the searches kept up to date, numbered as
        the client knows them before the EXPUNGE responses (RFC 5267 4.3)."""
        sel = self.sel
        assert sel is not None
        goneset = set(gone)
        for tag, ctx in sel.contexts.items():
            if not goneset.intersection(ctx.found):
                continue
            old = list(ctx.found)
            ctx.found = [u for u in old if u not in goneset]
            self._emit_context_changes(tag, ctx, old, ctx.found)

    async def _update_contexts(self) -> None:
        """ADDTO and REMOVEFROM (RFC 5267 4.3) for the searches kept up to date, after
        any command and whenever the mailbox changes.  A message expunged but not yet
        reported keeps its place until its EXPUNGE (see ``_context_expunges``)."""
        sel = self.sel
        assert sel is not None
        if not sel.contexts:
            return
        version = self._version()
        st = sel.box.state
        present = [(seq, st.messages[uid]) for seq, uid in enumerate(sel.view, 1)
                   if uid in st.messages]
        recent = frozenset(sel.recent)
        for tag, ctx in list(sel.contexts.items()):
            if ctx.version == version:
                continue
            ctx.version = version
            hits = await search_mailbox(sel.box, ctx.key, [m for _, m in present], recent)
            found = [present[i - 1] for i in hits]
            if ctx.sort_keys is not None:
                by_seq = {seq: m.uid for seq, m in found}
                new = [by_seq[seq] for seq in
                       await sorting.sort_order(sel.box, found, ctx.sort_keys)]
            else:
                new = [m.uid for _, m in found]
            pending = [u for u in ctx.found if u not in st.messages]
            old = [u for u in ctx.found if u in st.messages]
            self._emit_context_changes(tag, ctx, old, new)
            ctx.found = new + pending

    def _emit_context_changes(self, tag: str, ctx: SearchContext, old: list[int],
                              new: list[int]) -> None:
        """REMOVEFROM the messages that left, from the end, then ADDTO those that came, in
        result order; a SEARCH result gives position 0 (RFC 5267 4.3), a SORT result the
        message's place at that moment."""
        assert self.sel is not None
        view = self.sel.view
        new_set = set(new)
        old_set = set(old)

        def number(uid: int) -> int:
            return uid if ctx.by_uid else bisect.bisect_left(view, uid) + 1

        prefix = f'* ESEARCH (TAG "{tag}"){" UID" if ctx.by_uid else ""}'
        removed = [(i + 1, u) for i, u in enumerate(old) if u not in new_set]
        added = [(i + 1, u) for i, u in enumerate(new) if u not in old_set]
        if ctx.sort_keys is None:
            if removed:
                nums = sorted(number(u) for _, u in removed)
                self.emit(f"{prefix} REMOVEFROM (0 {seqset_text(nums)})\r\n")
            if added:
                nums = sorted(number(u) for _, u in added)
                self.emit(f"{prefix} ADDTO (0 {seqset_text(nums)})\r\n")
            return
        if removed:
            pairs = " ".join(f"{pos} {number(u)}" for pos, u in reversed(removed))
            self.emit(f"{prefix} REMOVEFROM ({pairs})\r\n")
        if added:
            pairs = " ".join(f"{pos} {number(u)}" for pos, u in added)
            self.emit(f"{prefix} ADDTO ({pairs})\r\n")

    def _enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 3.1): with a mailbox selected, the
        client hears its HIGHESTMODSEQ at once."""
        if self.condstore:
            return
        self.condstore = True
        if self.sel is not None:
            self.emit(f"* OK [HIGHESTMODSEQ {self.sel.box.state.highest_modseq}] "
                      "Highest\r\n")

    async def do_cancelupdate(self, cmd: Command) -> None:
        """RFC 5267 4.3: stop updating the searches with these tags."""
        assert self.sel is not None
        if not cmd.args:
            raise ImapParseError("CANCELUPDATE needs tags")
        for tok in cmd.args:
            self.sel.contexts.pop(as_string(tok, "tag").decode("ascii", "replace"), None)
        self.ok(cmd)

    async def _matching(self, args: list[Token], charset: str,
                        ) -> tuple[searchmod.SearchKey, list[tuple[int, Message]]]:
        """The search key of ``args`` and the (seq, message) pairs matching it."""
        assert self.sel is not None
        if not args:
            raise ImapParseError("SEARCH needs criteria")
        try:
            key = searchmod.parse_search(args, charset)  # type: ignore[arg-type]
        except searchmod.BadCharset:
            raise No("Unsupported charset.", "BADCHARSET (US-ASCII UTF-8)") from None
        except searchmod.SearchError as exc:
            raise ImapParseError(str(exc)) from None
        await self._refresh()
        box = self.sel.box
        st = box.state
        present = [(seq, st.messages[uid]) for seq, uid in enumerate(self.sel.view, 1)
                   if uid in st.messages]
        if isinstance(key, searchmod.All):  # SORT and THREAD over ALL, mostly
            return key, present
        msgs = [m for _, m in present]
        hits = await search_mailbox(box, key, msgs, frozenset(self.sel.recent))
        return key, [present[i - 1] for i in hits]

    async def do_sort(self, cmd: Command) -> None:
        await self._sort(cmd, by_uid=False)

    async def do_uid_sort(self, cmd: Command) -> None:
        await self._sort(cmd, by_uid=True)

    async def _sort(self, cmd: Command, by_uid: bool) -> None:
        """RFC 5256 SORT (with RFC 5957 DISPLAYFROM/DISPLAYTO), RFC 5267 ESORT
        (``SORT RETURN (...)``) with CONTEXT=SORT, and SAVE (RFC 5182)."""
        sel = self.sel
        assert sel is not None
        ret, args = return_options(list(cmd.args))
        if len(args) < 3:
            raise ImapParseError("SORT needs sort criteria, a charset and search criteria")
        try:
            keys = sortmod.parse_sort_criteria(
                [as_atom(t, "sort key") for t in as_list(args[0], "sort criteria")])
        except ValueError as exc:
            raise ImapParseError(str(exc)) from None
        charset = as_string(args[1], "charset").decode("ascii", "replace")
        criteria = expand_saved(list(args[2:]), self._saved_uids())
        if ret is not None and ret.save:
            sel.saved = []
        key, found = await self._matching(criteria, charset)
        by_seq = {seq: m for seq, m in found}
        order = await sorting.sort_order(sel.box, found, keys)
        numbers = [by_seq[s].uid if by_uid else s for s in order]
        if ret is None:
            self.emit("* SORT" + "".join(f" {n}" for n in numbers) + "\r\n")
        else:
            uids = [by_seq[s].uid for s in order]
            text = esearch_line(cmd.tag, by_uid, numbers, ret, ordered=True)
            if text is not None:
                self.emit(text + "\r\n")
            if ret.save:
                sel.saved = saved_of(ret, uids, ordered=True)
            if ret.update:
                self._keep_context(cmd.tag, SearchContext(key, by_uid, keys, uids,
                                                          self._version()))
        await self._after_command(cmd)
        self.ok(cmd)

    async def do_thread(self, cmd: Command) -> None:
        await self._thread(cmd, by_uid=False)

    async def do_uid_thread(self, cmd: Command) -> None:
        await self._thread(cmd, by_uid=True)

    async def _thread(self, cmd: Command, by_uid: bool) -> None:
        """RFC 5256 THREAD: ORDEREDSUBJECT, REFERENCES, and REFS."""
        if len(cmd.args) < 3:
            raise ImapParseError("THREAD needs an algorithm, a charset and search criteria")
        algorithm = as_atom(cmd.args[0], "thread algorithm").upper()
        if algorithm not in ("ORDEREDSUBJECT", "REFERENCES", "REFS"):
            raise ImapParseError(f"unknown THREAD algorithm {algorithm[:30]}")
        charset = as_string(cmd.args[1], "charset").decode("ascii", "replace")
        _, found = await self._matching(list(cmd.args[2:]), charset)
        by_seq = {seq: m for seq, m in found}
        assert self.sel is not None
        threads = await sorting.threads(self.sel.box, found, algorithm)
        if by_uid:
            threads = [_renumber(t, lambda s: by_seq[s].uid) for t in threads]
        text = sortmod.format_threads(threads)
        self.emit("* THREAD" + (f" {text}" if text else "") + "\r\n")
        await self._after_command(cmd)
        self.ok(cmd)

    async def do_fetch(self, cmd: Command) -> None:
        await self._fetch(cmd, by_uid=False)

    async def do_uid_fetch(self, cmd: Command) -> None:
        await self._fetch(cmd, by_uid=True)

    async def _fetch(self, cmd: Command, by_uid: bool) -> None:
        assert self.sel is not None
        if len(cmd.args) not in (2, 3):
            raise ImapParseError("FETCH needs a sequence set and items")
        req = parse_fetch_items(cmd.args[1])
        changedsince: int | None = None
        vanished = False
        if len(cmd.args) == 3:
            mods = as_list(cmd.args[2], "FETCH modifiers")
            i = 0
            while i < len(mods):
                mod = as_atom(mods[i], "FETCH modifier").upper()
                if mod == "CHANGEDSINCE" and i + 1 < len(mods):
                    changedsince = as_number(mods[i + 1], "CHANGEDSINCE", 2**63 - 1)
                    i += 2
                elif mod == "VANISHED" and by_uid and self.qresync:
                    vanished = True
                    i += 1
                else:
                    raise ImapParseError(f"unknown FETCH modifier {mod[:20]}")
            if vanished and changedsince is None:
                raise ImapParseError("VANISHED needs CHANGEDSINCE")
            self._enable_condstore()
        if "MODSEQ" in req.items:
            self._enable_condstore()
        await self._refresh()
        try:
            uids = self._set(cmd, cmd.args[0])
        except No:
            uids = []
            if not by_uid:
                raise Bad("Invalid messageset: no messages") from None
        box = self.sel.box
        st = box.state
        if vanished and changedsince is not None:
            gone = [u for u in st.expunged_since(changedsince)
                    if u <= (self.sel.view[-1] if self.sel.view else 0)]
            text = as_atom(cmd.args[0], "UID set")
            if text == "$":
                ranges = [(u, u) for u in self._saved_uids()]
            else:
                sset = searchmod.parse_sequence_set(text)
                ranges = sset.resolve(self.sel.view[-1] if self.sel.view else 0)
            gone = [u for u in gone if any(lo <= u <= hi for lo, hi in ranges)]
            if gone:
                self.emit(f"* VANISHED (EARLIER) {seqset_text(gone)}\r\n")
        set_seen = req.sets_seen and not self.sel.readonly
        # RFC 7162 3.1.4: a FETCH that sets \Seen reports UID and MODSEQ under CONDSTORE.
        with_modseq = self.condstore and (changedsince is not None or "MODSEQ" in req.items
                                          or set_seen)
        with_uid = by_uid or (self.condstore and set_seen)
        if changedsince is not None:
            uids = [u for u in uids if u in st.messages and st.messages[u].modseq > changedsince]
        if set_seen:
            unseen = [u for u in uids if u in st.messages and
                      "\\Seen" not in st.messages[u].flags]
            if unseen:
                await box.store(unseen, "+", ["\\Seen"])
                st = box.state
        self._announce_keywords()
        missing = False
        view = self.sel.view
        jobs: list[tuple[int, Message]] = []
        for uid in uids:
            m = st.messages.get(uid)
            if m is None:
                missing = True
                continue
            seq = bisect.bisect_left(view, uid) + 1
            jobs.append((seq, m))
        recent = self.sel.recent
        # RFC 3501 6.4.5: FLAGS go out with the data only where this FETCH set \Seen.
        newly_seen = set(unseen) if set_seen else set()
        needs_io = req.needs_cache or req.needs_message or bool(req.bodies)

        async def one(seq: int, m: Message) -> bytes | None:
            try:
                return await render(box, m, req, seq=seq, recent=m.uid in recent,
                                    with_uid=with_uid, with_modseq=with_modseq,
                                    flags=m.flags if m.uid in newly_seen else None)
            except MessageExpunged:
                return None
            except UnknownCte as exc:
                raise No(str(exc), "UNKNOWN-CTE") from None

        if not needs_io:
            for seq, m in jobs:
                data = await one(seq, m)
                if data is not None:
                    self.emit(data)
                    await self.maybe_flush()
        elif not (req.needs_message or req.bodies):
            # Cached fields only: read the cache chunks ahead (a chunk holds many messages'
            # entries), and render each message once its chunk is in.
            runs: list[tuple[str | None, list[tuple[int, Message]]]] = []
            for job in jobs:
                name = box.cache_chunk_name(job[1])
                if runs and runs[-1][0] == name:
                    runs[-1][1].append(job)
                else:
                    runs.append((name, [job]))

            async def load(run: tuple[str | None, list[tuple[int, Message]]]) -> None:
                if run[0] is not None:
                    await box.cache_chunk(run[0])

            async with Prefetch(runs, load,
                                count=box.mail_store.settings.prefetch_count) as chunks:
                async for loaded in chunks:
                    loaded.result()
                    for seq, m in loaded.job[1]:
                        data = await one(seq, m)
                        if data is None:
                            missing = True
                            continue
                        self.emit(data)
                        await self.maybe_flush()
        else:
            settings = box.mail_store.settings
            async with Prefetch(jobs, lambda job: one(*job), count=settings.prefetch_count,
                                max_bytes=settings.prefetch_bytes,
                                size=lambda job: job[1].size) as ahead:
                async for done in ahead:
                    data = done.result()
                    if data is None:
                        missing = True
                        continue
                    self.emit(data)
                    self.fetched += 1 if req.bodies or req.needs_message else 0
                    await self.maybe_flush()
        if set_seen:
            for _, m in jobs:
                cur = st.messages.get(m.uid)
                if cur is not None:
                    self.sel.reported[m.uid] = cur.modseq
        await self._after_command(cmd)
        if missing:
            raise No("Some of the requested messages no longer exist.", "EXPUNGEISSUED")
        self.ok(cmd)

    async def do_store(self, cmd: Command) -> None:
        await self._store(cmd, by_uid=False)

    async def do_uid_store(self, cmd: Command) -> None:
        await self._store(cmd, by_uid=True)

    async def _store(self, cmd: Command, by_uid: bool) -> None:
        assert self.sel is not None
        args = list(cmd.args)
        if len(args) < 3:
            raise ImapParseError("STORE needs a sequence set, an item and flags")
        unchangedsince: int | None = None
        if isinstance(args[1], list):
            mods = as_list(args.pop(1), "STORE modifiers")
            if (len(mods) != 2 or not isinstance(mods[0], str)
                    or mods[0].upper() != "UNCHANGEDSINCE"):
                raise ImapParseError("unknown STORE modifier")
            unchangedsince = as_number(mods[1], "UNCHANGEDSINCE", 2**63 - 1)
            self._enable_condstore()
        if len(args) < 3:
            raise ImapParseError("STORE needs flags")
        item = as_atom(args[1], "STORE item").upper()
        m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", item)
        if m is None:
            raise ImapParseError(f"unknown STORE item {item[:30]}")
        mode = m.group(1) or "="
        silent = bool(m.group(2))
        flag_toks = args[2] if isinstance(args[2], list) and len(args) == 3 else args[2:]
        if not isinstance(flag_toks, list):
            raise ImapParseError("bad flag list")
        flags = parse_flags(flag_toks)
        if self.sel.readonly:
            raise No("Mailbox is read-only.", "READ-ONLY")
        uids = self._set(cmd, args[0])
        box = self.sel.box
        result = await box.store(uids, mode, flags, unchangedsince) if uids else \
            {"changed": [], "failed": []}
        st = box.state
        self._announce_keywords()
        failed = set(result["failed"])
        view = self.sel.view
        for uid in uids:
            msg = st.messages.get(uid)
            if msg is None or uid in failed:
                continue
            seq = bisect.bisect_left(view, uid) + 1
            if not silent or (unchangedsince is not None and uid in result["changed"]):
                parts = []
                if by_uid or self.condstore:  # RFC 7162 3.1.4: UID and MODSEQ
                    parts.append(f"UID {uid}")
                parts.append("FLAGS " + flags_list(msg.flags, uid in self.sel.recent).decode())
                if self.condstore:
                    parts.append(f"MODSEQ ({msg.modseq})")
                self.emit(f"* {seq} FETCH ({' '.join(parts)})\r\n")
                self.sel.reported[uid] = msg.modseq
            elif silent:
                self.sel.reported[uid] = msg.modseq
        await self._after_command(cmd)
        if failed:
            nums = sorted(failed) if by_uid else sorted(
                bisect.bisect_left(view, u) + 1 for u in failed if u in set(view))
            self.ok(cmd, "Conditional store failed", f"MODIFIED {seqset_text(nums)}")
        else:
            self.ok(cmd)

    async def do_copy(self, cmd: Command) -> None:
        await self._copy(cmd, move=False)

    async def do_uid_copy(self, cmd: Command) -> None:
        await self._copy(cmd, move=False)

    async def do_move(self, cmd: Command) -> None:
        await self._copy(cmd, move=True)

    async def do_uid_move(self, cmd: Command) -> None:
        await self._copy(cmd, move=True)

    async def _copy(self, cmd: Command, move: bool) -> None:
        assert self.sel is not None
        if len(cmd.args) != 2:
            raise ImapParseError(f"{cmd.name} needs a sequence set and a mailbox name")
        uids = self._set(cmd, cmd.args[0])
        name = self._mailbox_name(cmd.args[1])
        try:
            dest = await self._open_box(name)
        except No:
            raise No("Mailbox doesn't exist: " + self._text_name(self._canon(name)) + ".",
                     "TRYCREATE") from None
        if move and self.sel.readonly:
            raise No("Mailbox is read-only.", "READ-ONLY")
        box = self.sel.box
        if move:
            pairs = await box.move(uids, dest)
            self.deleted += len(pairs)
        else:
            pairs = await box.copy(uids, dest)
        code = None
        if pairs:
            code = (f"COPYUID {dest.state.uidvalidity} {seqset_text([s for s, _ in pairs])} "
                    f"{seqset_text([d for _, d in pairs])}")
        if move:
            if code:
                self.emit(f"* OK [{code}] Moved UIDs.\r\n")
            await self.sync(allow_expunge=True)
            self.ok(cmd, "Move completed")
        else:
            await self._after_command(cmd)
            self.ok(cmd, "Copy completed", code)


_ANY = ("not-authenticated", "authenticated", "selected")
_AUTHED = ("authenticated", "selected")
_STATES: dict[str, tuple[str, ...]] = {
    "CAPABILITY": _ANY, "NOOP": _ANY, "LOGOUT": _ANY, "ID": _ANY,
    "STARTTLS": ("not-authenticated",), "LOGIN": ("not-authenticated",),
    "AUTHENTICATE": ("not-authenticated",),
    "ENABLE": _AUTHED, "UNAUTHENTICATE": _AUTHED, "NAMESPACE": _AUTHED, "SELECT": _AUTHED,
    "EXAMINE": _AUTHED,
    "CREATE": _AUTHED, "DELETE": _AUTHED, "RENAME": _AUTHED, "SUBSCRIBE": _AUTHED,
    "UNSUBSCRIBE": _AUTHED, "LIST": _AUTHED, "LSUB": _AUTHED, "STATUS": _AUTHED,
    "APPEND": _AUTHED, "IDLE": _AUTHED, "GETQUOTAROOT": _AUTHED, "GETQUOTA": _AUTHED,
    "SETQUOTA": _AUTHED, "NOTIFY": _AUTHED,
    "CHECK": ("selected",), "CLOSE": ("selected",), "UNSELECT": ("selected",),
    "EXPUNGE": ("selected",), "UID EXPUNGE": ("selected",), "SEARCH": ("selected",),
    "UID SEARCH": ("selected",), "FETCH": ("selected",), "UID FETCH": ("selected",),
    "SORT": ("selected",), "UID SORT": ("selected",), "THREAD": ("selected",),
    "UID THREAD": ("selected",),
    "CANCELUPDATE": ("selected",),
    "STORE": ("selected",), "UID STORE": ("selected",), "COPY": ("selected",),
    "UID COPY": ("selected",), "MOVE": ("selected",), "UID MOVE": ("selected",),
}


async def imap_session(conn: Connection, ctx: ServerContext) -> None:
    await ImapSession(conn, ctx).run()


__all__ = ["FetchRequest", "ImapSession", "imap_session", "parse_date_time", "string"]
