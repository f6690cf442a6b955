"""The POP3 server as clients see it: stdlib poplib over real TCP (raw sockets only where
the exact octets on the wire are the point), against a real server
(tests/imap_support.py) on every IMAP backend.

Every test logs in as fresh users, so the tests of a module share one server per backend.
Mail is put in through the store on the server's loop (``put``) or with imaplib APPEND;
IMAP sessions check what POP3's UPDATE did.  Settings a test needs (uidl_format, the idle
timeout, the bad-command budget) are swapped into the running server's context for that
test only: sessions read ``ctx.pop3`` when they start.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import imaplib
import logging
import poplib
import random
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudcote.core.auth.penalty import AuthPenalty
from cloudcote.core.mail import mime
from cloudcote.core.mail.errors import StorageUnavailable
from cloudcote.core.mail.storage import StorageSettings
from cloudcote.libfs.api import ForwardingFs, Fs
from cloudcote.protocols.pop3.session import Pop3Session, _DotStuffer, _TopCut, format_uidl
from cloudcote.protocols.pop3.settings import Pop3Settings

from .imap_support import (
    IMAP_BACKENDS,
    PASSWORD,
    ImapServer,
    fs_spec_for,
    libfs_only,
    mailbox_class,
    remote_server_fixture,
    server_fixture,
    start_server,
    stop_server,
)

# -- fixtures -------------------------------------------------------------------------------


def _no_penalty(srv: ImapServer) -> None:
    # Wrong-password tests would otherwise wait for the failure delay.
    srv.ctx.auth_penalty = AuthPenalty(failure_delay=0, failure_delay_max=0)


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def pop_server(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    for srv in server_fixture(request, tmp_path_factory.mktemp("pop3")):
        _no_penalty(srv)
        yield srv


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def remote(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """A server on a non-loopback address with plaintext auth disabled (the default)."""
    for srv in remote_server_fixture(request, tmp_path_factory.mktemp("pop3n")):
        _no_penalty(srv)
        yield srv


class Pop:
    """The connections of one test (closed at its end) and its mail."""

    def __init__(self, srv: ImapServer) -> None:
        self.srv = srv
        self.opened: list[Any] = []

    def connect(self) -> poplib.POP3:
        p = poplib.POP3(self.srv.host, self.srv.pop3_port, timeout=30)
        self.opened.append(p)
        return p

    def login(self, user: str) -> poplib.POP3:
        p = self.connect()
        p.user(user)
        assert p.pass_(PASSWORD).startswith(b"+OK")
        return p

    def raw(self, port: int | None = None) -> socket.socket:
        s = socket.create_connection((self.srv.host, port or self.srv.pop3_port), timeout=30)
        self.opened.append(s)
        return s

    def imap(self, user: str) -> imaplib.IMAP4:
        m = self.srv.login(user)
        self.opened.append(m)
        return m

    def put(self, user: str, *raws: bytes) -> list[int]:
        """Save messages into the user's INBOX through the store; their UIDs."""
        async def go() -> list[int]:
            assert self.srv.ctx.mail is not None
            um = await self.srv.ctx.mail.user(user)
            box = await um.mailbox("INBOX")
            return [await box.save(r) for r in raws]

        return list(self.srv.call(go()))

    def stored(self, user: str) -> list[tuple[int, int, bytes, frozenset[str]]]:
        """(UID, index size, stored bytes, flags) of every INBOX message, in UID order."""
        async def go() -> list[tuple[int, int, bytes, frozenset[str]]]:
            assert self.srv.ctx.mail is not None
            um = await self.srv.ctx.mail.user(user)
            box = await um.mailbox("INBOX")
            await box.refresh()
            return [(m.uid, m.size, await box.read_message(m), m.flags) for m in box.state]

        return list(self.srv.call(go()))

    def uidvalidity(self, user: str) -> int:
        async def go() -> int:
            assert self.srv.ctx.mail is not None
            um = await self.srv.ctx.mail.user(user)
            return int((await um.mailbox("INBOX")).state.uidvalidity)

        return int(self.srv.call(go()))

    def close(self) -> None:
        for c in self.opened:
            try:
                if isinstance(c, socket.socket):
                    c.close()
                elif isinstance(c, imaplib.IMAP4):
                    c.shutdown()
                else:
                    c.close()
            except OSError:
                pass


