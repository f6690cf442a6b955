"""LMTP delivery under crashes and under load (issue 6; DESIGN.md invariants 1-3).

Durability, on every backend: the real server (``python -m cloudcote --config FILE serve``)
in a child process, mail delivered with ``smtplib.LMTP``, the server killed with SIGKILL

- right after a 250 reply: after a restart the message is in the mailbox, byte for byte
  (plus the trace headers LMTP prepends);
- right after a 250 reply for the first of two recipients: the first copy is there;
- at random short delays after the final ``.`` of several transactions in flight: each
  message is afterwards absent or whole, never half; every message acknowledged before
  the kill is there.

At the end the server is stopped, and ``force_resync`` on a fresh store finds no index
entry without its object and no torn object; every indexed message reads whole.

Concurrency, on S3 (SeaweedFS) and Cassandra: 8 LMTP clients deliver 50 messages each to
3 users (1-3 recipients per message); afterwards every message is in the mailbox of each
of its recipients exactly once, UIDs are unique and ascending, and a fresh store reading
the log agrees with the server's IMAP view.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudcote.core.mail.resync import force_resync
from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs import open_fs

from .imap_support import (
    PASSWORD,
    fs_spec_for,
    run_client_threads,
    start_server,
    stop_server,
)

DURABILITY_BACKENDS = ["posix", "seaweedfs", "cassandra", "postgresql", "mysql"]
#: (backend, mailbox layout): every backend with sdbox, and mdbox (messages packed into
#: shared objects) on a local directory and on S3.
DURABILITY_CASES = [(b, "sdbox") for b in DURABILITY_BACKENDS] + [("posix", "mdbox"),
                                                                   ("seaweedfs", "mdbox")]
CONCURRENCY_BACKENDS = ["seaweedfs", "cassandra"]
#: Header names LMTP may prepend to a message (Dovecot's set).
TRACE_HEADERS = {b"return-path", b"delivered-to", b"received", b"x-original-to"}
TOKEN_RE = re.compile(rb"^X-Test-Token: (\S+)\r$", re.M)
DOMAIN = "example.com"


def address(user: str) -> str:
    return f"{user}@{DOMAIN}"


# --- messages --------------------------------------------------------------------------------

def make_message(token: str, size: int, rng: random.Random) -> bytes:
    """A message of about ``size`` bytes, CRLF line ends, ending in CRLF, with lines that
    need dot-stuffing; ``token`` in an ``X-Test-Token`` header and a unique Message-ID."""
    head = (f"From: Sender <sender@example.org>\r\n"
            f"To: rcpt@example.com\r\n"
            f"Subject: durability {token}\r\n"
            f"Message-ID: <{token}@test.cloudcote>\r\n"
            f"X-Test-Token: {token}\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    lines = [b".a line that starts with a dot", b"..two dots", b"."]
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 "
    total = len(head)
    while total < size:
        line = bytes(rng.choice(alphabet) for _ in range(rng.randint(20, 76)))
        lines.append(line)
        total += len(line) + 2
    lines.append(f"end of {token}".encode())
    return head + b"\r\n".join(lines) + b"\r\n"


def token_of(raw: bytes) -> str:
    m = TOKEN_RE.search(raw)
    assert m is not None, f"no X-Test-Token in a stored message: {raw[:300]!r}"
    return m.group(1).decode()


def check_whole(stored: bytes, sent: bytes) -> None:
    """``stored`` is ``sent`` byte for byte after a block of trace header fields."""
    assert stored.endswith(sent), (
        f"stored message differs from the one sent: {len(stored)} bytes stored, "
        f"{len(sent)} sent; stored ends {stored[-120:]!r}")
    prefix = stored[: len(stored) - len(sent)]
    assert prefix.endswith(b"\r\n") or not prefix, f"trace block is not whole lines: {prefix!r}"
    for line in prefix.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            continue
        name = line.split(b":", 1)[0].strip().lower()
        assert name in TRACE_HEADERS, f"unexpected header added in delivery: {line!r}"


# --- an LMTP client transaction -----------------------------------------------------------

def lmtp_connect(host: str, port: int) -> smtplib.LMTP:
    client = smtplib.LMTP(host, port, timeout=60)
    code, _ = client.ehlo("mta.test")  # LMTP's LHLO
    assert code == 250
    return client


def deliver(client: smtplib.LMTP, sender: str, rcpts: list[str],
            raw: bytes) -> list[tuple[int, bytes]]:
    """MAIL, RCPT per recipient, DATA; the reply of every recipient, in RCPT order
    (RFC 2033 4.2: ``smtplib`` reads only the first, ``getreply`` the rest)."""
    code, text = client.mail(sender)
    assert code == 250, (code, text)
    for rcpt in rcpts:
        code, text = client.rcpt(rcpt)
        assert code == 250, (rcpt, code, text)
    replies = [client.data(raw)]
    while len(replies) < len(rcpts):
        replies.append(client.getreply())
    return replies


def start_data(client: smtplib.LMTP, sender: str, rcpts: list[str], raw: bytes) -> None:
    """A transaction up to the last line of the message: all that is left to send is the
    final ``.``."""
    assert client.mail(sender)[0] == 250
    for rcpt in rcpts:
        assert client.rcpt(rcpt)[0] == 250
    client.putcmd("data")
    code, text = client.getreply()
    assert code == 354, (code, text)
    client.send(re.sub(rb"(?m)^\.", b"..", raw))  # dot-stuffed; ends in CRLF


def read_reply_after_kill(client: smtplib.LMTP) -> int | None:
    """The reply the server sent before it died, if it reached us."""
    with contextlib.suppress(OSError, smtplib.SMTPException):
        assert client.sock is not None
        client.sock.settimeout(5)
        code, _ = client.getreply()
        return code if code > 0 else None
    return None


# --- the server as a child process ------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``cloudcote --config FILE serve`` on ``spec``: IMAP and LMTP on loopback, static
    passdb; started, killed and restarted on the same ports and storage."""

    def __init__(self, base: Path, spec: str, layout: str = "sdbox") -> None:
        self.base = base
        self.spec = spec
        self.layout = layout
        self.config = base / "cloudcote.toml"
        self.log = base / "server.log"
        self.out = base / "server.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: How the server names a recipient's mail owner (see naming()); found on first use.
        self.mode = ""
        #: LMTP clients opened by the test, closed at the end whatever happened.
        self.clients: list[smtplib.LMTP] = []
        self._choose_ports()

    def _choose_ports(self) -> None:
        self.imap_port, self.lmtp_port = free_port(), free_port()
        self.config.write_text(
            f'data_dir = "{self.base / "data"}"\n'
            f'[storage]\nfs = "{self.spec}"\nlayout = "{self.layout}"\n'
            "[mail]\npoll_interval = 0.2\n"
            f'[auth]\npassdb = "static:password={PASSWORD}"\nfailure_delay = 0.0\n'
            f'[imap]\nlisten = ["127.0.0.1:{self.imap_port}"]\n'
            "[imaps]\nlisten = []\n[pop3]\nlisten = []\n[pop3s]\nlisten = []\n"
            f'[lmtp]\nlisten = ["127.0.0.1:{self.lmtp_port}"]\n'
            f'[log]\nlevel = "warning"\npath = "{self.log}"\n')

    def start(self) -> None:
        assert self.proc is None
        for _attempt in range(3):
            with open(self.out, "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "cloudcote", "--config", str(self.config), "serve"],
                    cwd=self.base, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT)
            if self._wait_ready():
                self.starts += 1
                return
            code = self.proc.wait(10)
            self.proc = None
            if code != 69:  # 69: a port was taken meanwhile; take others
                break
            self._choose_ports()
        raise AssertionError(f"cloudcote did not start:\n{self.tail()}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.lmtp_port), timeout=2) as s:
                    s.settimeout(10)
                    if s.recv(100).startswith(b"220"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def tail(self) -> str:
        text = ""
        for path in (self.out, self.log):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-30:]) + "\n"
        return text

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(30) == 0, self.tail()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def lmtp(self) -> smtplib.LMTP:
        client = lmtp_connect("127.0.0.1", self.lmtp_port)
        self.clients.append(client)
        return client

    def inbox(self, user: str) -> list[tuple[int, bytes]]:
        """(UID, stored bytes) of every message in the INBOX of ``user@domain``'s owner,
        read over IMAP."""
        assert self.mode, "naming() first"
        return imap_inbox("127.0.0.1", self.imap_port, login(user, self.mode))


