"""A real third-party client end to end: mbsync (Debian's isync) syncing a mailbox tree
both ways between a local Maildir and cloudcote over IMAP.

cloudcote runs as a real ``cloudcote --config FILE serve`` subprocess, once per storage
backend (posix, and S3 on SeaweedFS), on a free loopback port with its data in the test's
temporary directory; it is stopped with SIGTERM at the end and must exit with 0.  mbsync
logs in with the IMAP LOGIN command (plaintext on loopback) and runs one channel with
``Patterns *``, ``Create Both``, ``Expunge Both`` and ``SyncState *``.

Each sync is checked message by message on both sides: the body bytes (line endings
aside: Maildir keeps LF, IMAP CRLF) and the flags \\Seen, \\Flagged, \\Answered and
\\Draft, against a model of what the union must be.  Without ``mbsync`` on the PATH the
test is skipped (it fails when ``CI`` is set); ``scripts/services.sh start`` installs it.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import driver_spec

#: mbsync comes with scripts/services.sh, like the servers.
pytestmark = pytest.mark.remote

USER = "alice"
PASSWORD = "secret"
#: Flags both sides keep; mbsync maps them to the Maildir letters below.
SYNCED_FLAGS = ("\\Answered", "\\Draft", "\\Flagged", "\\Seen")
MAILDIR_LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen"}
LETTER_OF = {flag: letter for letter, flag in MAILDIR_LETTERS.items()}

#: folder -> Message-ID -> (normalized bytes, flags)
Model = dict[str, dict[str, tuple[bytes, frozenset[str]]]]


def require_mbsync() -> str:
    path = shutil.which("mbsync")
    if path:
        return path
    msg = "mbsync is not installed (Debian package isync): bash scripts/services.sh start"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the server under test -------------------------------------------------------------

@dataclass
class Server:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def login(self) -> imaplib.IMAP4:
        m = imaplib.IMAP4(self.host, self.port, timeout=60)
        m.login(USER, PASSWORD)
        return m

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def cloudcote(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudcote", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def start_cloudcote(spec: str, base: Path) -> Server:
    config = base / "cloudcote.toml"
    log = base / "server.log"
    for _attempt in range(3):
        port = free_port()
        config.write_text(
            f'data_dir = "{base / "data"}"\n'
            f'[storage]\nfs = "{spec}"\n'
            f'[auth]\npassdb = "passwd-file:{base / "passwd"}"\n'
            f'[imap]\nlisten = ["127.0.0.1:{port}"]\n'
            "[imaps]\nlisten = []\n[pop3]\nlisten = []\n[pop3s]\nlisten = []\n"
            "[lmtp]\nlisten = []\n"
            "[log]\nlevel = \"info\"\n")
        if not (base / "passwd").exists():
            added = cloudcote("--config", str(config), "user", "add", USER, "--scheme", "PLAIN",
                              "--password", PASSWORD, cwd=base)
            assert added.returncode == 0, added.stderr
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "cloudcote", "--config", str(config),
                                     "serve"], cwd=base, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        server = Server("127.0.0.1", port, proc, log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.settimeout(10)
                    if s.recv(1024).startswith(b"* OK"):
                        return server
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            pytest.fail(f"cloudcote did not greet on port {port}:\n{server.log_tail()}")
        if proc.returncode != 69:  # 69: the port was taken meanwhile; try another
            pytest.fail(f"cloudcote serve exited with {proc.returncode}:\n{server.log_tail()}")
    pytest.fail("cloudcote found no free port in 3 attempts")


def stop_cloudcote(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
            pytest.fail(f"cloudcote did not stop within 30 s of SIGTERM:\n{server.log_tail()}")
    assert server.proc.returncode == 0, \
        f"cloudcote exited with {server.proc.returncode}:\n{server.log_tail()}"


@pytest.fixture(scope="module", params=["posix", "seaweedfs"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_mbsync()
    base = tmp_path_factory.mktemp(f"cloudcote-{request.param}")
    srv = start_cloudcote(driver_spec(request.param, request, base), base)
    try:
        yield srv
    finally:
        stop_cloudcote(srv)


# --- messages --------------------------------------------------------------------------

def make_message(msgid: str, subject: str, body_lines: int = 5, attachment: int = 0) -> bytes:
    """A message with CRLF line ends, unique by Message-ID and Subject."""
    head = (f"From: Sender <sender@example.com>\r\nTo: {USER}@example.com\r\n"
            f"Subject: {subject}\r\nDate: Mon, 02 Jan 2023 10:00:00 +0000\r\n"
            f"Message-ID: <{msgid}@example.com>\r\nMIME-Version: 1.0\r\n")
    text = "".join(f"Line {i} of {subject}: the quick brown fox jumps over the lazy dog.\r\n"
                   for i in range(body_lines))
    if not attachment:
        return (head + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text).encode()
    blob = "".join(f"{(i * 7919) % 10**16:016x}" * 4 + "\r\n" for i in range(attachment))
    return (head + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\n" + text +
            "--b1\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + blob + "--b1--\r\n").encode()


def normalize(raw: bytes) -> bytes:
    """LF line ends, without the X-TUID header mbsync may add to messages it copies."""
    text = raw.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    lines = [ln for ln in head.split(b"\n") if not ln.lower().startswith(b"x-tuid:")]
    return b"\n".join(lines) + sep + body


def message_id(raw: bytes) -> str:
    found = re.search(rb"^Message-ID: <([^@>]+)@", raw, re.M | re.I)
    assert found, raw[:300]
    return found.group(1).decode()


# --- the IMAP side ---------------------------------------------------------------------

_LIST = re.compile(rb'^\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')


def imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_contents(server: Server) -> Model:
    m = server.login()
    try:
        typ, lines = m.list()
        assert typ == "OK", lines
        folders = []
        for line in lines:
            assert isinstance(line, bytes), lines
            found = _LIST.match(line)
            assert found, line
            if b"\\noselect" in found["attrs"].lower() or \
                    b"\\nonexistent" in found["attrs"].lower():
                continue
            folders.append(found["name"].decode().strip('"'))
        model: Model = {}
        for folder in folders:
            typ, data = m.select(imap_quote(folder), readonly=True)
            assert typ == "OK", (folder, data)
            model[folder] = {}
            if int(data[0] or 0) == 0:
                continue
            typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
            assert typ == "OK", data
            for item in data:
                if not isinstance(item, tuple):
                    continue
                flags_found = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                assert flags_found, item[0]
                flags = frozenset(f for f in flags_found.group(1).decode().split()
                                  if f in SYNCED_FLAGS)
                model[folder][message_id(item[1])] = (normalize(item[1]), flags)
            m.close()
        return model
    finally:
        m.logout()


def imap_store(server: Server, folder: str, msgid: str, op: str, flags: str) -> None:
    m = server.login()
    try:
        assert m.select(imap_quote(folder))[0] == "OK"
        typ, data = m.uid("SEARCH", "HEADER", "Message-ID", f"<{msgid}@example.com>")
        assert typ == "OK" and data[0], (folder, msgid, data)
        uids = data[0].decode().split()
        assert len(uids) == 1, (folder, msgid, uids)
        typ, data = m.uid("STORE", uids[0], op, flags)
        assert typ == "OK", data
        if "\\Deleted" in flags:
            typ, data = m.expunge()
            assert typ == "OK", data
        m.close()
    finally:
        m.logout()


def imap_append(server: Server, folder: str, raw: bytes, flags: str = "") -> None:
    m = server.login()
    try:
        if folder != "INBOX":
            m.create(imap_quote(folder))  # may exist already: its answer does not matter
        typ, data = m.append(imap_quote(folder), f"({flags})" if flags else None, None, raw)
        assert typ == "OK", data
    finally:
        m.logout()


# --- the Maildir side ------------------------------------------------------------------

def maildir_flags(name: str) -> frozenset[str]:
    _, sep, info = name.partition(":2,")
    return frozenset(MAILDIR_LETTERS[c] for c in info if c in MAILDIR_LETTERS) if sep \
        else frozenset()


def maildir_folders(root: Path) -> dict[str, Path]:
    found = {}
    for cur in sorted(root.rglob("cur")):
        folder = cur.parent
        if (folder / "new").is_dir() and (folder / "tmp").is_dir():
            found[folder.relative_to(root).as_posix()] = folder
    return found


def maildir_contents(root: Path) -> Model:
    model: Model = {}
    for name, folder in maildir_folders(root).items():
        model[name] = {}
        for sub in ("cur", "new"):
            for path in sorted((folder / sub).iterdir()):
                raw = path.read_bytes()
                msgid = message_id(raw)
                assert msgid not in model[name], f"{msgid} twice in Maildir {name}"
                model[name][msgid] = (normalize(raw), maildir_flags(path.name))
    return model


def maildir_deliver(root: Path, folder: str, raw: bytes, letters: str = "",
                    new: bool = False) -> None:
    path = root / folder
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    unique = f"{time.time_ns()}.P{os.getpid()}Q{message_id(raw)}.localhost"
    name = unique if new else f"{unique}:2,{''.join(sorted(letters))}"
    (path / ("new" if new else "cur") / name).write_bytes(raw.replace(b"\r\n", b"\n"))


def maildir_find(root: Path, folder: str, msgid: str) -> Path:
    for sub in ("cur", "new"):
        for path in (root / folder / sub).iterdir():
            if message_id(path.read_bytes()) == msgid:
                return path
    raise AssertionError(f"{msgid} is not in Maildir {folder}")


def maildir_set_flags(root: Path, folder: str, msgid: str, flags: frozenset[str]) -> None:
    path = maildir_find(root, folder, msgid)
    base = path.name.partition(":2,")[0]
    letters = "".join(sorted(LETTER_OF[f] for f in flags))
    path.rename(root / folder / "cur" / f"{base}:2,{letters}")


# --- mbsync ----------------------------------------------------------------------------

def write_mbsync_config(tmp: Path, server: Server, root: Path) -> Path:
    config = tmp / "mbsyncrc"
    config.write_text(f"""\