@pytest.fixture
def pop(pop_server: ImapServer) -> Iterator[Pop]:
    c = Pop(pop_server)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def settings(pop_server: ImapServer) -> Iterator[Any]:
    """``settings(**kw)`` gives new sessions of this test other [pop3] settings."""
    ctx = pop_server.ctx
    old = ctx.pop3

    def change(**kw: Any) -> None:
        ctx.pop3 = dataclasses.replace(old, **kw)

    try:
        yield change
    finally:
        ctx.pop3 = old


def user() -> str:
    return f"p{time.monotonic_ns() % 10**12:x}{id(object()) % 997}"


def msg(subject: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: a@example.org\r\nTo: b@example.org\r\nSubject: {subject}\r\n\r\n"
            f"{body}").encode()


def retr_bytes(p: poplib.POP3, n: int) -> bytes:
    """The message RETR n gives, as poplib sees it (dot-stuffing undone), with CRLFs."""
    resp, lines, _ = p.retr(n)
    assert resp.startswith(b"+OK")
    return b"".join(line + b"\r\n" for line in lines)


def recv_until(s: socket.socket, end: bytes, limit: float = 20) -> bytes:
    buf = b""
    deadline = time.monotonic() + limit
    while not buf.endswith(end):
        assert time.monotonic() < deadline, buf[-300:]
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def recv_lines(s: socket.socket, count: int) -> list[bytes]:
    """``count`` CRLF-terminated lines."""
    buf = b""
    while buf.count(b"\r\n") < count:
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    return buf.split(b"\r\n")[:count]


# -- AUTHORIZATION --------------------------------------------------------------------------


def test_greeting_and_capa(pop: Pop) -> None:
    p = pop.connect()
    assert p.getwelcome().startswith(b"+OK")
    caps = p.capa()
    for cap in ("TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "STLS"):
        assert cap in caps, caps
    assert caps["SASL"] == ["PLAIN", "LOGIN"]
    assert caps["IMPLEMENTATION"] == ["cloudcote"]
    p.user(user())
    p.pass_(PASSWORD)
    after = p.capa()
    assert "TOP" in after and "UIDL" in after and "PIPELINING" in after
    for gone in ("USER", "SASL", "STLS"):
        assert gone not in after, after
    assert p.quit().startswith(b"+OK")


def test_user_pass_wrong_password_and_state_errors(pop: Pop) -> None:
    p = pop.connect()
    with pytest.raises(poplib.error_proto, match=r"-ERR No user name"):
        p.pass_(PASSWORD)
    with pytest.raises(poplib.error_proto, match=r"not valid in the AUTHORIZATION"):
        p.stat()
    u = user()
    p.user(u)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\] Authentication failed"):
        p.pass_("wrong")
    p.user(u)
    assert p.pass_(PASSWORD) == b"+OK Logged in."
    with pytest.raises(poplib.error_proto, match=r"not valid in the TRANSACTION"):
        p.user(u)
    assert p.stat() == (0, 0)
    assert p.noop().startswith(b"+OK")
    p.quit()


def test_auth_plain_and_login(pop: Pop) -> None:
    u = user()
    pop.put(u, msg("one"))
    plain = base64.b64encode(f"\0{u}\0{PASSWORD}".encode()).decode()
    login_user = base64.b64encode(u.encode()).decode()
    login_pw = base64.b64encode(PASSWORD.encode()).decode()

    p = pop.connect()
    resp, mechs, _ = p._longcmd("AUTH")  # type: ignore[attr-defined]
    assert resp.startswith(b"+OK") and mechs == [b"PLAIN", b"LOGIN"]
    # Initial response in the command (RFC 5034 4).
    assert p._shortcmd(f"AUTH PLAIN {plain}").startswith(b"+OK")  # type: ignore[attr-defined]
    assert p.stat()[0] == 1
    p.quit()

    # poplib's own AUTH (a continuation, then the response).
    p = pop.connect()
    p.sock.sendall(b"AUTH PLAIN\r\n")
    assert p._getline()[0] == b"+ "  # type: ignore[attr-defined]
    assert p._shortcmd(plain).startswith(b"+OK")  # type: ignore[attr-defined]
    p.quit()

    p = pop.connect()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd("AUTH PLAIN =")  # type: ignore[attr-defined]
    bad = base64.b64encode(f"\0{u}\0nope".encode()).decode()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Authentication failed"):
        p._shortcmd(f"AUTH PLAIN {bad}")  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"Invalid base64"):
        p._shortcmd("AUTH PLAIN !!!")  # type: ignore[attr-defined]
    # "*" cancels the exchange with -ERR (RFC 5034 4).
    p.sock.sendall(b"AUTH PLAIN\r\n")
    assert p._getline()[0] == b"+ "  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"aborted"):
        p._shortcmd("*")  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"Unsupported"):
        p._shortcmd("AUTH CRAM-MD5")  # type: ignore[attr-defined]
    # LOGIN without and with an initial response.
    p.sock.sendall(b"AUTH LOGIN\r\n")
    assert p._getline()[0] == b"+ VXNlcm5hbWU6"  # type: ignore[attr-defined]
    p.sock.sendall(login_user.encode() + b"\r\n")
    assert p._getline()[0] == b"+ UGFzc3dvcmQ6"  # type: ignore[attr-defined]
    assert p._shortcmd(login_pw).startswith(b"+OK")  # type: ignore[attr-defined]
    assert p.stat()[0] == 1
    p.quit()

    p = pop.connect()
    p.sock.sendall(f"AUTH LOGIN {login_user}\r\n".encode())
    assert p._getline()[0] == b"+ UGFzc3dvcmQ6"  # type: ignore[attr-defined]
    assert p._shortcmd(login_pw).startswith(b"+OK")  # type: ignore[attr-defined]
    p.quit()


