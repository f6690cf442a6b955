"""The IMAP server under hostile, broken or merely impatient clients: fuzzed commands in
every state, the bounds of :class:`ImapLimits`, TLS and the plaintext-auth policy,
pipelining and back-pressure, and the login/logout log lines.

Clients speak over raw sockets (bytes exactly as written; replies read with timeouts, so
a hung server fails the test instead of hanging it), and over imaplib where its behaviour
is the point.  Every test also checks that the server logged no error: an exception that
escapes a session is logged by the listener as "session failed".
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import inspect
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudcote.core.mail.storage import SaveRequest
from cloudcote.protocols.imap import commands
from cloudcote.protocols.imap.commands import COMMANDS, CommandSpec
from cloudcote.protocols.imap.limits import ImapLimits
from cloudcote.protocols.imap.session import _STATES, ImapSession

from .imap_support import (
    IMAP_BACKENDS,
    PASSWORD,
    ImapServer,
    remote_server_fixture,
    server_fixture,
)
from .test_imap_parser import _mutate as mutate

#: Seconds a reply may take before the server counts as hung.
TIMEOUT = 20.0

#: Bounds of the server most tests use: small, so that crossing them is cheap.
LIMITS = ImapLimits(max_line=4096, max_literal=2048, max_append_literal=128 * 1024,
                    max_nesting=8, max_bad_commands=1_000_000, idle_timeout=120)
#: The server of the tests that count bad commands and wait for the autologout.
STRICT = ImapLimits(max_line=1024, max_literal=512, max_append_literal=8192, max_nesting=4,
                    max_bad_commands=4, idle_timeout=1.0)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    for srv in server_fixture(request, tmp_path_factory.mktemp("imapr"), limits=LIMITS):
        # Fuzzed LOGINs fail often; the failure delay would only slow the tests down.
        penalty = getattr(srv.ctx, "auth_penalty", None)
        if penalty is not None:
            srv.ctx.auth_penalty = type(penalty)(failure_delay=0, failure_delay_max=0)
        yield srv


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def strict(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(request, tmp_path_factory.mktemp("imaps"), limits=STRICT)


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def remote(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """A server on a non-loopback address with plaintext auth disabled (as by default)."""
    yield from remote_server_fixture(request, tmp_path_factory.mktemp("imapn"))


class _Collect(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server_errors() -> Iterator[_Collect]:
    """Every ERROR logged anywhere (the server's thread included) while this module runs."""
    handler = _Collect(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture(autouse=True)
def no_server_errors(server_errors: _Collect) -> Iterator[None]:
    server_errors.records.clear()
    yield
    errors = [f"{r.name}: {r.getMessage()}" + (" (with traceback)" if r.exc_info else "")
              for r in server_errors.records]
    server_errors.records.clear()
    assert not errors, "the server logged errors:\n" + "\n".join(errors)


# -- a raw client ---------------------------------------------------------------------------

_TAGGED = re.compile(rb"^([\x21-\x7e]+) (OK|NO|BAD)(?: |$)")
_LITERAL = re.compile(rb"\{(\d+)\}$")


class Raw:
    """A client on a plain socket: bytes as written, responses as read (literals inline)."""

    def __init__(self, srv: ImapServer, *, tls: bool = False, timeout: float = TIMEOUT,
                 rcvbuf: int | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((srv.host, srv.tls_port if tls else srv.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                sock = srv.client_tls.wrap_socket(sock, server_hostname=srv.host)
        except BaseException:
            sock.close()
            raise
        self.srv = srv
        self.sock: socket.socket = sock
        self.buf = b""
        self.sent = 0
        self.received = 0
        self.tags = iter(range(1, 10**9))
        self.greeting = self.line()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def _fill(self, size: int = 65536) -> None:
        data = self.sock.recv(size)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data
        self.received += len(data)

    def line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line, self.buf = self.buf[:i], self.buf[i + 2:]
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self) -> bytes:
        """One response: its line, and the literals it announces, inline."""
        text = self.line()
        while (m := _LITERAL.search(text)) is not None:
            text += b"\r\n" + self.exactly(int(m.group(1))) + self.line()
        return text

    def tag(self) -> str:
        return f"r{next(self.tags)}"

    def until(self, tag: str) -> tuple[list[bytes], bytes]:
        """Responses up to the tagged one of ``tag``: (untagged ones, tagged line)."""
        untagged: list[bytes] = []
        prefix = tag.encode() + b" "
        while True:
            resp = self.response()
            if resp.startswith(prefix):
                return untagged, resp
            untagged.append(resp)

    def cmd(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        tag = self.tag()
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.until(tag)

    def ok(self, text: str | bytes) -> list[bytes]:
        untagged, tagged = self.cmd(text)
        assert re.match(rb"^\S+ OK", tagged), (text, tagged)
        return untagged

    def login(self, user: str) -> None:
        self.ok(f"LOGIN {user} {PASSWORD}")

    def closed(self, timeout: float = TIMEOUT) -> list[bytes]:
        """Everything the server still sends, until it closes the connection (or fail)."""
        self.sock.settimeout(timeout)
        out = []
        try:
            while True:
                out.append(self.line())
        except EOFError:
            return out
        except (ConnectionResetError, ssl.SSLError):
            return out


@pytest.fixture
def raws() -> Iterator[Callable[..., Raw]]:
    """Opens raw clients; all are closed at the end of the test."""
    opened: list[Raw] = []

    def open_raw(srv: ImapServer, **kw: Any) -> Raw:
        r = Raw(srv, **kw)
        opened.append(r)
        return r

    yield open_raw
    for r in opened:
        r.close()


def close_imaplib(m: imaplib.IMAP4) -> None:
    if m.state != "LOGOUT":
        with contextlib.suppress(OSError):
            m.shutdown()


def message(i: int, size: int = 0) -> bytes:
    body = (f"line {i} " * 12 + "\r\n") * (size // 80 + 1) if size else f"body {i}\r\n"
    return (f"From: a@example.com\r\nTo: b@example.com\r\nSubject: m{i}\r\n"
            f"Message-ID: <m{i}@example.com>\r\n\r\n{body}").encode()[:max(size, 60)]


def seed(srv: ImapServer, user: str, count: int, size: int = 0) -> None:
    """``count`` messages in the user's INBOX, saved at once through the store."""
    async def go() -> None:
        assert srv.ctx.mail is not None
        mail = await srv.ctx.mail.user(user)
        box = await mail.mailbox("INBOX")
        await box.save_many([SaveRequest(message(i, size)) for i in range(count)])

    srv.call(go())


def session_tasks(srv: ImapServer) -> set[asyncio.Task[None]]:
    async def get() -> set[asyncio.Task[None]]:
        return {t for lst in srv.listeners for t in lst.sessions}

    result: set[asyncio.Task[None]] = srv.call(get())
    return result


#: Coroutines a session runs in tasks of its own (the store's shared work is not counted).
_SESSION_CORO = re.compile(r"^(ImapSession|ImapWire|MailboxView|LineSession|Listener|"
                           r"StreamReader|Event)\.|^cmd_\w+\.|^notify_wait$")


def loop_tasks(srv: ImapServer) -> set[asyncio.Task[Any]]:
    """The tasks of sessions on the server's loop."""
    async def get() -> set[asyncio.Task[Any]]:
        me = asyncio.current_task()
        return {t for t in asyncio.all_tasks() if t is not me
                and _SESSION_CORO.match(getattr(t.get_coro(), "__qualname__", ""))}

    result: set[asyncio.Task[Any]] = srv.call(get())
    return result


def wait_until(cond: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(0.02)


# -- handlers and states ------------------------------------------------------------------


def test_every_command_has_states() -> None:
    """A handler missing from the state table would run in any state (before LOGIN too)."""
    names = {n[3:].upper().replace("_", " ") for n in dir(ImapSession)
             if n.startswith("do_")}
    missing = {n for n in names if n not in _STATES and n.replace(" ", "-") not in _STATES}
    assert not missing
    # Handlers live in commands/*.py, each registered with its states.
    handlers = {fn for mod in vars(commands).values() if inspect.ismodule(mod)
                for name, fn in vars(mod).items() if name.startswith("cmd_")}
    registered = {getattr(spec.handler, "func", spec.handler) for spec in COMMANDS.values()}
    assert handlers and handlers <= registered
    states = {"not-authenticated", "authenticated", "selected"}
    assert all(spec.states and set(spec.states) <= states for spec in COMMANDS.values())
    assert _STATES == {name: spec.states for name, spec in COMMANDS.items()}


# -- fuzzing live sessions ----------------------------------------------------------------

def literal(data: bytes, plus: bool = False) -> bytes:
    return b"{%d%s}\r\n" % (len(data), b"+" if plus else b"") + data


SEEDS = [
    b"NOOP",
    b"CAPABILITY",
    b'ID ("name" "fuzz" "version" NIL)',
    b"LOGIN fuzzuser {6}\r\nsecret",
    b"LOGIN {8+}\r\nfuzzuser \"secret\"",
    b"AUTHENTICATE PLAIN AGZ1enp1c2VyAHNlY3JldA==",
    b"AUTHENTICATE LOGIN",
    b"ENABLE CONDSTORE QRESYNC",
    b"NAMESPACE",
    b"SELECT INBOX (CONDSTORE)",
    b"EXAMINE \"INBOX\"",
    b"CREATE fz/&Jjo-",
    b"RENAME fz/&Jjo- fz2",
    b"DELETE fz2",
    b"SUBSCRIBE INBOX",
    b"STATUS INBOX (MESSAGES UIDNEXT UNSEEN SIZE HIGHESTMODSEQ)",
    b'LIST "" *',
    b'LIST (SUBSCRIBED RECURSIVEMATCH) "" (% INBOX) RETURN (CHILDREN STATUS (MESSAGES))',
    b'LSUB "" %',
    b"APPEND INBOX (\\Seen $X) \"01-Jan-2020 10:00:00 +0000\" "
    + literal(b"Subject: fz\r\n\r\nfuzz body\r\n", plus=True),
    b"APPEND INBOX " + literal(b"Subject: y\r\n\r\nbody\r\n"),
    b"FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)",
    b"FETCH 1,2 (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]<0.20> BODY[1.MIME] BODY.PEEK[TEXT])",
    b"FETCH 2 (BINARY.PEEK[1]<0.5> BINARY.SIZE[1] RFC822.HEADER)",
    b"UID FETCH 1:* (UID FLAGS MODSEQ) (CHANGEDSINCE 1 VANISHED)",
    b"STORE 1 +FLAGS (\\Flagged $Label)",
    b"UID STORE 1:* (UNCHANGEDSINCE 99) -FLAGS.SILENT (\\Flagged)",
    b"SEARCH CHARSET UTF-8 OR FROM {1+}\r\na (SUBJECT \"m\" UNSEEN) SINCE 1-Jan-2000",
    b"UID SEARCH RETURN (MIN MAX COUNT ALL) NOT DELETED 1:*",
    b"COPY 1 INBOX",
    b"UID MOVE 999 INBOX",
    b"GETQUOTAROOT INBOX",
    b'GETQUOTA ""',
    b"CHECK",
    b"UID EXPUNGE 999",
    b"IDLE",
    b"UNSELECT",
]
FUZZ_STATES = ["not-authenticated", "authenticated", "selected"]
FUZZ_USER = "fuzzuser"
FILLER_LINE = b"x" * 4000 + b"\r\n"

_OPS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000),
                          st.sampled_from(b" ()[]<>{}\"\\+~*%.:,0123456789\r\n\x00\xffaZ")
                          | st.integers(0, 255)), min_size=1, max_size=5)


def open_in_state(srv: ImapServer, state: str) -> Raw:
    r = Raw(srv, timeout=TIMEOUT)
    try:
        if state != "not-authenticated":
            r.login(FUZZ_USER)
        if state == "selected":
            r.ok("SELECT INBOX")
    except BaseException:
        r.close()
        raise
    return r


def check_shape(resp: bytes) -> None:
    """A response is untagged, a continuation, or tagged OK/NO/BAD; never anything else."""
    assert resp.startswith((b"* ", b"+")) or _TAGGED.match(resp), resp[:200]
    assert b"Traceback" not in resp


def settle(r: Raw, wire: bytes) -> bool:
    """Send ``wire`` as one command, then NOOPs until one is answered OK (after filler when
    the server still waits for literal octets or for a line).  False if the server said BYE
    and closed (or began TLS)."""
    r.send(wire + b"\r\n")
    rounds = 0
    sentinel = f"zz{rounds}"
    r.send(sentinel.encode() + b" NOOP\r\n")
    bye = False
    deadline = time.monotonic() + TIMEOUT
    r.sock.settimeout(0.25)
    try:
        while True:
            assert time.monotonic() < deadline, "the server never answered the NOOP"
            try:
                resp = r.response()
            except TimeoutError:
                # Waiting for literal octets or a line (AUTHENTICATE, IDLE): feed it.
                rounds += 1
                sentinel = f"zz{rounds}"
                r.send(FILLER_LINE * min(2 ** rounds, 80) + sentinel.encode() + b" NOOP\r\n")
                continue
            except EOFError:
                assert bye, "the connection closed without BYE"
                return False
            except (ConnectionResetError, BrokenPipeError):
                assert bye, "the connection was reset without BYE"
                return False
            check_shape(resp)
            if resp.startswith(b"* BYE"):
                bye = True
            if re.match(rb"^\S+ OK Begin TLS", resp):
                return False  # a mutation made a STARTTLS: the rest would be TLS
            if resp.startswith(sentinel.encode() + b" "):
                assert not bye, "a command answered after BYE"
                assert resp.startswith(sentinel.encode() + b" OK"), resp
                return True
    finally:
        r.sock.settimeout(TIMEOUT)


@pytest.fixture(scope="module")
def fuzz_user(server: ImapServer) -> str:
    seed(server, FUZZ_USER, 3)
    return FUZZ_USER


FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(state=st.sampled_from(FUZZ_STATES), base=st.sampled_from(SEEDS), ops=_OPS)
def test_fuzz_mutated_commands(server: ImapServer, fuzz_user: str, state: str, base: bytes,
                               ops: list[tuple[int, int, int]]) -> None:
    wire = mutate(b"f1 " + base, ops)
    with open_in_state(server, state) as r:
        settle(r, wire)


@FUZZ
@given(state=st.sampled_from(FUZZ_STATES), data=st.binary(max_size=300))
def test_fuzz_random_bytes(server: ImapServer, fuzz_user: str, state: str,
                           data: bytes) -> None:
    with open_in_state(server, state) as r:
        settle(r, data)


@settings(FUZZ, max_examples=20)
@given(state=st.sampled_from(FUZZ_STATES),
       cmds=st.lists(st.tuples(st.sampled_from(SEEDS), _OPS), min_size=2, max_size=4))
def test_fuzz_sequences(server: ImapServer, fuzz_user: str, state: str,
                        cmds: list[tuple[bytes, list[tuple[int, int, int]]]]) -> None:
    """Several commands on one connection: what one leaves behind the next must survive."""
    with open_in_state(server, state) as r:
        for i, (base, ops) in enumerate(cmds):
            if not settle(r, mutate(f"s{i} ".encode() + base, ops)):
                return


# No "{": imaplib would announce a literal it never sends (a client bug, not a server one).
_WORDS = [
    "1", "2", "0", "*", "1:*", "3:2", "2,4:*", "4294967295", "4294967296", "18446744073709551616",
    "-1", "$", "1.2", "NIL", "INBOX", "inbox", "Sent", "a/b", "&Jjo-", "&", "%", "\\Seen",
    "\\Deleted", "\\Recent", "\\Bogus", "$Junk", "FLAGS", "+FLAGS", "-FLAGS.SILENT", "UID",
    "BODY", "BODYSTRUCTURE", "ENVELOPE", "RFC822", "RFC822.SIZE", "INTERNALDATE", "MODSEQ",
    "ALL", "FAST", "FULL", "TEXT", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "MIME",
    "CHARSET", "UTF-8", "KOI8-R", "RETURN", "MIN", "MAX", "COUNT", "SAVE", "CHANGEDSINCE",
    "UNCHANGEDSINCE", "VANISHED", "CONDSTORE", "QRESYNC", "SUBSCRIBED", "REMOTE", "CHILDREN",
    "SPECIAL-USE", "STATUS", "MESSAGES", "UIDNEXT", "UNSEEN", "SIZE", "OR", "NOT", "FROM",
    "SUBJECT", "SINCE", "BEFORE", "1-Jan-2020", "32-Foo-99", "LARGER", "SMALLER", "KEYWORD",
    "USE", "PLAIN", "LOGIN", "DONE", "BINARY", "BINARY.PEEK", "BINARY.SIZE", "BODY.PEEK",
]
_NAMES = sorted(_STATES) + ["UID", "UID FOO", "XLIST", "LOGOUT", "STARTTLS", "X-CMD"]


def _token(leaf: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: b"(" + b" ".join(xs) + b")"),
            st.tuples(st.sampled_from([b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.SIZE"]),
                      st.lists(inner, max_size=3),
                      st.sampled_from([b"", b"<0.10>", b"<5>", b"<1.0>", b"<4294967296.1>"]))
            .map(lambda t: t[0] + b"[" + b" ".join(t[1]) + b"]" + t[2])),
        max_leaves=12)


_LEAF = st.one_of(
    st.sampled_from([w.encode() for w in _WORDS]),
    st.binary(max_size=12).map(
        lambda b: b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        .replace(b"\r", b"").replace(b"\n", b"") + b'"'),
    st.tuples(st.binary(max_size=30), st.booleans()).map(lambda t: literal(*t) + b""),
)


@FUZZ
@given(state=st.sampled_from(FUZZ_STATES), name=st.sampled_from(_NAMES),
       args=st.lists(_token(_LEAF), max_size=5))
def test_fuzz_grammar(server: ImapServer, fuzz_user: str, state: str, name: str,
                      args: list[bytes]) -> None:
    """Commands built from IMAP's own words, strings, literals, lists and sections: the
    handlers' argument checks, not only the parser's."""
    wire = b"g1 " + b" ".join([name.encode(), *args])
    with open_in_state(server, state) as r:
        settle(r, wire)


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                   blacklist_characters="{"), max_size=20)
_ARG = _PRINTABLE | st.sampled_from(["1", "1:*", "*", "(FLAGS)", "(BODY[])", "INBOX", "\"\"",
                                     "(\\Seen)", "+FLAGS", "ALL", "()", "(((", "]"])


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(st.sampled_from(
    ["fetch", "uid_fetch", "store", "search", "status", "list", "create", "copy"]),
    st.lists(_ARG, min_size=1, max_size=3)), min_size=1, max_size=4))
