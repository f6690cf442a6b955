"""LMTP session: RFC 2033 LMTP on the RFC 5321 grammar, with RFC 2920 PIPELINING,
RFC 2034 ENHANCEDSTATUSCODES, RFC 6152 8BITMIME, RFC 1870 SIZE, RFC 3030 CHUNKING (BDAT,
BINARYMIME), RFC 6531 SMTPUTF8 and RFC 3207 STARTTLS.

Each RCPT is checked at once: the user is looked up in the passdb (``user_lookup``), the
user's mail opened and, when the quota is known to be spent (or MAIL's SIZE= would spend
it), refused with 552.  The message is stored once for all accepted recipients
(``deliver_to``; on mdbox one object holds it for all of them) and then every accepted
recipient gets its own reply, in RCPT order (RFC 2033 4.2).  A 250 is written only for a
copy that ``deliver_to`` reported durable by its UID: a reply promises the mail is kept.

Replies are buffered and go out when no further complete command is waiting in the input
and always before a read would block, so a pipelined envelope is answered in one write.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloudcote.core.mail.errors import (
    InvalidMailboxName,
    MailboxNotFound,
    MailError,
    MessageTooLarge,
    QuotaExceeded,
)
from cloudcote.core.mail.storage import StorageSettings, deliver_to

from ..listener import Connection
from ..session import (
    Disconnect,
    IdleTimeout,
    LineSession,
    LineTooLong,
    ServerContext,
    Shutdown,
)

if TYPE_CHECKING:
    from cloudcote.core.mail.storage import Mailbox, UserMail

log = logging.getLogger("cloudcote.lmtp")

#: The longest command line, CRLF included (RFC 5321 4.5.3.1.4 asks for at least 512).
MAX_COMMAND_LINE = 4096
#: Bytes of a BDAT chunk read from the connection at once.
READ_CHUNK = 64 * 1024
#: Longest Message-ID put into a log line.
MAX_LOGGED_MSGID = 200
HELP_TEXT = "Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS"

# RFC 5321 4.1.2 (and RFC 6531 3.3: UTF-8 in atoms, quoted strings and domains).
_UTF8 = "\u0080-\U0010ffff"
_ATOM = rf"[A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~{_UTF8}]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_UTF8}](?:[A-Za-z0-9\-{_UTF8}]*[A-Za-z0-9{_UTF8}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_ADDRESS_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = rf"(?P<local>{_DOT_STRING}|{_QUOTED})(?:@(?P<domain>{_DOMAIN}|{_ADDRESS_LITERAL}))?"
_ADL = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"
_PATH_RE = re.compile(rf"<(?:{_ADL})?(?:{_MAILBOX})?>")
_PARAM_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")
_LHLO_RE = re.compile(rf"(?:{_DOMAIN}|{_ADDRESS_LITERAL})")
_BDAT_RE = re.compile(r"([0-9]{1,18})(?: +(LAST))? *", re.I)
#: The end of DATA after a line end: ``.`` alone on a line (a bare LF accepted).
_DATA_END_RE = re.compile(rb"\n\.\r?\n")
_MSGID_RE = re.compile(rb"^message-id:[ \t]*([^\r\n]*)", re.I | re.M)
_CTL = re.compile(r"[\x00-\x1f\x7f]")


_Disconnect = Disconnect


class _Reply(Exception):
    """Answer the command with this reply (and count it as a bad command if ``bad``)."""

    def __init__(self, text: str, *, bad: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.bad = bad


@dataclass
class Address:
    """A parsed RFC 5321 path: ``text`` as it goes between angle brackets in replies and
    headers (the source route dropped), ``local`` unquoted, ``domain`` or None."""

    text: str
    local: str
    domain: str | None

    @property
    def is_null(self) -> bool:
        return not self.text


def parse_path(text: str) -> tuple[Address, str]:
    """``<path>`` at the start of ``text`` (after ``FROM:``/``TO:``), and the rest of the
    line.  Raises ``_Reply`` on bad syntax."""
    text = text.lstrip(" ")  # RFC 5321 says none; Postfix and Dovecot accept a space
    m = _PATH_RE.match(text)
    if m is None:
        raise _Reply("501 5.5.4 Invalid address syntax", bad=True)
    rest = text[m.end():]
    if rest and not rest.startswith(" "):
        raise _Reply("501 5.5.4 Invalid address syntax", bad=True)
    local, domain = m.group("local"), m.group("domain")
    if local is None:
        return Address("", "", None), rest.strip(" ")
    addr_text = local + ("@" + domain if domain is not None else "")
    if local.startswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return Address(addr_text, local, domain), rest.strip(" ")


def parse_params(text: str) -> dict[str, str | None]:
    """RFC 5321 4.1.2 ``esmtp-param`` list; keys upper-cased; ``_Reply`` if malformed or
    repeated."""
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        m = _PARAM_RE.fullmatch(word)
        if m is None:
            raise _Reply("501 5.5.4 Invalid parameter syntax", bad=True)
        key = m.group(1).upper()
        if key in params:
            raise _Reply(f"501 5.5.4 Duplicate parameter {key}", bad=True)
        params[key] = m.group(2)
    return params


def split_detail(local: str, delimiters: str) -> tuple[str, str | None]:
    """``user+detail`` -> (``user``, ``detail``): the first of the ``delimiters`` characters
    starts the detail (Dovecot's recipient_delimiter); a leading one does not count."""
    for i, ch in enumerate(local):
        if i and ch in delimiters:
            return local[:i], local[i + 1:]
    return local, None


def message_id(body: bytes) -> str:
    """The Message-ID of a message for log lines, or ``unspecified``."""
    end = body.find(b"\r\n\r\n")
    head = body if end < 0 else body[:end + 2]
    m = _MSGID_RE.search(head)
    if m is None or not m.group(1).strip():
        return "unspecified"
    text = m.group(1).strip().decode("utf-8", "replace")
    return _CTL.sub("?", text)[:MAX_LOGGED_MSGID]


@dataclass
class _Recipient:
    """One accepted RCPT: its address, the user, the mailbox its copy goes to."""

    address: Address
    user: str
    mail: UserMail
    box: Mailbox


@dataclass
class _Transaction:
    """MAIL ... up to the end of DATA or BDAT LAST (or RSET)."""

    sender: Address
    size: int | None
    body_type: str
    utf8: bool
    recipients: list[_Recipient] = field(default_factory=list)
    #: BDAT chunks so far (None: no BDAT yet) and their total size.
    chunks: list[bytes] | None = None
    chunked: int = 0


class LmtpSession(LineSession):
    protocol = "lmtp"
    max_line = MAX_COMMAND_LINE

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        super().__init__(conn, ctx)
        self.settings = ctx.lmtp
        self.idle_timeout = ctx.lmtp.idle_timeout
        store = ctx.mail.settings if ctx.mail is not None else StorageSettings()
        self.size_limit = ctx.lmtp.max_message_size or store.max_message_size
        self.lhlo_name: str | None = None
        self.txn: _Transaction | None = None
        self.done = False
        self.deliveries = 0

    # -- output ---------------------------------------------------------------------------

    def reply(self, text: str) -> None:
        """Buffer one reply line (CRLF added)."""
        self.emit(text + "\r\n")

    # -- input ----------------------------------------------------------------------------

    def _buffered(self) -> bytearray | bytes:
        # StreamReader keeps what it has received in _buffer (Connection.start_tls too);
        # looked at in place, never copied (this runs once per line of DATA).
        buffer: bytearray | bytes = getattr(self.conn.reader, "_buffer", b"")
        return buffer

    async def read_line(self) -> bytes:
        """The next command line; the buffered replies go out first unless another complete
        command is already waiting (RFC 2920: one write per pipelined batch)."""
        if not self.input_waiting():
            await self.flush()
        return await super().read_line()

    async def _read_data_line(self) -> bytes:
        """The next line of DATA with its line end, or a piece of an over-long line
        (then without one); EOFError at the end of the connection."""
        reader = self.conn.reader
        try:
            if b"\n" in self._buffered():
                return await reader.readuntil(b"\n")
            await self.flush()
            return await self.wait_or_stop(reader.readuntil(b"\n"))
        except asyncio.LimitOverrunError as exc:
            return await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed in DATA") from exc

    async def _read_exactly(self, n: int) -> bytes:
        if len(self._buffered()) < n:
            await self.flush()
        try:
            return await self.wait_or_stop(self.conn.reader.readexactly(n))
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed in BDAT") from exc

    # -- the session ----------------------------------------------------------------------

    async def run(self) -> None:
        self.reply(f"220 {self.ctx.hostname} cloudcote LMTP ready")
        try:
            while not self.done:
                try:
                    line = await self.read_line()
                except LineTooLong:
                    self._bad("500 5.5.2 Line too long")
                    continue
                await self.execute(line)
            await self.flush()
        except Shutdown:
            self.reply("421 4.3.2 Server shutting down")
            await self._final_flush()
        except IdleTimeout:
            self.reply("421 4.4.2 Disconnected for inactivity")
            await self._final_flush()
        except _Disconnect:
            await self._final_flush()
        except (EOFError, ConnectionError, OSError):
            pass
        finally:
            log.debug("%s %s: disconnected after %d deliveries", self.conn.session_id,
                      self.conn.peer, self.deliveries)

    async def _final_flush(self) -> None:
        try:
            await self.flush()
        except (_Disconnect, ConnectionError, OSError):
            pass

    def _bad(self, reply: str) -> None:
        """An invalid command: the reply, and 421 once the budget is spent."""
        self.bad_commands += 1
        self.reply(reply)
        if self.bad_commands >= self.settings.max_bad_commands:
            self.reply("421 4.7.0 Too many invalid commands, closing the connection")
            raise _Disconnect()

    async def execute(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._bad("500 5.5.2 Invalid UTF-8 in command")
            return
        verb, _, arg = text.partition(" ")
        name = verb.upper()
        known = name.isascii() and name.isalpha()
        handler = getattr(self, f"lmtp_{name}", None) if known else None
        if handler is None:
            if name in ("HELO", "EHLO"):
                self._bad("500 5.5.1 This is an LMTP server: use LHLO")
            else:
                self._bad("500 5.5.1 Unknown command")
            return
        try:
            await handler(arg)
        except _Reply as exc:
            if exc.bad:
                self._bad(exc.text)
            else:
                self.reply(exc.text)
        except (_Disconnect, Shutdown, EOFError, OSError):
            raise
        except Exception:
            # A bug: logged with its traceback.  The input may be out of step (in DATA),
            # so the session ends with a temporary error; the MTA retries.
            log.exception("%s %s: %s failed", self.conn.session_id, self.conn.peer, name)
            self.reply("421 4.3.0 Internal error occurred, closing the connection")
            raise _Disconnect() from None

    # -- commands -------------------------------------------------------------------------

    async def lmtp_LHLO(self, arg: str) -> None:
        """RFC 2033 4.1: the greeting, and the extensions offered."""
        name = arg.strip(" ")
        if not _LHLO_RE.fullmatch(name):
            raise _Reply("501 5.5.4 Invalid LHLO domain", bad=True)
        self.lhlo_name = name
        self.txn = None
        ext = ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", f"SIZE {self.size_limit}",
               "CHUNKING", "BINARYMIME", "SMTPUTF8"]
        if self.ctx.ssl_context is not None and not self.conn.tls:
            ext.append("STARTTLS")
        lines = [self.ctx.hostname, *ext]
        for i, item in enumerate(lines):
            self.reply(f"250{'-' if i < len(lines) - 1 else ' '}{item}")

    async def lmtp_STARTTLS(self, arg: str) -> None:
        """RFC 3207: 220, the handshake, and a fresh session that needs LHLO again;
        whatever the client pipelined in plaintext after STARTTLS is dropped."""
        if arg.strip(" "):
            raise _Reply("501 5.5.4 STARTTLS takes no parameters", bad=True)
        if self.ctx.ssl_context is None or self.conn.tls:
            raise _Reply("502 5.5.1 TLS is not available" if self.ctx.ssl_context is None
                         else "503 5.5.1 TLS is already active")
        self.reply("220 2.0.0 Ready to start TLS")
        await self.flush()
        dropped = await self.conn.start_tls(self.ctx.ssl_context)
        if dropped:
            log.info("%s %s: dropped %d octets sent in plaintext after STARTTLS",
                     self.conn.session_id, self.conn.peer, dropped)
        self.lhlo_name = None
        self.txn = None

    async def lmtp_MAIL(self, arg: str) -> None:
        """RFC 5321 4.1.1.2 with SIZE=, BODY= and SMTPUTF8."""
        if self.lhlo_name is None:
            raise _Reply("503 5.5.1 Send LHLO first")
        if self.txn is not None:
            raise _Reply("503 5.5.1 MAIL already given")
        if arg[:5].upper() != "FROM:":
            raise _Reply("501 5.5.4 Syntax: MAIL FROM:<address>", bad=True)
        sender, rest = parse_path(arg[5:])
        params = parse_params(rest)
        utf8 = "SMTPUTF8" in params
        if not utf8 and not sender.text.isascii():
            raise _Reply("553 5.6.7 Non-ASCII address needs SMTPUTF8")
        size: int | None = None
        body_type = "7BIT"
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    raise _Reply("501 5.5.4 Invalid SIZE parameter", bad=True)
                size = int(value)
            elif key == "BODY":
                body_type = (value or "").upper()
                if body_type not in ("7BIT", "8BITMIME", "BINARYMIME"):
                    raise _Reply("501 5.5.4 Invalid BODY parameter", bad=True)
            elif key == "SMTPUTF8":
                if value is not None:
                    raise _Reply("501 5.5.4 SMTPUTF8 takes no value", bad=True)
            else:
                raise _Reply(f"555 5.5.4 Unsupported parameter {key}")
        if size is not None and size > self.size_limit:
            raise _Reply(f"552 5.3.4 Message size exceeds the limit of {self.size_limit} "
                         "bytes")
        self.txn = _Transaction(sender=sender, size=size, body_type=body_type, utf8=utf8)
        self.reply("250 2.1.0 OK")

    async def lmtp_RCPT(self, arg: str) -> None:
        """RFC 2033 4.2 / RFC 5321 4.1.1.3: the user is looked up and the mail opened now,
        so unknown users and spent quotas are refused before the data is sent."""
        txn = self.txn
        if txn is None:
            raise _Reply("503 5.5.1 MAIL needed first")
        if arg[:3].upper() != "TO:":
            raise _Reply("501 5.5.4 Syntax: RCPT TO:<address>", bad=True)
        addr, rest = parse_path(arg[3:])
        if addr.is_null:
            raise _Reply("501 5.1.3 Invalid recipient address", bad=True)
        if not txn.utf8 and not addr.text.isascii():
            raise _Reply("553 5.6.7 Non-ASCII address needs SMTPUTF8 in MAIL")
        if rest:
            params = parse_params(rest)
            raise _Reply(f"555 5.5.4 Unsupported parameter {next(iter(params))}")
        if len(txn.recipients) >= self.settings.max_recipients:
            raise _Reply("452 4.5.3 Too many recipients")
        local, detail = split_detail(addr.local, self.settings.recipient_delimiter)
        user = local + ("@" + addr.domain if addr.domain is not None else "")
        try:
            entry = await self.ctx.passdb.user_lookup(user)
        except Exception as exc:  # noqa: BLE001 - any failure of the passdb is temporary
            log.error("%s %s: user lookup of %s failed: %s", self.conn.session_id,
                      self.conn.peer, user, exc)
            raise _Reply(f"451 4.3.0 <{addr.text}> Temporary user lookup failure") from None
        if entry is None:
            log.info("%s %s: rcpt <%s>: user %s doesn't exist", self.conn.session_id,
                     self.conn.peer, addr.text, user)
            raise _Reply(f"550 5.1.1 <{addr.text}> User doesn't exist: {addr.text}")
        name = getattr(entry, "user", None) or user
        try:
            mail = await self.ctx.user_mail(entry)
            box = await self._target_box(mail, detail)
            full = await self._quota_full(mail, txn.size)
        except Exception as exc:  # noqa: BLE001 - storage failures are temporary here
            log.error("%s %s: user %s: opening the mail failed: %s", self.conn.session_id,
                      self.conn.peer, name, exc)
            raise _Reply(f"451 4.3.0 <{addr.text}> Temporary internal error") from None
        if full:
            log.info("%s %s: user %s: rcpt refused: %s", self.conn.session_id,
                     self.conn.peer, name, full)
            raise _Reply(f"552 5.2.2 <{addr.text}> Quota exceeded (mailbox for user is full)")
        txn.recipients.append(_Recipient(addr, name, mail, box))
        self.reply(f"250 2.1.5 <{addr.text}> OK")

    async def _target_box(self, mail: UserMail, detail: str | None) -> Mailbox:
        """INBOX, or the detail's mailbox when save_to_detail_mailbox and it exists."""
        if detail and self.settings.save_to_detail_mailbox:
            try:
                return await mail.mailbox(detail)
            except (MailboxNotFound, InvalidMailboxName):
                pass
        return await mail.mailbox("INBOX")

    async def _quota_full(self, mail: UserMail, size: int | None) -> str | None:
        """Why the user cannot take a message of ``size`` (if known) now, or None."""
        limits = mail.quota_limits
        if not limits.bytes and not limits.messages:
            return None
        usage = await mail.quota_usage()
        if limits.bytes and usage.bytes >= limits.bytes:
            return f"storage {usage.bytes} of {limits.bytes} bytes used"
        if limits.messages and usage.messages >= limits.messages:
            return f"{usage.messages} of {limits.messages} messages"
        if limits.bytes and size is not None and usage.bytes + size > limits.bytes:
            return f"storage {usage.bytes} + {size} > {limits.bytes} bytes"
        return None

    async def lmtp_RSET(self, arg: str) -> None:
        if arg.strip(" "):
            raise _Reply("501 5.5.4 RSET takes no parameters", bad=True)
        self.txn = None
        self.reply("250 2.0.0 OK")

    async def lmtp_NOOP(self, arg: str) -> None:
        self.reply("250 2.0.0 OK")

    async def lmtp_QUIT(self, arg: str) -> None:
        self.done = True
        self.reply(f"221 2.0.0 {self.ctx.hostname} closing connection")

    async def lmtp_VRFY(self, arg: str) -> None:
        self.reply("252 2.3.3 Try RCPT instead")

    async def lmtp_HELP(self, arg: str) -> None:
        self.reply(f"214 2.0.0 {HELP_TEXT}")

    async def lmtp_DATA(self, arg: str) -> None:
        """RFC 5321 4.1.1.4 with RFC 2033 4.2's reply per recipient.  The data is read to
        its end even when it is refused, so the session stays in step."""
        if arg.strip(" "):
            raise _Reply("501 5.5.4 DATA takes no parameters", bad=True)
        txn = self.txn
        if txn is None:
            raise _Reply("503 5.5.1 MAIL needed first")
        if txn.chunks is not None:
            raise _Reply("503 5.5.1 DATA after BDAT is not allowed")
        if txn.body_type == "BINARYMIME":
            raise _Reply("503 5.5.1 BODY=BINARYMIME needs BDAT")
        if not txn.recipients:
            raise _Reply("503 5.5.1 No valid recipients")
        self.reply("354 2.0.0 Start mail input; end with <CRLF>.<CRLF>")
        body, size = await self._read_data()
        if body is None:
            self._refuse_all(txn, "552 5.3.4", f"Message size exceeds the limit of "
                                               f"{self.size_limit} bytes", size)
            return
        await self._deliver(txn, body)

    async def _read_data(self) -> tuple[bytes | None, int]:
        """The dot-stuffed data up to ``.`` alone on a line (RFC 5321 4.5.2; a bare LF
        ends lines too), unstuffed; None past the size limit (read and dropped, never
        held in memory beyond what one read of the input adds to the limit), and the
        octet count.

        The complete lines already received are taken as one block (unstuffed with one
        ``replace``); only when none is there does it wait for the next line."""
        reader = self.conn.reader
        parts: list[bytes] = []
        size = 0
        too_big = False
        at_start = True
        while True:
            buf = self._buffered()
            last_nl = buf.rfind(b"\n")
            ended = False
            if last_nl >= 0:
                if at_start and (buf[:3] == b".\r\n" or buf[:2] == b".\n"):
                    await reader.readexactly(2 if buf[1:2] == b"\n" else 3)
                    break
                term = _DATA_END_RE.search(buf, 0, last_nl + 1)
                keep, take = (term.start() + 1, term.end()) if term else (last_nl + 1,) * 2
                block = await reader.readexactly(take)
                piece = block[:keep]
                if at_start and piece[:1] == b".":
                    piece = piece[1:]
                piece = piece.replace(b"\n.", b"\n")
                at_start = True
                ended = term is not None
            else:
                piece = await self._read_data_line()
                if at_start and piece[:1] == b".":
                    if piece in (b".\r\n", b".\n"):
                        break
                    piece = piece[1:]
                at_start = piece[-1:] == b"\n"
            size += len(piece)
            if not too_big:
                if size > self.size_limit:
                    too_big = True
                    parts.clear()
                else:
                    parts.append(piece)
            if ended:
                break
        return (None if too_big else b"".join(parts)), size

    async def lmtp_BDAT(self, arg: str) -> None:
        """RFC 3030 2: a chunk of ``n`` octets follows the command.  The octets are always
        read (and dropped if the chunk is refused), so the session stays in step."""
        m = _BDAT_RE.fullmatch(arg)
        if m is None:
            # The chunk's length is unknown: the rest of the stream cannot be parsed.
            self.reply("501 5.5.4 Syntax: BDAT <size> [LAST]")
            raise _Disconnect()
        n, last = int(m.group(1)), m.group(2) is not None
        txn = self.txn
        refusal = None
        if txn is None:
            refusal = "503 5.5.1 MAIL needed first"
        elif not txn.recipients:
            refusal = "503 5.5.1 No valid recipients"
        fits = txn is not None and txn.chunked + n <= self.size_limit
        data = await self._read_chunk(n, keep=refusal is None and fits)
        if refusal is not None:
            self.reply(refusal)
            return
        assert txn is not None
        chunks = txn.chunks if txn.chunks is not None else []
        txn.chunks = chunks
        txn.chunked += n
        if not fits:
            # The transaction ends here: later chunks of it get 503 (and are dropped).
            too_big = f"Message size exceeds the limit of {self.size_limit} bytes"
            if last:
                self._refuse_all(txn, "552 5.3.4", too_big, txn.chunked)
            else:
                log.info("%s %s: message of %d+ octets refused: %s", self.conn.session_id,
                         self.conn.peer, txn.chunked, too_big)
                self.txn = None
                self.reply(f"552 5.3.4 {too_big}")
            return
        chunks.append(data)
        if not last:
            self.reply(f"250 2.0.0 {n} octets received")
            return
        body = b"".join(chunks)
        chunks.clear()
        if body and not body.endswith(b"\n"):
            body += b"\r\n"  # a message ends with a line end (RFC 5322 2.1)
        await self._deliver(txn, body)

    async def _read_chunk(self, n: int, keep: bool) -> bytes:
        parts: list[bytes] = []
        left = n
        while left:
            piece = await self._read_exactly(min(left, READ_CHUNK))
            left -= len(piece)
            if keep:
                parts.append(piece)
        return b"".join(parts)

    # -- delivery -------------------------------------------------------------------------

    def _refuse_all(self, txn: _Transaction, code: str, text: str, size: int) -> None:
        """The same refusal for every recipient (RFC 2033 4.2: one reply each)."""
        log.info("%s %s: message of %d octets refused: %s", self.conn.session_id,
                 self.conn.peer, size, text)
        for rcpt in txn.recipients:
            self.reply(f"{code} <{rcpt.address.text}> {text}")
        self.txn = None

    def trace_headers(self, txn: _Transaction, txn_id: str) -> bytes:
        """What Dovecot's LMTP prepends: Return-Path, and with a single recipient
        Delivered-To and ``for <rcpt>`` in Received; with several recipients neither (the
        copy must not reveal the other, maybe Bcc, recipients), so every recipient's copy
        is the same bytes and mdbox stores it once."""
        lines = [f"Return-Path: <{txn.sender.text}>"]
        single = txn.recipients[0].address.text if len(txn.recipients) == 1 else None
        if single is not None:
            lines.append(f"Delivered-To: {single}")
        if self.settings.add_received_header:
            ip = self.conn.peer.rpartition(":")[0]
            source = f"{self.lhlo_name} ([{ip}])" if ip else f"{self.lhlo_name}"
            when = email.utils.format_datetime(email.utils.localtime())
            lines.append(f"Received: from {source}\r\n\tby {self.ctx.hostname} with LMTP "
                         f"id {txn_id}\r\n\t(envelope-from <{txn.sender.text}>)")
            if single is not None:
                lines.append(f"\tfor <{single}>; {when}")
            else:
                lines[-1] += f"; {when}"
        return "".join(line + "\r\n" for line in lines).encode("utf-8")

    async def _deliver(self, txn: _Transaction, body: bytes) -> None:
        """Store once for every recipient, then one reply per recipient in RCPT order; each
        250 only for a copy ``deliver_to`` reported durable."""
        self.txn = None
        txn_id = secrets.token_urlsafe(12)
        raw = self.trace_headers(txn, txn_id) + body
        msgid = message_id(body)
        # One copy per distinct mailbox: a recipient named twice gets the mail once.
        boxes: list[Mailbox] = []
        index: dict[int, int] = {}
        for rcpt in txn.recipients:
            if id(rcpt.box) not in index:
                index[id(rcpt.box)] = len(boxes)
                boxes.append(rcpt.box)
        try:
            results = await deliver_to(raw, boxes)
        except Exception as exc:  # noqa: BLE001 - nothing was promised; the MTA retries
            log.error("%s %s: msgid=%s: delivery failed: %s", self.conn.session_id,
                      self.conn.peer, msgid, exc)
            results = [exc] * len(boxes)
        self.deliveries += 1
        for rcpt in txn.recipients:
            result = results[index[id(rcpt.box)]]
            self.reply(self._result_reply(rcpt, result, msgid, txn_id))

    def _result_reply(self, rcpt: _Recipient, result: int | Exception, msgid: str,
                      txn_id: str) -> str:
        addr = rcpt.address.text
        where = (self.conn.session_id, txn_id, rcpt.user, msgid, rcpt.box.name)
        if isinstance(result, int) and not isinstance(result, bool) and result > 0:
            log.info("%s %s %s: msgid=%s: saved mail to %s (uid %d)", *where, result)
            return f"250 2.0.0 <{addr}> {txn_id} Saved as UID {result}"
        if isinstance(result, QuotaExceeded):
            log.info("%s %s %s: msgid=%s: save to %s refused: %s", *where, result)
            return f"552 5.2.2 <{addr}> Quota exceeded (mailbox for user is full)"
        if isinstance(result, MessageTooLarge):
            log.info("%s %s %s: msgid=%s: save to %s refused: %s", *where, result)
            return f"552 5.3.4 <{addr}> Message too large"
        kind = "storage error" if isinstance(result, MailError) else "internal error"
        log.error("%s %s %s: msgid=%s: save to %s failed (%s): %s", *where, kind, result)
        return f"451 4.3.0 <{addr}> Temporary internal error, try again later"


async def lmtp_session(conn: Connection, ctx: ServerContext) -> None:
    await LmtpSession(conn, ctx).run()