def test_passdb_failure_is_sys_temp(pop: Pop) -> None:
    class Broken:
        async def authenticate(self, user: str, password: str, **kw: Any) -> Any:
            raise OSError("database down")

        async def user_lookup(self, user: str) -> Any:
            raise OSError("database down")

    ctx = pop.srv.ctx
    old = ctx.passdb
    ctx.passdb = Broken()
    try:
        p = pop.connect()
        p.user(user())
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            p.pass_(PASSWORD)
        p.quit()
    finally:
        ctx.passdb = old


def test_mail_storage_failure_at_login_closes(pop: Pop) -> None:
    ctx = pop.srv.ctx

    async def broken(entry: Any) -> Any:
        raise StorageUnavailable("test: store down")

    ctx.user_mail = broken  # type: ignore[method-assign]
    try:
        p = pop.connect()
        p.user(user())
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            p.pass_(PASSWORD)
        assert p.file.readline() == b""  # closed
    finally:
        del ctx.user_mail


def test_plaintext_refused_without_tls(remote: ImapServer) -> None:
    c = Pop(remote)
    try:
        u = user()
        p = c.connect()
        caps = p.capa()
        assert "STLS" in caps and "USER" not in caps and "SASL" not in caps, caps
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext authentication"):
            p.user(u)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext authentication"):
            p._shortcmd("AUTH PLAIN =")  # type: ignore[attr-defined]
        p.stls(context=remote.client_tls)
        caps = p.capa()
        assert "USER" in caps and "STLS" not in caps and caps["SASL"] == ["PLAIN", "LOGIN"]
        p.user(u)
        assert p.pass_(PASSWORD).startswith(b"+OK")
        p.quit()
    finally:
        c.close()


# -- TLS ------------------------------------------------------------------------------------


def test_stls_and_pop3s(pop: Pop) -> None:
    u = user()
    pop.put(u, msg("tls", "over TLS\r\n"))
    p = pop.connect()
    assert p.stls(context=pop.srv.client_tls).startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match=r"already active"):
        p._shortcmd("STLS")  # type: ignore[attr-defined]
    p.user(u)
    p.pass_(PASSWORD)
    assert retr_bytes(p, 1) == msg("tls", "over TLS\r\n")
    p.quit()

    s = poplib.POP3_SSL(pop.srv.host, pop.srv.pop3s_port, context=pop.srv.client_tls,
                        timeout=30)
    pop.opened.append(s)
    assert "STLS" not in s.capa()
    s.user(u)
    s.pass_(PASSWORD)
    assert s.stat() == (1, len(msg("tls", "over TLS\r\n")))
    s.quit()


def test_stls_drops_pipelined_plaintext(pop: Pop) -> None:
    """RFC 2595 / CVE-2011-0411: CAPA sent with STLS in one write is answered neither in
    plaintext nor after the handshake."""
    s = pop.raw()
    assert recv_lines(s, 1)[0].startswith(b"+OK")
    s.sendall(b"STLS\r\nCAPA\r\n")
    line = b""
    while not line.endswith(b"\r\n"):
        line += s.recv(1)
    assert line.startswith(b"+OK Begin TLS"), line
    tls = pop.srv.client_tls.wrap_socket(s, server_hostname=pop.srv.host)
    pop.opened.append(tls)
    tls.sendall(b"NOOP\r\n")
    first = recv_lines(tls, 1)[0]
    # NOOP is not valid before login: the first reply answers NOOP, not the CAPA.
    assert first.startswith(b"-ERR") and b"NOOP" in first, first
    tls.sendall(b"QUIT\r\n")
    assert recv_lines(tls, 1)[0].startswith(b"+OK Logging out")