def test_fuzz_imaplib(server: ImapServer, fuzz_user: str,
                      calls: list[tuple[str, list[str]]]) -> None:
    """imaplib's own commands with random arguments: OK, NO or BAD (IMAP4.error), never a
    BYE (IMAP4.abort) or a timeout; NOOP works afterwards."""
    m = imaplib.IMAP4(server.host, server.port, timeout=TIMEOUT)
    try:
        m.login(FUZZ_USER, PASSWORD)
        m.select("INBOX")
        for name, args in calls:
            try:
                if name == "fetch":
                    m.fetch(args[0], " ".join(args[1:]) or "(FLAGS)")
                elif name == "uid_fetch":
                    m.uid("FETCH", args[0], " ".join(args[1:]) or "(FLAGS)")
                elif name == "store":
                    m.store(args[0], "+FLAGS", " ".join(args[1:]) or "()")
                elif name == "search":
                    m.search(None, *args)
                elif name == "status":
                    m.status(args[0] or '""', " ".join(args[1:]) or "()")
                elif name == "list":
                    m.list(args[0] or '""', args[-1] or "*")
                elif name == "create":
                    m.create(args[0] or "x")
                elif name == "copy":
                    m.copy(args[0], args[-1] or "INBOX")
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error:
                pass
        assert m.noop()[0] == "OK"
        m.logout()
    finally:
        close_imaplib(m)