IMAPAccount cloudcote
Host {server.host}
Port {server.port}
User {USER}
Pass {PASSWORD}
AuthMechs LOGIN
SSLType None

IMAPStore remote
Account cloudcote

MaildirStore local
Path {root}/
Inbox {root}/INBOX
SubFolders Verbatim

Channel both
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    return config


def run_mbsync(config: Path, tmp: Path, server: Server) -> str:
    result = subprocess.run([require_mbsync(), "-D", "-c", str(config), "-a"],
                            capture_output=True, text=True, timeout=180,
                            env={**os.environ, "HOME": str(tmp)})
    out = result.stdout + result.stderr
    # Every run's debug output stays beside the Maildir, for a look after a failure.
    runs = len(list(tmp.glob("mbsync-*.log")))
    (tmp / f"mbsync-{runs + 1}.log").write_text(out)
    trouble = [ln for ln in out.splitlines()
               if re.search(r"\b(Error|error:|lost track|Warning)\b", ln)
               and "Password is being sent in the clear" not in ln]
    assert result.returncode == 0 and not trouble, (
        f"mbsync exited with {result.returncode}; problems: {trouble}\n"
        f"--- mbsync -D (last 200 lines)\n" + "\n".join(out.splitlines()[-200:]) +
        f"\n--- server log\n{server.log_tail()}")
    return out