# -- TRANSACTION ----------------------------------------------------------------------------

DOTS = (b"From: a@example.org\r\nSubject: dots\r\n\r\n.starts with a dot\r\n"
        b"..two dots\r\nmiddle . dot\r\n.\r\nlast\r\n")
EIGHT_BIT = ("From: a@example.org\r\nSubject: 8bit\r\nContent-Type: text/plain; "
             "charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
             "Grüße, ça va? \u00ff\u4e2d\u6587\r\n").encode() + bytes(range(128, 256)) + b"\r\n"
NO_FINAL_CRLF = b"From: a@example.org\r\nSubject: no final newline\r\n\r\nlast line"


def big_message() -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_=+" * 1 + b"\r\n"
    body = b"".join(b"." + line if i % 7 == 0 else line for i in range(16000))
    return b"From: a@example.org\r\nSubject: big\r\n\r\n" + body


def test_stat_list_retr_byte_exact(pop: Pop) -> None:
    u = user()
    big = big_message()
    assert len(big) > 1024 * 1024
    raws = [DOTS, EIGHT_BIT, big, msg("plain")]
    pop.put(u, *raws)
    stored = pop.stored(u)
    # The index size is what the store holds: CRLF lines, read back byte for byte.
    for (_, size, data, _), raw in zip(stored, raws, strict=True):
        assert size == len(data) == len(raw) and data == raw
        assert b"\n" not in data.replace(b"\r\n", b"")
    p = pop.login(u)
    assert p.stat() == (4, sum(len(r) for r in raws))
    resp, listing, _ = p.list()
    assert resp.startswith(b"+OK 4 messages")
    assert listing == [b"%d %d" % (i + 1, len(r)) for i, r in enumerate(raws)]
    for i, raw in enumerate(raws):
        assert p.list(i + 1) == b"+OK %d %d" % (i + 1, len(raw))
        assert retr_bytes(p, i + 1) == raw
    p.quit()


def test_retr_wire_octets(pop: Pop) -> None:
    """The octets on the wire: +OK with the size, the message dot-stuffed, the terminator
    (after a CRLF only where the message lacks one)."""
    u = user()
    pop.put(u, DOTS, NO_FINAL_CRLF, b"")
    p = pop.login(u)
    assert p.list(2) == b"+OK 2 %d" % len(NO_FINAL_CRLF)
    p.sock.sendall(b"RETR 1\r\n")
    got = recv_until(p.sock, b"\r\n.\r\n")
    stuffed = DOTS.replace(b"\r\n.", b"\r\n..")
    assert got == b"+OK %d octets\r\n" % len(DOTS) + stuffed + b".\r\n"
    p.sock.sendall(b"RETR 2\r\n")
    got = recv_until(p.sock, b"\r\n.\r\n")
    assert got == b"+OK %d octets\r\n" % len(NO_FINAL_CRLF) + NO_FINAL_CRLF + b"\r\n.\r\n"
    p.sock.sendall(b"RETR 3\r\nQUIT\r\n")
    got = recv_until(p.sock, b"Logging out.\r\n")
    assert got == b"+OK 0 octets\r\n.\r\n+OK Logging out.\r\n"


def test_top(pop: Pop) -> None:
    u = user()
    header = b"From: a@example.org\r\nSubject: top\r\n\r\n"
    body = b"line 1\r\n.line 2\r\nline 3\r\n"
    pop.put(u, header + body, b"From: a@example.org\r\nSubject: no body\r\n",
            header + b"only line")
    p = pop.login(u)
    for k, want in ((0, b""), (1, b"line 1\r\n"), (2, b"line 1\r\n.line 2\r\n"),
                    (3, body), (50, body)):
        resp, lines, _ = p.top(1, k)
        assert resp == b"+OK"
        assert b"".join(line + b"\r\n" for line in lines) == header + want, k
    # A header without a body: the whole message, whatever the count.
    resp, lines, _ = p.top(2, 0)
    assert lines == [b"From: a@example.org", b"Subject: no body"]
    resp, lines, _ = p.top(3, 5)
    assert lines == [b"From: a@example.org", b"Subject: top", b"", b"only line"]
    p.sock.sendall(b"TOP 1 2\r\n")
    assert recv_until(p.sock, b"\r\n.\r\n") == (
        b"+OK\r\n" + header + b"line 1\r\n..line 2\r\n.\r\n")
    with pytest.raises(poplib.error_proto, match=r"Invalid number of lines"):
        p._shortcmd("TOP 1 -1")  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"Usage: TOP"):
        p._shortcmd("TOP 1")  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"no message 4"):
        p.top(4, 0)
    p.quit()
    # TOP does not mark a message \Seen.
    assert all("\\Seen" not in f for *_, f in pop.stored(u))


