"""POP3 session: RFC 1939 (AUTHORIZATION, TRANSACTION, UPDATE), RFC 2449 CAPA with
PIPELINING and RESP-CODES, RFC 2595 STLS, RFC 5034 SASL (PLAIN, LOGIN) with
AUTH-RESP-CODE and the RFC 3206 [SYS/TEMP], [SYS/PERM] and [AUTH] codes.

A session works on a snapshot of INBOX taken at login: the messages numbered 1..n in UID
order with their sizes.  DELE and RETR only mark messages; QUIT applies the marks (UPDATE,
RFC 1939 6): the DELE'd messages are expunged through the mailbox's log, exactly as an IMAP
EXPUNGE, and the RETR'd ones get ``\\Seen``.  A connection that ends any other way changes
nothing.  There is no maildrop lock: two sessions of one user each keep their own snapshot
(see docs/pop3.md).

Replies are buffered and go out when no further complete command is waiting in the input
(so a pipelined batch is answered with one write) and always before a read would block.
RETR and TOP stream the message from the store in bounded chunks, dot-stuffed on the way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudcote.core.mail.errors import MailError, MessageExpunged, StorageUnavailable

from .. import sasl
from ..listener import Connection
from ..session import BadCommand, Disconnect, LineSession, ServerContext
from .settings import Pop3Settings

if TYPE_CHECKING:
    from cloudcote.core.mail.api import Mailbox, Message, User

log = logging.getLogger("cloudcote.pop3")

#: Buffered reply bytes that are written out (with backpressure) at once.
FLUSH_AT = 64 * 1024
#: Bytes of a message read from the store per request while RETR/TOP stream it.
READ_CHUNK = 1024 * 1024
#: Commands that RFC 1939 and its extensions allow in each state.
AUTHORIZATION_COMMANDS = frozenset({"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT"})
TRANSACTION_COMMANDS = frozenset({"CAPA", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET",
                                  "TOP", "UIDL", "QUIT"})
ALL_COMMANDS = AUTHORIZATION_COMMANDS | TRANSACTION_COMMANDS
_UIDL_PART = re.compile(r"%(0?)([0-9]{0,2})([xX]?)([vugm%])")
_CTL = re.compile(r"[\x00-\x1f\x7f]")
_NUMBER = re.compile(r"[0-9]{1,10}")



@dataclass(frozen=True, slots=True)
class _Entry:
    """One message of the login snapshot; the bytes are found by UID (and checked by GUID)
    in the mailbox's current index when they are read."""

    uid: int
    guid: str
    size: int


def format_uidl(fmt: str, uidvalidity: int, uid: int, guid: str, md5: str | None) -> str:
    """Dovecot's pop3_uidl_format: ``%v`` UIDVALIDITY, ``%u`` UID, ``%g`` GUID, ``%m`` MD5
    of the header block, with printf-style zero padding, width and ``x``/``X`` hex
    (``%08Xu%08Xv``).  ``md5`` may be None when the format has no ``%m``."""

    def one(m: re.Match[str]) -> str:
        zero, width, hexa, key = m.groups()
        if key == "%":
            return "%"
        if key in "vu":
            num = uidvalidity if key == "v" else uid
            text = format(num, hexa) if hexa else str(num)
        else:
            text = guid if key == "g" else (md5 or "")
            if hexa == "X":
                text = text.upper()
        return text.rjust(int(width or 0), "0" if zero else " ")

    return _UIDL_PART.sub(one, fmt)


class _DotStuffer:
    """RFC 1939 3: a line that starts with "." gets another one; works across chunks."""

    def __init__(self) -> None:
        self.at_line_start = True

    def stuff(self, data: bytes) -> bytes:
        if not data:
            return data
        out = data.replace(b"\n.", b"\n..")
        if self.at_line_start and data[:1] == b".":
            out = b"." + out
        self.at_line_start = data[-1:] == b"\n"
        return out

    def end(self) -> bytes:
        """The multi-line terminator (after a CRLF if the message does not end with one)."""
        return (b"" if self.at_line_start else b"\r\n") + b".\r\n"


