"""LMTP session: RFC 2033 LMTP on the RFC 5321 grammar, with RFC 2920 PIPELINING,
RFC 2034 ENHANCEDSTATUSCODES, RFC 6152 8BITMIME, RFC 1870 SIZE, RFC 3030 CHUNKING (BDAT,
BINARYMIME), RFC 6531 SMTPUTF8 and RFC 3207 STARTTLS.

The session parses the commands (``lmtp_MAIL``, ``lmtp_RCPT``, ``lmtp_DATA`` ...) and
keeps the transaction; who a recipient is, the quota and the storing of the message are
the delivery policy of delivery.py (``DeliveryHandler.handle_RCPT``/``handle_DATA``).

Replies are buffered and go out when no further complete command is waiting in the input
and always before a read would block, so a pipelined envelope is answered in one write.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

from ..listener import Connection
from ..session import Disconnect, LineSession, ServerContext
from .delivery import DeliveryHandler, Recipient
from .settings import LmtpSettings

log = logging.getLogger("cloudcote.lmtp")

#: The longest command line, CRLF included (RFC 5321 4.5.3.1.4 asks for at least 512).
MAX_COMMAND_LINE = 4096
#: Bytes of a BDAT chunk read from the connection at once.
READ_CHUNK = 64 * 1024
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


@dataclass
class Transaction:
    """MAIL ... up to the end of DATA or BDAT LAST (or RSET)."""

    sender: Address
    size: int | None
    body_type: str
    utf8: bool
    recipients: list[Recipient] = field(default_factory=list)
    #: BDAT chunks so far (None: no BDAT yet) and their total size.
    chunks: list[bytes] | None = None
    chunked: int = 0


class LmtpSession(LineSession):
    protocol = "lmtp"
    max_line = MAX_COMMAND_LINE
    line_too_long = "500 5.5.2 Line too long"
    #: A bug may leave the input out of step (in DATA): the session ends, the MTA retries.
    internal_error_ends_session = True
    log = log

    def __init__(self, conn: Connection, ctx: ServerContext,
                 handler: DeliveryHandler | None = None) -> None:
        super().__init__(conn, ctx)
        self.settings: LmtpSettings = ctx.lmtp or LmtpSettings()
        self.idle_timeout = self.settings.idle_timeout
        self.max_bad_commands = self.settings.max_bad_commands
        self.handler = handler or DeliveryHandler(ctx, self.settings)
        self.size_limit = self.handler.size_limit
        self.lhlo_name: str | None = None
        self.txn: Transaction | None = None
        self.deliveries = 0

    # -- output ---------------------------------------------------------------------------

    def reply(self, text: str) -> None:
        """Buffer one reply line (CRLF added)."""
        self.emit(text + "\r\n")

    # -- input ----------------------------------------------------------------------------

    async def _read_data_line(self) -> bytes:
        """The next line of DATA with its line end, or a piece of an over-long line
        (then without one); EOFError at the end of the connection."""
        reader = self.conn.reader
        try:
            if b"\n" in self.conn.buffered():
                return await reader.readuntil(b"\n")
            await self.flush()
            return await self.wait_or_stop(reader.readuntil(b"\n"))
        except asyncio.LimitOverrunError as exc:
            return await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed in DATA") from exc

    async def _read_exactly(self, n: int) -> bytes:
        if len(self.conn.buffered()) < n:
            await self.flush()
        try:
            return await self.wait_or_stop(self.conn.reader.readexactly(n))
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed in BDAT") from exc

    # -- the session (LineSession.run is the loop) ----------------------------------------

    def greeting(self) -> str:
        return f"220 {self.ctx.hostname} cloudcote LMTP ready\r\n"

    def bad_command_reply(self, text: str, last: bool) -> str:
        if last:
            return f"{text}\r\n421 4.7.0 Too many invalid commands, closing the connection\r\n"
        return f"{text}\r\n"

    def internal_error_reply(self, exc: Exception) -> str:
        return "421 4.3.0 Internal error occurred, closing the connection\r\n"

    def timeout_reply(self) -> str:
        return "421 4.4.2 Disconnected for inactivity\r\n"

    def shutdown_reply(self) -> str:
        return "421 4.3.2 Server shutting down\r\n"

    async def finish(self) -> None:
        log.debug("%s %s: disconnected after %d deliveries", self.conn.session_id,
                  self.conn.peer, self.deliveries)

    async def dispatch(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.bad_command("500 5.5.2 Invalid UTF-8 in command")
            return
        verb, _, arg = text.partition(" ")
        name = verb.upper()
        known = name.isascii() and name.isalpha()
        handler = getattr(self, f"lmtp_{name}", None) if known else None
        if handler is None:
            if name in ("HELO", "EHLO"):
                self.bad_command("500 5.5.1 This is an LMTP server: use LHLO")
            else:
                self.bad_command("500 5.5.1 Unknown command")
            return
        self.command = name
        try:
            await handler(arg)
        except _Reply as exc:
            if exc.bad:
                self.bad_command(exc.text)
            else:
                self.reply(exc.text)

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
        self.txn = Transaction(sender=sender, size=size, body_type=body_type, utf8=utf8)
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
        self.reply(await self.handler.handle_RCPT(self, txn, addr))

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
            buf = self.conn.buffered()
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
            raise Disconnect()
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

    def _refuse_all(self, txn: Transaction, code: str, text: str, size: int) -> None:
        """The same refusal for every recipient (RFC 2033 4.2: one reply each)."""
        log.info("%s %s: message of %d octets refused: %s", self.conn.session_id,
                 self.conn.peer, size, text)
        for rcpt in txn.recipients:
            self.reply(f"{code} <{rcpt.address.text}> {text}")
        self.txn = None

    async def _deliver(self, txn: Transaction, body: bytes) -> None:
        """The end of the data: the handler stores it, each recipient gets its reply."""
        self.txn = None
        for reply in await self.handler.handle_DATA(self, txn, body):
            self.reply(reply)
        self.deliveries += 1


async def lmtp_session(conn: Connection, ctx: ServerContext) -> None:
    await LmtpSession(conn, ctx).run()
