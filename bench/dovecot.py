"""Debian's Dovecot on a loopback port, configured from scratch in a temporary directory,
as the baseline the IMAP and LMTP benchmarks compare cloudcote with.

    from dovecot import Dovecot, ensure_dovecot
    ensure_dovecot()                        # apt-get install dovecot-imapd when missing
    with Dovecot({"alice": "secret"}, mail_format="maildir") as dc:
        imaplib.IMAP4("127.0.0.1", dc.port).login("alice", "secret")
    with Dovecot({"alice": "secret"}, lmtp=True) as dc:     # also LMTP (dovecot-lmtpd)
        smtplib.LMTP("127.0.0.1", dc.lmtp_port).sendmail("s@example.org", ["alice@x"], msg)

    .venv/bin/python bench/dovecot.py       # start one, print its address, stop on Ctrl-C
    .venv/bin/python bench/dovecot.py --lmtp   # with an LMTP listener too

Nothing of the machine's own Dovecot is read or touched: the configuration is one file
with its own ``base_dir``, ``state_dir``, ``instance_name`` and log, a passwd-file passdb
and userdb with PLAIN passwords, ``ssl = no`` and plaintext logins allowed, mail in
``maildir`` or ``sdbox`` under the directory, and only the IMAP listener on 127.0.0.1
(a free port unless one is given).  ``dovecot -F -c FILE`` runs it in the foreground as a
child process; :meth:`Dovecot.stop` ends it with SIGTERM (SIGKILL after a grace period)
and removes the directory unless it was given.

As root, mail belongs to the unprivileged user ``nobody`` (Dovecot refuses mail as root);
login and internal processes run as Debian's ``dovenull`` and ``dovecot`` users.  Without
root, every process runs as the calling user, without chroot (Dovecot's rootless set-up).

Tuning follows Dovecot's documented high-performance mode, so the baseline is not held
back: ``imap-login`` serves many connections per process (``service_count = 0``) with one
process per core kept ready, and ``imap`` processes are reused across sessions
(``service_count`` ``--imap-service-count``, default 0 = unlimited) instead of a fork per
login; ``mail_max_userip_connections`` is raised for many clients of one user.

With ``lmtp=True`` (Debian's ``dovecot-lmtpd``, installed when missing) an LMTP listener
runs on 127.0.0.1 too (``lmtp_port``), with one ``lmtp`` process per core kept ready and
reused for many connections.  A recipient ``user@domain`` is delivered to ``user`` of
the passwd-file (userdb ``username_format=%n``), with ``recipient_delimiter = +`` and
Dovecot's default trace headers (Return-Path, Delivered-To, Received).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

DOVECOT = "/usr/sbin/dovecot"
PACKAGE = "dovecot-imapd"
LMTP_PACKAGE = "dovecot-lmtpd"
MAIL_FORMATS = ("maildir", "sdbox", "mdbox")
#: LMTP processes at most (each serves one connection at a time, and many in turn).
LMTP_PROCESS_LIMIT = 256


class DovecotError(Exception):
    """Dovecot could not be installed, configured or started; the message says why."""


def dovecot_binary(lmtp: bool = False) -> str | None:
    found = shutil.which("dovecot") or (DOVECOT if os.access(DOVECOT, os.X_OK) else None)
    if found is None:
        return None
    # dovecot-core alone has no imap binary: the imap-login service would fail at start.
    libexec = Path("/usr/lib/dovecot")
    if not (libexec / "imap").exists() or not (libexec / "imap-login").exists():
        return None
    if lmtp and not (libexec / "lmtp").exists():
        return None
    return found


def ensure_dovecot(quiet: bool = False, lmtp: bool = False) -> str:
    """The path of ``dovecot``; installs Debian's ``dovecot-imapd`` (and with ``lmtp``
    ``dovecot-lmtpd``) first when missing."""
    found = dovecot_binary(lmtp)
    if found:
        return found
    packages = [PACKAGE, LMTP_PACKAGE] if lmtp else [PACKAGE]
    names = " ".join(packages)
    if os.geteuid() != 0:
        raise DovecotError(f"Dovecot is not installed; as root: apt-get install -y {names}")
    if not quiet:
        print(f"dovecot.py: installing {names} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", *packages]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        tail = "\n".join((run.stdout + run.stderr).splitlines()[-10:])
        raise DovecotError(f"apt-get install {names} failed:\n{tail}")
    # Debian's postinst may start the machine's own Dovecot on port 143 (a policy-rc.d
    # usually forbids it in containers); it does not disturb ours on another port.
    found = dovecot_binary(lmtp)
    if not found:
        raise DovecotError(f"{names} installed but dovecot or its imap/lmtp binaries are "
                           "not found under /usr/sbin and /usr/lib/dovecot")
    return found


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, so a
    killed benchmark never leaves a Dovecot behind (Linux's PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def group_pids(pgid: int) -> list[int]:
    """Every process of the process group ``pgid`` (a server and its children)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Dovecot:
    """One private Dovecot instance; use as a context manager or call start()/stop()."""

    def __init__(self, users: dict[str, str] | None = None, *, port: int = 0,
                 mail_format: str = "maildir", directory: str | Path | None = None,
                 imap_service_count: int = 0, fsync: str = "optimized",
                 log_debug: bool = False, start_timeout: float = 30.0,
                 lmtp: bool = False, lmtp_port: int = 0) -> None:
        if mail_format not in MAIL_FORMATS:
            raise ValueError(f"mail_format {mail_format!r}: one of {', '.join(MAIL_FORMATS)}")
        self.users = dict(users or {})
        self.port = port
        self.host = "127.0.0.1"
        self.mail_format = mail_format
        self.imap_service_count = imap_service_count
        self.fsync = fsync
        self.log_debug = log_debug
        self.start_timeout = start_timeout
        self.lmtp = lmtp
        self.lmtp_port = lmtp_port
        self._given_dir = directory is not None
        self.dir = Path(directory) if directory is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = ""

    # --- paths -------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "dovecot.log"

    def home(self, user: str) -> Path:
        assert self.dir is not None
        return self.dir / "home" / user

    def mail_dir(self, user: str) -> Path:
        """Where ``user``'s mail lives (a Maildir++ root for ``maildir``)."""
        return self.home(user) / "mail"

    # --- configuration -----------------------------------------------------------------
    def _identities(self) -> tuple[str, str, int, int]:
        """(login user, internal user, mail uid, mail gid) for this process's privileges."""
        if os.geteuid() == 0:
            def uid_of(name: str) -> pwd.struct_passwd | None:
                try:
                    return pwd.getpwnam(name)
                except KeyError:
                    return None
            login, internal, mail = uid_of("dovenull"), uid_of("dovecot"), uid_of("nobody")
            if login is None or internal is None or mail is None:
                raise DovecotError("running as root needs the users dovenull, dovecot and "
                                   f"nobody (Debian's {PACKAGE} creates the first two)")
            return login.pw_name, internal.pw_name, mail.pw_uid, mail.pw_gid
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_name, me.pw_uid, os.getegid()

    def _check_traversable(self) -> None:
        """As root, Dovecot's unprivileged processes must reach files below the directory."""
        assert self.dir is not None
        if os.geteuid() != 0:
            return
        for parent in self.dir.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                raise DovecotError(
                    f"{parent} is not searchable by other users (mode "
                    f"{os.stat(parent).st_mode & 0o777:o}), so Dovecot's auth and mail "
                    f"processes cannot reach {self.dir}; choose a directory elsewhere "
                    "(the default, a fresh one in the system's temporary directory, works)")

    def _write_config(self) -> None:
        assert self.dir is not None
        self._check_traversable()
        login_user, internal_user, uid, gid = self._identities()
        root = os.geteuid() == 0
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir(exist_ok=True)
        # Login processes (dovenull) reach base_dir's login/ sockets and mail processes
        # (nobody) their homes below this directory: it must be traversable.
        os.chmod(self.dir, 0o755)
        os.chmod(self.dir / "home", 0o755)
        self.write_passwd()
        chroot = "" if root else "\n  chroot ="
        location = {"maildir": "maildir:~/mail:LAYOUT=fs",
                    "sdbox": "sdbox:~/mail", "mdbox": "mdbox:~/mail"}[self.mail_format]
        cores = os.cpu_count() or 1
        lmtp_service = "" if not self.lmtp else f"""\
service lmtp {{
  inet_listener lmtp {{
    address = {self.host}
    port = {self.lmtp_port}
  }}
  service_count = 0
  process_min_avail = {cores}
  process_limit = {LMTP_PROCESS_LIMIT}
}}
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
"""
        # LMTP looks up the recipient address; user@domain is the passwd-file's user.
        userdb_format = "%n" if self.lmtp else "%u"
        conf = f"""\
# Written by bench/dovecot.py: a private, throwaway instance on loopback.
instance_name = cloudcote-bench-{self.port}
base_dir = {self.dir / 'run'}
state_dir = {self.dir / 'state'}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
mail_debug = {'yes' if self.log_debug else 'no'}
auth_debug = {'yes' if self.log_debug else 'no'}
protocols = imap{' lmtp' if self.lmtp else ''}
listen = {self.host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {uid}
last_valid_uid = 0
mail_location = {location}
mail_fsync = {self.fsync}
mail_max_userip_connections = 10000
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = no
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = no
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = no
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.dir / 'passwd'}
}}
userdb {{
  driver = passwd-file
  args = username_format={userdb_format} {self.dir / 'passwd'}
  default_fields = uid={uid} gid={gid}
}}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = {cores}{chroot}
}}
service imap {{
  service_count = {self.imap_service_count}
  process_limit = 4096
}}
service anvil {{{chroot}
}}
service auth {{
  user = {'$default_internal_user' if root else login_user}
  client_limit = {4096 + 300 + (LMTP_PROCESS_LIMIT if self.lmtp else 0)}
}}
service auth-worker {{
  user = {'$default_internal_user' if root else login_user}
}}
{lmtp_service}"""
        self.conf_path.write_text(conf)
        self._uid, self._gid = uid, gid

    def write_passwd(self) -> None:
        """(Re)write the passwd-file from :attr:`users`; Dovecot rereads it on change."""
        assert self.dir is not None
        _, _, uid, gid = self._identities()
        lines = []
        for user, password in self.users.items():
            if any(c in user + password for c in ":\n"):
                raise ValueError(f"user {user!r}: ':' and newlines cannot be in a passwd-file")
            home = self.home(user)
            home.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(home, uid, gid)
            lines.append(f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{home}::\n")
        path = self.dir / "passwd"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def add_user(self, user: str, password: str) -> None:
        self.users[user] = password
        if self.dir is not None:
            self.write_passwd()

    # --- life cycle --------------------------------------------------------------------
    def start(self) -> Dovecot:
        if self.proc is not None:
            return self
        self.binary = ensure_dovecot(lmtp=self.lmtp)
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="cc-dovecot-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        if self.lmtp and not self.lmtp_port:
            self.lmtp_port = free_port(self.host)
        self._write_config()
        check = subprocess.run([self.binary, "-c", str(self.conf_path), "-n"],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise DovecotError(f"doveconf rejected {self.conf_path}: "
                               f"{check.stderr.strip() or check.stdout.strip()}")
        self.log_path.touch()
        with open(self.dir / "dovecot.out", "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        waiting = [(self.port, b"* OK")] + ([(self.lmtp_port, b"220")] if self.lmtp else [])
        last = ""
        while waiting and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                assert self.dir is not None
                out = (self.dir / "dovecot.out").read_text(errors="replace")
                raise DovecotError(f"dovecot exited with {self.proc.returncode}: "
                                   f"{out.strip()}\n{self.log_tail()}")
            port, greeting_start = waiting[0]
            try:
                with socket.create_connection((self.host, port), timeout=2) as s:
                    s.settimeout(5)
                    greeting = s.recv(1024)
                    if greeting.startswith(greeting_start):
                        waiting.pop(0)
                        continue
                    last = greeting.decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        if waiting:
            raise DovecotError(f"dovecot did not greet on {self.host}:{waiting[0][0]} within "
                               f"{self.start_timeout:.0f} s ({last})\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            # The master stops its children on SIGTERM; the process group catches any
            # child left behind if the master itself dies first.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if self.dir is not None and not self._given_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def pids(self) -> list[int]:
        """The master and every process of its group (for CPU accounting)."""
        return [] if self.proc is None else group_pids(self.proc.pid)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a private Dovecot on loopback.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                    help="a user (repeatable; default alice:secret)")
    ap.add_argument("--mail-format", choices=MAIL_FORMATS, default="maildir")
    ap.add_argument("--dir", help="keep configuration, mail and log here")
    ap.add_argument("--debug", action="store_true", help="mail_debug and auth_debug")
    ap.add_argument("--lmtp", action="store_true", help="an LMTP listener too")
    args = ap.parse_args(argv)
    users = dict(u.split(":", 1) for u in (args.user or ["alice:secret"]))
    try:
        dc = Dovecot(users, port=args.port, mail_format=args.mail_format, directory=args.dir,
                     log_debug=args.debug, lmtp=args.lmtp).start()
    except DovecotError as exc:
        print(f"dovecot.py: {exc}", file=sys.stderr)
        return 1
    lmtp = f", LMTP on {dc.host}:{dc.lmtp_port}" if dc.lmtp else ""
    print(f"Dovecot on {dc.host}:{dc.port}{lmtp} ({dc.mail_format} in {dc.dir}); "
          f"log {dc.log_path}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while dc.proc is not None and dc.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        dc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
