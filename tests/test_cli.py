"""The ``cloudcote`` command as an operator uses it: real processes, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import poplib
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudcote.core.auth import open_passdb


def cloudcote(*args: str, cwd: Path, stdin: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudcote", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_on_every_level(tmp_path: Path) -> None:
    for args in ([], ["--help"], ["serve", "--help"], ["config", "--help"], ["user", "--help"],
                 ["user", "add", "--help"], ["user", "list", "--help"]):
        result = cloudcote(*args, cwd=tmp_path)
        assert "usage: cloudcote" in result.stdout + result.stderr
        assert result.returncode == (64 if args == [] else 0)


def test_usage_error_exit_code(tmp_path: Path) -> None:
    result = cloudcote("frobnicate", cwd=tmp_path)
    assert result.returncode == 64
    assert "invalid choice" in result.stderr


def test_config_prints_effective_configuration(tmp_path: Path) -> None:
    result = cloudcote("config", cwd=tmp_path)
    assert result.returncode == 0
    assert 'listen = ["127.0.0.1:1143"]' in result.stdout
    assert f'fs = "posix:{tmp_path}/cloudcote-data/mail"' in result.stdout


def test_bad_config_is_one_line_and_exit_78(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[storage]\nlayout = 'maildir'\n")
    result = cloudcote("--config", "c.toml", "serve", cwd=tmp_path)
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "c.toml" in lines[0] and "storage.layout" in lines[0]
    (tmp_path / "m.toml").write_text("[storage\n")
    result = cloudcote("--config", "m.toml", "config", cwd=tmp_path)
    assert result.returncode == 78 and "malformed TOML" in result.stderr


def test_user_add_list_passwd_delete(tmp_path: Path) -> None:
    assert cloudcote("user", "add", "alice", cwd=tmp_path, stdin="s3cret\n").returncode == 0
    r = cloudcote("user", "add", "bob", "--scheme", "ARGON2ID", "--password", "pw2",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    passwd = tmp_path / "cloudcote-data" / "passwd"
    text = passwd.read_text()
    assert "alice:{SHA512-CRYPT}$6$" in text and "bob:{ARGON2ID}$argon2id$" in text
    assert "s3cret" not in text
    assert oct(passwd.stat().st_mode & 0o777) == "0o600"
    assert cloudcote("user", "list", cwd=tmp_path).stdout.split() == ["alice", "bob"]
    dup = cloudcote("user", "add", "alice", "--password", "x", cwd=tmp_path)
    assert dup.returncode == 65 and "alice" in dup.stderr

    passdb = open_passdb(f"passwd-file:{passwd}")
    assert asyncio.run(passdb.authenticate("alice", "s3cret")) is not None
    assert asyncio.run(passdb.authenticate("alice", "wrong")) is None
    assert asyncio.run(passdb.authenticate("bob", "pw2")) is not None

    assert cloudcote("user", "passwd", "alice", "--password", "new",
                     cwd=tmp_path).returncode == 0
    passdb = open_passdb(f"passwd-file:{passwd}")
    assert asyncio.run(passdb.authenticate("alice", "new")) is not None
    assert asyncio.run(passdb.authenticate("alice", "s3cret")) is None
    assert cloudcote("user", "delete", "alice", cwd=tmp_path).returncode == 0
    missing = cloudcote("user", "delete", "alice", cwd=tmp_path)
    assert missing.returncode == 67
    assert cloudcote("user", "list", cwd=tmp_path).stdout.split() == ["bob"]


def test_bad_passwd_file_line_refuses_start(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("ok:{PLAIN}x\nbad:{NOSUCH}abc\n")
    port = free_port()
    (tmp_path / "c.toml").write_text(
        f'[auth]\npassdb = "passwd-file:passwd"\n[imap]\nlisten = ["127.0.0.1:{port}"]\n'
        '[pop3]\nlisten = []\n[lmtp]\nlisten = []\n')
    result = cloudcote("--config", "c.toml", "serve", cwd=tmp_path)
    assert result.returncode == 78
    assert f"{tmp_path / 'passwd'}:2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unusable_data_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "c.toml").write_text('data_dir = "file/sub"\n[imap]\nlisten = []\n'
                                     '[pop3]\nlisten = []\n[lmtp]\nlisten = []\n')
    result = cloudcote("--config", "c.toml", "serve", cwd=tmp_path)
    assert result.returncode == 73 and "data_dir" in result.stderr


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "c.toml").write_text(
            f'[imap]\nlisten = ["127.0.0.1:{port}"]\n[pop3]\nlisten = []\n[lmtp]\nlisten = []\n')
        result = cloudcote("--config", "c.toml", "serve", cwd=tmp_path)
    assert result.returncode == 69
    assert f"127.0.0.1:{port}" in result.stderr and "imap" in result.stderr


@contextlib.contextmanager
def serving(cwd: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``cloudcote [args] serve`` as a child process, killed if the test did not stop it."""
    with subprocess.Popen([sys.executable, "-m", "cloudcote", *args, "serve"], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            yield proc, _wait_for_banner(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_for_banner(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Stop with"):
            return "".join(lines)
    proc.kill()
    raise AssertionError("no banner: " + "".join(lines) + (proc.stderr.read() if proc.stderr
                                                            else ""))


def test_embedded_default_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The README's first command: ports 1143/1110/1024 on loopback, real clients."""
    assert cloudcote("user", "add", "alice", "--password", "pw", cwd=tmp_path).returncode == 0
    with serving(tmp_path) as (proc, banner):
        assert "127.0.0.1:1143" in banner and "cloudcote user add" in banner

        imap = imaplib.IMAP4("127.0.0.1", 1143)
        assert "AUTH=PLAIN" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login("alice", "wrong")
        typ, _ = imap.login("alice", "pw")
        assert typ == "OK"
        imap.logout()

        imap = imaplib.IMAP4("127.0.0.1", 1143)
        imap.authenticate("PLAIN", lambda _: b"\0alice\0pw")
        imap.logout()

        pop = poplib.POP3("127.0.0.1", 1110)
        assert "USER" in pop.capa()
        pop.user("alice")
        assert pop.pass_("pw").startswith(b"+OK")
        pop.quit()
        pop = poplib.POP3("127.0.0.1", 1110)
        pop.quit()

        lmtp = smtplib.LMTP("127.0.0.1", 1024)
        code, _ = lmtp.ehlo("mta.example")
        assert code == 250
        lmtp.quit()

        # An idle client is sent away politely at shutdown, not left hanging.
        idle = imaplib.IMAP4("127.0.0.1", 1143)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        idle.sock.settimeout(5)
        assert b"BYE" in idle.sock.recv(1000)
        idle.shutdown()
        err = proc.stderr.read() if proc.stderr else ""
    assert "ERROR" not in err and "Traceback" not in err


def test_lmtp_unix_socket_and_sigint(tmp_path: Path) -> None:
    sock = tmp_path / "lmtp.sock"
    (tmp_path / "c.toml").write_text(
        f'[imap]\nlisten = []\n[pop3]\nlisten = []\n[lmtp]\nlisten = ["{sock}"]\n')
    with serving(tmp_path, "--config", "c.toml") as (proc, _):
        lmtp = smtplib.LMTP(str(sock))
        assert lmtp.ehlo("mta")[0] == 250
        lmtp.quit()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert not sock.exists()


def test_tls_implicit_and_starttls(tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    imap_port, imaps_port, pop3_port, pop3s_port = (free_port() for _ in range(4))
    (tmp_path / "c.toml").write_text(f"""
[imap]
listen = ["127.0.0.1:{imap_port}"]
[imaps]
listen = ["127.0.0.1:{imaps_port}"]
[pop3]
listen = ["127.0.0.1:{pop3_port}"]
[pop3s]
listen = ["127.0.0.1:{pop3s_port}"]
[lmtp]
listen = []
[tls]
cert = "server.pem"
key = "server.pem"
""")
    assert cloudcote("--config", "c.toml", "user", "add", "alice", "--password", "pw",
                     cwd=tmp_path).returncode == 0
    with serving(tmp_path, "--config", "c.toml") as (proc, _):
        imaps = imaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=client_ctx)
        assert imaps.login("alice", "pw")[0] == "OK"
        imaps.logout()
        imap = imaplib.IMAP4("127.0.0.1", imap_port)
        assert "STARTTLS" in imap.capabilities
        imap.starttls(ssl_context=client_ctx)
        assert imap.login("alice", "pw")[0] == "OK"
        imap.logout()
        pop = poplib.POP3("127.0.0.1", pop3_port)
        assert "STLS" in pop.capa()
        pop.stls(context=client_ctx)
        assert "STLS" not in pop.capa()
        pop.quit()
        pops = poplib.POP3_SSL("127.0.0.1", pop3s_port, context=client_ctx)
        assert pops.getwelcome().startswith(b"+OK")
        pops.quit()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
