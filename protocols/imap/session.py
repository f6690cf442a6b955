"""IMAP4rev1 session (RFC 3501): greeting, capabilities, TLS and authentication.

This module holds the not-authenticated state (RFC 3501 6.1-6.2) in full; the mailbox
commands of the authenticated and selected states come with the mail storage layer.
"""

from __future__ import annotations

import re

from ..listener import Connection
from ..session import LineSession, LineTooLong, ServerContext, Shutdown, decode_sasl_plain

#: Literal sizes allowed before login (a LOGIN password needs little).
MAX_AUTH_LITERAL = 64 * 1024
_LITERAL = re.compile(rb"\{(\d{1,10})(\+?)\}$")
_TAG = re.compile(rb"^[\x21-\x7e]+$")


class ImapSyntaxError(Exception):
    pass


def parse_strings(data: bytes) -> list[str]:
    """Atoms and quoted strings (RFC 3501 4.1-4.3); literals were inlined by the reader
    as quoted text already."""
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        if data[i] == 0x20:
            i += 1
            continue
        if data[i] == 0x22:
            i += 1
            buf = bytearray()
            while True:
                if i >= n:
                    raise ImapSyntaxError("unterminated quoted string")
                c = data[i]
                if c == 0x5C and i + 1 < n and data[i + 1] in (0x22, 0x5C):
                    buf.append(data[i + 1])
                    i += 2
                elif c == 0x22:
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
            out.append(buf.decode("utf-8", "replace"))
        else:
            j = data.find(b" ", i)
            j = n if j < 0 else j
            atom = data[i:j]
            if any(ch in b'(){%*"\\]' or ch < 0x21 for ch in atom):
                raise ImapSyntaxError(f"invalid atom {atom[:40]!r}")
            out.append(atom.decode("ascii", "replace"))
            i = j
    return out


