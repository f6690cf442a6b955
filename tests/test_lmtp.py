"""The LMTP server as MTAs see it: smtplib.LMTP and swaks over TCP and the unix socket,
raw sockets for byte-level cases (BDAT, bare LF, pipelining, bad input), against a real
server (tests/imap_support.py) on every IMAP backend; mail read back with imaplib or
straight from the store.

Two servers per backend: ``srv`` (sdbox, detail mailboxes on, Received added, small
limits) and ``msrv`` (mdbox, detail mailboxes off, no Received, a short idle timeout).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from cloudcote.core.auth.passdb import StaticPassDb, UserEntry
from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs import open_fs
from cloudcote.libfs.api import ForwardingFs, FsUnavailable, WriteMode
from cloudcote.protocols.listener import Connection
from cloudcote.protocols.lmtp.delivery import message_id, split_detail
from cloudcote.protocols.lmtp.session import Address, LmtpSession, Transaction, parse_path
from cloudcote.protocols.lmtp.settings import LmtpSettings
from cloudcote.protocols.session import ServerContext

from .imap_support import (
    IMAP_BACKENDS,
    PASSWORD,
    ImapServer,
    fs_spec_for,
    libfs_only,
    server_fixture,
    start_server,
    stop_server,
)

DOMAIN = "example.com"
SIZE_LIMIT = 64 * 1024
MAX_RCPTS = 5
MAX_BAD = 5
TRACE_RE = re.compile(
    rb"^Return-Path: <(?P<sender>[^>]*)>\r\n"
    rb"(?:Delivered-To: (?P<delivered>[^\r\n]+)\r\n)?"
    rb"(?:Received: from (?P<lhlo>\S+)(?: \(\[(?P<ip>[^\]]+)\]\))?\r\n"
    rb"\tby (?P<host>\S+) with LMTP id (?P<id>\S+)\r\n"
    rb"\t\(envelope-from <[^>]*>\)(?:\r\n\tfor <(?P<for>[^>]+)>)?; (?P<date>[^\r\n]+)\r\n)?")


class LmtpPassDb(StaticPassDb):
    """Any user, except: ``nouser*`` does not exist, ``broken*`` makes the lookup fail,
    ``badrule*`` has an unusable quota rule, ``quota*`` has 1K of storage, ``full*`` may
    keep one message."""

    async def user_lookup(self, user: str) -> UserEntry | None:
        local = user.partition("@")[0]
        if local.startswith("nouser"):
            return None
        if local.startswith("broken"):
            raise RuntimeError("user database unreachable")
        entry = await super().user_lookup(user)
        assert entry is not None
        if local.startswith("quota"):
            entry.extra["userdb_quota_rule"] = "*:storage=1K"
        elif local.startswith("full"):
            entry.extra["userdb_quota_rule"] = "*:messages=1"
        elif local.startswith("badrule"):
            entry.extra["userdb_quota_rule"] = "lots"
        return entry


class FailingMessageWrites(ForwardingFs):
    """Message objects of ``failing*`` users cannot be written (the store is down)."""

    async def write(self, path: str, data: bytes, mode: WriteMode = WriteMode.CREATE,
                    metadata: Mapping[str, str] | None = None) -> None:
        if "/failing" in path and "/msg/" in path:
            raise FsUnavailable(f"{path}: injected failure")
        await self.parent.write(path, data, mode, metadata)


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def srv(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(
        request, tmp_path_factory.mktemp("lmtp"), passdb=LmtpPassDb(PASSWORD),
        fs_wrap=FailingMessageWrites,
        lmtp=LmtpSettings(save_to_detail_mailbox=True, max_message_size=SIZE_LIMIT,
                          max_recipients=MAX_RCPTS, max_bad_commands=MAX_BAD))


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def msrv(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(
        request, tmp_path_factory.mktemp("lmtpm"), passdb=LmtpPassDb(PASSWORD),
        settings=StorageSettings(layout="mdbox", poll_interval=0.3),
        lmtp=LmtpSettings(save_to_detail_mailbox=False, add_received_header=False,
                          idle_timeout=1.5))


# -- helpers --------------------------------------------------------------------------------


def new_addr(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}@{DOMAIN}"


def make_message(subject: str = "hello", body: bytes = b"Hello there.\r\n") -> bytes:
    return (f"From: sender@example.org\r\nTo: someone@{DOMAIN}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n").encode() + body


def lmtp(srv: ImapServer, unix: bool = False) -> smtplib.LMTP:
    client = (smtplib.LMTP(srv.lmtp_path) if unix
              else smtplib.LMTP(srv.host, srv.lmtp_port, timeout=60))
    code, _ = client.ehlo("mta.example.org")
    assert code == 250
    return client


def stored(srv: ImapServer, user: str, mailbox: str = "INBOX") -> list[bytes]:
    """Every message of the user's mailbox, in UID order, read from the store."""

    async def read() -> list[bytes]:
        assert srv.ctx.mail is not None
        um = await srv.ctx.mail.user(user)
        await um.refresh_list()
        box = await um.mailbox(mailbox)
        await box.refresh()
        return [await box.read_message(box.state.messages[u]) for u in box.state.uids]

    return list(srv.call(read()))


