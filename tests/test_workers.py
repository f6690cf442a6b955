"""``[server] workers`` and connection limits, with the real ``cloudcote serve``: sessions
of one user on two workers see each other's changes; a worker killed mid-session loses
no acknowledged mail and is replaced; a server out of connections (by
``max_connections`` or by file descriptors) refuses in its protocol's words."""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import resource
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .test_cli import free_port

PASSWORD = "pw"
MESSAGE = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: worker test\r\n"
           b"Message-ID: <w@example.com>\r\n\r\nbody\r\n")


@dataclass
class Running:
    proc: subprocess.Popen[str]
    base: Path
    imap: int
    pop3: int
    lmtp: int

    @property
    def log(self) -> str:
        return (self.base / "server.log").read_text(errors="replace")

    def workers(self) -> list[int]:
        """The master's children (its workers), from /proc."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                out.append(int(entry))
        return sorted(out)

    def pid_of_worker(self, index: int) -> int:
        """Worker ``index``'s pid, from the line it logs at start (the latest one)."""
        found = re.findall(rf"worker {index} \(pid (\d+)\): open file limit", self.log)
        assert found, self.log
        return int(found[-1])

    def worker_of(self, m: imaplib.IMAP4) -> str:
        """The worker a connection landed on, from the server's login line for its port."""
        port = m.sock.getsockname()[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = re.search(rf"imap-(w\d+)\.\d+ 127\.0\.0\.1:{port}: user \S+ logged in",
                              self.log)
            if found:
                return found.group(1)
            time.sleep(0.05)
        raise AssertionError(f"no login line for port {port}")


@contextlib.contextmanager
def serve(base: Path, workers: int, extra: str = "", nofile: int | None = None,
          lmtp_extra: str = "", log_level: str = "info") -> Iterator[Running]:
    """The server on fresh ports: ``extra`` goes into ``[server]``, ``lmtp_extra`` (a
    quoted unix socket path) into ``[lmtp] listen`` beside the TCP port."""
    imap, pop3, lmtp = free_port(), free_port(), free_port()
    base.mkdir(parents=True, exist_ok=True)
    (base / "c.toml").write_text(
        f'data_dir = "{base / "data"}"\n'
        f"[server]\nworkers = {workers}\n{extra}\n"
        "[mail]\npoll_interval = 0.2\n"
        f'[auth]\npassdb = "static:password={PASSWORD}"\nfailure_delay = 0.0\n'
        f'[imap]\nlisten = ["127.0.0.1:{imap}"]\n[imaps]\nlisten = []\n'
        f'[pop3]\nlisten = ["127.0.0.1:{pop3}"]\n[pop3s]\nlisten = []\n'
        f'[lmtp]\nlisten = ["127.0.0.1:{lmtp}"{", " + lmtp_extra if lmtp_extra else ""}]\n'
        f'[log]\nlevel = "{log_level}"\npath = "{base / "server.log"}"\n')

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with subprocess.Popen([sys.executable, "-m", "cloudcote", "--config", "c.toml", "serve"],
                          cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=limit) as proc:
        try:
            assert proc.stdout is not None
            banner = ""
            while not banner.endswith("Stop with Ctrl-C or SIGTERM.\n"):
                line = proc.stdout.readline()
                if not line:
                    raise AssertionError("no banner: " + banner + (
                        proc.stderr.read() if proc.stderr else ""))
                banner += line
            yield Running(proc, base, imap, pop3, lmtp)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def login(run: Running, user: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", run.imap, timeout=30)
    m.login(user, PASSWORD)
    return m


def sessions_on_two_workers(run: Running, user: str) -> tuple[imaplib.IMAP4, imaplib.IMAP4]:
    """Two sessions of ``user`` that landed on different workers."""
    first = login(run, user)
    where = run.worker_of(first)
    spare = []
    for _ in range(60):
        m = login(run, user)
        if run.worker_of(m) != where:
            for s in spare:
                s.logout()
            return first, m
        spare.append(m)
    raise AssertionError("every connection went to one worker")


def test_sessions_on_two_workers_see_each_other(tmp_path: Path) -> None:
    with serve(tmp_path, workers=2) as run:
        assert len(run.workers()) == 2
        a, b = sessions_on_two_workers(run, "shared")
        a.select("INBOX")
        b.select("INBOX")
        # b appends; a, idling on the other worker, hears of it.
        a.send(b"I1 IDLE\r\n")
        assert a.readline().startswith(b"+ ")
        typ, _ = b.append("INBOX", None, None, MESSAGE)
        assert typ == "OK"
        a.sock.settimeout(20)
        assert a.readline() == b"* 1 EXISTS\r\n"
        a.send(b"DONE\r\n")
        while not a.readline().startswith(b"I1 OK"):
            pass
        a.sock.settimeout(None)
        # a flags it; b sees the flag at its next NOOP.
        a.store("1", "+FLAGS", "(\\Flagged)")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            b.noop()
            got = b.untagged_responses.pop("FETCH", [])
            if any(b"\\Flagged" in x for x in got if isinstance(x, bytes)):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("b never saw \\Flagged")
        a.logout()
        b.logout()
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(60) == 0
        assert run.workers() == []


def test_killed_worker_loses_nothing_and_is_replaced(tmp_path: Path) -> None:
    with serve(tmp_path, workers=2) as run:
        before = run.workers()
        m = login(run, "victim")
        worker = run.worker_of(m)
        typ, data = m.append("INBOX", None, None, MESSAGE)
        assert typ == "OK"
        uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)  # type: ignore[union-attr]
        index = int(worker[1:])
        pid = run.pid_of_worker(index)
        assert pid in before
        os.kill(pid, signal.SIGKILL)
        with pytest.raises((imaplib.IMAP4.abort, OSError, EOFError)):
            m.noop()
            m.noop()
        with contextlib.suppress(OSError):
            m.shutdown()
        # The master starts another worker; the message is there for any of them.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = run.workers()
            if len(now) == 2 and pid not in now:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"worker not replaced: {run.workers()}")
        assert f"worker {index} (pid {pid}) was killed by signal 9" in run.log
        for _ in range(4):
            again = login(run, "victim")
            again.select("INBOX")
            typ, data = again.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            assert typ == "OK"
            assert any(isinstance(x, tuple) and x[1] == MESSAGE and b"UID " + uid in x[0]
                       for x in data)
            again.logout()


