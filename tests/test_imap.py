"""The IMAP server as clients see it: stdlib imaplib over real TCP, against a real server
(tests/imap_support.py) on every IMAP backend.

Every test logs in as fresh users, so tests share one server per backend and never see each
other's mail.  Responses are read line by line (``cmd``) where their exact form matters;
imaplib's own methods are used where its handling is the point (synchronizing literals,
AUTHENTICATE continuations, STARTTLS).
"""

from __future__ import annotations

import base64
import datetime as dt
import imaplib
import itertools
import random
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cloudcote.core.mail.storage import StorageSettings

from .imap_support import IMAP_BACKENDS, PASSWORD, ImapServer, libfs_only, server_fixture

# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def imap_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(request, tmp_path_factory.mktemp("imap"))


QUOTA_BYTES = 20 * 1024
QUOTA_MESSAGES = 4


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def quota_server(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    settings = StorageSettings(quota_bytes=QUOTA_BYTES, quota_messages=QUOTA_MESSAGES,
                               poll_interval=0.3, quota_refresh=0.0)
    yield from server_fixture(request, tmp_path_factory.mktemp("imapq"), settings=settings)


class Clients:
    """Connections of one test, all closed at its end."""

    def __init__(self, srv: ImapServer) -> None:
        self.srv = srv
        self.opened: list[imaplib.IMAP4] = []
        self.users: dict[int, str] = {}

    def _keep(self, m: imaplib.IMAP4) -> imaplib.IMAP4:
        m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened.append(m)
        return m

    def connect(self) -> imaplib.IMAP4:
        return self._keep(self.srv.connect())

    def connect_tls(self) -> imaplib.IMAP4:
        return self._keep(self.srv.connect_tls())

    def login(self, user: str | None = None) -> imaplib.IMAP4:
        m = self.connect()
        user = user or self.srv.new_user()
        m.login(user, PASSWORD)
        self.users[id(m)] = user
        return m

    def user_of(self, m: imaplib.IMAP4) -> str:
        return self.users[id(m)]

    def user(self) -> str:
        return self.srv.new_user()

    def close(self) -> None:
        for m in self.opened:
            if m.state != "LOGOUT":
                try:
                    m.sock.settimeout(5)
                    m.logout()
                    continue
                except Exception:
                    pass
            try:
                m.file.close()
                m.sock.close()
            except OSError:
                pass


def clients_of(srv: ImapServer) -> Iterator[Clients]:
    """The connections of one test on ``srv``, all closed at its end (fixture body)."""
    c = Clients(srv)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def imap(imap_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(imap_server)


@pytest.fixture
def quota_imap(quota_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(quota_server)


# -- the wire -------------------------------------------------------------------------------

_TAGS = itertools.count(1)
_LITERAL_END = re.compile(rb"\{(\d+)\}\r\n$")


def read_response(m: imaplib.IMAP4) -> bytes:
    """One response line, literals inline (``{n}\\r\\n`` + n octets), without the last
    CRLF."""
    out = bytearray()
    while True:
        line = m.readline()
        if not line:
            raise EOFError("server closed the connection")
        out += line
        lit = _LITERAL_END.search(line)
        if lit is None:
            break
        out += m.read(int(lit.group(1)))
    assert out.endswith(b"\r\n"), out[-100:]
    return bytes(out[:-2])


@dataclass
class Reply:
    lines: list[bytes]
    status: str
    text: bytes
    tag: bytes = b""

    def untagged(self, word: str) -> list[bytes]:
        """Untagged ``* WORD rest`` or ``* n WORD rest`` lines, as ``rest`` (with the
        number first: ``n rest``)."""
        out = []
        w = word.encode()
        for line in self.lines:
            mo = re.match(rb"\* (?:(\d+) )?([A-Za-z.-]+)(?: (.*))?$", line, re.DOTALL)
            if mo and mo.group(2).upper() == w:
                rest = mo.group(3) or b""
                if mo.group(1):
                    rest = mo.group(1) + (b" " + rest if rest else b"")
                out.append(rest)
        return out

    def code(self) -> str | None:
        mo = re.match(rb"\[([^\]]*)\]", self.text)
        return mo.group(1).decode() if mo else None

    def codes(self) -> list[str]:
        """Response codes of the untagged OK/NO lines and of the tagged reply."""
        out = [mo.group(1).decode() for line in self.lines
               if (mo := re.match(rb"\* (?:OK|NO|BAD) \[([^\]]*)\]", line))]
        if (c := self.code()) is not None:
            out.append(c)
        return out


def cmd(m: imaplib.IMAP4, text: str | bytes) -> Reply:
    """Send one command (LITERAL+ literals inline) and read everything up to its tagged
    reply."""
    tag = b"X%d" % next(_TAGS)
    data = text.encode() if isinstance(text, str) else text
    m.send(tag + b" " + data + b"\r\n")
    lines: list[bytes] = []
    while True:
        line = read_response(m)
        if line.startswith(tag + b" "):
            status, _, rest = line[len(tag) + 1:].partition(b" ")
            return Reply(lines, status.decode(), rest, tag)
        lines.append(line)


def ok(m: imaplib.IMAP4, text: str | bytes) -> Reply:
    r = cmd(m, text)
    assert r.status == "OK", (text, r)
    return r


def no(m: imaplib.IMAP4, text: str | bytes, code: str | None = None) -> Reply:
    r = cmd(m, text)
    assert r.status == "NO", (text, r)
    if code is not None:
        assert (r.code() or "").split(" ")[0] == code, (text, r)
    return r


def bad(m: imaplib.IMAP4, text: str | bytes) -> Reply:
    r = cmd(m, text)
    assert r.status == "BAD", (text, r)
    return r


def lit(data: bytes | str) -> bytes:
    """A LITERAL+ literal."""
    raw = data.encode() if isinstance(data, str) else data
    return b"{%d+}\r\n" % len(raw) + raw


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- response values ------------------------------------------------------------------------


def parse(data: bytes) -> list[Any]:
    """Response data as values: atoms as str (NIL as None), strings and literals as bytes,
    lists as lists; ``BODY[...]<n>`` stays one atom."""
    out, pos = _parse(data, 0, None)
    assert pos == len(data), data[pos:pos + 50]
    return out


def _parse(data: bytes, i: int, closer: int | None) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(data):
        c = data[i]
        if c == 0x20:
            i += 1
        elif c == closer:
            return out, i + 1
        elif c == 0x28:
            sub, i = _parse(data, i + 1, 0x29)
            out.append(sub)
        elif c == 0x22:
            j = i + 1
            buf = bytearray()
            while data[j] != 0x22:
                if data[j] == 0x5C:
                    j += 1
                buf.append(data[j])
                j += 1
            out.append(bytes(buf))
            i = j + 1
        elif c == 0x7B:
            mo = re.compile(rb"\{(\d+)\}\r\n").match(data, i)
            assert mo is not None, data[i:i + 20]
            n = int(mo.group(1))
            out.append(data[mo.end():mo.end() + n])
            i = mo.end() + n
        else:
            j = i
            depth = 0
            while j < len(data):
                ch = data[j]
                if ch == 0x5B:
                    depth += 1
                elif ch == 0x5D:
                    depth -= 1
                elif depth == 0 and ch in b" ()":
                    break
                j += 1
            word = data[i:j].decode("utf-8", "surrogateescape")
            out.append(None if word.upper() == "NIL" else word)
            i = j
    assert closer is None, "unterminated list"
    return out, i


def fetches(reply: Reply) -> list[tuple[int, dict[str, Any]]]:
    """``(seq, {ITEM: value})`` of every untagged FETCH, in order."""
    out = []
    for rest in reply.untagged("FETCH"):
        seq, _, body = rest.partition(b" ")
        (items,) = parse(body)
        assert len(items) % 2 == 0, items
        out.append((int(seq), {str(items[i]).upper(): items[i + 1]
                               for i in range(0, len(items), 2)}))
    return out


def fetch_one(m: imaplib.IMAP4, text: str) -> dict[str, Any]:
    got = fetches(ok(m, text))
    assert len(got) == 1, got
    return got[0][1]


def flags_of(item: Any) -> set[str]:
    """The stored flags of a FLAGS item: \\Recent (a session's, not the message's) aside."""
    return set(item) - {"\\Recent"}


def status_of(reply: Reply) -> dict[str, int]:
    (line,) = reply.untagged("STATUS")
    vals = parse(line)[-1]
    return {vals[i].upper(): int(vals[i + 1]) for i in range(0, len(vals), 2)}


def list_of(reply: Reply, verb: str = "LIST") -> dict[str, list[str]]:
    """``{name: attributes}`` of LIST/LSUB lines (names as sent, modified UTF-7)."""
    out = {}
    for rest in reply.untagged(verb):
        vals = parse(rest)
        name = vals[2]
        out[name.decode() if isinstance(name, bytes) else name] = list(vals[0])
    return out


def search_of(reply: Reply) -> list[int]:
    (line,) = reply.untagged("SEARCH")
    return [int(x) for x in line.split()] if line else []


def uid_code(reply: Reply, code: str) -> list[str]:
    for c in reply.codes():
        if c.startswith(code + " "):
            return c.split()[1:]
    raise AssertionError(f"no {code} in {reply}")


def expand(seqset: str) -> list[int]:
    out: list[int] = []
    for part in seqset.split(","):
        lo, _, hi = part.partition(":")
        a, b = int(lo), int(hi or lo)
        out.extend(range(min(a, b), max(a, b) + 1))
    return out


# -- messages -------------------------------------------------------------------------------


def message(subject: str = "Hello", body: str = "Just a test.\r\n", *,
            frm: str = "Alice Example <alice@example.com>",
            to: str = "Bob <bob@example.org>", date: str = "Mon, 01 Jan 2024 10:00:00 +0000",
            extra: str = "") -> bytes:
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{abs(hash((subject, body)))}@example.com>\r\n{extra}\r\n"
            f"{body}").encode()


MULTIPART = (
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>, carol@example.net\r\n"
    b"Cc: Dave <dave@example.com>\r\n"
    b"Subject: Multipart test\r\n"
    b"Date: Tue, 02 Jan 2024 12:34:56 +0100\r\n"
    b"Message-ID: <mp1@example.com>\r\n"
    b"In-Reply-To: <earlier@example.com>\r\n"
    b"X-Extra: one\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Hello w\xc3\xb6rld\r\nsecond line\r\n"
    b"--XYZ\r\n"
    b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
    b"Content-Disposition: attachment; filename=\"a.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQ=\r\n"
    b"--XYZ\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner@example.com\r\n"
    b"Subject: inner\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--XYZ--\r\n"
)
MP_HEADER = MULTIPART[:MULTIPART.index(b"\r\n\r\n") + 4]
MP_TEXT = MULTIPART[len(MP_HEADER):]


def append(m: imaplib.IMAP4, box: str, data: bytes, flags: str = "",
           date: str | None = None) -> int:
    """APPEND with a LITERAL+ literal; the new message's UID (APPENDUID)."""
    args = quote(box).encode()
    if flags:
        args += b" (" + flags.encode() + b")"
    if date:
        args += b' "' + date.encode() + b'"'
    r = ok(m, b"APPEND " + args + b" " + lit(data))
    return int(uid_code(r, "APPENDUID")[1])


def fill(m: imaplib.IMAP4, box: str, n: int, prefix: str = "msg") -> list[int]:
    return [append(m, box, message(f"{prefix} {i}", f"body of {prefix} {i}\r\n"))
            for i in range(1, n + 1)]


def select(m: imaplib.IMAP4, box: str = "INBOX", extra: str = "") -> Reply:
    return ok(m, f"SELECT {quote(box)}{' ' + extra if extra else ''}")


def seq_uids(m: imaplib.IMAP4) -> list[int]:
    got = fetches(ok(m, "FETCH 1:* (UID)"))
    return [int(f["UID"]) for _, f in sorted(got)]


# -- any state, authentication ----------------------------------------------------------------


def test_capability_noop_logout(imap: Clients) -> None:
    m = imap.connect()
    caps = ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    for c in (b"IMAP4rev1", b"AUTH=PLAIN", b"SASL-IR", b"STARTTLS", b"LITERAL+", b"IDLE",
              b"ID", b"ENABLE"):
        assert c in caps
    ok(m, "NOOP")
    # Commands of later states are not valid yet.
    bad(m, "SELECT INBOX")
    bad(m, "FETCH 1 FLAGS")
    bad(m, "BOGUS")
    r = ok(m, f"LOGIN {imap.user()} {PASSWORD}")
    assert (r.code() or "").startswith("CAPABILITY ")
    after = ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    for c in (b"IMAP4rev1", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"QRESYNC",
              b"UNSELECT", b"LIST-EXTENDED", b"LIST-STATUS", b"ESEARCH", b"SPECIAL-USE",
              b"CREATE-SPECIAL-USE", b"QUOTA", b"STATUS=SIZE", b"CHILDREN", b"IDLE"):
        assert c in after, c
    assert b"STARTTLS" not in after and not any(c.startswith(b"AUTH=") for c in after)
    ok(m, "NOOP")
    # Pipelined commands are answered in order.
    m.send(b"P1 NOOP\r\nP2 NAMESPACE\r\nP3 CAPABILITY\r\n")
    got = [read_response(m) for _ in range(5)]
    assert [x.split(b" ")[0] for x in got] == [b"P1", b"*", b"P2", b"*", b"P3"]
    assert got[1].startswith(b"* NAMESPACE") and got[3].startswith(b"* CAPABILITY")
    bad(m, f"LOGIN x {PASSWORD}")
    bad(m, "FETCH 1 FLAGS")
    r = ok(m, "LOGOUT")
    assert r.untagged("BYE")
    assert m.readline() == b""
    m.state = "LOGOUT"


def test_login_forms_and_tls(imap: Clients) -> None:
    user = imap.user()
    m = imap.connect()
    ok(m, b"LOGIN " + lit(user) + b" " + lit(PASSWORD))
    append(m, "INBOX", message("via literal login"))
    # Quoted strings, and the same user over implicit TLS and over STARTTLS.
    m2 = imap.connect()
    ok(m2, f'LOGIN "{user}" "{PASSWORD}"')
    assert status_of(ok(m2, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 1
    t = imap.connect_tls()
    assert b"STARTTLS" not in ok(t, "CAPABILITY").untagged("CAPABILITY")[0].split()
    t.login(user, PASSWORD)
    assert status_of(ok(t, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 1
    s = imap.connect()
    s.starttls(ssl_context=imap.srv.client_tls)
    assert "STARTTLS" not in s.capabilities
    s.login(user, PASSWORD)
    assert status_of(ok(s, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 1


def test_authenticate(imap: Clients) -> None:
    user = imap.user()
    plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    # SASL-IR: the initial response on the command line.
    m = imap.connect()
    r = ok(m, f"AUTHENTICATE PLAIN {plain}")
    assert (r.code() or "").startswith("CAPABILITY ")
    append(m, "INBOX", message("sasl-ir"))
    # No initial response: the server asks with "+ " and imaplib answers.
    m2 = imap.connect()
    assert m2.authenticate("PLAIN", lambda _: f"{user}\0{user}\0{PASSWORD}".encode())[0] \
        == "OK"
    assert status_of(ok(m2, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 1
    # The LOGIN mechanism: a user name, then a password.
    m3 = imap.connect()
    answers = iter([user.encode(), PASSWORD.encode()])
    assert m3.authenticate("LOGIN", lambda _: next(answers))[0] == "OK"
    assert status_of(ok(m3, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 1
    # The client may abort an exchange with "*".
    m4 = imap.connect()
    tag = b"A%d" % next(_TAGS)
    m4.send(tag + b" AUTHENTICATE PLAIN\r\n")
    assert read_response(m4).startswith(b"+")
    m4.send(b"*\r\n")
    assert read_response(m4).startswith(tag + b" BAD")
    no(m4, "AUTHENTICATE CRAM-MD5")
    # An authorization identity other than the authenticated one is refused.
    other = base64.b64encode(f"{imap.user()}\0{user}\0{PASSWORD}".encode()).decode()
    no(m4, f"AUTHENTICATE PLAIN {other}", "AUTHENTICATIONFAILED")
    bad(m4, "AUTHENTICATE PLAIN !!!notbase64")
    bad(m4, "SELECT INBOX")


def test_wrong_passwords(imap: Clients) -> None:
    user = imap.user()
    results: dict[str, Reply] = {}
    m1, m2 = imap.connect(), imap.connect()
    wrong = base64.b64encode(f"\0{user}\0wrong".encode()).decode()

    def run(name: str, m: imaplib.IMAP4, text: str) -> None:
        results[name] = cmd(m, text)

    threads = [threading.Thread(target=run, args=("login", m1, f"LOGIN {user} wrong")),
               threading.Thread(target=run, args=("auth", m2, f"AUTHENTICATE PLAIN {wrong}"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results.values():
        assert r.status == "NO" and r.code() == "AUTHENTICATIONFAILED", r
    bad(m1, "SELECT INBOX")
    ok(m1, f"LOGIN {user} {PASSWORD}")


# -- mailboxes --------------------------------------------------------------------------------


def test_select_and_examine(imap: Clients) -> None:
    m = imap.login()
    append(m, "INBOX", message("one"), flags="\\Seen")
    append(m, "INBOX", message("two"))
    append(m, "INBOX", message("three"), flags="\\Seen")
    r = select(m, "inbox")
    assert r.code() == "READ-WRITE"
    # The first SELECT after delivery claims the new messages as \Recent.
    assert r.untagged("EXISTS") == [b"3"] and r.untagged("RECENT") == [b"3"]
    flags = parse(r.untagged("FLAGS")[0])[0]
    assert set(flags) >= {"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"}
    codes = r.codes()
    assert any(c.startswith("PERMANENTFLAGS (") and "\\*" in c for c in codes)
    assert "UNSEEN 2" in codes
    uidvalidity = int(next(c for c in codes if c.startswith("UIDVALIDITY")).split()[1])
    assert uidvalidity > 0
    assert "UIDNEXT 4" in codes
    assert any(c.startswith("HIGHESTMODSEQ ") for c in codes)

    # EXAMINE: read-only; nothing the client does changes the mailbox.
    r = ok(m, "EXAMINE INBOX")
    assert "CLOSED" in r.codes()
    assert r.code() == "READ-ONLY"
    assert any(c == "PERMANENTFLAGS ()" for c in r.codes())
    no(m, "STORE 2 +FLAGS (\\Deleted)")
    no(m, "UID STORE 1:* +FLAGS (\\Flagged)")
    no(m, "EXPUNGE")
    no(m, "UID EXPUNGE 1:*")
    no(m, "MOVE 1 Trash")
    f = fetch_one(m, "FETCH 2 (BODY[] FLAGS)")
    assert "\\Seen" not in f["FLAGS"]
    ok(m, "CLOSE")
    r = select(m)
    assert "UNSEEN 2" in r.codes()

    # A failed SELECT leaves no mailbox selected.
    no(m, "SELECT nosuchbox", "NONEXISTENT")
    bad(m, "FETCH 1 FLAGS")
    ok(m, "EXAMINE Trash")
    bad(m, "SELECT")
    bad(m, "SELECT INBOX (BOGUS)")


def test_create(imap: Clients) -> None:
    m = imap.login()
    ok(m, "CREATE a/b/c")
    # Superior names are created as needed (RFC 3501 6.3.3).
    for name in ("a", "a/b", "a/b/c"):
        select(m, name)
    ok(m, "UNSELECT")
    # A trailing separator only says that the name will have children.
    ok(m, "CREATE parent/")
    assert "parent" in list_of(ok(m, 'LIST "" parent'))
    select(m, "parent")
    ok(m, "CREATE INBOX/child")
    select(m, "INBOX/child")
    for name in ("INBOX", "inbox", "a/b", "parent/", "Drafts"):
        no(m, f"CREATE {quote(name)}", "ALREADYEXISTS")
    for name in ("a//b", "/lead", "wild*", "wild%", ""):
        r = cmd(m, f"CREATE {quote(name)}")
        assert r.status in ("NO", "BAD"), (name, r)
    bad(m, "CREATE")
    # CREATE-SPECIAL-USE (RFC 6154).
    ok(m, "CREATE MyDrafts (USE (\\Drafts))")
    ok(m, "CREATE MyArchive (USE (\\Archive \\Flagged))")
    lst = list_of(ok(m, 'LIST "" "My*" RETURN (SPECIAL-USE)'))
    assert "\\Drafts" in lst["MyDrafts"]
    assert {"\\Archive", "\\Flagged"} <= set(lst["MyArchive"])
    no(m, "CREATE Weird (USE (\\Bogus))", "USEATTR")
    assert "Weird" not in list_of(ok(m, 'LIST "" "*"'))


def test_delete(imap: Clients) -> None:
    m = imap.login()
    ok(m, "CREATE gone")
    uv1 = int(status_of(ok(m, "STATUS gone (UIDVALIDITY)"))["UIDVALIDITY"])
    append(m, "gone", message("in gone"))
    ok(m, "DELETE gone")
    no(m, "SELECT gone", "NONEXISTENT")
    no(m, "STATUS gone (MESSAGES)", "NONEXISTENT")
    no(m, "DELETE gone", "NONEXISTENT")
    assert "gone" not in list_of(ok(m, 'LIST "" "*"'))
    # Re-created: empty, with a greater UIDVALIDITY.
    ok(m, "CREATE gone")
    st = status_of(ok(m, "STATUS gone (MESSAGES UIDVALIDITY UIDNEXT)"))
    assert st["MESSAGES"] == 0 and st["UIDVALIDITY"] > uv1
    no(m, "DELETE INBOX")
    no(m, "DELETE inbox")
    # Deleting a parent leaves its children (RFC 3501 6.3.4).
    ok(m, "CREATE p/q")
    append(m, "p/q", message("kept"))
    ok(m, "DELETE p")
    assert status_of(ok(m, "STATUS p/q (MESSAGES)"))["MESSAGES"] == 1
    lst = list_of(ok(m, 'LIST "" "p*"'))
    assert "p/q" in lst
    assert "p" not in lst or "\\Noselect" in lst["p"] or "\\NonExistent" in lst["p"]
    r = cmd(m, "DELETE p")
    assert r.status == "NO"
    # Deleting the selected mailbox leaves the session authenticated.
    ok(m, "CREATE sel")
    select(m, "sel")
    ok(m, "DELETE sel")
    bad(m, "FETCH 1 FLAGS")
    select(m, "INBOX")


def test_rename(imap: Clients) -> None:
    m = imap.login()
    ok(m, "CREATE a/b/c")
    append(m, "a/b", message("in a/b"))
    append(m, "a/b/c", message("in a/b/c"))
    uv = status_of(ok(m, "STATUS a/b (UIDVALIDITY)"))["UIDVALIDITY"]
    ok(m, "RENAME a z")
    lst = list_of(ok(m, 'LIST "" "*"'))
    assert {"z", "z/b", "z/b/c"} <= set(lst) and not {"a", "a/b", "a/b/c"} & set(lst)
    st = status_of(ok(m, "STATUS z/b (MESSAGES UIDVALIDITY)"))
    assert st["MESSAGES"] == 1
    assert st["UIDVALIDITY"] == uv
    assert status_of(ok(m, "STATUS z/b/c (MESSAGES)"))["MESSAGES"] == 1
    no(m, "RENAME a y", "NONEXISTENT")
    no(m, "RENAME z Trash", "ALREADYEXISTS")
    no(m, "RENAME z INBOX", "ALREADYEXISTS")
    assert cmd(m, "RENAME z z/b/new").status == "NO"
    # The new name's superiors are created as needed.
    ok(m, "RENAME z/b/c deep/er/c")
    assert status_of(ok(m, "STATUS deep/er/c (MESSAGES)"))["MESSAGES"] == 1
    assert "deep/er" in list_of(ok(m, 'LIST "" "deep/*"'))

    # Renaming INBOX moves its messages to the new mailbox and leaves INBOX empty.
    fill(m, "INBOX", 3)
    next_before = status_of(ok(m, "STATUS INBOX (UIDNEXT)"))["UIDNEXT"]
    ok(m, "RENAME INBOX old-inbox")
    assert status_of(ok(m, "STATUS old-inbox (MESSAGES)"))["MESSAGES"] == 3
    st = status_of(ok(m, "STATUS INBOX (MESSAGES UIDNEXT)"))
    assert st["MESSAGES"] == 0 and st["UIDNEXT"] >= next_before
    select(m, "old-inbox")
    subjects = [f["BODY[HEADER.FIELDS (SUBJECT)]"] for _, f in
                fetches(ok(m, "FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))]
    assert subjects == [b"Subject: msg %d\r\n\r\n" % i for i in (1, 2, 3)]
    append(m, "INBOX", message("new mail"))
    assert status_of(ok(m, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 1


def test_subscribe_and_lsub(imap: Clients) -> None:
    m = imap.login()
    ok(m, "CREATE work/projects/x")
    ok(m, "SUBSCRIBE work/projects/x")
    ok(m, "SUBSCRIBE INBOX")
    ok(m, "SUBSCRIBE never-created")  # allowed: RFC 3501 6.3.6
    lsub = list_of(ok(m, 'LSUB "" "*"'), "LSUB")
    assert set(lsub) == {"INBOX", "work/projects/x", "never-created"}
    # A subscribed child makes its unsubscribed parent show up with \Noselect under "%".
    lsub = list_of(ok(m, 'LSUB "" "%"'), "LSUB")
    assert "INBOX" in lsub and "work" in lsub and "\\Noselect" in lsub["work"]
    assert "work/projects/x" not in lsub
    lst = list_of(ok(m, 'LIST (SUBSCRIBED) "" "*"'))
    assert "\\Subscribed" in lst["work/projects/x"] and "\\Subscribed" in lst["INBOX"]
    assert "\\NonExistent" in lst["never-created"]
    assert "work" not in lst and "Drafts" not in lst
    assert "never-created" not in list_of(ok(m, 'LIST "" "*"'))
    ok(m, "UNSUBSCRIBE work/projects/x")
    ok(m, "UNSUBSCRIBE never-created")
    assert set(list_of(ok(m, 'LSUB "" "*"'), "LSUB")) == {"INBOX"}
    # Subscriptions live with the user, not the session.
    m2 = imap.login(imap.user_of(m))
    assert set(list_of(ok(m2, 'LSUB "" "*"'), "LSUB")) == {"INBOX"}


def _list_setup(m: imaplib.IMAP4) -> None:
    for name in ("work/projects/x", "work/notes", "fun"):
        ok(m, f"CREATE {name}")
    ok(m, "SUBSCRIBE fun")
    ok(m, "SUBSCRIBE work/projects/x")
    ok(m, "SUBSCRIBE Sent")


def test_list_basic(imap: Clients) -> None:
    m = imap.login()
    _list_setup(m)
    everything = {"INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive", "work",
                  "work/projects", "work/projects/x", "work/notes", "fun"}
    r = ok(m, 'LIST "" "*"')
    lst = list_of(r)
    assert set(lst) == everything
    assert r.untagged("LIST")[0].startswith(b"(") and b' "/" ' in r.untagged("LIST")[0]
    assert "\\HasChildren" in lst["work"] and "\\HasNoChildren" in lst["fun"]
    assert "\\Sent" in lst["Sent"] and "\\Drafts" in lst["Drafts"]
    assert set(list_of(ok(m, 'LIST "" "%"'))) == {"INBOX", "Drafts", "Sent", "Trash", "Junk",
                                                  "Archive", "work", "fun"}
    assert set(list_of(ok(m, 'LIST "" "work/%"'))) == {"work/projects", "work/notes"}
    assert set(list_of(ok(m, 'LIST "work/" "%"'))) == {"work/projects", "work/notes"}
    assert set(list_of(ok(m, 'LIST "work/" "*"'))) == {"work/projects", "work/notes",
                                                       "work/projects/x"}
    assert set(list_of(ok(m, 'LIST "" "*x"'))) == {"work/projects/x"}
    assert set(list_of(ok(m, 'LIST "" "w%/%"'))) == {"work/projects", "work/notes"}
    assert set(list_of(ok(m, 'LIST "" "inbox"'))) == {"INBOX"}
    assert set(list_of(ok(m, 'LIST "" "nothing*"'))) == set()
    # The empty pattern asks for the separator and the root.
    r = ok(m, 'LIST "" ""')
    assert r.untagged("LIST") == [b'(\\Noselect) "/" ""']


def test_list_extended(imap: Clients) -> None:
    m = imap.login()
    _list_setup(m)
    lst = list_of(ok(m, 'LIST (SUBSCRIBED) "" "*"'))
    assert set(lst) == {"fun", "work/projects/x", "Sent"}
    assert all("\\Subscribed" in a for a in lst.values())
    lst = list_of(ok(m, 'LIST (SPECIAL-USE) "" "*"'))
    assert set(lst) == {"Drafts", "Sent", "Trash", "Junk", "Archive"}
    assert "\\Trash" in lst["Trash"]
    # RECURSIVEMATCH: "work" does not qualify, but a child of it does: CHILDINFO.
    r = ok(m, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    lines = {parse(x)[2]: parse(x) for x in r.untagged("LIST")}
    assert set(lines) == {"fun", "work", "Sent"}
    assert lines["work"][3:] == [["CHILDINFO", ["SUBSCRIBED"]]] or \
        lines["work"][3:] == [[b"CHILDINFO", [b"SUBSCRIBED"]]]
    bad(m, 'LIST (RECURSIVEMATCH) "" "%"')
    bad(m, 'LIST (BOGUS) "" "%"')
    # Several patterns; RETURN options.
    lst = list_of(ok(m, 'LIST "" ("fun" "work/%") RETURN (CHILDREN SUBSCRIBED SPECIAL-USE)'))
    assert set(lst) == {"fun", "work/projects", "work/notes"}
    assert "\\Subscribed" in lst["fun"] and "\\HasNoChildren" in lst["fun"]
    assert "\\HasChildren" in lst["work/projects"]
    assert "\\Subscribed" not in lst["work/notes"]
    lst = list_of(ok(m, 'LIST "" "Sent" RETURN (SUBSCRIBED SPECIAL-USE)'))
    assert {"\\Subscribed", "\\Sent"} <= set(lst["Sent"])
    bad(m, 'LIST "" "*" RETURN (BOGUS)')


def test_list_status(imap: Clients) -> None:
    m = imap.login()
    _list_setup(m)
    fill(m, "fun", 2)
    ok(m, "CREATE zz/only/child")
    ok(m, "DELETE zz/only")
    r = ok(m, 'LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN UIDNEXT SIZE HIGHESTMODSEQ))')
    # Each STATUS line follows the LIST line of its mailbox.
    names = []
    for i, line in enumerate(r.lines):
        if line.startswith(b"* STATUS "):
            prev = r.lines[i - 1]
            assert prev.startswith(b"* LIST ")
            lname = parse(prev[7:])[2]
            sname = parse(line[9:])[0]
            assert lname == sname
            names.append(sname if isinstance(sname, str) else sname.decode())
    assert set(names) >= {"INBOX", "fun", "work/notes", "Sent"}
    assert "zz/only" not in names  # not selectable: no STATUS
    funline = next(x for x in r.untagged("STATUS") if x.startswith(b"fun "))
    vals = parse(funline)[1]
    st = {vals[i]: int(vals[i + 1]) for i in range(0, len(vals), 2)}
    assert st["MESSAGES"] == 2 and st["UNSEEN"] == 2 and st["UIDNEXT"] == 3
    assert st["SIZE"] == sum(len(message(f"msg {i}", f"body of msg {i}\r\n")) for i in (1, 2))


def test_recent_goes_to_one_session(imap: Clients) -> None:
    """RFC 3501 2.3.2: EXAMINE shows \\Recent without taking it, the first read-write
    session takes it, every later one sees none; new mail goes to the session that takes
    it first."""
    m = imap.login()
    user = imap.user_of(m)
    fill(m, "INBOX", 2)
    r = ok(m, "EXAMINE INBOX")
    assert r.untagged("RECENT") == [b"2"]
    assert dict(fetches(ok(m, "FETCH 1:2 FLAGS")))[1]["FLAGS"] == ["\\Recent"]
    ok(m, "CLOSE")
    assert status_of(ok(m, "STATUS INBOX (RECENT)"))["RECENT"] == 2
    assert select(m).untagged("RECENT") == [b"2"]
    assert ok(m, "SEARCH RECENT").untagged("SEARCH") == [b"1 2"]
    assert status_of(ok(m, "STATUS INBOX (RECENT)"))["RECENT"] == 2  # this session's
    other = imap.login(user)
    assert select(other).untagged("RECENT") == [b"0"]
    assert ok(other, "SEARCH NEW").untagged("SEARCH") == [b""]
    # New mail: one of the two selected sessions gets it as recent, the other does not.
    append(imap.login(user), "INBOX", message("new"))
    got = [ok(x, "NOOP").untagged("RECENT") for x in (m, other)]
    assert got in ([[b"3"], [b"0"]], [[b"2"], [b"1"]]), got
    third = imap.login(user)
    assert select(third).untagged("RECENT") == [b"0"]
    assert status_of(ok(third, "STATUS Trash (RECENT)"))["RECENT"] == 0


def test_status(imap: Clients) -> None:
    m = imap.login()
    msgs = [message("a"), message("b", "bb\r\n"), message("c", "ccc\r\n")]
    uids = [append(m, "INBOX", data, flags="\\Seen" if i == 0 else "")
            for i, data in enumerate(msgs)]
    assert uids == [1, 2, 3]
    r = ok(m, "STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE)")
    st = status_of(r)
    assert r.untagged("STATUS")[0].startswith(b"INBOX (")
    assert st["MESSAGES"] == 3 and st["RECENT"] == 3 and st["UIDNEXT"] == 4
    assert st["UNSEEN"] == 2 and st["SIZE"] == sum(map(len, msgs))
    assert st["HIGHESTMODSEQ"] > 0
    sel = select(m)
    assert f"UIDVALIDITY {st['UIDVALIDITY']}" in sel.codes()
    ok(m, "STORE 1 -FLAGS (\\Seen)")
    st2 = status_of(ok(m, "STATUS INBOX (UNSEEN HIGHESTMODSEQ MESSAGES)"))
    assert st2["UNSEEN"] == 3 and st2["HIGHESTMODSEQ"] > st["HIGHESTMODSEQ"]
    assert list(status_of(ok(m, "STATUS Trash (UIDNEXT MESSAGES)"))) == ["UIDNEXT", "MESSAGES"]
    no(m, "STATUS nosuch (MESSAGES)", "NONEXISTENT")
    bad(m, "STATUS INBOX (BOGUS)")
    bad(m, "STATUS INBOX ()")
    bad(m, "STATUS INBOX")


# -- messages in -------------------------------------------------------------------------------


def test_append(imap: Clients) -> None:
    m = imap.login()
    data = message("flags and date")
    r = ok(m, b'APPEND INBOX (\\Seen $Custom \\Flagged) "05-Mar-2024 10:20:30 +0200" '
           + lit(data))
    uidvalidity, uid = uid_code(r, "APPENDUID")
    assert uid == "1"
    r = select(m)
    assert f"UIDVALIDITY {uidvalidity}" in r.codes()
    assert "$Custom" in parse(r.untagged("FLAGS")[0])[0]
    f = fetch_one(m, "FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)")
    assert flags_of(f["FLAGS"]) == {"\\Seen", "$Custom", "\\Flagged"}
    when = dt.datetime.strptime(f["INTERNALDATE"].decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    assert when == dt.datetime(2024, 3, 5, 8, 20, 30, tzinfo=dt.UTC)
    assert int(f["RFC822.SIZE"]) == len(data)
    # Without a date the internal date is now.
    append(m, "INBOX", message("now"))
    got = fetches(ok(m, "NOOP"))
    f = fetch_one(m, "FETCH 2 INTERNALDATE")
    when = dt.datetime.strptime(f["INTERNALDATE"].decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    assert abs((when - dt.datetime.now(dt.UTC)).total_seconds()) < 120
    del got
    # While the mailbox is selected the APPEND's own reply announces the new message.
    r = ok(m, b"APPEND INBOX " + lit(message("selected")))
    assert b"3" in [x.strip() for x in r.untagged("EXISTS")]
    # No such mailbox: TRYCREATE.
    no(m, b"APPEND nosuch " + lit(message("x")), "TRYCREATE")
    bad(m, b'APPEND INBOX "not a date" ' + lit(message("x")))
    bad(m, b"APPEND INBOX (\\Bogus) " + lit(message("x")))
    bad(m, b"APPEND INBOX")
    assert status_of(ok(m, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 3


def test_append_big_literal(imap: Clients) -> None:
    """A message over 1 MB through imaplib (a synchronizing literal), read back byte for
    byte."""
    m = imap.login()
    rnd = random.Random(7)
    lines = [base64.b64encode(rnd.randbytes(57)) for _ in range(20000)]
    lines[100] = "ünïcödé 8-bit line".encode()
    data = message("big", "") + b"\r\n".join(lines) + b"\r\n"
    assert len(data) > 1_500_000
    typ, resp = m.append("INBOX", "(\\Draft)", imaplib.Time2Internaldate(1700000000), data)
    assert typ == "OK", resp
    select(m)
    f = fetch_one(m, "FETCH 1 (RFC822.SIZE BODY.PEEK[] BODY.PEEK[TEXT]<1000.2000> FLAGS)")
    assert int(f["RFC822.SIZE"]) == len(data)
    assert f["BODY[]"] == data
    text = data[data.index(b"\r\n\r\n") + 4:]
    assert f["BODY[TEXT]<1000>"] == text[1000:3000]
    assert flags_of(f["FLAGS"]) == {"\\Draft"}
    # imaplib's own FETCH sees the same bytes.
    m.select("INBOX")
    typ, got = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and isinstance(got[0], tuple) and got[0][1] == data


# -- selected state ---------------------------------------------------------------------------


def test_check_close_unselect(imap: Clients) -> None:
    m = imap.login()
    fill(m, "INBOX", 4)
    select(m)
    ok(m, "STORE 2:3 +FLAGS.SILENT (\\Deleted)")
    ok(m, "CHECK")
    r = ok(m, "UNSELECT")
    assert not r.untagged("EXPUNGE")
    bad(m, "FETCH 1 FLAGS")
    bad(m, "UNSELECT")
    assert status_of(ok(m, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 4
    select(m)
    r = ok(m, "CLOSE")
    assert not r.untagged("EXPUNGE")  # CLOSE expunges silently
    bad(m, "CLOSE")
    assert status_of(ok(m, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 2
    select(m)
    assert seq_uids(m) == [1, 4]
    # CLOSE of an EXAMINEd mailbox expunges nothing.
    ok(m, "STORE 1 +FLAGS (\\Deleted)")
    ok(m, "EXAMINE INBOX")
    ok(m, "CLOSE")
    assert status_of(ok(m, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 2


def test_empty_mailbox(imap: Clients) -> None:
    m = imap.login()
    r = select(m)
    assert r.untagged("EXISTS") == [b"0"] and "UIDNEXT 1" in r.codes()
    assert not any(c.startswith("UNSEEN") for c in r.codes())
    assert search_of(ok(m, "SEARCH ALL")) == []
    assert search_of(ok(m, "UID SEARCH ALL")) == []
    assert esearch(ok(m, "SEARCH RETURN (MIN MAX COUNT ALL) ALL")) == (False, {"COUNT": "0"})
    for text in ("UID FETCH 1:* FLAGS", "UID STORE 1:* +FLAGS (\\Seen)",
                 "UID COPY 1:* Trash", "UID MOVE 1:* Trash", "UID EXPUNGE 1:*", "EXPUNGE",
                 "CHECK", "NOOP"):
        r = ok(m, text)
        assert not r.untagged("FETCH") and not r.untagged("EXPUNGE"), text
    for text in ("FETCH 1:* FLAGS", "FETCH 1 FLAGS", "STORE 1:* +FLAGS (\\Seen)",
                 "COPY 1:* Trash", "MOVE 1 Trash"):
        assert cmd(m, text).status in ("NO", "BAD"), text
    assert status_of(ok(m, "STATUS Trash (MESSAGES)"))["MESSAGES"] == 0
    ok(m, "CLOSE")


def test_expunge_and_uid_expunge(imap: Clients) -> None:
    m = imap.login()
    fill(m, "INBOX", 6)
    select(m)
    ok(m, "STORE 2,4,5 +FLAGS (\\Deleted)")
    r = ok(m, "EXPUNGE")
    view = [1, 2, 3, 4, 5, 6]
    for n in r.untagged("EXPUNGE"):
        del view[int(n.strip()) - 1]
    assert view == [1, 3, 6]
    assert seq_uids(m) == [1, 3, 6]
    ok(m, "EXPUNGE")  # nothing left to expunge
    # UID EXPUNGE removes only the named \Deleted messages (RFC 4315).
    ok(m, "STORE 1:3 +FLAGS (\\Deleted)")
    r = ok(m, "UID EXPUNGE 3:5")
    assert [x.strip() for x in r.untagged("EXPUNGE")] == [b"2"]
    assert seq_uids(m) == [1, 6]
    f = fetches(ok(m, "FETCH 1:2 FLAGS"))
    assert all("\\Deleted" in x["FLAGS"] for _, x in f)
    ok(m, "UID EXPUNGE 100:200")
    assert seq_uids(m) == [1, 6]
    bad(m, "UID EXPUNGE")
    # With CONDSTORE the reply carries the new HIGHESTMODSEQ.
    ok(m, "ENABLE CONDSTORE")
    r = ok(m, "EXPUNGE")
    assert (r.code() or "").startswith("HIGHESTMODSEQ ")
    assert len(r.untagged("EXPUNGE")) == 2


def _search_setup(m: imaplib.IMAP4) -> None:
    msgs = [
        (message("Quarterly report", "Numbers inside.\r\n", frm="Alice <alice@example.com>",
                 date="Mon, 01 Jan 2024 10:00:00 +0000", extra="X-Tag: red\r\n"),
         "\\Seen", "01-Jan-2024 10:00:00 +0000"),
        (message("Lunch plans", "Pizza or sushi?\r\n", frm="Bob <bob@example.org>",
                 to="alice@example.com", date="Wed, 10 Jan 2024 10:00:00 +0000"),
         "\\Flagged $Work", "10-Jan-2024 10:00:00 +0000"),
        (message("=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?=", "Viele Grüße\r\n",
                 frm="Carol <carol@example.net>", date="Sat, 20 Jan 2024 10:00:00 +0000",
                 extra="Cc: dave@example.com\r\n"),
         "\\Answered", "20-Jan-2024 10:00:00 +0000"),
        (message("Big one", "x" * 5000 + "\r\n", frm="Alice <alice@example.com>",
                 date="Thu, 01 Feb 2024 10:00:00 +0000"),
         "\\Deleted \\Seen", "01-Feb-2024 10:00:00 +0000"),
        (message("Draft reply", "about the report\r\n", frm="Dave <dave@example.com>",
                 date="Fri, 02 Feb 2024 10:00:00 +0000"),
         "\\Draft $Work", "02-Feb-2024 10:00:00 +0000"),
    ]
    for data, flags, date in msgs:
        append(m, "INBOX", data, flags=flags, date=date)


def test_search(imap: Clients) -> None:
    m = imap.login()
    _search_setup(m)
    select(m)
    cases = {
        "ALL": [1, 2, 3, 4, 5],
        "SEEN": [1, 4],
        "UNSEEN": [2, 3, 5],
        "FLAGGED": [2],
        "UNFLAGGED": [1, 3, 4, 5],
        "ANSWERED": [3],
        "DELETED": [4],
        "UNDELETED": [1, 2, 3, 5],
        "DRAFT": [5],
        "KEYWORD $Work": [2, 5],
        "UNKEYWORD $Work": [1, 3, 4],
        "SUBJECT report": [1],
        'SUBJECT "LUNCH plans"': [2],
        "FROM alice": [1, 4],
        "TO alice@example.com": [2],
        "CC dave": [3],
        "BODY pizza": [2],
        "TEXT report": [1, 5],
        "HEADER X-Tag red": [1],
        'HEADER X-Tag ""': [1],
        "LARGER 3000": [4],
        "SMALLER 3000": [1, 2, 3, 5],
        "OR FLAGGED DRAFT": [2, 5],
        "NOT SEEN": [2, 3, 5],
        "(SEEN UNDELETED)": [1],
        "SEEN UNDELETED": [1],
        "2:4": [2, 3, 4],
        "3:*": [3, 4, 5],
        "UID 2,4:5": [2, 4, 5],
        "SINCE 20-Jan-2024": [3, 4, 5],
        "BEFORE 10-Jan-2024": [1],
        "ON 10-Jan-2024": [2],
        "SENTSINCE 1-Feb-2024": [4, 5],
        "SENTBEFORE 2-Jan-2024": [1],
        "SENTON 20-Jan-2024": [3],
        "NEW": [2, 3, 5],  # this session's first SELECT took them all as \\Recent
        "OLD": [],
        "RECENT": [1, 2, 3, 4, 5],
        "NOT OR SEEN FLAGGED": [3, 5],
        "OR (FROM bob) (SUBJECT draft)": [2, 5],
    }
    for crit, want in cases.items():
        r = ok(m, f"SEARCH {crit}")
        assert search_of(r) == want, crit
    # A UTF-8 search string in a literal: one the client waits for (imaplib) and a
    # LITERAL+ one.
    m.select("INBOX")
    m.literal = "grüße".encode()  # type: ignore[assignment]
    typ, data = m.search("UTF-8", "SUBJECT")
    assert typ == "OK" and data == [b"3"]
    assert search_of(ok(m, b"SEARCH CHARSET UTF-8 BODY " + lit("GRÜSSE".encode()))) in ([], [3])
    assert search_of(ok(m, b"SEARCH CHARSET UTF-8 TEXT " + lit("viele grüße".encode()))) \
        == [3]
    assert search_of(ok(m, "SEARCH CHARSET US-ASCII FROM carol")) == [3]
    no(m, "SEARCH CHARSET X-KLINGON ALL", "BADCHARSET")
    bad(m, "SEARCH BOGUS")
    bad(m, "SEARCH")
    bad(m, "SEARCH SINCE notadate")
    bad(m, "SEARCH OR SEEN")


def test_uid_search_and_esearch(imap: Clients) -> None:
    m = imap.login()
    _search_setup(m)
    select(m)
    ok(m, "EXPUNGE")  # UID 4: sequence numbers and UIDs part
    assert seq_uids(m) == [1, 2, 3, 5]
    assert search_of(ok(m, "UID SEARCH KEYWORD $Work")) == [2, 5]
    assert search_of(ok(m, "SEARCH KEYWORD $Work")) == [2, 4]
    assert search_of(ok(m, "UID SEARCH UID 3:*")) == [3, 5]
    assert search_of(ok(m, "UID SEARCH 4")) == [5]
    assert search_of(ok(m, "UID SEARCH UID 100:*")) == [5]  # "*" is the last UID

    assert esearch(ok(m, "SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")) == (
        False, {"MIN": "2", "MAX": "4", "COUNT": "3", "ALL": "2:4"})
    assert esearch(ok(m, "UID SEARCH RETURN (ALL COUNT) KEYWORD $Work")) == (
        True, {"ALL": "2,5", "COUNT": "2"})
    assert esearch(ok(m, "SEARCH RETURN (MIN) FLAGGED")) == (False, {"MIN": "2"})
    assert esearch(ok(m, "SEARCH RETURN () SEEN")) == (False, {"ALL": "1"})
    assert esearch(ok(m, "SEARCH RETURN (COUNT MIN ALL) SUBJECT nothing-matches")) == (
        False, {"COUNT": "0"})
    assert esearch(ok(m, "SEARCH RETURN (MIN) SUBJECT nothing-matches")) == (False, {})
    bad(m, "SEARCH RETURN (BOGUS) ALL")


def esearch(r: Reply) -> tuple[bool, dict[str, str]]:
    """``(UID?, {return item: value})`` of the one ESEARCH line, whose correlator must be
    the command's tag (RFC 4731)."""
    (line,) = r.untagged("ESEARCH")
    vals = parse(line)
    assert vals[0] == ["TAG", r.tag], vals
    uid = len(vals) > 1 and vals[1] == "UID"
    rest = vals[2:] if uid else vals[1:]
    assert len(rest) % 2 == 0, vals
    return uid, {rest[i]: rest[i + 1] for i in range(0, len(rest), 2)}


def test_esearch_tag(imap: Clients) -> None:
    m = imap.login()
    fill(m, "INBOX", 2)
    select(m)
    m.send(b"mytag7 SEARCH RETURN (COUNT) ALL\r\n")
    line = read_response(m)
    assert line == b'* ESEARCH (TAG "mytag7") COUNT 2'
    assert read_response(m).startswith(b"mytag7 OK")


# -- FETCH ------------------------------------------------------------------------------------


def _fetch_setup(m: imaplib.IMAP4) -> None:
    append(m, "INBOX", MULTIPART, date="02-Jan-2024 12:34:56 +0100")
    append(m, "INBOX", message("plain", "line one\r\nline two\r\n"), flags="\\Flagged")
    select(m)


def test_fetch_metadata_and_structure(imap: Clients) -> None:
    m = imap.login()
    _fetch_setup(m)
    f = fetch_one(m, "FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)")
    assert f["UID"] == "1" and flags_of(f["FLAGS"]) == set()
    assert f["INTERNALDATE"] == b" 2-Jan-2024 12:34:56 +0100" or \
        f["INTERNALDATE"] == b"02-Jan-2024 12:34:56 +0100"
    assert int(f["RFC822.SIZE"]) == len(MULTIPART)
    env = f["ENVELOPE"]
    assert env[0] == b"Tue, 02 Jan 2024 12:34:56 +0100"
    assert env[1] == b"Multipart test"
    alice = [[b"Alice Example", None, b"alice", b"example.com"]]
    assert env[2] == alice and env[3] == alice and env[4] == alice  # from, sender, reply-to
    assert env[5] == [[b"Bob", None, b"bob", b"example.org"],
                      [None, None, b"carol", b"example.net"]]
    assert env[6] == [[b"Dave", None, b"dave", b"example.com"]]
    assert env[7] is None
    assert env[8] == b"<earlier@example.com>" and env[9] == b"<mp1@example.com>"

    f = fetch_one(m, "FETCH 1 BODYSTRUCTURE")
    bs = f["BODYSTRUCTURE"]
    text, binpart, inner = bs[0], bs[1], bs[2]
    assert bs[3].upper() == b"MIXED"
    assert [x.upper() if isinstance(x, bytes) else x for x in bs[4]] == [b"BOUNDARY", b"XYZ"]
    part1 = b"Hello w\xc3\xb6rld\r\nsecond line"
    assert [x.upper() for x in text[:2]] == [b"TEXT", b"PLAIN"]
    assert [x.upper() for x in text[2]] == [b"CHARSET", b"UTF-8"]
    assert text[5].upper() == b"8BIT" and int(text[6]) == len(part1)
    assert int(text[7]) in (1, 2)  # the last line ends where the delimiter's CRLF starts
    assert [x.upper() for x in binpart[:2]] == [b"APPLICATION", b"OCTET-STREAM"]
    assert binpart[5].upper() == b"BASE64" and int(binpart[6]) == len(b"AAECAwQ=")
    assert binpart[8][0].upper() == b"ATTACHMENT"
    assert [x.upper() for x in inner[:2]] == [b"MESSAGE", b"RFC822"]
    assert inner[7][1] == b"inner"  # the envelope of the inner message
    assert [x.upper() for x in inner[8][:2]] == [b"TEXT", b"PLAIN"]
    # BODY: the same without extension data.
    f = fetch_one(m, "FETCH 1 BODY")
    body = f["BODY"]
    assert body[3].upper() == b"MIXED" and len(body) == 4
    assert len(body[0]) == 8  # text: basic fields and line count only
    f = fetch_one(m, "FETCH 2 BODYSTRUCTURE")
    assert [x.upper() for x in f["BODYSTRUCTURE"][:2]] == [b"TEXT", b"PLAIN"]
    assert int(f["BODYSTRUCTURE"][7]) == 2

    # Macros.
    assert set(fetch_one(m, "FETCH 2 ALL")) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE",
                                                "ENVELOPE"}
    assert set(fetch_one(m, "FETCH 2 FAST")) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE"}
    assert set(fetch_one(m, "FETCH 2 FULL")) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE",
                                                 "ENVELOPE", "BODY"}
    got = fetches(ok(m, "FETCH 1:* (FLAGS)"))
    assert [s for s, _ in got] == [1, 2] and flags_of(got[1][1]["FLAGS"]) == {"\\Flagged"}
    got = fetches(ok(m, "UID FETCH 2:* FLAGS"))
    assert got == [(2, {"UID": "2", "FLAGS": ["\\Flagged", "\\Recent"]})]
    assert fetches(ok(m, "UID FETCH 50:60 FLAGS")) == []
    # Sequence sets: "*" is the last message (also in "n:*" past the end), ranges go
    # either way, a message is answered once however often it is named.
    assert [s for s, _ in fetches(ok(m, "FETCH * UID"))] == [2]
    assert fetches(ok(m, "UID FETCH 100:* UID")) == [(2, {"UID": "2"})]
    assert [s for s, _ in fetches(ok(m, "FETCH 2:1 UID"))] == [1, 2]
    assert [s for s, _ in fetches(ok(m, "FETCH 1,1,2,1 UID"))] == [1, 2]
    bad(m, "FETCH 0 UID")
    bad(m, "FETCH 3 FLAGS")
    bad(m, "FETCH 1 BOGUS")
    bad(m, "FETCH 1 (FLAGS")
    bad(m, "FETCH 1 BODY[BOGUS]")
    bad(m, "FETCH x FLAGS")


def test_fetch_sections(imap: Clients) -> None:
    m = imap.login()
    _fetch_setup(m)
    items = ("BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT] "
             "BODY.PEEK[HEADER.FIELDS (subject FROM x-nothing)] "
             "BODY.PEEK[HEADER.FIELDS.NOT (Subject From To Cc Date Message-ID In-Reply-To "
             "MIME-Version Content-Type)] "
             "BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2] BODY.PEEK[3] BODY.PEEK[3.HEADER] "
             "BODY.PEEK[3.TEXT] BODY.PEEK[3.1] BODY.PEEK[]<0.10> BODY.PEEK[]<20.5000000> "
             "BODY.PEEK[1]<6.7> BODY.PEEK[4] RFC822.HEADER")
    f = fetch_one(m, f"FETCH 1 ({items})")
    assert f["BODY[]"] == MULTIPART
    assert f["BODY[HEADER]"] == MP_HEADER
    assert f["BODY[TEXT]"] == MP_TEXT
    assert f["BODY[HEADER.FIELDS (SUBJECT FROM X-NOTHING)]"] == (
        b"From: Alice Example <alice@example.com>\r\nSubject: Multipart test\r\n\r\n")
    assert f["BODY[HEADER.FIELDS.NOT (SUBJECT FROM TO CC DATE MESSAGE-ID IN-REPLY-TO "
             "MIME-VERSION CONTENT-TYPE)]"] == b"X-Extra: one\r\n\r\n"
    assert f["BODY[1]"] == b"Hello w\xc3\xb6rld\r\nsecond line"
    assert f["BODY[1.MIME]"] == (b"Content-Type: text/plain; charset=utf-8\r\n"
                                 b"Content-Transfer-Encoding: 8bit\r\n\r\n")
    assert f["BODY[2]"] == b"AAECAwQ="
    inner = b"From: inner@example.com\r\nSubject: inner\r\n\r\ninner body"
    assert f["BODY[3]"] == inner
    assert f["BODY[3.HEADER]"] == b"From: inner@example.com\r\nSubject: inner\r\n\r\n"
    assert f["BODY[3.TEXT]"] == b"inner body"
    assert f["BODY[3.1]"] == b"inner body"
    assert f["BODY[]<0>"] == MULTIPART[:10]
    assert f["BODY[]<20>"] == MULTIPART[20:]
    assert f["BODY[1]<6>"] == b"w\xc3\xb6rld\r"
    assert f["BODY[4]"] == b""
    assert f["RFC822.HEADER"] == MP_HEADER
    assert fetch_one(m, "FETCH 1 BODY.PEEK[]<99999.10>")["BODY[]<99999>"] == b""
    f = fetch_one(m, "FETCH 2 (BODY.PEEK[1] BODY.PEEK[TEXT] RFC822.SIZE)")
    assert f["BODY[1]"] == b"line one\r\nline two\r\n" == f["BODY[TEXT]"]
    # Nothing of this set \Seen.
    assert fetches(ok(m, "FETCH 1:2 FLAGS"))[0][1]["FLAGS"] == ["\\Recent"]


def test_fetch_envelope_edge_cases(imap: Clients) -> None:
    m = imap.login()
    append(m, "INBOX", b"\r\nno headers at all\r\n")
    append(m, "INBOX", b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n"
           b"From: \xc3\xa4rger <a@b.example>\r\n"
           b"To: undisclosed-recipients:;\r\n"
           b"Cc: team: a@b.example, d@e.example;, x@y.example\r\n"
           b"X-Folded: one\r\n two\r\n\r\nbody\r\n")
    select(m)
    f = fetch_one(m, "FETCH 1 (ENVELOPE BODYSTRUCTURE)")
    assert f["ENVELOPE"] == [None] * 10
    # No Content-Type: text/plain; charset=us-ascii, 7bit (RFC 2045 5.2).
    bs = f["BODYSTRUCTURE"]
    assert [x.upper() for x in bs[:2]] == [b"TEXT", b"PLAIN"]
    assert [x.upper() for x in bs[2]] == [b"CHARSET", b"US-ASCII"]
    assert bs[5].upper() == b"7BIT" and int(bs[6]) == len(b"no headers at all\r\n")
    f = fetch_one(m, 'FETCH 2 (ENVELOPE BODY.PEEK[HEADER.FIELDS ("x-folded" To)])')
    env = f["ENVELOPE"]
    assert env[1] == b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?="  # as in the header, not decoded
    assert env[2] == [[b"\xc3\xa4rger", None, b"a", b"b.example"]]
    # Groups: a start marker with the group name, the members, an end marker.
    assert env[5] == [[None, None, b"undisclosed-recipients", None], [None, None, None, None]]
    assert env[6] == [[None, None, b"team", None], [None, None, b"a", b"b.example"],
                      [None, None, b"d", b"e.example"], [None, None, None, None],
                      [None, None, b"x", b"y.example"]]
    assert f["BODY[HEADER.FIELDS (X-FOLDED TO)]"] == (
        b"To: undisclosed-recipients:;\r\nX-Folded: one\r\n two\r\n\r\n")


def test_fetch_sets_seen(imap: Clients) -> None:
    m = imap.login()
    for i in range(5):
        append(m, "INBOX", message(f"m{i}"))
    select(m)
    f = fetch_one(m, "FETCH 1 (BODY.PEEK[] RFC822.HEADER RFC822.SIZE FLAGS)")
    assert flags_of(f["FLAGS"]) == set()
    f = fetch_one(m, "FETCH 1 BODY[]")
    assert f["BODY[]"] == message("m0") and "\\Seen" in f["FLAGS"]
    f = fetch_one(m, "FETCH 2 BODY[HEADER.FIELDS (SUBJECT)]")
    assert "\\Seen" in f["FLAGS"]
    f = fetch_one(m, "FETCH 3 RFC822")
    assert f["RFC822"] == message("m2") and "\\Seen" in f["FLAGS"]
    f = fetch_one(m, "FETCH 4 RFC822.TEXT")
    assert f["RFC822.TEXT"] == b"Just a test.\r\n" and "\\Seen" in f["FLAGS"]
    f = fetch_one(m, "FETCH 5 (RFC822.HEADER BODY.PEEK[TEXT])")
    assert "FLAGS" not in f
    got = {s: flags_of(x["FLAGS"]) for s, x in fetches(ok(m, "FETCH 1:5 FLAGS"))}
    assert got == {1: {"\\Seen"}, 2: {"\\Seen"}, 3: {"\\Seen"}, 4: {"\\Seen"}, 5: set()}
    # Already \Seen: a second BODY[] changes nothing (and says nothing about flags).
    f = fetch_one(m, "FETCH 1 BODY[TEXT]")
    assert f["BODY[TEXT]"] == b"Just a test.\r\n" and "FLAGS" not in f
    # UID FETCH always has UID; seen by another session at once.
    m2 = imap.login(imap.user_of(m))
    select(m2)
    assert fetches(ok(m2, "UID FETCH 5 BODY[]"))[0][1]["UID"] == "5"
    assert "\\Seen" in fetch_one(m2, "FETCH 5 FLAGS")["FLAGS"]


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def chunked_server(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """A small log limit: the cache of a few hundred messages lives in chunk objects."""
    settings = StorageSettings(poll_interval=0.3, log_limit=8192, prefetch_count=4)
    yield from server_fixture(request, tmp_path_factory.mktemp("imapc"), settings=settings)


def test_fetch_from_cache_chunks(chunked_server: ImapServer) -> None:
    """ENVELOPE and header fields of messages whose cache entries went into chunk objects
    (read ahead chunk by chunk) are the same as straight after APPEND."""
    libfs_only(chunked_server, "cache chunks of a rotated log")
    c = Clients(chunked_server)
    try:
        m = c.login()
        n = 200
        subjects = [f"chunked {i}" for i in range(n)]
        for subject in subjects:
            append(m, "INBOX", message(subject, f"body {subject}\r\n"))
        box = chunked_server.call(_inbox_of(chunked_server, c.user_of(m)))
        assert box.state.cache_chunks, "the log limit made no cache chunk"
        select(m)
        got = fetches(ok(m, "FETCH 1:* (UID ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
        assert [seq for seq, _ in got] == list(range(1, n + 1))
        for (seq, f), subject in zip(got, subjects, strict=True):
            assert f["ENVELOPE"][1] == subject.encode(), (seq, f["ENVELOPE"])
            assert f["BODY[HEADER.FIELDS (SUBJECT)]"] == f"Subject: {subject}\r\n\r\n".encode()
        # The entries came from the chunks (read into memory), not from the messages.
        assert set(box._chunks) == {name for name, _ in box.state.cache_chunks}
    finally:
        c.close()


async def _inbox_of(srv: ImapServer, user: str) -> Any:
    assert srv.ctx.mail is not None
    um = await srv.ctx.mail.user(user)
    return await um.mailbox("INBOX")


# -- STORE, COPY, MOVE -------------------------------------------------------------------------


def test_store(imap: Clients) -> None:
    m = imap.login()
    fill(m, "INBOX", 4)
    select(m)
    r = ok(m, "STORE 1 +FLAGS (\\Flagged $Important)")
    ((seq, f),) = fetches(r)
    assert seq == 1 and flags_of(f["FLAGS"]) == {"$Important", "\\Flagged"}
    # A new keyword is announced with FLAGS (and PERMANENTFLAGS).
    assert any("$Important" in parse(x)[0] for x in r.untagged("FLAGS"))
    r = ok(m, "STORE 1:2 +FLAGS \\Seen")
    by_seq = dict(fetches(r))
    assert flags_of(by_seq[1]["FLAGS"]) == {"$Important", "\\Flagged", "\\Seen"}
    assert flags_of(by_seq[2]["FLAGS"]) == {"\\Seen"}
    r = ok(m, "STORE 1 -FLAGS (\\Flagged)")
    assert flags_of(fetches(r)[0][1]["FLAGS"]) == {"$Important", "\\Seen"}
    r = ok(m, "STORE 1 FLAGS (\\Answered $Other)")
    assert flags_of(fetches(r)[0][1]["FLAGS"]) == {"\\Answered", "$Other"}
    r = ok(m, "STORE 3 +FLAGS.SILENT (\\Draft)")
    assert not r.untagged("FETCH")
    r = ok(m, "STORE 3 FLAGS.SILENT ()")
    assert not r.untagged("FETCH")
    r = ok(m, "UID STORE 2,4 +FLAGS (\\Deleted)")
    assert {s: x["UID"] for s, x in fetches(r)} == {2: "2", 4: "4"}
    r = ok(m, "STORE 4 -FLAGS (\\Recent \\Deleted)")  # \Recent is not the client's to set
    assert flags_of(fetches(r)[0][1]["FLAGS"]) == set()
    r = ok(m, "UID STORE 99 +FLAGS (\\Seen)")
    assert not r.untagged("FETCH")
    bad(m, "STORE 1 +FLAGS (\\Bogus)")
    bad(m, "STORE 1 +FLAGZ (\\Seen)")
    bad(m, "STORE 9 +FLAGS (\\Seen)")
    bad(m, "STORE 1 +FLAGS")
    # Flags are the mailbox's: another session sees them.
    m2 = imap.login(imap.user_of(m))
    ok(m2, "EXAMINE INBOX")
    seen = {s: flags_of(x["FLAGS"]) for s, x in fetches(ok(m2, "FETCH 1:4 FLAGS"))}
    assert seen == {1: {"\\Answered", "$Other"}, 2: {"\\Seen", "\\Deleted"}, 3: set(),
                   4: set()}


def test_copy(imap: Clients) -> None:
    m = imap.login()
    ok(m, "CREATE dest")
    fill(m, "INBOX", 4)
    select(m)
    ok(m, "STORE 2 +FLAGS (\\Flagged $Kw)")
    uv = status_of(ok(m, "STATUS dest (UIDVALIDITY)"))["UIDVALIDITY"]
    r = ok(m, "COPY 2:3 dest")
    assert uid_code(r, "COPYUID") == [str(uv), "2:3", "1:2"]
    r = ok(m, "UID COPY 4,1 dest")
    v, src, dst = uid_code(r, "COPYUID")
    assert v == str(uv) and (expand(src), expand(dst)) == ([1, 4], [3, 4])
    assert seq_uids(m) == [1, 2, 3, 4]  # the source is untouched
    ok(m, "EXAMINE dest")
    f = dict(fetches(ok(m, "FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")))
    assert flags_of(f[1]["FLAGS"]) == {"\\Flagged", "$Kw"}
    assert [f[i]["BODY[HEADER.FIELDS (SUBJECT)]"] for i in (1, 2, 3, 4)] == [
        b"Subject: msg %d\r\n\r\n" % i for i in (2, 3, 1, 4)]
    select(m)
    no(m, "COPY 1 nosuch", "TRYCREATE")
    r = ok(m, "UID COPY 50:60 dest")
    assert "COPYUID" not in " ".join(r.codes())
    bad(m, "COPY 9 dest")
    ok(m, "COPY 1 INBOX")  # into the selected mailbox itself
    assert seq_uids(m) == [1, 2, 3, 4, 5]


def test_move(imap: Clients) -> None:
    m = imap.login()
    ok(m, "CREATE dest")
    fill(m, "INBOX", 5)
    select(m)
    uv = status_of(ok(m, "STATUS dest (UIDVALIDITY)"))["UIDVALIDITY"]
    r = ok(m, "MOVE 2:3 dest")
    # COPYUID comes untagged before the EXPUNGEs (RFC 6851 4.3).
    i_copy = next(i for i, x in enumerate(r.lines) if b"[COPYUID " in x)
    assert r.lines[i_copy].startswith(b"* OK [COPYUID")
    assert uid_code(r, "COPYUID") == [str(uv), "2:3", "1:2"]
    exp = [i for i, x in enumerate(r.lines) if x.endswith(b" EXPUNGE")]
    assert len(exp) == 2 and min(exp) > i_copy
    assert seq_uids(m) == [1, 4, 5]
    r = ok(m, "UID MOVE 5 dest")
    assert uid_code(r, "COPYUID") == [str(uv), "5", "3"]
    assert [x.strip() for x in r.untagged("EXPUNGE")] == [b"3"]
    r = ok(m, "UID MOVE 77 dest")
    assert not r.untagged("EXPUNGE")
    no(m, "MOVE 1 nosuch", "TRYCREATE")
    assert seq_uids(m) == [1, 4]
    assert status_of(ok(m, "STATUS dest (MESSAGES)"))["MESSAGES"] == 3
    # With QRESYNC the expunges are VANISHED.
    ok(m, "ENABLE QRESYNC")
    r = ok(m, "MOVE 1 dest")
    assert r.untagged("VANISHED") == [b"1"] and not r.untagged("EXPUNGE")
    assert seq_uids(m) == [4]


# -- IDLE and other sessions ------------------------------------------------------------------


def test_idle(imap: Clients) -> None:
    user = imap.user()
    a = imap.login(user)
    b = imap.login(user)
    fill(a, "INBOX", 1)
    select(a)
    a.sock.settimeout(15)
    tag = b"I%d" % next(_TAGS)
    a.send(tag + b" IDLE\r\n")
    assert read_response(a).startswith(b"+ ")
    append(b, "INBOX", message("while idling"))
    assert read_response(a) == b"* 2 EXISTS"
    line = read_response(a)
    assert line == b"* 2 RECENT"
    select(b)
    ok(b, "STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert read_response(a) == b"* 1 FETCH (FLAGS (\\Deleted \\Recent))"
    ok(b, "EXPUNGE")
    assert read_response(a) == b"* 1 EXPUNGE"
    a.send(b"DONE\r\n")
    assert read_response(a).startswith(tag + b" OK")
    assert seq_uids(a) == [2]
    # IDLE without a selected mailbox just waits for DONE.
    ok(a, "UNSELECT")
    a.send(tag + b"x IDLE\r\n")
    assert read_response(a).startswith(b"+ ")
    a.send(b"DONE\r\n")
    assert read_response(a).startswith(tag + b"x OK")
    # Anything but DONE ends IDLE with BAD.
    select(a)
    a.send(tag + b"y IDLE\r\n")
    assert read_response(a).startswith(b"+ ")
    a.send(b"NOOP\r\n")
    assert read_response(a).startswith(tag + b"y BAD")
    ok(a, "NOOP")


def test_other_sessions_changes(imap: Clients) -> None:
    user = imap.user()
    a = imap.login(user)
    b = imap.login(user)
    fill(a, "INBOX", 4)
    select(a)
    select(b)
    append(b, "INBOX", message("from b"))
    r = ok(a, "NOOP")
    assert [x.strip() for x in r.untagged("EXISTS")] == [b"5"]
    ok(b, "STORE 1 +FLAGS (\\Flagged)")
    r = ok(a, "NOOP")
    assert [(s, flags_of(f["FLAGS"])) for s, f in fetches(r)] == [(1, {"\\Flagged"})]
    assert not fetches(ok(a, "NOOP"))  # reported once
    ok(a, "STORE 2 +FLAGS (\\Answered)")
    assert not fetches(ok(a, "NOOP"))  # its own change was reported by the STORE
    ok(b, "STORE 2 +FLAGS (\\Deleted)")
    ok(b, "EXPUNGE")
    # No EXPUNGE while A answers FETCH, STORE or SEARCH: its sequence numbers hold still.
    r = cmd(a, "FETCH 1:* (UID)")
    assert r.status in ("OK", "NO") and not r.untagged("EXPUNGE")
    assert {s: x["UID"] for s, x in fetches(r)} == {1: "1", 3: "3", 4: "4", 5: "5"}
    r = ok(a, "STORE 3 +FLAGS (\\Seen)")
    assert not r.untagged("EXPUNGE")
    assert {s: flags_of(x["FLAGS"]) for s, x in fetches(r)}[3] == {"\\Seen"}
    r = ok(a, "SEARCH SEEN")
    assert not r.untagged("EXPUNGE") and search_of(r) == [3]
    r = ok(a, "NOOP")
    assert [x.strip() for x in r.untagged("EXPUNGE")] == [b"2"]
    assert seq_uids(a) == [1, 3, 4, 5]
    assert flags_of(fetch_one(a, "FETCH 2 FLAGS")["FLAGS"]) == {"\\Seen"}
    # A new message and an expunge together: EXPUNGE first, then EXISTS.
    ok(b, "STORE 1 +FLAGS (\\Deleted)")
    ok(b, "EXPUNGE")
    append(b, "INBOX", message("another"))
    r = ok(a, "NOOP")
    assert [x.strip() for x in r.untagged("EXPUNGE")] == [b"1"]
    assert [x.strip() for x in r.untagged("EXISTS")] == [b"4"]
    assert seq_uids(a) == [3, 4, 5, 6]
    assert seq_uids(b) == [3, 4, 5, 6]


# -- authenticated-state extras ---------------------------------------------------------------


def test_namespace_enable_id(imap: Clients) -> None:
    m = imap.connect()
    r = ok(m, 'ID ("name" "pytest" "version" "1")')
    vals = parse(r.untagged("ID")[0])[0]
    assert b"name" in vals
    ok(m, "ID NIL")
    bad(m, "ENABLE CONDSTORE")
    ok(m, f"LOGIN {imap.user()} {PASSWORD}")
    assert ok(m, "NAMESPACE").untagged("NAMESPACE") == [b'(("" "/")) NIL NIL']
    assert ok(m, "ENABLE CONDSTORE").untagged("ENABLED") == [b"CONDSTORE"]
    assert ok(m, "ENABLE CONDSTORE").untagged("ENABLED") in ([b""], [])
    assert ok(m, "ENABLE X-UNKNOWN QRESYNC").untagged("ENABLED") == [b"QRESYNC"]
    bad(m, "ENABLE")
    bad(m, "ID")


def test_quota(quota_imap: Clients) -> None:
    m = quota_imap.login()
    r = ok(m, "GETQUOTAROOT INBOX")
    assert r.untagged("QUOTAROOT") == [b'INBOX ""']
    assert r.untagged("QUOTA") == [b'"" (STORAGE 0 %d MESSAGE 0 %d)' % (
        QUOTA_BYTES // 1024, QUOTA_MESSAGES)]
    data = message("q", "x" * 3000 + "\r\n")
    append(m, "INBOX", data)
    r = ok(m, 'GETQUOTA ""')
    assert r.untagged("QUOTA") == [b'"" (STORAGE %d %d MESSAGE 1 %d)' % (
        len(data) // 1024, QUOTA_BYTES // 1024, QUOTA_MESSAGES)]
    no(m, 'GETQUOTA "other"')
    no(m, 'SETQUOTA "" (STORAGE 100)')
    no(m, "GETQUOTAROOT nosuch", "NONEXISTENT")
    # Over the byte limit: one big message.
    no(m, b"APPEND INBOX " + lit(message("huge", "y" * QUOTA_BYTES)), "OVERQUOTA")
    # Over the message limit.
    ok(m, "CREATE other")
    append(m, "other", message("2"))
    append(m, "INBOX", message("3"))
    append(m, "INBOX", message("4"))
    no(m, b"APPEND INBOX " + lit(message("5")), "OVERQUOTA")
    select(m)
    no(m, "COPY 1 other", "OVERQUOTA")
    assert status_of(ok(m, "STATUS other (MESSAGES)"))["MESSAGES"] == 1
    r = ok(m, "GETQUOTAROOT other")
    assert b"MESSAGE 4 %d" % QUOTA_MESSAGES in r.untagged("QUOTA")[0]
    # Deleting makes room again.
    ok(m, "STORE 1 +FLAGS (\\Deleted)")
    ok(m, "EXPUNGE")
    append(m, "INBOX", message("5"))


def test_no_quota(imap: Clients) -> None:
    m = imap.login()
    r = ok(m, "GETQUOTAROOT INBOX")
    assert r.untagged("QUOTAROOT") == [b"INBOX"] and not r.untagged("QUOTA")
    no(m, 'GETQUOTA ""')


# -- CONDSTORE, QRESYNC ------------------------------------------------------------------------


def _modseqs(r: Reply) -> dict[int, int]:
    return {s: int(x["MODSEQ"][0]) for s, x in fetches(r)}


def test_condstore(imap: Clients) -> None:
    user = imap.user()
    m = imap.login(user)
    fill(m, "INBOX", 4)
    r = select(m, "INBOX", "(CONDSTORE)")
    hms = int(next(c for c in r.codes() if c.startswith("HIGHESTMODSEQ")).split()[1])
    ms = _modseqs(ok(m, "FETCH 1:* (FLAGS MODSEQ)"))
    assert set(ms) == {1, 2, 3, 4} and max(ms.values()) == hms
    assert status_of(ok(m, "STATUS INBOX (HIGHESTMODSEQ)"))["HIGHESTMODSEQ"] == hms
    # Every change raises the MODSEQ of the messages it touches, and STORE reports it.
    r = ok(m, "STORE 2 +FLAGS (\\Seen)")
    # Once CONDSTORE is on, every untagged FETCH of a flag change has UID and MODSEQ
    # (RFC 7162 3.1.4).
    (seq, f), = fetches(r)
    assert seq == 2 and f["UID"] == "2" and int(f["MODSEQ"][0]) > hms
    ms2 = int(f["MODSEQ"][0])
    # CHANGEDSINCE: only what changed, with MODSEQ even if not asked for.
    got = fetches(ok(m, f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})"))
    assert [(s, flags_of(f["FLAGS"]), f["MODSEQ"]) for s, f in got] == [
        (2, {"\\Seen"}, [str(ms2)])]
    got = fetches(ok(m, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {ms2})"))
    assert got == []
    # SEARCH MODSEQ.
    r = ok(m, f"SEARCH MODSEQ {hms + 1}")
    assert r.untagged("SEARCH") == [f"2 (MODSEQ {ms2})".encode()]
    r = ok(m, f'SEARCH MODSEQ "/flags/\\\\Seen" all {hms + 1}')
    assert r.untagged("SEARCH") == [f"2 (MODSEQ {ms2})".encode()]
    # UNCHANGEDSINCE: a message changed since fails, the others are stored.
    r = ok(m, f"STORE 1:3 (UNCHANGEDSINCE {hms}) +FLAGS (\\Flagged)")
    assert r.code() == "MODIFIED 2"
    stored = dict(fetches(r))
    assert set(stored) == {1, 3}
    assert all("\\Flagged" in x["FLAGS"] and int(x["MODSEQ"][0]) > ms2
               for x in stored.values())
    assert "\\Flagged" not in fetch_one(m, "FETCH 2 FLAGS")["FLAGS"]
    cur = _modseqs(ok(m, "FETCH 2 MODSEQ"))[2]
    r = ok(m, f"UID STORE 2 (UNCHANGEDSINCE {cur}) +FLAGS.SILENT (\\Draft)")
    assert r.code() is None
    (seq, f), = fetches(r)  # sent despite .SILENT (RFC 7162 3.1.3)
    assert f["UID"] == "2" and int(f["MODSEQ"][0]) > cur
    r = ok(m, "UID STORE 4 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
    assert r.code() == "MODIFIED 4" and not fetches(r)
    # A session that changes nothing sees others' changes with their MODSEQ.
    m2 = imap.login(user)
    select(m2)
    ok(m2, "STORE 4 +FLAGS (\\Answered)")
    r = ok(m, "NOOP")
    ((seq, f),) = fetches(r)
    assert seq == 4 and flags_of(f["FLAGS"]) == {"\\Answered"} and f["UID"] == "4" and "MODSEQ" in f
    new_hms = status_of(ok(m, "STATUS INBOX (HIGHESTMODSEQ)"))["HIGHESTMODSEQ"]
    assert new_hms == int(f["MODSEQ"][0])
    # A FETCH that sets \Seen says so with UID and MODSEQ too.
    f = fetch_one(m, "FETCH 3 BODY[TEXT]")
    assert f["UID"] == "3" and int(f["MODSEQ"][0]) > new_hms and "\\Seen" in f["FLAGS"]
    bad(m, "FETCH 1 FLAGS (CHANGEDSINCE)")
    bad(m, "STORE 1 (BOGUS 1) +FLAGS (\\Seen)")


def test_qresync(imap: Clients) -> None:
    user = imap.user()
    a = imap.login(user)
    b = imap.login(user)
    fill(a, "INBOX", 6)
    bad(a, "SELECT INBOX (QRESYNC (1 1))")  # not enabled yet
    assert ok(a, "ENABLE QRESYNC").untagged("ENABLED") == [b"QRESYNC"]
    r = select(a)
    uv = int(next(c for c in r.codes() if c.startswith("UIDVALIDITY")).split()[1])
    hms = int(next(c for c in r.codes() if c.startswith("HIGHESTMODSEQ")).split()[1])
    ok(a, "UNSELECT")
    # Another session changes flags and expunges while A is away.
    select(b)
    ok(b, "STORE 2 +FLAGS (\\Flagged)")
    ok(b, "STORE 4:5 +FLAGS (\\Deleted)")
    ok(b, "EXPUNGE")
    ok(b, "UID STORE 6 +FLAGS (\\Seen)")
    r = select(a, "INBOX", f"(QRESYNC ({uv} {hms}))")
    (van,) = r.untagged("VANISHED")
    assert van.startswith(b"(EARLIER) ") and expand(van.split()[1].decode()) == [4, 5]
    i_van = next(i for i, x in enumerate(r.lines) if x.startswith(b"* VANISHED"))
    got = {int(x["UID"]): (s, flags_of(x["FLAGS"]), int(x["MODSEQ"][0]))
           for s, x in fetches(r)}
    assert set(got) == {2, 6}
    assert got[2][:2] == (2, {"\\Flagged"}) and got[6][:2] == (4, {"\\Seen"})
    assert all(ms > hms for _, _, ms in got.values())
    assert all(i > i_van for i, x in enumerate(r.lines) if b" FETCH " in x)
    # With the known UIDs: only those are reported.
    r = select(a, "INBOX", f"(QRESYNC ({uv} {hms} 1:3))")
    assert [x for x in r.untagged("VANISHED")] == []
    assert {int(x["UID"]) for _, x in fetches(r)} == {2}
    r = select(a, "INBOX", f"(QRESYNC ({uv} {hms} 4,6))")
    assert r.untagged("VANISHED") == [b"(EARLIER) 4"]
    assert {int(x["UID"]) for _, x in fetches(r)} == {6}
    # Another UIDVALIDITY: no resync data.
    r = select(a, "INBOX", f"(QRESYNC ({uv + 1} {hms}))")
    assert not r.untagged("VANISHED") and not fetches(r)
    # UID FETCH ... (CHANGEDSINCE n VANISHED).
    r = ok(a, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)")
    assert r.untagged("VANISHED") == [b"(EARLIER) 4:5"]
    assert {int(x["UID"]) for _, x in fetches(r)} == {2, 6}
    r = ok(a, f"UID FETCH 1:3 (FLAGS) (CHANGEDSINCE {hms} VANISHED)")
    assert not r.untagged("VANISHED")
    bad(a, f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)")
    bad(a, "UID FETCH 1:* (FLAGS) (VANISHED)")
    # Expunges reach a QRESYNC session as VANISHED, never as EXPUNGE.
    ok(b, "STORE 1 +FLAGS (\\Deleted)")
    ok(b, "EXPUNGE")
    r = ok(a, "NOOP")
    assert r.untagged("VANISHED") == [b"1"] and not r.untagged("EXPUNGE")
    ok(a, "STORE 1 +FLAGS (\\Deleted)")
    r = ok(a, "EXPUNGE")
    assert r.untagged("VANISHED") == [b"2"] and not r.untagged("EXPUNGE")
    # Flag changes of others come with UID and MODSEQ.
    ok(b, "UID STORE 6 +FLAGS (\\Answered)")
    ((seq, f),) = fetches(ok(a, "NOOP"))
    assert seq == 2 and f["UID"] == "6" and "MODSEQ" in f
    # And in IDLE.
    a.sock.settimeout(15)
    a.send(b"Q1 IDLE\r\n")
    assert read_response(a).startswith(b"+ ")
    ok(b, "UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    ok(b, "UID EXPUNGE 3")
    line = read_response(a)
    if b" FETCH " in line:
        assert line.startswith(b"* 1 FETCH (UID 3 "), line
        line = read_response(a)
    assert line == b"* VANISHED 3"
    a.send(b"DONE\r\n")
    assert read_response(a).startswith(b"Q1 OK")
    # CLOSE expunges without a word.
    ok(a, "UID STORE 6 +FLAGS.SILENT (\\Deleted)")
    r = ok(a, "CLOSE")
    assert r.lines == []
    assert status_of(ok(a, "STATUS INBOX (MESSAGES)"))["MESSAGES"] == 0


# -- names ------------------------------------------------------------------------------------


def test_selected_mailbox_deleted_elsewhere(imap: Clients) -> None:
    user = imap.user()
    a = imap.login(user)
    b = imap.login(user)
    ok(a, "CREATE doomed")
    append(a, "doomed", message("x"))
    select(a, "doomed")
    ok(b, "DELETE doomed")
    # The session cannot go on with a mailbox that is gone: BYE, and the connection ends.
    a.send(b"Z1 NOOP\r\n")
    lines: list[bytes] = []
    while True:
        try:
            lines.append(read_response(a))
        except EOFError:
            break
        if lines[-1].startswith(b"Z1 "):
            break
    assert any(x.startswith(b"* BYE") for x in lines) or lines[-1].startswith(b"Z1 NO"), lines
    ok(b, "NOOP")


def test_modified_utf7_names(imap: Clients) -> None:
    m = imap.login()
    names = {"Ärger": "&AMQ-rger", "日本語/メール": "&ZeVnLIqe-/&MOEw,DDr-",
             "Tom & Jerry": "Tom &- Jerry", "~peter/mail": "~peter/mail",
             'with "quotes" and \\': 'with "quotes" and \\', "NIL": "NIL"}
    for enc in names.values():
        ok(m, f"CREATE {quote(enc)}")
    lst = list_of(ok(m, 'LIST "" "*"'))
    for enc in names.values():
        assert enc in lst, enc
    # A mailbox called NIL goes out as a string, never as the atom NIL.
    assert ok(m, 'LIST "" NIL').untagged("LIST") == [b'(\\HasNoChildren) "/" "NIL"']
    append(m, "&AMQ-rger", message("umlaut"))
    st = status_of(ok(m, 'STATUS "&AMQ-rger" (MESSAGES)'))
    assert st["MESSAGES"] == 1
    assert ok(m, 'STATUS "&AMQ-rger" (MESSAGES)').untagged("STATUS")[0].startswith(
        b"&AMQ-rger (")
    select(m, "&ZeVnLIqe-/&MOEw,DDr-")
    ok(m, 'RENAME "&AMQ-rger" "&AMQ-rger-alt"')
    assert status_of(ok(m, 'STATUS "&AMQ-rger-alt" (MESSAGES)'))["MESSAGES"] == 1
    assert set(list_of(ok(m, 'LIST "" "&ZeVnLIqe-/%"'))) == {"&ZeVnLIqe-/&MOEw,DDr-"}
    # Not modified UTF-7: refused.
    for raw in ('"&Jjo!"', '"&AGEAYgBj-"', '"&ZeVnLIqe"', "\"caf\xc3\xa9\""):
        r = cmd(m, b"CREATE " + raw.encode("latin-1"))
        assert r.status in ("NO", "BAD"), (raw, r)
    assert set(list_of(ok(m, 'LIST "" "*"'))) == {
        "INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive", "&ZeVnLIqe-",
        "&ZeVnLIqe-/&MOEw,DDr-", "Tom &- Jerry", "~peter", "~peter/mail",
        'with "quotes" and \\', "&AMQ-rger-alt", "NIL"}


def test_user_isolation(imap: Clients) -> None:
    victim = imap.user()
    v = imap.login(victim)
    ok(v, "CREATE private")
    append(v, "INBOX", message("victim secret", "top secret\r\n"))
    append(v, "private", message("victim private", "top secret too\r\n"))
    before = {name: status_of(ok(v, f"STATUS {quote(name)} (MESSAGES UIDNEXT "
                                    "HIGHESTMODSEQ)"))
              for name in ("INBOX", "private")}
    v_list = ok(v, 'LIST "" "*"').untagged("LIST")

    m = imap.login()
    hostile = [f"../{victim}/INBOX", f"../{victim}", f"/{victim}/INBOX", "/INBOX", "..",
               "../..", f"~{victim}", f"~{victim}/INBOX", f"{victim}/INBOX",
               f"users/{victim}/INBOX", f"../../users/{victim}/INBOX", "%", "*",
               f"%/{victim}", f"INBOX/../../{victim}/INBOX", f"..%2F{victim}%2FINBOX",
               f"#shared/{victim}/INBOX", f"#user/{victim}/INBOX", "." * 300,
               "x" * 5000, "a/" * 40 + "b", "./INBOX", f"\\..\\{victim}"]
    for name in hostile:
        q = quote(name)
        for text in (f"SELECT {q}", f"EXAMINE {q}", f"STATUS {q} (MESSAGES)",
                     f"DELETE {q}", f"RENAME {q} stolen", f"GETQUOTAROOT {q}",
                     f"SUBSCRIBE {q}"):
            r = cmd(m, text)
            assert r.status in ("NO", "BAD", "OK"), (text, r)
            assert b"secret" not in b"\n".join(r.lines), (text, r)
            if r.status == "OK" and text.startswith(("SELECT", "EXAMINE")):
                assert r.untagged("EXISTS") == [b"0"], (text, r)  # never the victim's
                ok(m, "UNSELECT")
        r = cmd(m, f"LIST {q} *")
        assert r.status in ("OK", "BAD") and b"private" not in b"\n".join(r.lines)
        r = cmd(m, f"LIST \"\" {q}")
        assert r.status in ("OK", "BAD") and b"private" not in b"\n".join(r.lines)
    # Names the attacker may create live in the attacker's own space.
    for name in ("..", "../..", f"../{victim}", f"~{victim}", ". /INBOX"):
        r = cmd(m, f"CREATE {quote(name)}")
        if r.status == "OK":
            append(m, name, message("attacker's own"))
            select(m, name)
            got = fetches(ok(m, "FETCH 1:* BODY.PEEK[]"))
            assert [x["BODY[]"] for _, x in got] == [message("attacker's own")]
            ok(m, "STORE 1:* +FLAGS (\\Deleted)")
            ok(m, "EXPUNGE")
            ok(m, "UNSELECT")
    select(m)
    append(m, "INBOX", message("attacker"))
    for name in (f"../{victim}/INBOX", f"../{victim}/private", ".."):
        r = cmd(m, f"COPY 1 {quote(name)}")
        assert r.status in ("OK", "NO", "BAD")
        r = cmd(m, b"APPEND " + quote(name).encode() + b" " + lit(message("planted")))
        assert r.status in ("OK", "NO", "BAD")
    assert search_of(ok(m, "SEARCH TEXT secret")) == []
    r = ok(m, 'LIST "" "*"')
    assert b"private" not in b"\n".join(r.lines)
    # User names that look like paths are users of their own.
    for odd in (f"../{victim}", f"{victim}/..", f"./{victim}", f"{victim}/../{victim}"):
        o = imap.login(odd)
        st = status_of(ok(o, "STATUS INBOX (MESSAGES)"))
        assert st["MESSAGES"] == 0, odd
        assert "private" not in list_of(ok(o, 'LIST "" "*"'))
    # The victim's mail is as it was.
    after = {name: status_of(ok(v, f"STATUS {quote(name)} (MESSAGES UIDNEXT HIGHESTMODSEQ)"))
             for name in ("INBOX", "private")}
    assert after == before
    assert ok(v, 'LIST "" "*"').untagged("LIST") == v_list
    select(v)
    f = fetch_one(v, "FETCH 1 (FLAGS BODY.PEEK[])")
    assert f["BODY[]"] == message("victim secret", "top secret\r\n")
    assert flags_of(f["FLAGS"]) == set()