def _quote(raw: bytes) -> bytes:
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class ImapSession(LineSession):
    protocol = "imap"

    def __init__(self, conn: Connection, ctx: ServerContext) -> None:
        super().__init__(conn, ctx)
        self.state = "not-authenticated"

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE"]
        if self.ctx.ssl_context is not None and not self.conn.tls:
            caps.append("STARTTLS")
        if self.state == "not-authenticated":
            if self.plaintext_allowed:
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps.append("LOGINDISABLED")
        return " ".join(caps)

    async def run(self) -> None:
        await self.send(f"* OK [CAPABILITY {self.capabilities()}] {self.ctx.hostname} ready.\r\n")
        while self.state != "logout":
            try:
                line = await self.read_command()
            except Shutdown:
                await self.send("* BYE Server shutting down.\r\n")
                return
            except LineTooLong:
                await self.send("* BAD Command line too long.\r\n")
                if await self._too_many_bad():
                    return
                continue
            except EOFError:
                return
            if line is None:
                continue
            await self.dispatch(line)

    async def _too_many_bad(self) -> bool:
        self.bad_commands += 1
        if self.bad_commands >= 20:
            await self.send("* BYE Too many invalid commands.\r\n")
            return True
        return False

    async def read_command(self) -> bytes | None:
        """One command with its literals inlined as quoted strings (RFC 3501 4.3, 7.5)."""
        line = await self.read_line()
        parts = []
        while (m := _LITERAL.search(line)) is not None:
            size = int(m.group(1))
            if size > MAX_AUTH_LITERAL:
                tag = line.split(b" ", 1)[0]
                if not m.group(2):
                    await self.send(tag.decode("ascii", "replace") +
                                    " NO [TOOBIG] Literal too large.\r\n")
                    return None
                # A non-synchronizing literal arrives anyway: skip it, then refuse.
                await self.read_exactly(size)
                await self.read_line()
                await self.send(tag.decode("ascii", "replace") +
                                " NO [TOOBIG] Literal too large.\r\n")
                return None
            if not m.group(2):
                await self.send("+ Ready for literal data\r\n")
            raw = await self.read_exactly(size)
            parts.append(line[:m.start()] + _quote(raw))
            line = await self.read_line()
        parts.append(line)
        return b"".join(parts)

    async def dispatch(self, line: bytes) -> None:
        tag, _, rest = line.partition(b" ")
        if not tag or not _TAG.match(tag) or tag == b"*" or tag == b"+":
            await self.send("* BAD Missing or invalid tag.\r\n")
            await self._too_many_bad()
            return
        tag_s = tag.decode("ascii")
        verb, _, args = rest.partition(b" ")
        name = verb.decode("ascii", "replace").upper()
        handler = getattr(self, f"do_{name.lower()}", None) if name.isalpha() else None
        if handler is None:
            await self.send(f"{tag_s} BAD Unknown command or not valid in this state.\r\n")
            await self._too_many_bad()
            return
        try:
            await handler(tag_s, args)
        except ImapSyntaxError as exc:
            await self.send(f"{tag_s} BAD Invalid arguments: {exc}.\r\n")
            await self._too_many_bad()

    # -- any state (RFC 3501 6.1) ---------------------------------------------------------

    async def do_capability(self, tag: str, args: bytes) -> None:
        await self.send(f"* CAPABILITY {self.capabilities()}\r\n{tag} OK Capability completed.\r\n")

    async def do_noop(self, tag: str, args: bytes) -> None:
        await self.send(f"{tag} OK NOOP completed.\r\n")

    async def do_logout(self, tag: str, args: bytes) -> None:
        self.state = "logout"
        await self.send(f"* BYE Logging out.\r\n{tag} OK Logout completed.\r\n")

    async def do_id(self, tag: str, args: bytes) -> None:
        """RFC 2971."""
        await self.send(f'* ID ("name" "cloudcote")\r\n{tag} OK ID completed.\r\n')

    # -- not authenticated state (RFC 3501 6.2) -------------------------------------------

    async def do_starttls(self, tag: str, args: bytes) -> None:
        if self.ctx.ssl_context is None or self.conn.tls:
            await self.send(f"{tag} BAD STARTTLS not available.\r\n")
            return
        if self.state != "not-authenticated":
            await self.send(f"{tag} BAD STARTTLS only before authentication.\r\n")
            return
        await self.send(f"{tag} OK Begin TLS negotiation now.\r\n")
        await self.conn.start_tls(self.ctx.ssl_context)

    async def do_login(self, tag: str, args: bytes) -> None:
        if self.state != "not-authenticated":
            await self.send(f"{tag} BAD Already authenticated.\r\n")
            return
        strings = parse_strings(args)
        if len(strings) != 2:
            raise ImapSyntaxError("LOGIN needs a user name and a password")
        if not self.plaintext_allowed:
            await self.send(f"{tag} NO [PRIVACYREQUIRED] Plaintext authentication "
                            "disallowed on non-secure connections.\r\n")
            return
        await self._finish_auth(tag, strings[0], strings[1])

    async def do_authenticate(self, tag: str, args: bytes) -> None:
        """RFC 3501 6.2.2 with SASL-IR (RFC 4959): PLAIN (RFC 4616) and LOGIN."""
        if self.state != "not-authenticated":
            await self.send(f"{tag} BAD Already authenticated.\r\n")
            return
        words = args.split()
        if not words:
            raise ImapSyntaxError("AUTHENTICATE needs a mechanism")
        mech = words[0].decode("ascii", "replace").upper()
        if mech not in ("PLAIN", "LOGIN"):
            await self.send(f"{tag} NO Unsupported authentication mechanism.\r\n")
            return
        if not self.plaintext_allowed:
            await self.send(f"{tag} NO [PRIVACYREQUIRED] Plaintext authentication "
                            "disallowed on non-secure connections.\r\n")
            return
        if mech == "PLAIN":
            initial = words[1].decode("ascii", "replace") if len(words) > 1 else None
            if initial is None:
                await self.send("+ \r\n")
                initial = (await self.read_line()).decode("ascii", "replace")
            if initial == "*":
                await self.send(f"{tag} BAD Authentication aborted.\r\n")
                return
            creds = decode_sasl_plain("" if initial == "=" else initial)
            if creds is None or (creds[0] and creds[0] != creds[1]):
                await self.send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials.\r\n")
                return
            await self._finish_auth(tag, creds[1], creds[2])
            return
        from ..session import base64  # LOGIN: two base64 prompts
        await self.send("+ VXNlcm5hbWU6\r\n")
        user_line = await self.read_line()
        await self.send("+ UGFzc3dvcmQ6\r\n")
        pass_line = await self.read_line()
        try:
            user = base64.b64decode(user_line, validate=True).decode("utf-8")
            password = base64.b64decode(pass_line, validate=True).decode("utf-8")
        except Exception:
            await self.send(f"{tag} BAD Invalid base64.\r\n")
            return
        await self._finish_auth(tag, user, password)

    async def _finish_auth(self, tag: str, user: str, password: str) -> None:
        ok = await self.check_password(user, password)
        if ok:
            self.state = "authenticated"
            await self.send(f"{tag} OK [CAPABILITY {self.capabilities()}] Logged in.\r\n")
        elif ok is None:
            await self.send(f"{tag} NO [UNAVAILABLE] Temporary authentication failure.\r\n")
        else:
            await self.send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")


async def imap_session(conn: Connection, ctx: ServerContext) -> None:
    await ImapSession(conn, ctx).run()