def test_dele_rset_noop_and_bad_arguments(pop: Pop) -> None:
    u = user()
    raws = [msg("a"), msg("b", "bb\r\n"), msg("c", "ccc\r\n")]
    pop.put(u, *raws)
    p = pop.login(u)
    assert p.dele(2) == b"+OK Message 2 deleted."
    with pytest.raises(poplib.error_proto, match=r"Message 2 is deleted"):
        p.dele(2)
    for call in (lambda: p.retr(2), lambda: p.top(2, 0), lambda: p.list(2),
                 lambda: p.uidl(2)):
        with pytest.raises(poplib.error_proto, match=r"Message 2 is deleted"):
            call()
    assert p.stat() == (2, len(raws[0]) + len(raws[2]))
    assert [x.split()[0] for x in p.list()[1]] == [b"1", b"3"]
    assert [x.split()[0] for x in p.uidl()[1]] == [b"1", b"3"]
    with pytest.raises(poplib.error_proto, match=r"no message 0"):
        p.retr(0)
    with pytest.raises(poplib.error_proto, match=r"no message 4"):
        p.dele(4)
    with pytest.raises(poplib.error_proto, match=r"Invalid message number"):
        p._shortcmd("RETR x")  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"Usage: DELE"):
        p._shortcmd("DELE")  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"Usage: STAT"):
        p._shortcmd("STAT 1")  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"Unknown command"):
        p._shortcmd("XYZZY")  # type: ignore[attr-defined]
    assert p.noop() == b"+OK"
    assert p.rset().startswith(b"+OK")
    assert p.stat() == (3, sum(len(r) for r in raws))
    assert retr_bytes(p, 2) == raws[1]
    p.quit()
    assert len(pop.stored(u)) == 3


def test_dele_quit_is_seen_by_imap(pop: Pop) -> None:
    u = user()
    m = pop.imap(u)
    for s in ("one", "two", "three", "four"):
        typ, _ = m.append("INBOX", None, None, msg(s))
        assert typ == "OK"
    assert m.select("INBOX") == ("OK", [b"4"])
    p = pop.login(u)
    retr_bytes(p, 1)
    retr_bytes(p, 2)
    p.top(3, 0)
    p.dele(2)
    p.dele(4)
    assert p.quit() == b"+OK Logging out, messages deleted."
    typ, data = m.noop()
    assert typ == "OK"
    # The selected IMAP session learns about the two expunges.
    expunged = m.untagged_responses.get("EXPUNGE", [])
    assert sorted(expunged, reverse=True) == [b"4", b"2"] or expunged == [b"2", b"3"], expunged
    typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    flat = b" ".join(x[0] if isinstance(x, tuple) else x for x in data if x)
    got = {int(uid): fl.split() for uid, fl in re.findall(rb"UID (\d+) FLAGS \(([^)]*)\)",
                                                            flat)}
    assert sorted(got) == [1, 3], flat
    assert b"\\Seen" in got[1] and b"\\Seen" not in got[3], flat
    m.close()
    m.logout()


def test_drop_without_quit_deletes_nothing(pop: Pop) -> None:
    u = user()
    pop.put(u, msg("a"), msg("b"))
    p = pop.login(u)
    p.retr(1)
    p.dele(1)
    p.dele(2)
    p.sock.close()
    time.sleep(0.2)
    stored = pop.stored(u)
    assert len(stored) == 2 and all("\\Seen" not in f for *_, f in stored)
    p = pop.login(u)
    assert p.stat()[0] == 2
    p.quit()