def imap_messages(srv: ImapServer, user: str, mailbox: str = "INBOX") -> list[bytes]:
    """Every message of the user's mailbox read with imaplib (BODY.PEEK[])."""
    m = srv.login(user)
    try:
        typ, _ = m.select(mailbox, readonly=True)
        assert typ == "OK"
        typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        return [item[1] for item in data if isinstance(item, tuple)]
    finally:
        m.logout()


def split_trace(raw: bytes) -> tuple[re.Match[bytes], bytes]:
    m = TRACE_RE.match(raw)
    assert m is not None, raw[:300]
    return m, raw[m.end():]


class Raw:
    """A raw LMTP connection for byte-level cases."""

    def __init__(self, srv: ImapServer, unix: bool = False) -> None:
        if unix:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(srv.lmtp_path)
        else:
            self.sock = socket.create_connection((srv.host, srv.lmtp_port), timeout=60)
        self.sock.settimeout(60)
        self.file = self.sock.makefile("rb")
        assert self.reply()[0].startswith(b"220 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline()

    def reply(self) -> list[bytes]:
        """One (multi-line) reply's lines, without CRLF."""
        lines: list[bytes] = []
        while True:
            line = self.file.readline()
            assert line.endswith(b"\r\n"), (lines, line)
            lines.append(line[:-2])
            if line[3:4] != b"-":
                return lines

    def cmd(self, data: bytes) -> bytes:
        self.send(data + b"\r\n")
        return self.reply()[-1]

    def envelope(self, sender: str, rcpts: list[str], mail_params: str = "") -> None:
        assert self.cmd(b"LHLO mta.example.org").startswith(b"250 ")
        assert self.cmd(f"MAIL FROM:<{sender}>{mail_params}".encode()).startswith(b"250 ")
        for r in rcpts:
            assert self.cmd(f"RCPT TO:<{r}>".encode()).startswith(b"250 "), r

    def bdat(self, data: bytes, last: bool = False) -> bytes:
        """One BDAT chunk; the first line of the reply to it."""
        self.send(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data)
        return self.reply()[0]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# -- pure helpers ---------------------------------------------------------------------------


def test_parse_path_and_detail() -> None:
    addr, rest = parse_path("<@relay.example,@b.example:a.b+c@example.com> SIZE=10")
    assert (addr.text, addr.local, addr.domain, rest) == (
        "a.b+c@example.com", "a.b+c", "example.com", "SIZE=10")
    addr, _ = parse_path('<"x y\\"z"@[127.0.0.1]>')
    assert addr.local == 'x y"z' and addr.domain == "[127.0.0.1]"
    assert parse_path("<>")[0].is_null
    assert split_detail("user+box+more", "+") == ("user", "box+more")
    assert split_detail("user-box", "+-") == ("user", "box")
    assert split_detail("+user", "+") == ("+user", None)
    assert split_detail("user+box", "") == ("user+box", None)
    assert message_id(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nMessage-ID: <c@d>\r\n") \
        == "<a@b>"
    assert message_id(b"Subject: x\r\n\r\n") == "unspecified"


DATA_CASES = [
    b"a\r\n..b\r\n.c\r\n.\r\nQUIT\r\n",
    b".\r\nNOOP\r\n",
    b"..\r\n...\r\n.\n",
    b"bare\nlf\n..x\n.\nrest",
    b"x" * 50 + b"\r\n." + b"y" * 40 + b"\r\n.\r\n",
    b"no.\r\nend.\r\n\r\n.\r\n.\r\n",
    b"cr\r.\r\n.\rnot end\r\n.\r\n",
]


def _reference_data(data: bytes) -> tuple[bytes, bytes]:
    """What DATA must yield: the unstuffed lines before the ``.`` line, and what follows."""
    out: list[bytes] = []
    pos = 0
    while True:
        nl = data.index(b"\n", pos)
        line = data[pos:nl + 1]
        pos = nl + 1
        if line in (b".\r\n", b".\n"):
            return b"".join(out), data[pos:]
        out.append(line[1:] if line[:1] == b"." else line)


async def _read_data(data: bytes, piece: int) -> tuple[bytes | None, bytes]:
    reader = asyncio.StreamReader(limit=16)  # small: over-long lines take their own path
    conn = Connection(reader, None, "lmtp-t", "local", True, False)  # type: ignore[arg-type]
    ctx = ServerContext(passdb=StaticPassDb(PASSWORD), ssl_context=None,
                        disable_plaintext_auth=False)
    session = LmtpSession(conn, ctx)

    async def feed() -> None:
        for i in range(0, len(data), piece):
            reader.feed_data(data[i:i + piece])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeding = asyncio.ensure_future(feed())
    body, _ = await session._read_data()
    await feeding
    return body, await reader.read()


@pytest.mark.parametrize("case", range(len(DATA_CASES)))
def test_data_reader_in_any_pieces(case: int) -> None:
    """DATA's reader against a line-by-line reference, with the input arriving at once,
    byte by byte and in pieces of every size up to 9."""
    data = DATA_CASES[case]
    want = _reference_data(data)
    for piece in [len(data), *range(1, 10)]:
        assert asyncio.run(_read_data(data, piece)) == want, piece


# -- smtplib.LMTP ---------------------------------------------------------------------------


def test_multi_recipient_replies_per_recipient(srv: ImapServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    libfs_only(srv, "failures injected by a stage on the chain")
    a, b, q, n = new_addr(), new_addr(), new_addr("quota"), new_addr("nouser")
    f = new_addr("failing")
    msg = make_message("multi", b"x" * 2000 + b"\r\n")
    client = lmtp(srv)
    try:
        assert client.mail("sender@example.org")[0] == 250
        assert client.rcpt(a)[0] == 250
        code, text = client.rcpt(n)
        assert code == 550 and text.startswith(b"5.1.1 <" + n.encode() + b"> User doesn't")
        assert client.rcpt(q)[0] == 250  # quota known to fit only once the size is
        assert client.rcpt(f)[0] == 250
        assert client.rcpt(b)[0] == 250
        with caplog.at_level("INFO", logger="cloudcote.lmtp"):
            code, text = client.data(msg)
            assert code == 250 and text.startswith(b"2.0.0 <" + a.encode() + b">"), text
            code, text = client.getreply()
            assert (code, text) == (552, b"5.2.2 <" + q.encode()
                                    + b"> Quota exceeded (mailbox for user is full)")
            code, text = client.getreply()  # the store failed: temporary, never a 250
            assert code == 451 and text.startswith(b"4.3.0 <" + f.encode() + b">"), text
            code, text = client.getreply()
            assert code == 250 and text.startswith(b"2.0.0 <" + b.encode() + b">"), text
        assert client.noop()[0] == 250
    finally:
        client.quit()
    mid = re.search(rb"Message-ID: (<[^>]+>)", msg)
    assert mid is not None
    saved = [r for r in caplog.records if "saved mail to INBOX (uid 1)" in r.getMessage()]
    assert len(saved) == 2 and mid.group(1).decode() in saved[0].getMessage()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and f in errors[0].getMessage()
    copies = [imap_messages(srv, a), imap_messages(srv, b)]
    assert [len(c) for c in copies] == [1, 1]
    assert copies[0] == copies[1]  # no recipient-specific header with several recipients
    trace, rest = split_trace(copies[0][0])
    assert rest == msg
    assert trace["sender"] == b"sender@example.org"
    assert trace["delivered"] is None and trace["for"] is None
    assert trace["lhlo"] == b"mta.example.org" and trace["ip"] == b"127.0.0.1"
    assert stored(srv, q) == []


def test_single_recipient_headers_over_unix_socket(srv: ImapServer) -> None:
    rcpt = new_addr()
    msg = make_message("unix")
    client = lmtp(srv, unix=True)
    try:
        assert client.mail("<>")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(msg)
        assert code == 250 and b"Saved as UID 1" in text
    finally:
        client.quit()
    (raw,) = imap_messages(srv, rcpt)
    trace, rest = split_trace(raw)
    assert rest == msg
    assert trace["sender"] == b"" and trace["ip"] is None
    assert trace["delivered"] == rcpt.encode() and trace["for"] == rcpt.encode()


def test_starttls_resets_session(srv: ImapServer) -> None:
    rcpt = new_addr()
    client = lmtp(srv)
    try:
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=srv.client_tls)
        assert code == 220
        assert client.mail("s@example.org")[0] == 503  # LHLO needed again
        client.ehlo("mta.example.org")
        assert not client.has_extn("starttls")
        assert client.mail("s@example.org")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        assert client.data(make_message("tls"))[0] == 250
    finally:
        client.quit()
    assert len(stored(srv, rcpt)) == 1


def test_extensions_and_simple_commands(srv: ImapServer) -> None:
    client = lmtp(srv)
    try:
        for ext in ("pipelining", "enhancedstatuscodes", "8bitmime", "chunking", "smtputf8"):
            assert client.has_extn(ext), ext
        assert client.esmtp_features["size"] == str(SIZE_LIMIT)
        assert client.noop() == (250, b"2.0.0 OK")
        assert client.verify(new_addr())[0] == 252
        assert client.docmd("HELP")[0] == 214
        assert client.docmd("EHLO", "x.example")[0] == 500
    finally:
        client.quit()


def test_rset_and_sequence_errors(srv: ImapServer) -> None:
    rcpt = new_addr()
    client = lmtp(srv)
    try:
        assert client.docmd("RCPT", "TO:<" + rcpt + ">")[0] == 503
        assert client.docmd("DATA")[0] == 503
        assert client.mail("s@example.org")[0] == 250
        assert client.mail("s@example.org")[0] == 503  # nested MAIL
        assert client.docmd("DATA")[0] == 503  # no recipients (RFC 2033 4.2)
        assert client.rcpt(rcpt)[0] == 250
        assert client.rset()[0] == 250
        assert client.docmd("DATA")[0] == 503
        assert client.mail("s@example.org")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        assert client.data(make_message("after rset"))[0] == 250
    finally:
        client.quit()
    assert len(stored(srv, rcpt)) == 1


def test_dot_stuffing_and_8bit(srv: ImapServer) -> None:
    rcpt = new_addr()
    body = (b".leading dot\r\n..two dots\r\n.\r\nsingle dot line above\r\n"
            b"8-bit: \xc3\xa4\xc3\xb6\xc3\xbc \xff\xfe\r\n.")
    msg = make_message("dots", body)
    client = lmtp(srv)
    try:
        assert client.mail("s@example.org", ["BODY=8BITMIME"])[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        assert client.data(msg)[0] == 250  # smtplib stuffs the dots and ends with CRLF
    finally:
        client.quit()
    (raw,) = imap_messages(srv, rcpt)
    assert split_trace(raw)[1] == msg + b"\r\n"


def test_smtputf8_addresses(srv: ImapServer) -> None:
    rcpt = f"jörg{uuid.uuid4().hex[:8]}@exämple.com"
    client = lmtp(srv)
    try:
        assert client.mail("plain@example.org")[0] == 250
        client.command_encoding = "utf-8"  # smtplib would refuse to send it
        assert client.rcpt(rcpt)[0] == 553  # no SMTPUTF8 in MAIL
        client.rset()
        assert client.mail("sénder@example.org", ["SMTPUTF8"])[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        assert client.data(make_message("utf8"))[0] == 250
    finally:
        client.quit()
    (raw,) = stored(srv, rcpt)
    trace, _ = split_trace(raw)
    assert trace["sender"] == "sénder@example.org".encode()
    assert trace["delivered"] == rcpt.encode()


def test_size_limits(srv: ImapServer) -> None:
    a, b = new_addr(), new_addr()
    client = lmtp(srv)
    try:
        code, text = client.mail("s@example.org", [f"SIZE={SIZE_LIMIT + 1}"])
        assert code == 552 and text.startswith(b"5.3.4"), text
        assert client.mail("s@example.org", [f"SIZE={SIZE_LIMIT - 10}"])[0] == 250
        assert client.rcpt(a)[0] == 250
        assert client.rcpt(b)[0] == 250
        code, text = client.data(make_message("big", b"y" * 100 + b"\r\n") * 1000)
        assert code == 552 and text.startswith(b"5.3.4 <" + a.encode() + b">"), text
        code, text = client.getreply()
        assert code == 552 and text.startswith(b"5.3.4 <" + b.encode() + b">"), text
        assert client.noop()[0] == 250  # the session is in step after the refusal
        assert client.mail("s@example.org", ["SIZE=abc"])[0] == 501
        assert client.mail("s@example.org", ["BODY=9BIT"])[0] == 501
        assert client.mail("s@example.org", ["FOO=1"])[0] == 555
    finally:
        client.quit()
    assert stored(srv, a) == [] and stored(srv, b) == []


def test_quota_at_rcpt(srv: ImapServer) -> None:
    q, full = new_addr("quota"), new_addr("full")
    client = lmtp(srv)
    try:
        assert client.mail("s@example.org", ["SIZE=5000"])[0] == 250
        code, text = client.rcpt(q)
        assert code == 552 and text.startswith(b"5.2.2 <" + q.encode() + b">"), text
        client.rset()
        assert client.mail("s@example.org")[0] == 250
        assert client.rcpt(full)[0] == 250
        assert client.data(make_message("the one"))[0] == 250
        assert client.mail("s@example.org")[0] == 250
        assert client.rcpt(full)[0] == 552  # its one message is there now
        code, text = client.rcpt(new_addr("broken"))
        assert code == 451 and text.startswith(b"4.3.0"), text
        code, text = client.rcpt(new_addr("badrule"))
        assert code == 451 and text.startswith(b"4.3.0"), text
    finally:
        client.quit()
    assert len(stored(srv, full)) == 1


def test_rcpt_quota_is_core_rule(tmp_path: Path) -> None:
    """RCPT refuses a recipient only when one more message (of MAIL's SIZE=, if given)
    would go over the quota, as ``User.check_quota`` does: a mailbox filled exactly to
    its limit still takes a RCPT without SIZE= (DATA then refuses the real message)."""

    async def main() -> list[str]:
        fs = await open_fs(f"posix:{tmp_path}")
        store = MailStore(fs, StorageSettings())
        ctx = ServerContext(passdb=StaticPassDb(PASSWORD, extra={
            "userdb_quota_rule": "*:storage=100"}), ssl_context=None,
            disable_plaintext_auth=False, mail=store)
        conn = Connection(asyncio.StreamReader(), None, "lmtp-t", "local",  # type: ignore[arg-type]
                          True, False)
        session = LmtpSession(conn, ctx)
        entry = await ctx.passdb.user_lookup("filled")
        mail = await ctx.user_mail(entry)
        head = b"Subject: exactly the quota\r\n\r\n"
        await (await mail.mailbox("INBOX")).save(head + b"x" * (100 - len(head)))
        assert (await mail.quota_usage()).bytes == 100
        replies = []
        for size in (None, 0, 1):
            txn = Transaction(sender=Address("", "", None), size=size, body_type="7BIT",
                              utf8=False)
            addr, _ = parse_path("<filled>")
            replies.append(await session.handler.handle_RCPT(session, txn, addr))
            assert len(txn.recipients) == (1 if replies[-1].startswith("250") else 0)
        await store.close()
        await fs.close()
        return replies

    replies = asyncio.run(main())
    assert [r[:9] for r in replies] == ["250 2.1.5", "250 2.1.5", "552 5.2.2"], replies


def test_max_recipients(srv: ImapServer) -> None:
    rcpts = [new_addr() for _ in range(MAX_RCPTS + 1)]
    client = lmtp(srv)
    try:
        assert client.mail("s@example.org")[0] == 250
        for r in rcpts[:-1]:
            assert client.rcpt(r)[0] == 250
        code, text = client.rcpt(rcpts[-1])
        assert code == 452 and text.startswith(b"4.5.3"), text
        client.rset()
    finally:
        client.quit()


def _detail_delivery(server: ImapServer, to_detail: bool) -> None:
    user = new_addr()
    local, _, domain = user.partition("@")

    async def create() -> None:
        assert server.ctx.mail is not None
        um = await server.ctx.mail.user(user)
        await um.create_mailbox("work")

    server.call(create())
    client = lmtp(server)
    try:
        for detail in ("work", "nosuchbox"):
            assert client.mail("s@example.org")[0] == 250
            assert client.rcpt(f"{local}+{detail}@{domain}")[0] == 250
            assert client.data(make_message(detail))[0] == 250
    finally:
        client.quit()
    assert len(stored(server, user, "work")) == (1 if to_detail else 0)
    inbox = stored(server, user)
    assert len(inbox) == (1 if to_detail else 2)
    trace, _ = split_trace(inbox[-1])
    assert trace["delivered"] == f"{local}+nosuchbox@{domain}".encode()


def test_detail_mailbox_on(srv: ImapServer) -> None:
    _detail_delivery(srv, True)


def test_detail_mailbox_off(msrv: ImapServer) -> None:
    _detail_delivery(msrv, False)


def test_mdbox_single_instance_and_no_received(msrv: ImapServer) -> None:
    libfs_only(msrv, "mdbox storage objects")
    rcpts = [new_addr() for _ in range(3)]

    async def count() -> int:
        return len([n async for n in msrv.fs.iter("storage/")])

    before = msrv.call(count())
    msg = make_message("once")
    client = lmtp(msrv)
    try:
        assert client.mail("s@example.org")[0] == 250
        for r in rcpts:
            assert client.rcpt(r)[0] == 250
        assert client.data(msg)[0] == 250
        assert [client.getreply()[0] for _ in rcpts[1:]] == [250, 250]
    finally:
        client.quit()
    assert msrv.call(count()) == before + 1
    copies = [stored(msrv, r) for r in rcpts]
    assert copies[0] == copies[1] == copies[2]
    assert copies[0][0] == b"Return-Path: <s@example.org>\r\n" + msg


# -- swaks ----------------------------------------------------------------------------------


def _swaks() -> str:
    path = shutil.which("swaks")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("swaks is not installed (apt-get install swaks)")
        pytest.skip("swaks is not installed")
    return path


@pytest.mark.remote  # swaks comes with scripts/services.sh
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_swaks(srv: ImapServer, transport: str) -> None:
    swaks = _swaks()
    rcpts = [new_addr(), new_addr()]
    token = uuid.uuid4().hex
    where = (["--server", srv.host, "--port", str(srv.lmtp_port)] if transport == "tcp"
             else ["--socket", srv.lmtp_path])
    proc = subprocess.run(
        [swaks, "--protocol", "LMTP", *where, "--helo", "swaks.example.org",
         "--from", "swaks@example.org", "--to", ",".join(rcpts),
         "--header", f"Subject: {token}", "--body", f"token {token}\n.dot line\n"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("250 2.0.0") == 2, proc.stdout
    for r in rcpts:
        (raw,) = stored(srv, r)
        assert f"token {token}\r\n.dot line\r\n".encode() in raw
        assert split_trace(raw)[0]["lhlo"] == b"swaks.example.org"


# -- raw sockets ----------------------------------------------------------------------------


@pytest.mark.parametrize("unix", [False, True])
def test_bare_lf_and_pipelined_envelope(srv: ImapServer, unix: bool) -> None:
    rcpts = [new_addr(), new_addr("nouser"), new_addr()]
    c = Raw(srv, unix)
    try:
        c.send(b"LHLO mta.example.org\r\nMAIL FROM:<s@example.org>\r\n"
               + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + b"DATA\r\n")
        assert c.reply()[-1].startswith(b"250 ")
        assert c.reply()[0].startswith(b"250 2.1.0")
        assert [c.reply()[0][:3] for _ in rcpts] == [b"250", b"550", b"250"]
        assert c.reply()[0].startswith(b"354 ")
        c.send(b"Subject: bare\n\nline one\n..stuffed\nlast\n.\nNOOP\r\nQUIT\r\n")
        assert c.reply()[0].startswith(b"250 2.0.0 <" + rcpts[0].encode())
        assert c.reply()[0].startswith(b"250 2.0.0 <" + rcpts[2].encode())
        assert c.reply()[0].startswith(b"250 ")
        assert c.reply()[0].startswith(b"221 ")
    finally:
        c.close()
    (raw,) = stored(srv, rcpts[0])
    assert split_trace(raw)[1] == b"Subject: bare\r\n\r\nline one\r\n.stuffed\r\nlast\r\n"


def test_bdat(srv: ImapServer) -> None:
    a, b = new_addr(), new_addr()
    c = Raw(srv)
    try:
        assert c.bdat(b"xxxxx").startswith(b"503 ")  # no MAIL: the chunk is read, dropped
        assert c.cmd(b"NOOP").startswith(b"250 ")
        c.envelope("s@example.org", [a, b], " BODY=BINARYMIME")
        assert c.cmd(b"DATA").startswith(b"503 ")  # BINARYMIME needs BDAT
        part1 = b"Subject: chunks\r\n\r\nbin \x00\x01\r"
        part2 = b"\nno final line end"
        c.send(b"BDAT %d\r\n%sBDAT %d LAST\r\n%s" % (len(part1), part1, len(part2), part2))
        assert c.reply()[0].startswith(b"250 2.0.0 %d octets" % len(part1))
        assert c.reply()[0].startswith(b"250 2.0.0 <" + a.encode())
        assert c.reply()[0].startswith(b"250 2.0.0 <" + b.encode())
        # A second transaction: BDAT then DATA is refused; an empty LAST chunk ends it.
        assert c.cmd(b"MAIL FROM:<s@example.org>").startswith(b"250 ")
        assert c.cmd(f"RCPT TO:<{a}>".encode()).startswith(b"250 ")
        assert c.bdat(b"Subject: 2\r\n").startswith(b"250 ")
        assert c.cmd(b"DATA").startswith(b"503 ")
        assert c.bdat(b"", last=True).startswith(b"250 2.0.0 <" + a.encode())
        # Over the size limit: the chunk is read and refused, the transaction ends.
        assert c.cmd(b"MAIL FROM:<s@example.org>").startswith(b"250 ")
        assert c.cmd(f"RCPT TO:<{a}>".encode()).startswith(b"250 ")
        assert c.bdat(b"z" * (SIZE_LIMIT + 1)).startswith(b"552 5.3.4")
        assert c.bdat(b"z", last=True).startswith(b"503 ")
        # Over the limit in the LAST chunk: refused for every recipient.
        c.envelope("s@example.org", [a, b])
        c.send(b"BDAT %d LAST\r\n" % (SIZE_LIMIT + 1) + b"z" * (SIZE_LIMIT + 1))
        assert c.reply()[0].startswith(b"552 5.3.4 <" + a.encode())
        assert c.reply()[0].startswith(b"552 5.3.4 <" + b.encode())
        assert c.cmd(b"BDAT x").startswith(b"501 ")  # length unknown: the session ends
        assert c.line() == b""
    finally:
        c.close()
    body = part1 + part2 + b"\r\n"
    first = stored(srv, a)
    assert split_trace(first[0])[1] == body.replace(b"\r\n", b"\n").replace(
        b"\r", b"\n").replace(b"\n", b"\r\n")
    assert split_trace(first[1])[1] == b"Subject: 2\r\n"
    assert len(first) == 2 and len(stored(srv, b)) == 1


def test_line_too_long_and_bad_input(srv: ImapServer) -> None:
    c = Raw(srv)
    try:
        assert c.cmd(b"NOOP " + b"x" * 5000).startswith(b"500 5.5.2")
        assert c.cmd(b"NOOP " + b"x" * 40000).startswith(b"500 5.5.2")
        assert c.cmd(b"NOOP").startswith(b"250 ")
        assert c.cmd(b"MAIL FROM:<s@example.org>").startswith(b"503 ")  # no LHLO
        assert c.cmd(b"LHLO bad name!").startswith(b"501 ")
        assert c.cmd(b"LHLO mta.example.org").startswith(b"250 ")
    finally:
        c.close()
    c = Raw(srv)
    try:
        assert c.cmd(b"LHLO mta.example.org").startswith(b"250 ")
        for bad in (b"MAIL FROM:<a\x01@b>", b"MAIL FROM:a@b", b"MAIL FROM:<a@b> SIZE=1 SIZE=2",
                    b"\xff\xfe"):
            assert c.cmd(bad)[:1] == b"5", bad
        assert c.cmd(b"MAIL FROM:<s@example.org>").startswith(b"250 ")
        assert c.cmd(b"RCPT TO:<>").startswith(b"501 ")
    finally:
        c.close()


def test_duplicate_recipient_gets_one_copy(srv: ImapServer) -> None:
    rcpt = new_addr()
    client = lmtp(srv)
    try:
        assert client.mail("s@example.org")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, first = client.data(make_message("twice"))
        code2, second = client.getreply()
        assert (code, code2) == (250, 250)
        assert first.endswith(b"Saved as UID 1") and second.endswith(b"Saved as UID 1")
    finally:
        client.quit()
    assert len(stored(srv, rcpt)) == 1


def test_long_data_lines_and_nul(srv: ImapServer) -> None:
    """Lines far longer than any buffer, one starting with a stuffed dot; NUL octets."""
    rcpt = new_addr()
    long_line = b"a" * 40000
    body = b"Subject: long\r\n\r\n" + b"." + long_line + b"\r\n" + b"x\x00y\r\n"
    c = Raw(srv)
    try:
        c.envelope("s@example.org", [rcpt])
        assert c.cmd(b"DATA").startswith(b"354 ")
        c.send(body + b".\r\n")
        assert c.reply()[0].startswith(b"250 2.0.0")
    finally:
        c.close()
    (raw,) = stored(srv, rcpt)
    assert split_trace(raw)[1] == body[:len(b"Subject: long\r\n\r\n")] + body[
        len(b"Subject: long\r\n\r\n") + 1:]


def test_random_garbage_never_hangs(srv: ImapServer) -> None:
    rng = random.Random(2033)
    for _ in range(8):
        c = Raw(srv)
        try:
            garbage = bytes(rng.choice(b"\r\n\x00 :<>@.=ABDMRT\xff" + bytes(range(32, 127)))
                            for _ in range(rng.randrange(10, 3000)))
            c.send(garbage + b"\r\nQUIT\r\n")
            while True:
                line = c.line()
                if not line:
                    break
                assert re.match(rb"^[245][0-9][0-9][ -]", line), line
        finally:
            c.close()
    client = lmtp(srv)  # the server is fine
    try:
        assert client.noop()[0] == 250
    finally:
        client.quit()


def test_bad_command_budget(srv: ImapServer) -> None:
    c = Raw(srv)
    try:
        for _ in range(MAX_BAD - 1):
            assert c.cmd(b"FOO").startswith(b"500 5.5.1")
        c.send(b"\x00\x01 BAR\r\n")
        assert c.line().startswith(b"500 ")
        assert c.line().startswith(b"421 ")
        assert c.line() == b""
    finally:
        c.close()


def test_idle_timeout(msrv: ImapServer) -> None:
    c = Raw(msrv)
    try:
        # Silence from the client: the server says 421 and closes (the client's socket
        # timeout would fail the test if it never did).
        assert c.line().startswith(b"421 4.4.2")
        assert c.line() == b""
    finally:
        c.close()


def test_tls_needs_a_context(srv: ImapServer) -> None:
    # STARTTLS with parameters is a syntax error; the raw client then does the handshake.
    c = Raw(srv)
    try:
        assert c.cmd(b"STARTTLS now").startswith(b"501 ")
        assert c.cmd(b"STARTTLS").startswith(b"220 ")
        tls = srv.client_tls.wrap_socket(c.sock, server_hostname=srv.host)
        tls.sendall(b"LHLO mta.example.org\r\n")
        data = b""
        while not re.search(rb"^250 [^\r\n]*\r\n", data, re.M):
            chunk = tls.recv(4096)
            assert chunk
            data += chunk
        assert b"STARTTLS" not in data
        tls.close()
    except ssl.SSLError as exc:  # pragma: no cover - a failure shows the cause
        pytest.fail(f"TLS handshake failed: {exc}")
    finally:
        c.file.close()


@pytest.mark.parametrize("backend", IMAP_BACKENDS)
def test_shutdown_421(backend: str, request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> None:
    server = start_server(fs_spec_for(backend, request, tmp_path_factory.mktemp("lmtps")))
    c = Raw(server)
    try:
        assert c.cmd(b"LHLO mta.example.org").startswith(b"250 ")
    finally:
        stop_server(server)
    try:
        assert c.line().startswith(b"421 4.3.2")
        assert c.line() == b""
    finally:
        c.close()