class _TopCut:
    """RFC 1939 7 TOP: the header, the blank line after it, then ``lines`` body lines;
    fed the message chunk by chunk."""

    def __init__(self, lines: int) -> None:
        self.in_header = True
        self.left = lines
        self.line_head = b""  # the first octets of the current line (up to 3)
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The part of ``data`` to send, and whether the cut is reached."""
        if self.done:
            return b"", True
        pos = 0
        n = len(data)
        while pos < n:
            if not self.in_header and self.left <= 0:
                self.done = True
                return data[:pos], True
            nl = data.find(b"\n", pos)
            if nl < 0:
                self.line_head = (self.line_head + data[pos:pos + 3])[:3]
                return data, False
            line = self.line_head + data[pos:min(nl + 1, pos + 3)]
            if self.in_header:
                if line in (b"\r\n", b"\n"):
                    self.in_header = False
            else:
                self.left -= 1
            self.line_head = b""
            pos = nl + 1
        if not self.in_header and self.left <= 0:
            self.done = True
        return data, self.done


class Pop3Session(LineSession):
    protocol = "pop3"
    line_too_long = "Line too long."
    log = log

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        super().__init__(conn, ctx)
        self.settings: Pop3Settings = ctx.pop3 or Pop3Settings()
        self.idle_timeout = self.settings.idle_timeout
        self.max_bad_commands = self.settings.max_bad_commands
        self.state = "authorization"  # then "transaction", then "done" (QUIT)
        self.pending_user: str | None = None
        self.mail: User | None = None
        self.box: Mailbox | None = None
        self.msgs: list[_Entry] = []
        self.uidvalidity = 0
        self.deleted: set[int] = set()  # indexes into self.msgs
        self.retrieved: set[int] = set()
        self._md5: dict[int, str] = {}
        #: First chunks being read ahead for pipelined RETR/TOP: index -> (read, octets).
        self._ahead: dict[int, tuple[asyncio.Future[bytes], int]] = {}
        self._uidl_md5 = bool(re.search(r"%0?[0-9]{0,2}[xX]?m",
                                        self.settings.uidl_format.replace("%%", "")))
        self.top_count = self.top_bytes = 0
        self.retr_count = self.retr_bytes = 0
        self.expunged = 0
        self.start_size = 0

    # -- output ---------------------------------------------------------------------------

    def stalled(self) -> None:
        log.info("%s user=%s ip=%s: client stopped reading for %.0f seconds",
                 self.conn.session_id, self.user, self.ip, self.idle_timeout)
        self.end_reason = "Client stopped reading"

    def ok(self, text: str = "") -> None:
        self.emit(f"+OK {text}\r\n" if text else "+OK\r\n")

    def err(self, text: str, code: str | None = None) -> None:
        self.emit(f"-ERR {'[' + code + '] ' if code else ''}{text}\r\n")

    # -- the session (LineSession.run is the loop) ----------------------------------------

    def greeting(self) -> str:
        return f"+OK {self.ctx.hostname} POP3 ready.\r\n"

    def bad_command_reply(self, text: str, last: bool) -> str:
        if last:
            return f"-ERR {text} Too many bad commands, closing the connection.\r\n"
        return f"-ERR {text}\r\n"

    def internal_error_reply(self, exc: Exception) -> str:
        if isinstance(exc, MailError):
            return "-ERR [SYS/TEMP] Mail storage is temporarily unavailable, try again.\r\n"
        return ("-ERR [SYS/TEMP] Internal error occurred. Refer to server log for more "
                "information.\r\n")

    def timeout_reply(self) -> str:
        return "-ERR Disconnected for inactivity.\r\n"

    def shutdown_reply(self) -> str:
        return "-ERR [SYS/TEMP] Server shutting down.\r\n"

    async def finish(self) -> None:
        left = self._drop_ahead()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
        self._log_logout()

    def _log_logout(self) -> None:
        if self.box is None:
            return
        log.info("%s user=%s ip=%s: %s top=%d/%d retr=%d/%d del=%d/%d size=%d",
                 self.conn.session_id, self.user, self.ip, self.end_reason,
                 self.top_count, self.top_bytes, self.retr_count, self.retr_bytes,
                 self.expunged, len(self.msgs), self.start_size)

    async def dispatch(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        verb, _, arg = text.partition(" ")
        name = verb.upper()
        if name not in ALL_COMMANDS:
            raise BadCommand("Unknown command.")
        allowed = (AUTHORIZATION_COMMANDS if self.state == "authorization"
                   else TRANSACTION_COMMANDS)
        if name not in allowed:
            raise BadCommand(f"{name} is not valid in the {self.state.upper()} state.")
        self.command = name
        await getattr(self, f"pop3_{name}")(arg)

    # -- any state ------------------------------------------------------------------------

    async def pop3_CAPA(self, arg: str) -> None:
        """RFC 2449 5: what this state offers (USER, SASL and STLS only before login)."""
        caps = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
        if self.state == "authorization":
            if self.plaintext_allowed:
                caps += ["USER", "SASL " + " ".join(sasl.MECHANISMS)]
            if self.ctx.ssl_context is not None and not self.conn.tls:
                caps.append("STLS")
        caps.append("IMPLEMENTATION cloudcote")
        self.emit("+OK Capability list follows\r\n" + "".join(c + "\r\n" for c in caps)
                  + ".\r\n")

    async def pop3_QUIT(self, arg: str) -> None:
        """RFC 1939 6: in TRANSACTION, the UPDATE state: expunge what was DELE'd, set
        \\Seen on what was RETR'd; +OK only once the expunge is durable."""
        self.done = True
        if self.state == "transaction":
            self.state = "done"
            try:
                await self._update()
            except Exception as exc:  # noqa: BLE001 - any failure is the same answer
                log.error("%s user=%s ip=%s: UPDATE failed: %s", self.conn.session_id,
                          self.user, self.ip, exc)
                self.end_reason = "Logout failed"
                self.err("Some deleted messages were not removed, try again later.",
                         "SYS/TEMP")
                return
            self.end_reason = "Logged out"
            self.ok("Logging out, messages deleted." if self.deleted else "Logging out.")
            return
        self.state = "done"
        self.end_reason = "Logged out"
        self.ok("Logging out.")

    # -- AUTHORIZATION (RFC 1939 4, RFC 2595, RFC 5034) -----------------------------------

    async def pop3_STLS(self, arg: str) -> None:
        """RFC 2595 4: the +OK goes out, then the handshake; whatever the client sent after
        STLS in plaintext is dropped (Connection.start_tls)."""
        if self.conn.tls:
            self.err("TLS is already active.")
            return
        if self.ctx.ssl_context is None:
            self.err("TLS support isn't enabled.")
            return
        self.ok("Begin TLS negotiation now.")
        await self.flush()
        dropped = await self.conn.start_tls(self.ctx.ssl_context)
        if dropped:
            log.info("%s ip=%s: dropped %d octets sent in plaintext after STLS",
                     self.conn.session_id, self.ip, dropped)
        self.pending_user = None

    def _plaintext_refused(self) -> bool:
        if self.plaintext_allowed:
            return False
        self.err("Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
                 "AUTH")
        return True

    async def pop3_USER(self, arg: str) -> None:
        if self._plaintext_refused():
            return
        if not arg:
            raise BadCommand("USER needs a user name.")
        self.pending_user = arg
        self.ok()

    async def pop3_PASS(self, arg: str) -> None:
        if self.pending_user is None:
            self.err("No user name given, send USER first.")
            return
        if self._plaintext_refused():
            return
        user, self.pending_user = self.pending_user, None
        await self._login(user, arg)

    async def pop3_AUTH(self, arg: str) -> None:
        """RFC 5034: the mechanisms of protocols/sasl.py, with an optional initial
        response (``=`` is an empty one); ``*`` in reply to a challenge cancels."""
        words = arg.split()
        if not words:
            self.ok("Supported mechanisms follow")
            self.emit("".join(m + "\r\n" for m in sasl.MECHANISMS) + ".\r\n")
            return
        if len(words) > 2:
            raise BadCommand("AUTH takes a mechanism and an optional initial response.")
        mech = words[0].upper()
        if mech not in sasl.MECHANISMS:
            self.err("Unsupported authentication mechanism.")
            return
        if self._plaintext_refused():
            return
        try:
            creds = await sasl.authenticate(mech, words[1] if len(words) > 1 else None,
                                            self._sasl_step)
        except sasl.Cancelled:
            self.err("Authentication aborted by client.")
            return
        except sasl.InvalidCredentials:
            self.err("Invalid credentials.", "AUTH")
            return
        except sasl.BadResponse:
            raise BadCommand("Invalid base64 data in SASL response.") from None
        await self._login(creds.authcid, creds.password)

    async def _sasl_step(self, challenge: str) -> str:
        """Send a challenge (RFC 5034 4: ``+ base64``), read the answer line."""
        self.emit(f"+ {challenge}\r\n")
        await self.flush()
        return (await self.read_line()).decode("ascii", "replace").strip()

    async def _login(self, user: str, password: str) -> None:
        ok = await self.check_password(user, password)
        if ok is None:
            self.err("Temporary authentication failure.", "SYS/TEMP")
            return
        if not ok:
            self.err("Authentication failed.", "AUTH")
            return
        try:
            self.mail = await self._open_user_mail()
            box = await self.mail.mailbox("INBOX")
            await box.refresh()  # other processes' deliveries up to now
        except Exception as exc:  # noqa: BLE001 - any failure means no maildrop
            if isinstance(exc, MailError):
                log.error("%s user=%s ip=%s: cannot open INBOX: %s", self.conn.session_id,
                          self.user, self.ip, exc)
            else:
                log.exception("%s user=%s ip=%s: cannot open INBOX", self.conn.session_id,
                              self.user, self.ip)
            self.end_reason = "Mail storage unavailable"
            self.err("Mail storage is temporarily unavailable, try again later.", "SYS/TEMP")
            raise Disconnect() from None
        st = box.state
        self.box = box
        self.uidvalidity = st.uidvalidity
        self.msgs = [_Entry(m.uid, m.guid, m.size) for m in st]
        self.start_size = sum(e.size for e in self.msgs)
        self.state = "transaction"
        self.ok("Logged in.")

    async def _open_user_mail(self) -> User:
        if self.user_entry is not None:
            return await self.ctx.user_mail(self.user_entry)
        if self.ctx.mail is None or self.user is None:
            raise StorageUnavailable("no mail storage configured")
        return await self.ctx.mail.user(self.user)

    # -- TRANSACTION (RFC 1939 5, 7) ------------------------------------------------------

    def _index(self, text: str, *, allow_deleted: bool = False) -> int | None:
        """The snapshot index of message number ``text``; None after an -ERR."""
        if not _NUMBER.fullmatch(text):
            raise BadCommand(f"Invalid message number: {_CTL.sub('?', text[:20])}")
        n = int(text)
        if n < 1 or n > len(self.msgs):
            self.err(f"There is no message {n}.")
            return None
        if n - 1 in self.deleted and not allow_deleted:
            self.err(f"Message {n} is deleted.")
            return None
        return n - 1

    def _args(self, arg: str, least: int, most: int, usage: str) -> list[str]:
        words = arg.split()
        if not least <= len(words) <= most:
            raise BadCommand(f"Usage: {usage}")
        return words

    async def pop3_NOOP(self, arg: str) -> None:
        self.ok()

    async def pop3_STAT(self, arg: str) -> None:
        self._args(arg, 0, 0, "STAT")
        live = [e for i, e in enumerate(self.msgs) if i not in self.deleted]
        self.ok(f"{len(live)} {sum(e.size for e in live)}")

    async def pop3_LIST(self, arg: str) -> None:
        words = self._args(arg, 0, 1, "LIST [message]")
        if words:
            i = self._index(words[0])
            if i is not None:
                self.ok(f"{i + 1} {self.msgs[i].size}")
            return
        live = [i for i in range(len(self.msgs)) if i not in self.deleted]
        self.ok(f"{len(live)} messages ({sum(self.msgs[i].size for i in live)} octets)")
        for i in live:
            self.emit(f"{i + 1} {self.msgs[i].size}\r\n")
            if self.out_size >= FLUSH_AT:
                await self.flush()
        self.emit(".\r\n")

    async def pop3_UIDL(self, arg: str) -> None:
        """RFC 1939 7 UIDL, as ``[pop3] uidl_format`` names messages."""
        words = self._args(arg, 0, 1, "UIDL [message]")
        if words:
            i = self._index(words[0])
            if i is not None:
                self.ok(f"{i + 1} {await self._uidl(i)}")
            return
        self.ok()
        for i in range(len(self.msgs)):
            if i in self.deleted:
                continue
            self.emit(f"{i + 1} {await self._uidl(i)}\r\n")
            if self.out_size >= FLUSH_AT:
                await self.flush()
        self.emit(".\r\n")

    async def _uidl(self, i: int) -> str:
        e = self.msgs[i]
        fmt = self.settings.uidl_format
        md5 = None
        if self._uidl_md5:
            md5 = self._md5.get(i)
            if md5 is None:
                md5 = await self._header_md5(e)
                self._md5[i] = md5
        return format_uidl(fmt, self.uidvalidity, e.uid, e.guid, md5)

    async def _header_md5(self, e: _Entry) -> str:
        assert self.box is not None
        msg = self.box.state.messages.get(e.uid)
        if msg is None or msg.guid != e.guid:
            # Expunged elsewhere since login: no header to hash; the GUID still names it.
            return hashlib.md5(e.guid.encode(), usedforsecurity=False).hexdigest()
        try:
            header = await self.box.header_block(msg)
        except MessageExpunged:
            header = e.guid.encode()
        return hashlib.md5(header, usedforsecurity=False).hexdigest()

    async def pop3_DELE(self, arg: str) -> None:
        (word,) = self._args(arg, 1, 1, "DELE message")
        i = self._index(word)
        if i is None:
            return
        self.deleted.add(i)
        self.ok(f"Message {i + 1} deleted.")

    async def pop3_RSET(self, arg: str) -> None:
        """RFC 1939 5 RSET: no message is deleted any more (nor, as with Dovecot, marked
        to become \\Seen)."""
        self._args(arg, 0, 0, "RSET")
        self.deleted.clear()
        self.retrieved.clear()
        live = len(self.msgs)
        self.ok(f"{live} messages ({self.start_size} octets)")

    async def pop3_RETR(self, arg: str) -> None:
        (word,) = self._args(arg, 1, 1, "RETR message")
        i = self._index(word)
        if i is None:
            return
        sent = await self._send_message(i, None)
        if sent is not None:
            self.retrieved.add(i)
            self.retr_count += 1
            self.retr_bytes += sent

    async def pop3_TOP(self, arg: str) -> None:
        words = self._args(arg, 2, 2, "TOP message lines")
        if not _NUMBER.fullmatch(words[1]):
            raise BadCommand(f"Invalid number of lines: {_CTL.sub('?', words[1][:20])}")
        i = self._index(words[0])
        if i is None:
            return
        sent = await self._send_message(i, int(words[1]))
        if sent is not None:
            self.top_count += 1
            self.top_bytes += sent

    async def _current(self, i: int) -> Message | None:
        """The message of snapshot entry ``i`` as the index knows it now, or None if it
        was expunged since login (by another session or by IMAP)."""
        box = self.box
        assert box is not None
        if box.needs_refresh():
            await box.refresh()
        e = self.msgs[i]
        msg = box.state.messages.get(e.uid)
        if msg is None or msg.guid != e.guid:
            return None
        return msg

    def _read_ahead(self, i: int, msg: Message) -> None:
        """Start reading the first chunk of message ``i`` and of the messages that RETR
        and TOP commands already waiting in the input (a pipelined batch) will send, up
        to ``[storage] prefetch_count`` reads and ``prefetch_bytes`` (docs/storage.md):
        on a store with latency the batch costs about one round trip, not one per
        message."""
        box = self.box
        assert box is not None
        settings = self.ctx.storage_settings
        wanted = [(i, msg)]
        buffered = bytes(self.conn.buffered())
        for line in buffered.split(b"\n")[:-1]:  # complete lines only
            if len(wanted) + len(self._ahead) >= settings.prefetch_count:
                break
            words = line.split()
            if (len(words) < 2 or words[0].upper() not in (b"RETR", b"TOP")
                    or not _NUMBER.fullmatch(words[1].decode("ascii", "replace"))):
                continue
            n = int(words[1]) - 1
            if not 0 <= n < len(self.msgs) or n in self._ahead or n in self.deleted:
                continue
            cur = box.state.messages.get(self.msgs[n].uid)
            if cur is not None and cur.guid == self.msgs[n].guid:
                wanted.append((n, cur))
        held = sum(size for _, size in self._ahead.values())
        for n, m in wanted:
            if n in self._ahead:
                continue
            want = min(READ_CHUNK, m.size)
            if n != i and held + want > settings.prefetch_bytes:
                break
            self._ahead[n] = (asyncio.ensure_future(box.read_message(m, 0, want)), want)
            held += want

    def _drop_ahead(self, i: int | None = None) -> list[asyncio.Future[bytes]]:
        """Cancel the read-ahead of message ``i`` (of every message if None); the
        cancelled reads, to be awaited."""
        keys = list(self._ahead) if i is None else [i] if i in self._ahead else []
        tasks = [self._ahead.pop(k)[0] for k in keys]
        for t in tasks:
            t.cancel()
        return tasks

    async def _send_message(self, i: int, top_lines: int | None) -> int | None:
        """RETR (``top_lines`` None) or TOP: +OK, the octets dot-stuffed, the terminator.
        Returns the message octets sent, or None after an -ERR.  The first chunk is read
        before the +OK, so that a message that is gone gets a plain -ERR; an error after
        the +OK cannot be reported inside the reply and ends the connection."""
        box = self.box
        assert box is not None
        msg = await self._current(i)
        if msg is None:
            self._drop_ahead(i)
            self.err(f"Message {i + 1} was deleted by another session.")
            return None
        size = msg.size
        self._read_ahead(i, msg)
        try:
            data = await self._ahead.pop(i)[0]
        except MessageExpunged:
            self.err(f"Message {i + 1} was deleted by another session.")
            return None
        self.ok(f"{size} octets" if top_lines is None else "")
        stuffer = _DotStuffer()
        cut = _TopCut(top_lines) if top_lines is not None else None
        pos = len(data)
        sent = 0
        ahead: asyncio.Task[bytes] | None = None
        try:
            while True:
                part, done = cut.feed(data) if cut is not None else (data, False)
                if not done and pos < size:
                    # Read the next chunk while this one goes out.
                    ahead = asyncio.ensure_future(
                        box.read_message(msg, pos, min(pos + READ_CHUNK, size)))
                self.emit(stuffer.stuff(part))
                sent += len(part)
                if self.out_size >= FLUSH_AT:
                    await self.flush()
                if ahead is None:
                    break
                data = await ahead
                ahead = None
                pos += len(data)
                if not data:
                    raise StorageUnavailable(f"UID {msg.uid} is shorter than its size")
        except (Disconnect, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - after the +OK, any failure cuts the reply
            log.error("%s user=%s ip=%s: reading message %d (UID %d) failed after its "
                      "+OK: %s", self.conn.session_id, self.user, self.ip, i + 1,
                      msg.uid, exc)
            # The reply stays unterminated: the client sees a cut connection, never a
            # message that looks complete.
            self.end_reason = "Message read failed"
            raise Disconnect() from None
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()  # retrieved: a cut stream reports it once, above
        self.emit(stuffer.end())
        return sent

    # -- UPDATE (RFC 1939 6) --------------------------------------------------------------

    async def _update(self) -> None:
        box = self.box
        assert box is not None
        if not self.deleted and not (self.retrieved - self.deleted):
            return
        await box.refresh()
        st = box.state

        def present(i: int) -> bool:
            m = st.messages.get(self.msgs[i].uid)
            return m is not None and m.guid == self.msgs[i].guid

        gone = [self.msgs[i].uid for i in sorted(self.deleted) if present(i)]
        if gone:
            self.expunged = len(await box.expunge(gone))
        seen = [self.msgs[i].uid for i in sorted(self.retrieved - self.deleted)
                if present(i) and "\\Seen" not in st.messages[self.msgs[i].uid].flags]
        if seen:
            try:
                await box.store(seen, "+", ["\\Seen"])
            except MailError as exc:
                # The deletions are done; a missing \Seen is not worth an -ERR.
                log.warning("%s user=%s ip=%s: setting \\Seen on retrieved messages "
                            "failed: %s", self.conn.session_id, self.user, self.ip, exc)


async def pop3_session(conn: Connection, ctx: ServerContext) -> None:
    await Pop3Session(conn, ctx).run()