@pytest.mark.parametrize("fmt", ["%08Xv%08Xu", "%g", "%v.%u-%m"])
def test_uidl_stable(pop: Pop, settings: Any, fmt: str) -> None:
    settings(uidl_format=fmt)
    assert Pop3Settings.check_uidl_format(fmt) is None
    u = user()
    raws = [msg(f"m{i}", f"body {i}\r\n") for i in range(5)]
    uids = pop.put(u, *raws)
    p = pop.login(u)
    first = dict(x.split() for x in p.uidl()[1])
    assert len(set(first.values())) == 5
    assert p.uidl(3) == b"+OK 3 " + first[b"3"]
    for v in first.values():
        assert re.fullmatch(rb"[\x21-\x7e]{1,70}", v)
    if fmt == "%08Xv%08Xu":
        uv = pop.uidvalidity(u)
        assert list(first.values()) == [b"%08X%08X" % (uv, uid) for uid in uids]
    if fmt == "%v.%u-%m":
        md5 = hashlib.md5(raws[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n").hexdigest()
        assert first[b"1"] == f"{pop.uidvalidity(u)}.{uids[0]}-{md5}".encode()
    p.dele(1)
    p.dele(3)
    p.quit()
    # Another session: the same messages keep their names though their numbers moved.
    p = pop.login(u)
    again = [v for _, v in (x.split() for x in p.uidl()[1])]
    assert again == [first[b"2"], first[b"4"], first[b"5"]]
    p.quit()


def test_uidl_format_strings() -> None:
    assert format_uidl("%08Xv%08Xu", 0x5F00AB, 26, "g", None) == "005F00AB0000001A"
    assert format_uidl("%xv.%u", 255, 7, "g", None) == "ff.7"
    assert format_uidl("%g", 1, 1, "0123abcd", None) == "0123abcd"
    assert format_uidl("%Xg%%", 1, 1, "0123abcd", None) == "0123ABCD%"
    assert format_uidl("%m", 1, 1, "g", "d41d8c") == "d41d8c"
    assert format_uidl("%5u", 1, 42, "g", None) == "   42"


def test_pipelined_commands_in_one_write(pop: Pop) -> None:
    u = user()
    raws = [DOTS, msg("second")]
    pop.put(u, *raws)
    s = pop.raw()
    recv_lines(s, 1)
    s.sendall(f"CAPA\r\nUSER {u}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST 2\r\nRETR 1\r\n"
              "TOP 2 0\r\nDELE 2\r\nUIDL 2\r\nNOOP\r\nRSET\r\nQUIT\r\n".encode())
    got = recv_until(s, b"+OK Logging out.\r\n")
    replies = got.split(b"\r\n")
    assert replies[0] == b"+OK Capability list follows"
    rest = got[got.index(b"\r\n.\r\n") + 5:]
    assert rest.startswith(b"+OK\r\n+OK Logged in.\r\n+OK 2 %d\r\n+OK 2 %d\r\n"
                           % (len(raws[0]) + len(raws[1]), len(raws[1])))
    assert (b"+OK %d octets\r\n" % len(raws[0]) + DOTS.replace(b"\r\n.", b"\r\n..") + b".\r\n"
            + b"+OK\r\n" + raws[1].split(b"\r\n\r\n")[0] + b"\r\n\r\n.\r\n"
            + b"+OK Message 2 deleted.\r\n-ERR Message 2 is deleted.\r\n+OK\r\n") in rest
    assert rest.endswith(b"+OK Logging out.\r\n")
    assert len(pop.stored(u)) == 2  # RSET undid the DELE


def test_two_sessions_of_one_user(pop: Pop) -> None:
    """No lock: each session works on its login snapshot; what one expunged is gone for
    the other's RETR/TOP (-ERR), a no-op for its DELE; new mail waits for the next login."""
    u = user()
    raws = [msg("a"), msg("b"), msg("c")]
    pop.put(u, *raws)
    a = pop.login(u)
    b = pop.login(u)
    assert a.stat() == b.stat() == (3, sum(len(r) for r in raws))
    b_uidl = b.uidl()[1]
    a.dele(1)
    a.dele(2)
    assert a.quit() == b"+OK Logging out, messages deleted."
    # b still numbers and lists what it saw at login.
    assert b.stat() == (3, sum(len(r) for r in raws))
    assert b.uidl()[1] == b_uidl
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR Message 1 was deleted by another"):
        b.retr(1)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR Message 2 was deleted by another"):
        b.top(2, 0)
    assert retr_bytes(b, 3) == raws[2]
    pop.put(u, msg("new"))
    assert b.stat()[0] == 3  # new mail only at the next login
    b.dele(1)  # already gone: a no-op at UPDATE
    assert b.quit() == b"+OK Logging out, messages deleted."
    stored = pop.stored(u)
    assert [d for _, _, d, _ in stored] == [raws[2], msg("new")]
    assert "\\Seen" in stored[0][3]
    c = pop.login(u)
    assert c.stat() == (2, len(raws[2]) + len(msg("new")))
    c.quit()


# -- bounds ---------------------------------------------------------------------------------


def test_long_lines(pop: Pop) -> None:
    u = user()
    p = pop.connect()
    # RFC 2449 says 255 octets; longer lines are accepted up to 8192.
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd("AUTH PLAIN " + base64.b64encode(b"\0" + b"x" * 400 + b"\0y").decode())  # type: ignore[attr-defined]
    p.sock.sendall(b"USER " + b"x" * 9000 + b"\r\n")
    assert p._getline()[0] == b"-ERR Line too long."  # type: ignore[attr-defined]
    p.sock.sendall(b"USER " + b"x" * 40000 + b"\r\n")
    assert p._getline()[0] == b"-ERR Line too long."  # type: ignore[attr-defined]
    p.user(u)
    assert p.pass_(PASSWORD).startswith(b"+OK")
    p.quit()


def test_bad_command_budget(pop: Pop, settings: Any) -> None:
    settings(max_bad_commands=3)
    s = pop.raw()
    recv_lines(s, 1)
    s.sendall(b"FOO\r\nSTAT\r\nRETR\r\nCAPA\r\n")
    got = recv_until(s, b"closing the connection.\r\n")
    assert got.split(b"\r\n")[:3] == [
        b"-ERR Unknown command.", b"-ERR STAT is not valid in the AUTHORIZATION state.",
        b"-ERR RETR is not valid in the AUTHORIZATION state. Too many bad commands, closing "
        b"the connection."]
    assert s.recv(100) == b""


def test_idle_timeout(pop: Pop, settings: Any) -> None:
    settings(idle_timeout=1)
    u = user()
    pop.put(u, msg("a"))
    p = pop.login(u)
    p.dele(1)
    time.sleep(1.5)
    assert p.file.readline() == b"-ERR Disconnected for inactivity.\r\n"
    assert p.file.readline() == b""
    assert len(pop.stored(u)) == 1


def test_logout_log_line(pop: Pop, caplog: pytest.LogCaptureFixture) -> None:
    u = user()
    raws = [msg("a"), msg("b", "bbbb\r\n")]
    pop.put(u, *raws)
    with caplog.at_level(logging.INFO, logger="cloudcote.pop3"):
        p = pop.login(u)
        p.top(1, 0)
        retr_bytes(p, 2)
        p.dele(1)
        p.quit()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                f"user={u}" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if f"user={u}" in r.getMessage()]
    hdr = len(raws[0].split(b"\r\n\r\n")[0]) + 4
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"pop3-\d+ user={u} ip=127\.0\.0\.1: Logged out top=1/{hdr} "
        rf"retr=1/{len(raws[1])} del=1/2 size={sum(len(r) for r in raws)}", lines[0]), lines


