"""The IMAP wire reader: a command's lines and literals, within the session's limits.

Lines are bounded (``max_line``); an over-long one is read to its end and refused with
BAD, a literal over its limit with NO [TOOBIG], and after a refused non-synchronizing
literal the rest of its command is skipped, not taken for commands (RFC 7888 4).
Every read waits at most the idle timeout.  The session loop (``LineSession.run``)
answers what ends a session: the server stopping, the idle timeout, too many bad commands.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..session import Disconnect, IdleTimeout, LineSession
from .parser import ImapParseError, literal_marker, strip_marker, tag_of
from .responses import CTL

if TYPE_CHECKING:
    from .limits import ImapLimits

#: Literals one command may carry.
MAX_LITERALS = 1000
#: Bytes of output collected before they are written out.
FLUSH_AT = 64 * 1024
#: Octets of a literal read at once (each within the idle timeout).
LITERAL_CHUNK = 1024 * 1024


class LineTooLong(ImapParseError):
    """A line longer than ``max_line``, read and dropped up to its end."""

    def __init__(self, tag: str | None, tail: bytes) -> None:
        super().__init__("command line too long")
        self.tag = tag
        #: Its last octets without CRLF: where a literal marker would be.
        self.tail = tail


class ImapWire(LineSession):
    """The reading half of an IMAP session, and its BAD and BYE for what it refuses and
    for what ends the session."""

    limits: ImapLimits
    #: Octets read from the client.
    bytes_in: int
    #: A command's first line has been read (no unsolicited responses until it ends).
    command_started: bool

    async def maybe_flush(self) -> None:
        if self.out_size >= FLUSH_AT:
            await self.flush()

    async def bad(self, tag: str | None, text: str) -> None:
        """Tagged (or untagged) BAD, counted against the bad-command budget: the last one
        the budget allows ends the session (Disconnect) after a BYE."""
        # The bad-command text is the whole BAD line: only the caller knows the tag.
        self.bad_command(f"{tag or '*'} BAD {CTL.sub(' ', text[:200])}.\r\n")
        await self.flush()

    def bad_command_reply(self, text: str, last: bool) -> str:
        return text + ("* BYE Too many invalid commands.\r\n" if last else "")

    def timeout_reply(self) -> str:
        return "* BYE Disconnected for inactivity.\r\n"

    def shutdown_reply(self) -> str:
        return "* BYE Server shutting down.\r\n"

    async def read_raw_line(self) -> bytes:
        """One line with CRLF, at most ``max_line`` bytes; waits at most the idle timeout."""
        reader = self.conn.reader
        buf = bytearray()
        while True:
            try:
                chunk = await reader.readuntil(b"\n")
                buf += chunk
                break
            except asyncio.LimitOverrunError as exc:
                buf += await reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError as exc:
                raise EOFError("connection closed") from exc
            if len(buf) > self.limits.max_line:
                self.bytes_in += len(buf)
                tail = await self._skip_line(bytes(buf[-40:]))
                raise LineTooLong(tag_of(bytes(buf[:200])), tail)
        self.bytes_in += len(buf)
        if len(buf) > self.limits.max_line:
            raise LineTooLong(tag_of(bytes(buf[:200])), bytes(buf[-42:]).rstrip(b"\r\n"))
        return bytes(buf)

    async def _skip_line(self, tail: bytes) -> bytes:
        """Drop the rest of an over-long line; its last octets, without CRLF."""
        reader = self.conn.reader
        while True:
            try:
                chunk = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                chunk = await reader.readexactly(exc.consumed)
                self.bytes_in += len(chunk)
                tail = (tail + chunk)[-40:]
                continue
            except asyncio.IncompleteReadError as exc:
                raise EOFError("connection closed") from exc
            self.bytes_in += len(chunk)
            return (tail + chunk)[-42:].rstrip(b"\r\n")

    async def read_line(self) -> bytes:
        """The next line without CRLF; raises Shutdown when the server stops, IdleTimeout
        after the idle timeout, LineTooLong, or EOFError when the client went away."""
        line = await self.wait_or_stop(self.read_raw_line())
        return line.rstrip(b"\r\n")

    async def read_lines(self) -> tuple[list[bytes], list[bytes]] | None:
        """A command's lines and literals.  None when the command was refused while being
        read (a line too long, a literal too large: BAD or NO was sent already)."""
        lines: list[bytes] = []
        literals: list[bytes] = []
        total = 0  # octets of the command so far: one holds at most a message's worth
        self.command_started = False
        try:
            line = await self.read_line()
        except LineTooLong as exc:
            await self._refuse_long_line(exc, exc.tag)
            return None
        finally:
            self.command_started = True
        while True:
            marker = literal_marker(line)
            if marker is None:
                lines.append(line)
                return lines, literals
            size, nonsync, _binary = marker
            lines.append(strip_marker(line))
            total += len(line) + size
            first = lines[0].split(b" ", 2)
            is_append = len(first) > 1 and first[1].upper() == b"APPEND"
            limit = self.limits.max_append_literal if is_append else self.limits.max_literal
            tag = tag_of(lines[0]) or "*"
            if size > limit or len(literals) >= MAX_LITERALS \
                    or total > self.limits.max_append_literal + self.limits.max_line:
                what = "Message" if is_append else "Literal"
                if nonsync:
                    await self._discard(size, what)
                    await self._skip_command_rest()
                self.emit(f"{tag} NO [TOOBIG] {what} too large (limit {limit} bytes).\r\n")
                await self.flush()
                return None
            if not nonsync:
                self.emit("+ OK\r\n")
                await self.flush()
            literals.append(await self._read_literal(size))
            try:
                line = await self.read_line()
            except LineTooLong as exc:
                await self._refuse_long_line(exc, tag_of(lines[0]))
                return None

    async def _refuse_long_line(self, exc: LineTooLong, tag: str | None) -> None:
        """BAD for a command with an over-long line; a non-synchronizing literal at its end
        is skipped with the rest of the command, not taken for commands."""
        marker = literal_marker(exc.tail)
        if marker is not None and marker[1]:
            await self._discard(marker[0])
            await self._skip_command_rest()
        await self.bad(tag, "Error in IMAP command: command line too long")

    async def _read_chunk(self, size: int, exact: bool) -> bytes:
        """Octets of a literal: ``size`` of them, or (not ``exact``) at most that many;
        the client may pause at most the idle timeout."""
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                if exact:
                    data = await self.conn.reader.readexactly(size)
                else:
                    data = await self.conn.reader.read(size)
        except TimeoutError:
            raise IdleTimeout("idle timeout in a literal") from None
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed in a literal") from exc
        if not data:
            raise EOFError("connection closed in a literal")
        self.bytes_in += len(data)
        return data

    async def _read_literal(self, size: int) -> bytes:
        if size <= LITERAL_CHUNK:
            return await self._read_chunk(size, exact=True) if size else b""
        parts = []
        while size > 0:
            parts.append(await self._read_chunk(min(size, LITERAL_CHUNK), exact=True))
            size -= len(parts[-1])
        return b"".join(parts)

    async def _discard(self, size: int, what: str = "Literal") -> None:
        """Skip a refused non-synchronizing literal; one far beyond any limit ends the
        session instead (the client means to send it all)."""
        if size > 2 * self.limits.max_append_literal:
            self.emit(f"* BYE [TOOBIG] {what} too large.\r\n")
            await self.flush()
            raise Disconnect()
        while size > 0:
            size -= len(await self._read_chunk(min(size, 65536), exact=False))

    async def _skip_command_rest(self) -> None:
        """After a refused non-synchronizing literal: the rest of the command."""
        while True:
            try:
                line = await self.read_line()
            except LineTooLong as exc:
                line = exc.tail
            marker = literal_marker(line)
            if marker is None or not marker[1]:
                return
            await self._discard(marker[0])
