"""LMTP session (RFC 2033): greeting, LHLO, and the envelope commands.

Delivery into mailboxes comes with the mail storage layer; until then a transaction is
refused with a temporary 451 so that the MTA keeps the mail queued and nothing is lost.
"""

from __future__ import annotations

from ..listener import Connection
from ..session import LineSession, LineTooLong, ServerContext, Shutdown


class LmtpSession(LineSession):
    protocol = "lmtp"

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        super().__init__(conn, ctx)
        self.done = False
        self.greeted = False

    async def run(self) -> None:
        await self.send(f"220 {self.ctx.hostname} cloudcote LMTP ready\r\n")
        while not self.done:
            try:
                line = await self.read_line()
            except Shutdown:
                await self.send("421 4.3.2 Server shutting down\r\n")
                return
            except LineTooLong:
                await self.send("500 5.5.2 Line too long\r\n")
                continue
            except EOFError:
                return
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].decode("ascii", "replace").upper()
            handler = getattr(self, f"lmtp_{verb}", None) if verb.isalpha() else None
            if handler is None:
                self.bad_commands += 1
                await self.send("500 5.5.1 Unknown command\r\n")
                if self.bad_commands >= 20:
                    await self.send("421 4.7.0 Too many errors\r\n")
                    return
                continue
            await handler(line)

    async def lmtp_LHLO(self, line: bytes) -> None:
        self.greeted = True
        await self.send(f"250-{self.ctx.hostname}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES"
                        "\r\n250 8BITMIME\r\n")

    async def lmtp_NOOP(self, line: bytes) -> None:
        await self.send("250 2.0.0 OK\r\n")

    async def lmtp_RSET(self, line: bytes) -> None:
        await self.send("250 2.0.0 OK\r\n")

    async def lmtp_QUIT(self, line: bytes) -> None:
        self.done = True
        await self.send("221 2.0.0 Bye\r\n")

    async def lmtp_MAIL(self, line: bytes) -> None:
        if not self.greeted:
            await self.send("503 5.5.1 Send LHLO first\r\n")
            return
        await self.send("451 4.3.2 Mail delivery is not available on this server version\r\n")

    async def lmtp_RCPT(self, line: bytes) -> None:
        await self.send("503 5.5.1 Need MAIL first\r\n")

    async def lmtp_DATA(self, line: bytes) -> None:
        await self.send("503 5.5.1 Need RCPT first\r\n")


async def lmtp_session(conn: Connection, ctx: ServerContext) -> None:
    await LmtpSession(conn, ctx).run()