def test_shutdown_deletes_nothing(request: pytest.FixtureRequest, tmp_path: Path,
                                  pop_server: ImapServer) -> None:
    libfs_only(pop_server, "mail kept in the store across a restart")
    backend = request.node.callspec.params["pop_server"]
    spec = fs_spec_for(backend, request, tmp_path)
    srv = start_server(spec)
    u = user()
    c = Pop(srv)
    try:
        c.put(u, msg("a"))
        p = c.login(u)
        p.dele(1)
        stop_server(srv)
        assert p.file.readline() == b"-ERR [SYS/TEMP] Server shutting down.\r\n"
        p.close()
    finally:
        c.close()
    srv = start_server(spec)
    c = Pop(srv)
    try:
        p = c.login(u)
        assert p.stat()[0] == 1
        p.quit()
    finally:
        c.close()
        stop_server(srv)


def test_one_write_per_pipelined_batch(pop: Pop, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 2449 PIPELINING: the replies to a batch of commands that arrived together go
    out in one write, once no further command is waiting."""
    u = user()
    pop.put(u, msg("a"), msg("b"))
    writes: list[int] = []
    real_flush = Pop3Session.flush

    async def counting_flush(self: Pop3Session) -> None:
        if self.out and self.user == u:
            writes.append(self.out_size)
        await real_flush(self)

    monkeypatch.setattr(Pop3Session, "flush", counting_flush)
    p = pop.login(u)
    writes.clear()
    p.sock.sendall(b"STAT\r\nLIST\r\nUIDL\r\nTOP 1 0\r\nRETR 2\r\nNOOP\r\n")
    got = recv_until(p.sock, b"\r\n.\r\n+OK\r\n")
    assert got.count(b"+OK") == 6
    assert writes == [len(got)]
    p.quit()


def test_read_failure_after_ok_cuts_the_reply(pop: Pop, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store failure in the middle of a RETR ends the connection: the client never gets
    a terminator, so never a message that looks complete; the message stays unseen."""
    u = user()
    big = big_message()
    pop.put(u, big)
    box_class = mailbox_class(pop.srv)
    real_read = box_class.read_message

    async def failing_read(self: Any, msg: Any, start: int = 0,
                           end: int | None = None) -> bytes:
        if self.user.user == u and start > 0:
            raise StorageUnavailable("test: store down")
        return await real_read(self, msg, start, end)

    monkeypatch.setattr(box_class, "read_message", failing_read)
    p = pop.login(u)
    p.sock.sendall(b"RETR 1\r\n")
    got = b""
    while chunk := p.sock.recv(65536):
        got += chunk
    assert got.startswith(b"+OK %d octets\r\n" % len(big))
    assert not got.endswith(b"\r\n.\r\n") and len(got) < len(big)
    monkeypatch.undo()
    (stored,) = pop.stored(u)
    assert "\\Seen" not in stored[3]


def test_expunge_failure_at_quit(pop: Pop, monkeypatch: pytest.MonkeyPatch) -> None:
    u = user()
    pop.put(u, msg("a"), msg("b"))

    async def failing_expunge(self: Any, uids: Any = None) -> list[int]:
        raise StorageUnavailable("test: store down")

    p = pop.login(u)
    p.dele(1)
    monkeypatch.setattr(mailbox_class(pop.srv), "expunge", failing_expunge)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[SYS/TEMP\] Some deleted"):
        p.quit()
    assert p.file.readline() == b""
    monkeypatch.undo()
    assert len(pop.stored(u)) == 2
    p = pop.login(u)
    p.dele(1)
    assert p.quit() == b"+OK Logging out, messages deleted."
    assert [d for _, _, d, _ in pop.stored(u)] == [msg("b")]


@pytest.mark.parametrize("seed", range(5))
def test_dot_stuffing_and_top_cut_across_chunks(seed: int) -> None:
    rnd = random.Random(seed)
    pieces = [b".", b"\r\n", b"a", b"..", b"\r\n.\r\n", b"x y", b"\r\n\r\n"]
    raw = b"".join(rnd.choice(pieces) for _ in range(300))
    whole = _DotStuffer()
    want = whole.stuff(raw) + whole.end()
    assert want.endswith(b".\r\n")
    for _ in range(20):
        cuts = sorted(rnd.sample(range(1, len(raw)), rnd.randint(1, 30)))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        st = _DotStuffer()
        assert b"".join(st.stuff(c) for c in chunks) + st.end() == want
        lines = rnd.randint(0, 40)
        expect, _ = _TopCut(lines).feed(raw)
        cut = _TopCut(lines)
        got = b""
        for c in chunks:
            part, done = cut.feed(c)
            got += part
            if done:
                break
        assert got == expect
        # The reference: the header block up to its blank line, then ``lines`` lines.
        hdr = mime.header_block(raw)
        body_lines = re.findall(rb"[^\n]*\n|[^\n]+$", raw[len(hdr):])
        assert expect == hdr + b"".join(body_lines[:lines])


class PeakReads(ForwardingFs):
    """A stage on top of the store that records how many reads were in flight at once."""

    name = "peak-reads"

    def __init__(self, parent: Fs) -> None:
        super().__init__(parent)
        self.now = 0
        self.peak = 0

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await self.parent.read_range(path, start, end)
        finally:
            self.now -= 1


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """posix storage behind 50 ms of latency per request, reads observed."""
    base = tmp_path_factory.mktemp("pop3slow")
    srv = start_server(f"latency:50ms:posix:{base / 'fs'}",
                       settings=StorageSettings(poll_interval=30), fs_wrap=PeakReads)
    try:
        yield srv
    finally:
        stop_server(srv)


def test_pipelined_retr_reads_ahead(slow_server: ImapServer) -> None:
    """Pipelined RETRs read their messages ahead ([storage] prefetch_count): the reads of
    twelve messages overlap instead of going one after another."""
    c = Pop(slow_server)
    peak = slow_server.fs
    assert isinstance(peak, PeakReads)
    try:
        u = user()
        raws = [msg(f"m{i}", f"body {i}\r\n" * (i + 1)) for i in range(12)]
        c.put(u, *raws)
        p = c.login(u)
        peak.peak = 0
        p.sock.sendall(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(12)) + b"QUIT\r\n")
        got = recv_until(p.sock, b"+OK Logging out.\r\n")
        assert got.count(b"\r\n.\r\n") == 12
        for raw in raws:
            assert raw in got
        # One at a time would never have two reads in flight.
        assert peak.peak >= 4, peak.peak
    finally:
        c.close()