def test_max_connections_refuses_in_each_protocol(tmp_path: Path) -> None:
    with serve(tmp_path, workers=1, extra="max_connections = 2") as run:
        held = [login(run, "u1"), login(run, "u2")]
        with socket.create_connection(("127.0.0.1", run.imap), timeout=10) as s:
            assert s.recv(200).startswith(b"* BYE [UNAVAILABLE] Too many connections")
        with socket.create_connection(("127.0.0.1", run.pop3), timeout=10) as s:
            assert s.recv(200).startswith(b"-ERR [SYS/TEMP] Too many connections")
        with pytest.raises(smtplib.SMTPConnectError) as exc:
            smtplib.LMTP("127.0.0.1", run.lmtp, timeout=10)
        assert exc.value.smtp_code == 421
        held.pop().logout()
        time.sleep(0.2)
        again = login(run, "u3")  # room again
        again.logout()
        held[0].logout()
        assert "connection limit 2 reached" in run.log


def test_out_of_descriptors_is_a_refusal_not_a_crash(tmp_path: Path) -> None:
    with serve(tmp_path, workers=1, nofile=100) as run:
        assert "open file limit 100 (hard 100): at most 36 connections" in run.log
        held = []
        for _ in range(36):
            s = socket.create_connection(("127.0.0.1", run.imap), timeout=10)
            assert s.recv(200).startswith(b"* OK ")
            held.append(s)
        with socket.create_connection(("127.0.0.1", run.imap), timeout=10) as s:
            assert s.recv(200).startswith(b"* BYE [UNAVAILABLE] Too many connections")
        for s in held[:5]:
            s.close()
        time.sleep(0.3)
        m = login(run, "after")
        m.select("INBOX")
        m.logout()
        for s in held[5:]:
            s.close()
        assert run.proc.poll() is None


def test_worker_startup_failure_is_the_servers(tmp_path: Path) -> None:
    """A certificate that does not load stops the start with worker 0's message."""
    base = tmp_path
    (base / "cert.pem").write_text("not a certificate\n")
    (base / "key.pem").write_text("not a key\n")
    (base / "c.toml").write_text(
        f'data_dir = "{base / "data"}"\n[server]\nworkers = 2\n'
        '[auth]\npassdb = "static:password=pw"\n'
        f'[tls]\ncert = "{base / "cert.pem"}"\nkey = "{base / "key.pem"}"\n'
        f'[imap]\nlisten = ["127.0.0.1:{free_port()}"]\n[pop3]\nlisten = []\n'
        "[lmtp]\nlisten = []\n")
    result = subprocess.run([sys.executable, "-m", "cloudcote", "--config", "c.toml", "serve"],
                            cwd=base, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78, result
    assert "tls: cannot load" in result.stderr
    assert "Traceback" not in result.stderr