def naming(host: str, port: int, user: str) -> str:
    """How the server names the owner of ``user@domain``'s mail: ``"full"`` (the whole
    address, as Dovecot looks recipients up) or ``"local"`` (the local part).  ``user``
    must have mail under exactly one of the two."""
    found = [mode for mode in ("full", "local") if imap_inbox(host, port, login(user, mode))]
    assert len(found) == 1, f"mail of {address(user)} found under {found or 'neither name'}"
    return found[0]


def login(user: str, mode: str) -> str:
    """The user name the mail of ``user@domain`` belongs to (see :func:`naming`)."""
    return address(user) if mode == "full" else user


def imap_inbox(host: str, port: int, user: str) -> list[tuple[int, bytes]]:
    imap = imaplib.IMAP4(host, port, timeout=120)
    try:
        imap.login(user, PASSWORD)
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK", data
        if int(data[0] or 0) == 0:
            return []
        typ, fetched = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        assert typ == "OK", fetched
        out = []
        for i, item in enumerate(fetched):
            if isinstance(item, tuple):
                m = re.search(rb"UID (\d+)", item[0])
                if m is None:  # UID after the literal: in the line that follows it
                    after = fetched[i + 1] if i + 1 < len(fetched) else b""
                    m = re.search(rb"UID (\d+)", after if isinstance(after, bytes) else b"")
                assert m is not None, item[0]
                out.append((int(m.group(1)), item[1]))
        return out
    finally:
        with contextlib.suppress(Exception):
            imap.logout()