# -- limits and containment ---------------------------------------------------------------


@pytest.mark.parametrize("size", [STRICT.max_line + 1, 20_000, 300_000])
def test_line_too_long(strict: ImapServer, raws: Callable[..., Raw], size: int) -> None:
    r = raws(strict)
    r.send(b"a1 NOOP " + b"x" * (size - 10) + b"\r\n")
    assert re.match(rb"^a1 BAD .*too long", r.response())
    r.ok("NOOP")
    # A line just at the limit is a command like any other.
    r.send(b"a2 NOOP " + b"x" * (STRICT.max_line - 10) + b"\r\n")
    assert r.response().startswith(b"a2 OK")
    # Too long after a literal: BAD for the command (with its tag), the session goes on.
    r.send(b"a3 LOGIN {3}\r\n")
    assert r.line().startswith(b"+")
    r.send(b"abc " + b"y" * size + b"\r\n")
    assert re.match(rb"^a3 BAD .*too long", r.response())
    r.ok("NOOP")


def test_line_too_long_then_literal(strict: ImapServer, raws: Callable[..., Raw]) -> None:
    """An over-long line that ends in a non-synchronizing literal: the literal is skipped
    with it, not taken for commands."""
    r = raws(strict)
    r.send(b"a1 LOGIN " + b"u" * 2000 + b" {20+}\r\n" + b"a9 LOGOUT\r\n" + b"z" * 9 + b"\r\n")
    assert re.match(rb"^a1 BAD .*too long", r.response())
    r.ok("NOOP")