def assert_both(server: Server, root: Path, expected: Model) -> None:
    """Both sides hold exactly ``expected`` in the folders it names; any other folder is
    empty on both sides and exists on both."""
    for side, got in (("cloudcote", imap_contents(server)), ("Maildir", maildir_contents(root))):
        for folder, messages in expected.items():
            assert folder in got, f"{side} lacks folder {folder}; has {sorted(got)}"
            have = got[folder]
            assert sorted(have) == sorted(messages), f"{side} {folder}: message ids differ"
            for msgid, (raw, flags) in messages.items():
                assert have[msgid][0] == raw, f"{side} {folder} {msgid}: bytes differ"
                assert have[msgid][1] == flags, \
                    f"{side} {folder} {msgid}: flags {sorted(have[msgid][1])} != {sorted(flags)}"
        others = {f: m for f, m in got.items() if f not in expected}
        assert all(not m for m in others.values()), f"{side}: unexpected messages in {others}"
    imap_side = set(imap_contents(server))
    maildir_side = set(maildir_contents(root))
    assert imap_side == maildir_side, f"folders differ: cloudcote {imap_side}, Maildir " \
                                      f"{maildir_side}"


# --- the test --------------------------------------------------------------------------

def test_mbsync_two_way(server: Server, tmp_path: Path) -> None:
    root = tmp_path / "Mail"
    root.mkdir()
    config = write_mbsync_config(tmp_path, server, root)
    expected: Model = {"INBOX": {}, "Work/Projects": {}, "Personal": {}}

    def seed_imap(folder: str, msgid: str, flags: tuple[str, ...] = (), **kw: int) -> None:
        raw = make_message(msgid, f"{msgid} from the server", **kw)
        imap_append(server, folder, raw, " ".join(flags))
        expected.setdefault(folder, {})[msgid] = (normalize(raw), frozenset(flags))

    def seed_maildir(folder: str, msgid: str, flags: tuple[str, ...] = (),
                     new: bool = False, **kw: int) -> None:
        raw = make_message(msgid, f"{msgid} from the Maildir", **kw)
        maildir_deliver(root, folder, raw, "".join(LETTER_OF[f] for f in flags), new=new)
        expected.setdefault(folder, {})[msgid] = (normalize(raw), frozenset(flags))

    # 1. Each side starts with its own messages; mbsync makes both the union.
    seed_imap("INBOX", "s-inbox-1")
    seed_imap("INBOX", "s-inbox-2", ("\\Seen",))
    seed_imap("INBOX", "s-inbox-3", ("\\Flagged", "\\Seen"), attachment=3000)
    seed_imap("Work/Projects", "s-work-1", ("\\Answered", "\\Seen"))
    seed_imap("Work/Projects", "s-work-2", ("\\Flagged",), body_lines=40)
    seed_maildir("INBOX", "m-inbox-1", ("\\Seen",))
    seed_maildir("INBOX", "m-inbox-2", new=True)
    seed_maildir("Personal", "m-personal-1", ("\\Flagged", "\\Seen"))
    seed_maildir("Personal", "m-personal-2", ("\\Draft",), attachment=200)
    run_mbsync(config, tmp_path, server)
    assert_both(server, root, expected)

    # 2. Flags change on the server, a message is deleted in the Maildir, and each side
    #    gets a new message.
    def change(folder: str, msgid: str, add: tuple[str, ...] = (),
               remove: tuple[str, ...] = ()) -> frozenset[str]:
        raw, flags = expected[folder][msgid]
        new_flags = (flags | set(add)) - set(remove)
        expected[folder][msgid] = (raw, frozenset(new_flags))
        return frozenset(new_flags)

    imap_store(server, "INBOX", "m-inbox-1", "+FLAGS", "(\\Flagged)")
    change("INBOX", "m-inbox-1", add=("\\Flagged",))
    imap_store(server, "INBOX", "s-inbox-2", "-FLAGS", "(\\Seen)")
    change("INBOX", "s-inbox-2", remove=("\\Seen",))
    imap_store(server, "Personal", "m-personal-2", "+FLAGS", "(\\Seen \\Answered)")
    change("Personal", "m-personal-2", add=("\\Seen", "\\Answered"))
    maildir_find(root, "Work/Projects", "s-work-1").unlink()
    del expected["Work/Projects"]["s-work-1"]
    seed_imap("Work/Projects", "s-work-3", ("\\Seen",))
    seed_maildir("Personal", "m-personal-3", new=True)
    run_mbsync(config, tmp_path, server)
    assert_both(server, root, expected)

    # 3. The other way round: flags change in the Maildir, the server expunges.
    maildir_set_flags(root, "INBOX", "s-inbox-1",
                      change("INBOX", "s-inbox-1", add=("\\Seen", "\\Flagged")))
    maildir_set_flags(root, "Work/Projects", "s-work-2",
                      change("Work/Projects", "s-work-2", remove=("\\Flagged",)))
    imap_store(server, "Personal", "m-personal-1", "+FLAGS", "(\\Deleted)")
    del expected["Personal"]["m-personal-1"]
    imap_store(server, "INBOX", "s-inbox-3", "+FLAGS", "(\\Deleted)")
    del expected["INBOX"]["s-inbox-3"]
    run_mbsync(config, tmp_path, server)
    assert_both(server, root, expected)

    # 4. Nothing changed: a sync changes nothing.
    out = run_mbsync(config, tmp_path, server)
    assert_both(server, root, expected)
    assert not re.search(r">>> \d+ (APPEND|UID STORE|CREATE|EXPUNGE)", out), out[-3000:]