@contextlib.contextmanager
def running(base: Path, spec: str, layout: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(base, spec, layout)
    try:
        yield srv
    finally:
        for client in srv.clients:
            client.close()
        if srv.proc is not None:
            srv.proc.kill()
            srv.proc.wait(10)


async def resync_and_read(spec: str, users: list[str], mode: str,
                          layout: str = "sdbox") -> dict[str, list[tuple[int, bytes]]]:
    """With no server running: ``force_resync`` of each INBOX on a fresh store (nothing
    but whole orphans may be found), then every indexed message read."""
    fs = await open_fs(spec)
    try:
        store = MailStore(fs, StorageSettings(layout=layout))
        out: dict[str, list[tuple[int, bytes]]] = {}
        for user in users:
            box = await (await store.user(login(user, mode))).mailbox("INBOX")
            report = await force_resync(box, grace=0)
            assert report.expunged_missing == [], \
                f"{user}: indexed messages without their object: {report}"
            assert report.removed == [], f"{user}: torn message objects: {report}"
            assert not report.rebuilt and report.damage == 0, f"{user}: damaged index: {report}"
            await box.refresh()
            out[user] = [(uid, await box.read_message(box.state.messages[uid]))
                         for uid in box.state.uids]
        return out
    finally:
        await fs.close()


# --- durability ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("backend", "layout"), DURABILITY_CASES)
def test_sigkill_after_and_before_the_reply(backend: str, layout: str,
                                            request: pytest.FixtureRequest,
                                            tmp_path: Path) -> None:
    spec = fs_spec_for(backend, request, tmp_path)
    rng = random.Random(f"durability-{backend}")
    run = uuid.uuid4().hex[:8]
    users = [f"dur{run}a", f"dur{run}b"]
    sent: dict[str, bytes] = {}            # token -> message as sent
    acked: dict[str, set[str]] = {}        # token -> users whose 250 we read
    tried: dict[str, set[str]] = {}        # token -> users it was sent to

    def new_message(size: int) -> tuple[str, bytes]:
        token = f"{run}-{len(sent):03d}"
        sent[token] = make_message(token, size, rng)
        return token, sent[token]

    def check_mailboxes(srv: ServerProcess) -> None:
        for user in users:
            seen = Counter[str]()
            for _uid, raw in srv.inbox(user):
                token = token_of(raw)
                assert user in tried.get(token, set()), f"{user}: a message never sent to it"
                check_whole(raw, sent[token])
                seen[token] += 1
            assert all(n == 1 for n in seen.values()), f"{user}: duplicates {seen}"
            missing = [t for t, who in acked.items() if user in who and t not in seen]
            assert not missing, f"{user}: acknowledged with 250, lost after SIGKILL: {missing}"

    with running(tmp_path, spec, layout) as srv:
        # 1. One recipient: SIGKILL as soon as its 250 arrives.
        srv.start()
        token, raw = new_message(30_000)
        client = srv.lmtp()
        tried[token] = {users[0]}
        replies = deliver(client, "sender@example.org", [address(users[0])], raw)
        srv.kill()
        assert replies[0][0] == 250, replies
        acked[token] = {users[0]}
        client.close()
        srv.start()
        srv.mode = naming("127.0.0.1", srv.imap_port, users[0])
        check_mailboxes(srv)

        # 2. Two recipients: SIGKILL as soon as the first recipient's 250 arrives.
        token, raw = new_message(120_000)
        client = srv.lmtp()
        tried[token] = set(users)
        assert client.mail("sender@example.org")[0] == 250
        for user in users:
            assert client.rcpt(address(user))[0] == 250
        code, text = client.data(raw)
        srv.kill()
        assert code == 250, (code, text)
        acked[token] = {users[0]}  # RFC 2033 4.2: replies come in RCPT order
        client.close()

        # 3. Several transactions in flight, SIGKILL at random short delays after their
        # final ".": each message is absent or whole; whatever got its 250 is there.
        for delay in (0.0, rng.uniform(0.0, 0.05), rng.uniform(0.02, 0.3)):
            srv.start()
            check_mailboxes(srv)
            flights = []
            for i, size in enumerate((2_000, 40_000, 200_000, 600_000)):
                token, raw = new_message(size)
                rcpts = users if i % 2 else [users[i // 2 % 2]]
                tried[token] = set(rcpts)
                client = srv.lmtp()
                start_data(client, "sender@example.org", [address(u) for u in rcpts], raw)
                flights.append((client, token, rcpts))
            for client, _token, _rcpts in flights:
                client.send(b".\r\n")
            time.sleep(delay)
            srv.kill()
            for client, token, rcpts in flights:
                for rcpt in rcpts:  # one reply per recipient, in RCPT order
                    if read_reply_after_kill(client) != 250:
                        break
                    acked.setdefault(token, set()).add(rcpt)
                client.close()

        srv.start()
        check_mailboxes(srv)
        srv.stop()

    stored = asyncio.run(resync_and_read(spec, users, srv.mode, layout))
    for user in users:
        tokens = [token_of(raw) for _uid, raw in stored[user]]
        assert len(tokens) == len(set(tokens)), f"{user}: a message indexed twice"
        for _uid, raw in stored[user]:
            check_whole(raw, sent[token_of(raw)])
        for token, who in acked.items():
            if user in who:
                assert token in tokens, f"{user}: acknowledged message {token} lost"


# --- concurrency -------------------------------------------------------------------------------

CLIENTS = 8
PER_CLIENT = 50


@pytest.mark.slow
@pytest.mark.parametrize("backend", CONCURRENCY_BACKENDS)
def test_concurrent_deliveries(backend: str, request: pytest.FixtureRequest,
                               tmp_path: Path) -> None:
    spec = fs_spec_for(backend, request, tmp_path)
    run = uuid.uuid4().hex[:8]
    users = [f"con{run}{c}" for c in "abc"]
    sent: dict[str, bytes] = {}
    rcpts_of: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    srv = start_server(spec)
    try:
        def client_thread(n: int) -> None:
            rng = random.Random(f"{backend}-{n}")
            try:
                client = lmtp_connect(srv.host, srv.lmtp_port)
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)
                return
            try:
                for i in range(PER_CLIENT):
                    token = f"{run}-{n}-{i:02d}"
                    raw = make_message(token, rng.randint(500, 6000), rng)
                    rcpts = rng.sample(users, rng.randint(1, 3))
                    with lock:
                        sent[token], rcpts_of[token] = raw, rcpts
                    replies = deliver(client, f"s{n}@example.org",
                                      [address(u) for u in rcpts], raw)
                    assert [code for code, _ in replies] == [250] * len(rcpts), replies
                client.quit()
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)
            finally:
                client.close()

        run_client_threads(client_thread, CLIENTS, errors)
        assert len(sent) == CLIENTS * PER_CLIENT

        mode = naming(srv.host, srv.port, users[0])
        imap_view = {u: imap_inbox(srv.host, srv.port, login(u, mode)) for u in users}
    finally:
        stop_server(srv)

    fresh_view = asyncio.run(resync_and_read(spec, users, mode))
    for user in users:
        expected = {t for t, who in rcpts_of.items() if user in who}
        uids = [uid for uid, _ in imap_view[user]]
        assert uids == sorted(set(uids)), f"{user}: UIDs not unique and ascending"
        tokens = Counter(token_of(raw) for _uid, raw in imap_view[user])
        assert set(tokens) == expected, (
            f"{user}: missing {sorted(expected - set(tokens))[:5]}, "
            f"unexpected {sorted(set(tokens) - expected)[:5]}")
        assert all(n == 1 for n in tokens.values()), \
            f"{user}: delivered twice: {[t for t, n in tokens.items() if n > 1]}"
        for _uid, raw in imap_view[user]:
            check_whole(raw, sent[token_of(raw)])
        # A fresh process reading the log assigns the same UIDs to the same messages.
        assert [(uid, token_of(raw)) for uid, raw in fresh_view[user]] == \
            [(uid, token_of(raw)) for uid, raw in imap_view[user]]


def test_message_helpers() -> None:
    """The checks above reject what they must: a truncated copy, an added header."""
    raw = make_message("tok", 3000, random.Random(1))
    assert token_of(raw) == "tok" and raw.endswith(b"end of tok\r\n")
    trace = (b"Return-Path: <s@example.org>\r\nDelivered-To: u@example.com\r\n"
             b"Received: from mta.test\r\n\tby cloudcote; Sun, 1 Nov 2026 00:00:00 +0000\r\n")
    check_whole(trace + raw, raw)
    with pytest.raises(AssertionError):
        check_whole(trace + raw[:-100], raw)
    with pytest.raises(AssertionError):
        check_whole(b"X-Spam: yes\r\n" + raw, raw)