def test_literal_too_big(strict: ImapServer, raws: Callable[..., Raw]) -> None:
    r = raws(strict)
    big = STRICT.max_literal + 1
    # Synchronizing: refused before the client sends it (no "+").
    r.send(b"a1 LOGIN {%d}\r\n" % big)
    assert re.match(rb"^a1 NO \[TOOBIG\]", r.response())
    r.ok("NOOP")
    # Non-synchronizing: already on its way; skipped with the rest of the command.
    r.send(b"a2 LOGIN {%d+}\r\n" % big + b"u" * big + b" {3+}\r\npwd\r\n")
    assert re.match(rb"^a2 NO \[TOOBIG\]", r.response())
    r.ok("NOOP")
    # One at the limit is accepted.
    r.send(b"a3 ID ({%d+}\r\n" % STRICT.max_literal + b"u" * STRICT.max_literal
           + b" NIL)\r\n")
    assert re.match(rb"^a3 OK", r.until("a3")[1])


def test_append_too_big(strict: ImapServer, raws: Callable[..., Raw]) -> None:
    r = raws(strict)
    r.login(strict.new_user())
    big = STRICT.max_append_literal + 1
    r.send(b"a1 APPEND INBOX {%d}\r\n" % big)
    assert re.match(rb"^a1 NO \[TOOBIG\]", r.response())
    r.send(b"a2 APPEND INBOX (\\Seen) {%d+}\r\n" % big + b"x" * big + b"\r\n")
    assert re.match(rb"^a2 NO \[TOOBIG\]", r.response())
    # Larger than max_literal but within max_append_literal: an APPEND may carry it.
    msg = b"Subject: big\r\n\r\n" + b"y" * (STRICT.max_literal * 4)
    r.send(b"a3 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert re.match(rb"^a3 OK", r.response())
    untagged = r.ok("SELECT INBOX")
    assert b"* 1 EXISTS" in untagged
    # Far beyond any limit and not synchronizing: the server hangs up.
    r.send(b"a4 APPEND INBOX {%d+}\r\n" % (10 * STRICT.max_append_literal))
    assert any(line.startswith(b"* BYE") for line in r.closed())


def test_command_size_is_bounded(strict: ImapServer, raws: Callable[..., Raw]) -> None:
    """Many literals, each within max_literal, add up to no more than a message's worth."""
    r = raws(strict)
    piece = b"{%d+}\r\n" % STRICT.max_literal + b"p" * STRICT.max_literal
    n = (STRICT.max_append_literal + STRICT.max_line) // STRICT.max_literal + 2
    r.send(b"a1 ID (" + b" ".join([piece] * n) + b")\r\n")
    assert re.match(rb"^a1 NO \[TOOBIG\]", r.response())
    r.ok("NOOP")
    # Below the bound: fine.
    r.send(b"a2 ID (" + b" ".join([piece] * 4) + b")\r\n")
    assert re.match(rb"^a2 OK", r.until("a2")[1])


def test_no_response_injection(server: ImapServer, raws: Callable[..., Raw]) -> None:
    """Client text echoed in a reply (a BAD or NO text) never breaks the reply's line."""
    r = raws(server)
    evil = b"x\r\nX1 OK injected\r\n* BYE injected"
    r.login(server.new_user())
    commands = [
        b"SELECT " + literal(evil), b"CREATE " + literal(evil), b"STATUS " + literal(evil)
        + b" (MESSAGES)", b"ENABLE " + literal(evil), b'LIST "" ' + literal(evil),
        b"SELECT INBOX", b"SEARCH HEADER " + literal(evil) + b" x",
        b"SEARCH " + literal(evil), b"SEARCH SINCE " + literal(evil),
        b"FETCH 1 (BODY[HEADER.FIELDS (" + literal(evil) + b")])", b"STORE 1 FLAGS "
        + literal(evil), b"COPY 1 " + literal(evil), b"UID FETCH " + literal(evil) + b" FLAGS",
        b"ID (" + literal(evil) + b" " + literal(evil) + b")",
    ]
    for c in commands:
        untagged, tagged = r.cmd(c)
        for resp in [*untagged, tagged]:
            check_shape(resp)
            assert not re.search(rb"\r\n(X1|\* BYE)", resp), resp
    r.ok("NOOP")


def test_handler_bug_is_contained(server: ImapServer, raws: Callable[..., Raw],
                                  server_errors: _Collect,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception escaping a command handler: logged with its traceback, answered NO
    [SERVERBUG], and the session goes on."""
    async def broken(self: ImapSession, cmd: Any) -> None:
        raise RuntimeError("handler bug")

    spec = COMMANDS["NAMESPACE"]
    monkeypatch.setitem(COMMANDS, "NAMESPACE", CommandSpec(spec.name, broken, spec.states))
    r = raws(server)
    r.login(server.new_user())
    _, tagged = r.cmd("NAMESPACE")
    assert re.match(rb"^\S+ NO \[SERVERBUG\]", tagged)
    r.ok("NOOP")
    logged = [rec for rec in server_errors.records if "NAMESPACE failed" in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    server_errors.records.clear()


def test_nesting(strict: ImapServer, raws: Callable[..., Raw]) -> None:
    r = raws(strict)
    depth = STRICT.max_nesting
    r.ok(b"NOOP " + b"(" * depth + b")" * depth)
    _, tagged = r.cmd(b"NOOP " + b"(" * (depth + 1) + b")" * (depth + 1))
    assert re.match(rb"^\S+ BAD", tagged)
    _, tagged = r.cmd(b"NOOP " + b"(" * 5000)
    assert re.match(rb"^\S+ BAD", tagged)
    r.ok("NOOP")


def test_too_many_bad_commands(strict: ImapServer, raws: Callable[..., Raw]) -> None:
    r = raws(strict)
    for i in range(STRICT.max_bad_commands - 1):
        _, tagged = r.cmd(f"FOO{i}")
        assert re.match(rb"^\S+ BAD", tagged)
    r.send(b"last BAR\r\n")
    rest = r.closed()
    assert rest[0].startswith(b"last BAD")
    assert rest[1].startswith(b"* BYE")
    # Untagged garbage counts too.
    r = raws(strict)
    r.send(b"\x00\x01\r\n" * STRICT.max_bad_commands + b"never NOOP\r\n")
    rest = r.closed()
    assert rest[-1].startswith(b"* BYE")
    assert not any(line.startswith(b"never") for line in rest)


@pytest.mark.parametrize("where", ["greeting", "authenticated", "half line", "half literal",
                                   "authenticate", "idle"])
def test_idle_timeout(strict: ImapServer, raws: Callable[..., Raw], where: str) -> None:
    r = raws(strict)
    if where in ("authenticated", "idle"):
        r.login(strict.new_user())
    if where == "half line":
        r.send(b"a1 NOO")
    elif where == "half literal":
        r.send(b"a1 LOGIN {10}\r\n")
        assert r.line().startswith(b"+")
        r.send(b"abc")
    elif where == "authenticate":
        r.send(b"a1 AUTHENTICATE PLAIN\r\n")
        assert r.line().startswith(b"+")
    elif where == "idle":
        r.ok("SELECT INBOX")
        r.send(b"a1 IDLE\r\n")
        assert r.line().startswith(b"+")
    start = time.monotonic()
    rest = r.closed(timeout=STRICT.idle_timeout + 10)
    assert any(b"BYE" in line and b"nactivity" in line for line in rest), rest
    assert time.monotonic() - start < STRICT.idle_timeout + 5


def test_client_that_stops_reading(strict: ImapServer, raws: Callable[..., Raw]) -> None:
    """A client that asks for much and reads nothing is dropped after the idle timeout,
    and its session leaves nothing behind."""
    user = strict.new_user()
    seed(strict, user, 64, 64 * 1024)
    before = loop_tasks(strict)
    sessions = session_tasks(strict)
    r = raws(strict, rcvbuf=8 * 1024)
    r.login(user)
    r.ok("SELECT INBOX")
    (mine,) = session_tasks(strict) - sessions
    r.send(b"big FETCH 1:* (BODY.PEEK[])\r\n")
    wait_until(mine.done, timeout=STRICT.idle_timeout + 10, what="the session to end")
    assert mine.exception() is None
    wait_until(lambda: not (loop_tasks(strict) - before), timeout=5,
               what="the session's tasks to end")
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            r._fill()


@pytest.mark.parametrize("cut", ["line", "literal", "nonsync literal", "discarded literal",
                                 "authenticate", "idle"])
def test_disconnect_leaves_no_task(strict: ImapServer, raws: Callable[..., Raw],
                                   cut: str) -> None:
    """A client that goes away in the middle of a command: its session ends, nothing of it
    stays on the server's loop."""
    before = loop_tasks(strict)
    sessions = session_tasks(strict)
    r = raws(strict)
    if cut in ("idle",):
        r.login(strict.new_user())
        r.ok("SELECT INBOX")
    wait_until(lambda: len(session_tasks(strict) - sessions) == 1, what="the session")
    (mine,) = session_tasks(strict) - sessions
    if cut == "line":
        r.send(b"a1 NOOP and no end")
    elif cut == "literal":
        r.send(b"a1 LOGIN {100}\r\n")
        assert r.line().startswith(b"+")
        r.send(b"x" * 50)
    elif cut == "nonsync literal":
        r.send(b"a1 LOGIN {100+}\r\n" + b"x" * 50)
    elif cut == "discarded literal":
        r.send(b"a1 LOGIN {%d+}\r\n" % (STRICT.max_literal * 2) + b"x" * 50)
    elif cut == "authenticate":
        r.send(b"a1 AUTHENTICATE LOGIN\r\n")
        assert r.line().startswith(b"+")
    elif cut == "idle":
        r.send(b"a1 IDLE\r\n")
        assert r.line().startswith(b"+")
    time.sleep(0.1)
    r.close()
    wait_until(mine.done, timeout=5, what="the session to end")
    wait_until(lambda: not (loop_tasks(strict) - before), timeout=5,
               what="the session's tasks to end")
    assert not mine.cancelled()
    assert mine.exception() is None


# -- TLS and the plaintext policy ---------------------------------------------------------


def test_imaps(server: ImapServer, raws: Callable[..., Raw]) -> None:
    r = raws(server, tls=True)
    assert b"STARTTLS" not in r.greeting and b"AUTH=PLAIN" in r.greeting
    r.login(server.new_user())
    assert any(b"EXISTS" in x for x in r.ok("SELECT INBOX"))
    _, tagged = r.cmd("STARTTLS")
    assert re.match(rb"^\S+ BAD", tagged)
    r.ok("LOGOUT")
    # And with imaplib.
    m = server.connect_tls()
    try:
        assert m.login(server.new_user(), PASSWORD)[0] == "OK"
        assert m.list()[0] == "OK"
        m.logout()
    finally:
        close_imaplib(m)


def test_starttls(server: ImapServer) -> None:
    m = server.connect()
    try:
        assert "STARTTLS" in m.capabilities
        m.starttls(ssl_context=server.client_tls)
        assert "STARTTLS" not in m.capabilities
        assert m.login(server.new_user(), PASSWORD)[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
        # Already on TLS: refused.
        with pytest.raises(imaplib.IMAP4.error):
            m._simple_command("STARTTLS")
        assert m.noop()[0] == "OK"
        m.logout()
    finally:
        close_imaplib(m)


def test_starttls_drops_pipelined_plaintext(server: ImapServer, raws: Callable[..., Raw]) -> None:
    """Commands sent after STARTTLS but before the handshake are not run after it
    (a man in the middle could have injected them; CVE-2011-0411 and kin)."""
    r = raws(server)
    r.send(b"a1 STARTTLS\r\na2 LOGIN injected secret\r\n")
    assert r.line().startswith(b"a1 OK")
    assert r.buf == b""
    r.sock = server.client_tls.wrap_socket(r.sock, server_hostname=server.host)
    r.send(b"a3 CAPABILITY\r\n")
    untagged, tagged = r.until("a3")
    assert tagged.startswith(b"a3 OK")
    assert not any(x.startswith(b"a2") for x in untagged)
    assert b"AUTH=PLAIN" in b"".join(untagged)  # still not logged in
    _, tagged = r.cmd("STARTTLS")
    assert re.match(rb"^\S+ BAD", tagged)


def test_plaintext_auth_disabled_off_loopback(remote: ImapServer,
                                              raws: Callable[..., Raw]) -> None:
    assert not remote.host.startswith("127.")
    r = raws(remote)
    assert b"LOGINDISABLED" in r.greeting and b"STARTTLS" in r.greeting
    assert b"AUTH=PLAIN" not in r.greeting
    _, tagged = r.cmd(f"LOGIN {remote.new_user()} {PASSWORD}")
    assert re.match(rb"^\S+ NO \[PRIVACYREQUIRED\]", tagged)
    _, tagged = r.cmd("AUTHENTICATE PLAIN AHUAc2VjcmV0")
    assert re.match(rb"^\S+ NO \[PRIVACYREQUIRED\]", tagged)
    r.send(b"a1 AUTHENTICATE LOGIN\r\n")
    assert re.match(rb"^a1 NO \[PRIVACYREQUIRED\]", r.response())
    # After STARTTLS the same login works.
    r.ok("STARTTLS")
    r.sock = remote.client_tls.wrap_socket(r.sock, server_hostname=remote.host)
    untagged = r.ok("CAPABILITY")
    assert b"LOGINDISABLED" not in untagged[0] and b"AUTH=PLAIN" in untagged[0]
    r.login(remote.new_user())
    # So does implicit TLS.
    t = raws(remote, tls=True)
    assert b"LOGINDISABLED" not in t.greeting
    t.ok("AUTHENTICATE PLAIN " + "AHUxAHNlY3JldA==")


def test_plaintext_auth_allowed_when_enabled(remote: ImapServer,
                                             raws: Callable[..., Raw]) -> None:
    remote.ctx.disable_plaintext_auth = False
    try:
        r = raws(remote)
        assert b"LOGINDISABLED" not in r.greeting and b"AUTH=PLAIN" in r.greeting
        r.login(remote.new_user())
    finally:
        remote.ctx.disable_plaintext_auth = True


# -- pipelining and back-pressure ---------------------------------------------------------


def test_pipelined_commands(server: ImapServer, raws: Callable[..., Raw]) -> None:
    user = server.new_user()
    seed(server, user, 10)
    r = raws(server)
    r.login(user)
    r.ok("SELECT INBOX")
    kinds = [b"NOOP", b"FETCH 1:* (FLAGS)", b"STORE 3 +FLAGS.SILENT (\\Flagged)",
             b"UID FETCH 2 (BODY.PEEK[])", b"STORE 4 -FLAGS (\\Flagged)", b"CHECK",
             b"SEARCH FLAGGED", b"FETCH 5 BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]
    wire = b"".join(b"p%d %s\r\n" % (i, kinds[i % len(kinds)]) for i in range(200))
    r.send(wire)
    tags: list[int] = []
    while len(tags) < 200:
        resp = r.response()
        check_shape(resp)
        if not resp.startswith(b"*"):
            assert re.match(rb"^p\d+ OK", resp), resp
            tags.append(int(resp.split()[0][1:]))
    assert tags == list(range(200))
    # IDLE and its DONE in the same write as the next command.
    r.send(b"i1 IDLE\r\nDONE\r\ni2 NOOP\r\n")
    assert r.line().startswith(b"+ ")
    assert r.until("i1")[1].startswith(b"i1 OK")
    assert r.until("i2")[1].startswith(b"i2 OK")


def test_pipelined_appends(server: ImapServer, raws: Callable[..., Raw]) -> None:
    r = raws(server)
    r.login(server.new_user())
    msgs = [message(i, 200 + 37 * i) for i in range(50)]
    wire = b"".join(b"q%d APPEND INBOX (\\Seen) {%d+}\r\n%s\r\n" % (i, len(m), m)
                    for i, m in enumerate(msgs))
    r.send(wire + b"q50 NOOP\r\n")
    for i in range(51):
        _, tagged = r.until(f"q{i}")
        assert tagged.startswith(f"q{i} OK".encode()), tagged
    untagged = r.ok("SELECT INBOX")
    assert b"* 50 EXISTS" in untagged
    untagged = r.ok("FETCH 50 BODY.PEEK[]")
    assert untagged[0].endswith(msgs[49] + b")")


def _session_buffers(srv: ImapServer) -> list[tuple[int, int]]:
    """Bytes each session holds for its client: (transport write buffer, its own buffer)."""
    async def get() -> list[tuple[int, int]]:
        out = []
        for lst in srv.listeners:
            for task in lst.sessions:
                session = _find_session(task)
                if session is not None:
                    out.append((session.conn.writer.transport.get_write_buffer_size(),
                                session.out_size))
        return out

    result: list[tuple[int, int]] = srv.call(get())
    return result


def _find_session(task: asyncio.Task[None]) -> ImapSession | None:
    """The ImapSession a session task runs (found along its await chain)."""
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None)
        if frame is not None:
            for value in frame.f_locals.values():
                if isinstance(value, ImapSession):
                    return value
        coro = getattr(coro, "cr_await", None)
    return None


def test_large_fetch_is_streamed(server: ImapServer, raws: Callable[..., Raw]) -> None:
    """A FETCH of many large messages to a client that reads slowly: the server holds a
    bounded amount for it, and serves other clients meanwhile."""
    user = server.new_user()
    count, size = 120, 64 * 1024
    seed(server, user, count, size)
    slow = raws(server, rcvbuf=16 * 1024)
    slow.login(user)
    slow.ok("SELECT INBOX")
    slow.send(b"big FETCH 1:* (BODY.PEEK[])\r\n")
    time.sleep(0.5)
    peak = 0
    # The slow client reads nothing for a while: another session works meanwhile.
    with Raw(server) as other:
        other.login(user)
        t0 = time.monotonic()
        other.ok("SELECT INBOX")
        other.ok("FETCH 1:3 (BODY.PEEK[])")
        other.ok("LOGOUT")
        assert time.monotonic() - t0 < TIMEOUT / 2
    stalled = _session_buffers(server)
    # The response did not all fit in the kernel's buffers: the server is holding back.
    assert any(transport > 0 for transport, _ in stalled), stalled
    peak = max(sum(sizes) for sizes in stalled)
    total = 0
    done = False
    while not done:
        chunk = slow.sock.recv(32 * 1024)
        assert chunk
        total += len(chunk)
        slow.buf += chunk
        done = b"\r\nbig OK" in slow.buf[-200:]
        slow.buf = slow.buf[-200:]
        if total % (512 * 1024) < 32 * 1024:
            time.sleep(0.01)
            for sizes in _session_buffers(server):
                peak = max(peak, sum(sizes))
    assert total > count * size
    # What the server buffers: at most about one flush (64 KiB) and one message beyond the
    # transport's high-water mark, never the whole response.
    assert peak < 1024 * 1024, peak
    assert total > 6 * 1024 * 1024


# -- logging ------------------------------------------------------------------------------


def test_login_logout_lines(server: ImapServer, raws: Callable[..., Raw],
                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudcote")
    user = server.new_user()
    seed(server, user, 3)
    r = raws(server)
    port = r.sock.getsockname()[1]
    r.login(user)
    r.ok("SELECT INBOX")
    r.ok("FETCH 1:2 (BODY.PEEK[])")
    r.ok("STORE 1,3 +FLAGS (\\Deleted)")
    r.ok("EXPUNGE")
    r.send(b"z LOGOUT\r\n")
    r.closed()

    def lines(word: str) -> list[str]:
        return [rec.getMessage() for rec in caplog.records
                if word in rec.getMessage() and f":{port}" in rec.getMessage()]

    wait_until(lambda: bool(lines("logged out")), what="the logout line")
    (login,) = lines("logged in")
    (logout,) = lines("logged out")
    sid = login.split()[0]
    assert sid.startswith("imap-")
    for text in (login, logout):
        assert text.startswith(sid + " ")
        assert f"127.0.0.1:{port}" in text
        assert f"user {user} " in text
    fields = dict(re.findall(r"(\w+)=([\d.]+)", logout))
    assert int(fields["in"]) == r.sent
    assert int(fields["out"]) == r.received
    assert fields["fetched"] == "2"
    assert fields["deleted"] == "2"

    # A client that just goes away is logged out too; one that never logged in is not.
    caplog.clear()
    r2 = raws(server)
    port = r2.sock.getsockname()[1]
    r2.login(user)
    r2.close()
    wait_until(lambda: bool(lines("logged out")), what="the logout line")
    assert len(lines("logged in")) == 1 and len(lines("logged out")) == 1
    r3 = raws(server)
    port = r3.sock.getsockname()[1]
    r3.ok("CAPABILITY")
    r3.send(b"z LOGOUT\r\n")
    r3.closed()
    time.sleep(0.2)
    assert not lines("logged")


def test_concurrent_sessions_isolated(server: ImapServer) -> None:
    """Fuzz-grade garbage on some connections does not disturb a well-behaved one."""
    user = server.new_user()
    seed(server, user, 5)
    errors: list[BaseException] = []

    def garbage(n: int) -> None:
        try:
            with Raw(server) as g:
                g.send(b"".join(b"g%d FETCH 1:* %s\r\n" % (i, b"(" * (i % 20))
                                for i in range(n)))
                for i in range(n):
                    g.until(f"g{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=garbage, args=(50,)) for _ in range(3)]
    for t in threads:
        t.start()
    with Raw(server) as good:
        good.login(user)
        good.ok("SELECT INBOX")
        for _ in range(20):
            assert len(good.ok("FETCH 1:* (UID FLAGS)")) == 5
    for t in threads:
        t.join(TIMEOUT)
    assert not errors
