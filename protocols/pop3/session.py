"""POP3 session (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 SASL): the
AUTHORIZATION state.  The TRANSACTION state's maildrop commands come with the mail
storage layer; until then a successful login is answered with [SYS/TEMP]."""

from __future__ import annotations

from ..listener import Connection
from ..session import LineSession, LineTooLong, ServerContext, Shutdown, decode_sasl_plain


class Pop3Session(LineSession):
    protocol = "pop3"

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        super().__init__(conn, ctx)
        self.pending_user: str | None = None
        self.done = False

    async def run(self) -> None:
        await self.send("+OK cloudcote POP3 ready.\r\n")
        while not self.done:
            try:
                line = await self.read_line()
            except Shutdown:
                await self.send("-ERR [SYS/TEMP] Server shutting down.\r\n")
                return
            except LineTooLong:
                await self.send("-ERR Line too long.\r\n")
                self.bad_commands += 1
                if self.bad_commands >= 20:
                    return
                continue
            except EOFError:
                return
            verb, _, arg = line.decode("utf-8", "replace").partition(" ")
            handler = getattr(self, f"pop3_{verb.upper()}", None) if verb.isalpha() else None
            if handler is None:
                self.bad_commands += 1
                await self.send("-ERR Unknown command.\r\n")
                if self.bad_commands >= 20:
                    await self.send("-ERR Too many bad commands.\r\n")
                    return
                continue
            await handler(arg)

    async def pop3_CAPA(self, arg: str) -> None:
        caps = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
        if self.plaintext_allowed:
            caps += ["USER", "SASL PLAIN"]
        if self.ctx.ssl_context is not None and not self.conn.tls:
            caps.append("STLS")
        await self.send("+OK\r\n" + "".join(c + "\r\n" for c in caps) + ".\r\n")

    async def pop3_NOOP(self, arg: str) -> None:
        await self.send("+OK\r\n")

    async def pop3_QUIT(self, arg: str) -> None:
        self.done = True
        await self.send("+OK Logging out.\r\n")

    async def pop3_STLS(self, arg: str) -> None:
        if self.ctx.ssl_context is None or self.conn.tls:
            await self.send("-ERR STLS not available.\r\n")
            return
        await self.send("+OK Begin TLS negotiation.\r\n")
        await self.conn.start_tls(self.ctx.ssl_context)

    async def pop3_USER(self, arg: str) -> None:
        if not self.plaintext_allowed:
            await self.send("-ERR [AUTH] Plaintext authentication disallowed without TLS.\r\n")
            return
        if not arg:
            await self.send("-ERR USER needs a name.\r\n")
            return
        self.pending_user = arg
        await self.send("+OK\r\n")

    async def pop3_PASS(self, arg: str) -> None:
        if self.pending_user is None:
            await self.send("-ERR Give USER first.\r\n")
            return
        user, self.pending_user = self.pending_user, None
        await self._login(user, arg)

    async def pop3_AUTH(self, arg: str) -> None:
        words = arg.split()
        if not words:
            await self.send("+OK\r\nPLAIN\r\n.\r\n")
            return
        if words[0].upper() != "PLAIN":
            await self.send("-ERR Unsupported mechanism.\r\n")
            return
        if not self.plaintext_allowed:
            await self.send("-ERR [AUTH] Plaintext authentication disallowed without TLS.\r\n")
            return
        initial = words[1] if len(words) > 1 else None
        if initial is None:
            await self.send("+ \r\n")
            initial = (await self.read_line()).decode("ascii", "replace")
        creds = decode_sasl_plain("" if initial == "=" else initial)
        if creds is None or (creds[0] and creds[0] != creds[1]):
            await self.send("-ERR [AUTH] Invalid credentials.\r\n")
            return
        await self._login(creds[1], creds[2])

    async def _login(self, user: str, password: str) -> None:
        ok = await self.check_password(user, password)
        if ok is None:
            await self.send("-ERR [SYS/TEMP] Temporary authentication failure.\r\n")
            return
        if not ok:
            await self.send("-ERR [AUTH] Authentication failed.\r\n")
            return
        self.done = True
        await self.send("-ERR [SYS/TEMP] Mailbox storage is not available on this server "
                         "version.\r\n")


async def pop3_session(conn: Connection, ctx: ServerContext) -> None:
    await Pop3Session(conn, ctx).run()
