"""The session loop of protocols/session.py on its own: a small line protocol on the real
``LineSession.run`` over TCP, for what every protocol gets from it (the bad-command
budget, unexpected errors logged once and answered, idle timeout, shutdown, the last
flush)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cloudcote.core.mail.errors import StorageUnavailable
from cloudcote.protocols.imap.limits import ImapLimits
from cloudcote.protocols.imap.session import ImapSession
from cloudcote.protocols.listener import Connection
from cloudcote.protocols.session import BadCommand, LineSession, ServerContext


class Echo(LineSession):
    """``ECHO text``, ``FAIL`` (a bug), ``STORE`` (a store fault), ``BAD``, ``QUIT``."""

    protocol = "echo"
    max_bad_commands = 3
    line_too_long = "long"
    log = logging.getLogger("cloudcote.test.echo")

    def greeting(self) -> str:
        return "hello\r\n"

    async def dispatch(self, line: bytes) -> None:
        verb, _, arg = line.decode().partition(" ")
        self.command = verb
        if verb == "ECHO":
            self.emit(f"ok {arg}\r\n")
        elif verb == "FAIL":
            raise RuntimeError("a bug")
        elif verb == "STORE":
            raise StorageUnavailable("the store is down")
        elif verb == "QUIT":
            self.done = True
            self.emit("bye\r\n")
        else:
            raise BadCommand(f"what is {verb}")

    def bad_command_reply(self, text: str, last: bool) -> str:
        return f"bad {text}{' (closing)' if last else ''}\r\n"

    def internal_error_reply(self, exc: Exception) -> str:
        return f"error {type(exc).__name__}\r\n"

    def timeout_reply(self) -> str:
        return "timeout\r\n"

    def shutdown_reply(self) -> str:
        return "shutdown\r\n"

    async def finish(self) -> None:
        self.finished = self.end_reason


class Fatal(Echo):
    internal_error_ends_session = True


async def serve(kind: type[Echo], talk: Callable[[asyncio.StreamReader,
                                                  asyncio.StreamWriter, ServerContext],
                                                 Awaitable[None]],
                idle: float = 30.0) -> Echo:
    ctx = ServerContext(passdb=None, ssl_context=None,  # type: ignore[arg-type]
                        disable_plaintext_auth=False)
    sessions: list[Echo] = []
    done = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, "echo-1", "127.0.0.1:5", True, False)
        session = kind(conn, ctx)
        session.idle_timeout = idle
        session.max_line = 100
        session.user = "alice"
        sessions.append(session)
        try:
            await session.run()
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0, limit=64)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await talk(reader, writer, ctx)
        await asyncio.wait_for(done.wait(), 10)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    return sessions[0]


async def lines(reader: asyncio.StreamReader) -> list[bytes]:
    """Everything the server writes until it closes."""
    return (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n")[:-1]


def test_pipelined_commands_and_quit() -> None:
    writes: list[bytes] = []

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   ctx: ServerContext) -> None:
        assert await reader.readline() == b"hello\r\n"
        writer.write(b"ECHO a\r\nECHO b\r\nQUIT\r\n")
        got = await lines(reader)
        writes.extend(got)

    session = asyncio.run(serve(Echo, talk))
    assert writes == [b"ok a", b"ok b", b"bye"]
    assert session.bytes_out == len(b"hello\r\nok a\r\nok b\r\nbye\r\n")
    assert session.finished == "Connection closed"


def test_bad_command_budget_and_long_lines() -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   ctx: ServerContext) -> None:
        await reader.readline()
        writer.write(b"NOPE\r\nECHO " + b"x" * 300 + b"\r\nECHO fine\r\nWHAT\r\n")
        assert await lines(reader) == [b"bad what is NOPE", b"bad long", b"ok fine",
                                       b"bad what is WHAT (closing)"]

    session = asyncio.run(serve(Echo, talk))
    assert session.bad_commands == 3 and session.finished == "Too many bad commands"


def test_internal_errors_logged_once_and_answered(caplog: pytest.LogCaptureFixture) -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   ctx: ServerContext) -> None:
        await reader.readline()
        writer.write(b"FAIL\r\nSTORE\r\nECHO still here\r\nQUIT\r\n")
        assert await lines(reader) == [b"error RuntimeError", b"error StorageUnavailable",
                                       b"ok still here", b"bye"]

    with caplog.at_level(logging.INFO, logger="cloudcote.test.echo"):
        asyncio.run(serve(Echo, talk))
    records = [r for r in caplog.records if r.name == "cloudcote.test.echo"]
    assert len(records) == 2
    bug, fault = records
    assert bug.levelname == "ERROR" and bug.exc_info is not None  # a bug: its traceback
    assert "echo-1 user=alice ip=127.0.0.1: FAIL failed: RuntimeError('a bug')" \
        in bug.getMessage()
    assert fault.exc_info is None  # a store fault: one line
    assert fault.getMessage() == ("echo-1 user=alice ip=127.0.0.1: STORE failed: "
                                  "the store is down")


def test_internal_error_can_end_the_session() -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   ctx: ServerContext) -> None:
        await reader.readline()
        writer.write(b"FAIL\r\n")
        assert await lines(reader) == [b"error RuntimeError"]

    session = asyncio.run(serve(Fatal, talk))
    assert session.finished == "Internal error"


def test_idle_timeout_and_shutdown() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ctx: ServerContext) -> None:
        await reader.readline()
        writer.write(b"ECHO x\r\n")
        assert await lines(reader) == [b"ok x", b"timeout"]

    session = asyncio.run(serve(Echo, silent, idle=0.3))
    assert session.finished == "Disconnected for inactivity"

    async def stopping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       ctx: ServerContext) -> None:
        await reader.readline()
        writer.write(b"ECHO y\r\n")
        assert await reader.readline() == b"ok y\r\n"
        ctx.shutdown.set()
        assert await lines(reader) == [b"shutdown"]

    session = asyncio.run(serve(Echo, stopping))
    assert session.finished == "Server shutting down"


def test_connection_buffered_sees_unread_input() -> None:
    async def main() -> tuple[Any, ...]:
        reader = asyncio.StreamReader()
        conn = Connection(reader, None, "t", "local", True, False)  # type: ignore[arg-type]
        reader.feed_data(b"ONE\r\nTW")
        first = bytes(conn.buffered())
        await reader.readuntil(b"\n")
        return first, bytes(conn.buffered())

    assert asyncio.run(main()) == (b"ONE\r\nTW", b"TW")


# -- IMAP on the same loop (no store needed: only the not-authenticated state) -----------


async def serve_imap(limits: ImapLimits | None,
                     talk: Callable[[asyncio.StreamReader, asyncio.StreamWriter,
                                     ServerContext], Awaitable[None]]) -> ImapSession:
    ctx = ServerContext(passdb=None, ssl_context=None,  # type: ignore[arg-type]
                        disable_plaintext_auth=False, imap_limits=limits)
    sessions: list[ImapSession] = []
    done = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = ImapSession(Connection(reader, writer, "imap-1", "127.0.0.1:5", True,
                                         False), ctx)
        sessions.append(session)
        try:
            await session.run()
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await talk(reader, writer, ctx)
        await asyncio.wait_for(done.wait(), 10)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    return sessions[0]


def test_imap_greeting_logout_and_default_limits() -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   ctx: ServerContext) -> None:
        greeting = await reader.readline()
        assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
        assert b" AUTH=PLAIN AUTH=LOGIN]" in greeting  # sasl.MECHANISMS, in their order
        writer.write(b"a LOGOUT\r\n")
        assert await lines(reader) == [b"* BYE Logging out.", b"a OK Logout completed."]

    session = asyncio.run(serve_imap(None, talk))
    assert session.limits == ImapLimits() and session.done
    assert session.end_reason == "Connection closed"


def test_imap_sasl_errors_and_bad_command_budget() -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   ctx: ServerContext) -> None:
        await reader.readline()
        writer.write(b"a AUTHENTICATE PLAIN\r\n")
        assert await reader.readline() == b"+ \r\n"
        writer.write(b"*\r\n")
        assert await reader.readline() == b"a BAD Authentication aborted by client.\r\n"
        writer.write(b"b AUTHENTICATE PLAIN =\r\n")
        assert await reader.readline() == b"b NO [AUTHENTICATIONFAILED] Invalid credentials.\r\n"
        writer.write(b"c AUTHENTICATE PLAIN !!!\r\nd FOO\r\ne NOOP\r\n")
        assert await lines(reader) == [
            b"c BAD Invalid base64 data in SASL response.",
            b"d BAD Error in IMAP command FOO: Unknown command.",
            b"* BYE Too many invalid commands."]

    session = asyncio.run(serve_imap(ImapLimits(max_bad_commands=3), talk))
    assert session.bad_commands == 3 and session.end_reason == "Too many bad commands"


def test_imap_idle_timeout_and_shutdown_in_authenticate() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ctx: ServerContext) -> None:
        await reader.readline()
        writer.write(b"a AUTHENTICATE LOGIN\r\n")
        assert await lines(reader) == [b"+ VXNlcm5hbWU6", b"* BYE Disconnected for inactivity."]

    session = asyncio.run(serve_imap(ImapLimits(idle_timeout=0.3), silent))
    assert session.end_reason == "Disconnected for inactivity"

    async def stopping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       ctx: ServerContext) -> None:
        await reader.readline()
        writer.write(b"a AUTHENTICATE LOGIN\r\n")
        assert await reader.readline() == b"+ VXNlcm5hbWU6\r\n"
        ctx.shutdown.set()
        assert await lines(reader) == [b"* BYE Server shutting down."]

    session = asyncio.run(serve_imap(None, stopping))
    assert session.end_reason == "Server shutting down"
