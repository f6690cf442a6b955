"""Password schemes, passwd-file and static passdbs (cloudcote.core.auth)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from cloudcote.core.auth import (
    GENERATE_SCHEMES,
    SCHEMES,
    AuthConfigError,
    AuthPenalty,
    InvalidHash,
    PassDbUnavailable,
    PasswdFile,
    PasswdFileError,
    StaticPassDb,
    UnknownScheme,
    UserdbError,
    UserEntry,
    UserExists,
    UserFields,
    UserNotFound,
    add_user,
    check_stored_password,
    delete_user,
    hash_password,
    list_users,
    open_passdb,
    set_password,
    user_fields,
    verify_password,
)
from cloudcote.core.auth import passdb as passdb_module
from cloudcote.core.mail.errors import StorageUnavailable
from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs import open_fs
from cloudcote.protocols.pop3.session import Pop3Session
from cloudcote.protocols.session import LineSession, ServerContext
from cloudcote.server import store_opener

# Vectors from Dovecot itself: src/lib-auth/test-password-scheme.c (password "test").
DOVECOT_TEST_VECTORS = [
    "{PLAIN}test",
    "{CRYPT}//EsnG9FLTKjo",
    "{MD5-CRYPT}$1$GgvxyNz8$OjZhLh4P.gF1lxYEbLZ3e/",
    "{MD5}$1$wmyrgRuV$kImF6.9MAFQNHe23kq5vI/",
    "{SHA1}qUqP5cyxm6YcTAhz05Hph5gvu9M=",
    "{SHA256}n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
    "{SHA512}7iaw3Ur350mqGo7jwQrpkj9hiYB3Lkc/iBml1JQODbJ6wYX4oOHV+E+IvIh/1nsUNzLDBMxfqa2Ob1f1AC"
    "io/w==",
    "{SSHA}H/zrDv8FXUu1JmwvVYijfrYEF34jVZcO",
    "{LDAP-MD5}CY9rzUYh03PK3k6DJie09g==",
    "{BLF-CRYPT}$2y$05$11ipvo5dR6CwkzwmhwM26OXgzXwhV2PyPuLV.Qi31ILcRcThQpEiW",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$f2iuP4aUeNMrgu34fhOkkg$1XSZZMWlIs0zmE+snlUIcLADO3GX"
    "bA2O/hsQmmc317k",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdYlaMHz1A$jtFOtbo/sYV9OSlTxDo/nVNq3u"
    "ArHd5GJSEx0ty85Cc",
    "{ARGON2}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdYlaMHz1A$jtFOtbo/sYV9OSlTxDo/nVNq3uAr"
    "Hd5GJSEx0ty85Cc",
]

# Dovecot's crypt() self-test samples: src/lib-auth/password-scheme-crypt.c.
CRYPT_SAMPLE_PASSWORD = "08/15!test~4711"
CRYPT_SAMPLES = [
    "{CRYPT}JBOZ0DgmtucwE",
    "{BLF-CRYPT}$2a$04$0123456789abcdefABCDE.N.drYX5yIAL1LkTaaZotW3yI0hQhZru",
    "{SHA256-CRYPT}$5$rounds=1000$0123456789abcdef$K/DksR0DT01hGc8g/kt9McEgrbFMKi9qrb1jehe7hn4",
    "{SHA512-CRYPT}$6$rounds=1000$0123456789abcdef$ZIAd5WqfyLkpvsVCVUU1GrvqaZTqvhJoouxdSqJO71l9"
    "Ld3tVrfOatEjarhghvEYADkq//LpDnTeO90tcbtHR1",
]

# `openssl passwd -6|-5|-1 -salt abc secret` (OpenSSL 3.0): another implementation entirely.
OPENSSL_SECRET = "secret"
OPENSSL_SHA512 = ("$6$abc$IdWKNKTJEb8LxY7CGg8YBXlvtfZzFw7Mp/r6niK9YB2mdvgY..TKjv1T..8RadRt2qvUHYRL"
                  "r/TsVArtr91iR1")
OPENSSL_SHA256 = "$5$abc$qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0"
OPENSSL_MD5 = "$1$abc$iCQ2D3nhptRYi27fDYv2s1"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


# -- schemes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", GENERATE_SCHEMES)
def test_every_scheme_hashes_verifies_and_rejects(scheme: str) -> None:
    stored = hash_password("Correct horse ü", scheme, rounds=1)  # minimum work: fast tests
    assert stored.startswith("{" + scheme + "}")
    assert verify_password(stored, "Correct horse ü")
    assert not verify_password(stored, "correct horse ü")
    assert not verify_password(stored, "Correct horse ")
    assert not verify_password(stored, "")
    assert check_stored_password(stored) == scheme


@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "SSHA512", "ARGON2ID", "BLF-CRYPT"])
def test_hashes_are_salted(scheme: str) -> None:
    one, two = hash_password("same", scheme, rounds=1), hash_password("same", scheme, rounds=1)
    assert one != two
    assert verify_password(one, "same") and verify_password(two, "same")


@pytest.mark.parametrize("scheme, prefix", [
    ("SHA512-CRYPT", "{SHA512-CRYPT}$6$"),
    ("SHA256-CRYPT", "{SHA256-CRYPT}$5$"),
    ("BLF-CRYPT", "{BLF-CRYPT}$2y$10$"),
    ("ARGON2ID", "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"),
    ("ARGON2I", "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$"),
])
def test_dovecot_formats(scheme: str, prefix: str) -> None:
    stored = hash_password("pw", scheme)  # default work factors
    assert stored.startswith(prefix)
    assert verify_password(stored, "pw") and not verify_password(stored, "pW")


def test_sha_crypt_default_rounds_are_implicit_like_doveadm() -> None:
    stored = hash_password("pw", "SHA512-CRYPT")
    # doveadm pw -s SHA512-CRYPT: $6$<16 salt chars>$<86 hash chars>, rounds=5000 not written.
    _, six, salt, digest = stored.split("$")
    assert six == "6" and len(salt) == 16 and len(digest) == 86
    assert "rounds=6000$" in hash_password("pw", "SHA512-CRYPT", rounds=6000)
    assert "rounds=1000$" in hash_password("pw", "SHA256-CRYPT", rounds=10)  # clamped
    assert hash_password("pw", "BLF-CRYPT", rounds=4).startswith("{BLF-CRYPT}$2y$04$")


@pytest.mark.parametrize("stored", DOVECOT_TEST_VECTORS)
def test_dovecot_test_vectors(stored: str) -> None:
    assert verify_password(stored, "test")
    assert not verify_password(stored, "tesT")
    check_stored_password(stored)


@pytest.mark.parametrize("stored", CRYPT_SAMPLES)
def test_dovecot_crypt_samples(stored: str) -> None:
    assert verify_password(stored, CRYPT_SAMPLE_PASSWORD)
    assert not verify_password(stored, "18/15!test~4711")  # DES reads only 8 characters


@pytest.mark.parametrize("value", [OPENSSL_SHA512, OPENSSL_SHA256, OPENSSL_MD5])
def test_openssl_hashes_verify_bare_and_as_crypt(value: str) -> None:
    # No {SCHEME}: passwd-file's default scheme CRYPT, which dispatches on the $id$.
    assert verify_password(value, OPENSSL_SECRET)
    assert verify_password("{CRYPT}" + value, OPENSSL_SECRET)
    assert not verify_password(value, "Secret")


def test_openssl_live_sha512_crypt() -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl (Debian's base system) is needed for this check"
    password, salt = os.urandom(6).hex(), os.urandom(6).hex()
    out = subprocess.run([openssl, "passwd", "-6", "-salt", salt, password], check=True,
                         capture_output=True, text=True).stdout.strip()
    assert verify_password("{SHA512-CRYPT}" + out, password)
    assert not verify_password("{SHA512-CRYPT}" + out, password + "x")


def test_hashes_from_the_bcrypt_and_argon2_libraries() -> None:
    import argon2
    import bcrypt

    for prefix in (b"2a", b"2b"):
        value = bcrypt.hashpw(b"pw1", bcrypt.gensalt(rounds=4, prefix=prefix)).decode()
        assert verify_password("{BLF-CRYPT}" + value, "pw1")
        assert not verify_password("{BLF-CRYPT}" + value, "pw2")
    value = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=2).hash("pw1")
    assert verify_password("{ARGON2ID}" + value, "pw1")
    assert not verify_password("{ARGON2ID}" + value, "pw2")


def test_bcrypt_uses_the_first_72_bytes_like_crypt_blowfish() -> None:
    import bcrypt

    long = "p" * 71 + "é" + "tail"  # the 72-byte cut falls inside the 2-byte "é"
    stored = hash_password(long, "BLF-CRYPT", rounds=4)  # bcrypt 5.0 alone would raise
    assert verify_password(stored, long)
    assert not verify_password(stored, "p" * 71)
    external = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    assert verify_password("{BLF-CRYPT}" + external, long)


def test_plain_and_encodings() -> None:
    assert verify_password("{PLAIN}secret", "secret")
    assert verify_password("{plain}secret", "secret")  # scheme names are case-insensitive
    assert verify_password("{CLEARTEXT}secret", "secret")
    assert not verify_password("{PLAIN}secret", "secre")
    assert not verify_password("{PLAIN}secret", "secret2")
    assert not verify_password("{PLAIN}", "")  # an empty password never matches
    b64 = "{PLAIN.B64}" + base64.b64encode(b"with space").decode()
    assert verify_password(b64, "with space") and not verify_password(b64, "with")
    digest = hashlib.sha512(b"test").hexdigest()
    assert verify_password("{SHA512.HEX}" + digest, "test")
    assert verify_password("{SHA512}" + digest, "test")  # hex guessed by length, as Dovecot
    assert hash_password("test", "sha512.hex") == "{SHA512.HEX}" + digest


def test_ssha512_layout() -> None:
    salt = b"\x01\x02\x03\x04"
    raw = hashlib.sha512(b"test" + salt).digest() + salt
    stored = "{SSHA512}" + base64.b64encode(raw).decode()
    assert verify_password(stored, "test") and not verify_password(stored, "Test")
    mine = base64.b64decode(hash_password("test", "SSHA512")[len("{SSHA512}"):])
    assert hashlib.sha512(b"test" + mine[64:]).digest() == mine[:64]


def test_unknown_scheme() -> None:
    with pytest.raises(UnknownScheme) as info:
        hash_password("pw", "NOPE")
    assert info.value.scheme == "NOPE" and "NOPE" in str(info.value)
    assert isinstance(info.value, AuthConfigError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownScheme):
        verify_password("{NOPE}x", "x")
    with pytest.raises(UnknownScheme):
        verify_password("{SHA512.ROT13}x", "x")
    with pytest.raises(UnknownScheme):
        check_stored_password("{}x")


@pytest.mark.parametrize("scheme", ["CRYPT", "MD5-CRYPT", "SHA1", "ssha"])
def test_verify_only_schemes_refuse_to_generate(scheme: str) -> None:
    assert scheme.upper() in SCHEMES and scheme.upper() not in GENERATE_SCHEMES
    with pytest.raises(AuthConfigError, match="verification only") as info:
        hash_password("pw", scheme)
    assert not isinstance(info.value, UnknownScheme)


@pytest.mark.parametrize("stored, words", [
    ("{SHA512-CRYPT}not-a-hash", "crypt"),
    ("{BLF-CRYPT}" + OPENSSL_SHA512, "bcrypt"),
    ("{CRYPT}$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
     "yescrypt"),
    ("{SHA512}c2hvcnQ=", "bytes"),
    ("{SSHA256}" + base64.b64encode(b"x" * 32).decode(), "short"),
    ("{ARGON2ID}$argon2id$broken", "Argon2"),
    ("{SHA256}***", "base64"),
])
def test_malformed_stored_values(stored: str, words: str) -> None:
    with pytest.raises(InvalidHash, match=words):
        check_stored_password(stored)
    with pytest.raises(InvalidHash):
        verify_password(stored, "pw")


def test_nul_in_password() -> None:
    with pytest.raises(ValueError):
        hash_password("a\0b", "PLAIN")
    assert not verify_password("{PLAIN}a\0b", "a\0b")


def test_no_warnings_from_libpass_and_backends(tmp_path: Path) -> None:
    code = ("from cloudcote.core.auth import GENERATE_SCHEMES, hash_password, verify_password\n"
            "for s in GENERATE_SCHEMES:\n"
            "    assert verify_password(hash_password('pw', s, rounds=1), 'pw')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# -- passwd-file: reading --------------------------------------------------------------------

SAMPLE = (
    "# cloudcote users\n"
    "\n"
    "alice:{PLAIN}alicepw:1000:1000:Alice A.:/home/alice:/bin/false:"
    "userdb_quota_rule=*:storage=1G userdb_mail=sdbox:~/mail nologin_never=\n"
    "  # an indented comment\n"
    f"bob:{OPENSSL_SHA512}\n"
    "carol:{PLAIN}carolpw::::::nologin\n"
    "dave:{PLAIN}davepw:vmailnotauser\r\n"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, newline="")
    return path


def test_parse_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "passwd", SAMPLE.replace("vmailnotauser", "2000:2001"))
    db = PasswdFile(path)
    db.load()
    alice = db.lookup("alice")
    assert alice == UserEntry(user="alice", password="{PLAIN}alicepw", uid=1000, gid=1000,
                              home="/home/alice",
                              extra={"userdb_quota_rule": "*:storage=1G",
                                     "userdb_mail": "sdbox:~/mail", "nologin_never": ""})
    assert "alicepw" not in repr(alice)
    bob = db.lookup("bob")
    assert bob is not None and bob.password == OPENSSL_SHA512 and bob.uid is None
    assert bob.home is None and bob.extra == {}
    carol = db.lookup("carol")
    assert carol is not None and carol.extra == {"nologin": ""}
    dave = db.lookup("dave")
    assert dave is not None and (dave.uid, dave.gid) == (2000, 2001)
    assert dave.password == "{PLAIN}davepw"  # CRLF line: no stray \r
    assert db.lookup("Alice") is None and db.lookup("nobody") is None
    assert [e.user for e in db.users()] == ["alice", "bob", "carol", "dave"]


def test_uid_and_gid_may_be_system_names(tmp_path: Path) -> None:
    import grp
    import pwd

    user = next((p for p in pwd.getpwall() if p.pw_uid > 0), None)
    group = next((g for g in grp.getgrall() if g.gr_gid > 0), None)
    assert user is not None and group is not None, "Debian always has non-root users"
    db = PasswdFile(write(tmp_path / "p", f"u:{{PLAIN}}x:{user.pw_name}:{group.gr_name}\n"))
    entry = db.lookup("u")
    assert entry is not None and (entry.uid, entry.gid) == (user.pw_uid, group.gr_gid)


@pytest.mark.parametrize("bad, lineno, words", [
    ("alice\n", 3, "no password field"),
    ("alice:{NOPE}x\n", 3, "unknown password scheme 'NOPE'"),
    ("bob:{PLAIN}again\n", 4, "already defined on line 2"),
    ("alice:{PLAIN}x:abc-no-such-user-xyz\n", 3, "invalid uid"),
    ("alice:{PLAIN}x:0\n", 3, "invalid uid"),
    ("alice:{PLAIN}x:1000:-5\n", 3, "invalid gid"),
    ("alice:{SHA512-CRYPT}garbage\n", 3, "bad SHA512-CRYPT password"),
    ("alice:{PLAIN}x::::::allow_nets=10.0.0.0/8,nonsense\n", 3, "allow_nets"),
    (":{PLAIN}x\n", 3, "empty user name"),
    ("alice:{PLAIN}x::::::=v\n", 3, "extra field without a name"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, bad: str, lineno: int, words: str) -> None:
    head = "# users\nbob:{PLAIN}b\n"
    if bad.startswith("bob:"):
        head += "\n"
    path = write(tmp_path / "users.passwd", head + bad + "zed:{PLAIN}z\n")
    with pytest.raises(PasswdFileError) as info:
        PasswdFile(path).load()
    message = str(info.value)
    assert message.startswith(f"{path}:{lineno}: "), message
    assert words in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_missing_and_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    db = PasswdFile(path)
    db.load()  # no users yet: the server may start before the first `cloudcote user add`
    assert db.lookup("alice") is None and list_users(path) == []
    assert run(db.authenticate("alice", "a")) is None
    add_user(path, "alice", "a", scheme="PLAIN")
    assert run(db.authenticate("alice", "a")) is not None
    path.unlink()
    assert db.lookup("alice") is None
    with pytest.raises(PasswdFileError, match=f"^{tmp_path}: cannot read: "):
        PasswdFile(tmp_path).load()  # a directory


def test_reload_on_change(tmp_path: Path) -> None:
    path = write(tmp_path / "passwd", "alice:{PLAIN}one\n")
    db = PasswdFile(path)
    db.load()
    assert db.lookup("bob") is None
    add_user(path, "bob", "two", scheme="PLAIN")  # atomic rename: a new inode
    assert db.lookup("bob") is not None
    # An in-place rewrite of the same size: mtime (and ctime) give it away.
    st = path.stat()
    write(path, path.read_text().replace("{PLAIN}one", "{PLAIN}uno"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert run(db.authenticate("alice", "uno")) is not None
    assert run(db.authenticate("alice", "one")) is None
    # A file broken after start-up fails closed instead of serving stale users.
    write(path, "alice:{PLAIN}uno\nbroken\n")
    with pytest.raises(PasswdFileError, match=":2: "):
        db.lookup("alice")
    with pytest.raises(PasswdFileError):
        run(db.authenticate("alice", "uno"))


def test_authenticate(tmp_path: Path) -> None:
    argon = hash_password("argonpw", "ARGON2ID", rounds=1)
    path = write(tmp_path / "passwd", SAMPLE.replace("vmailnotauser", "")
                 + f"erin:{argon}\n"
                 + "frank:{PLAIN}frankpw::::::allow_nets=192.0.2.0/24,local\n"
                 + "gina:{PLAIN}ginapw:::::\n"
                 + "hank:\n")
    db = open_passdb(f"passwd-file:{path}")
    assert isinstance(db, PasswdFile)
    db.load()
    entry = run(db.authenticate("alice", "alicepw"))
    assert entry is not None and entry.user == "alice" and entry.home == "/home/alice"
    assert run(db.authenticate("alice", "wrong")) is None
    assert run(db.authenticate("bob", OPENSSL_SECRET)) is not None
    assert run(db.authenticate("erin", "argonpw")) is not None
    assert run(db.authenticate("erin", "argonPW")) is None
    assert run(db.authenticate("carol", "carolpw")) is None  # nologin
    assert run(db.authenticate("nobody", "x")) is None
    assert run(db.authenticate("hank", "")) is None  # empty password field: no login
    assert run(db.authenticate("hank", "x")) is None
    assert run(db.authenticate("gina", "ginapw")) is not None
    assert run(db.authenticate("frank", "frankpw", remote_ip="192.0.2.7")) is not None
    assert run(db.authenticate("frank", "frankpw", remote_ip="::ffff:192.0.2.7")) is not None
    assert run(db.authenticate("frank", "frankpw", remote_ip=None)) is not None  # local
    assert run(db.authenticate("frank", "frankpw", remote_ip="198.51.100.1")) is None


def test_unknown_user_costs_a_real_verification(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    argon = [hash_password(f"pw{i}", "ARGON2ID", rounds=1) for i in range(2)]
    path = write(tmp_path / "passwd", f"a:{argon[0]}\nb:{argon[1]}\nc:{{PLAIN}}c\n")
    calls: list[tuple[str, int]] = []
    real = passdb_module.verify_password

    def spy(stored: str, password: str, **kw: str) -> bool:
        calls.append((stored, threading.get_ident()))
        return real(stored, password, **kw)

    monkeypatch.setattr(passdb_module, "verify_password", spy)
    db = PasswdFile(path)
    assert run(db.authenticate("nobody", "pw0")) is None  # a dummy's password cannot leak in
    assert len(calls) == 1
    stored, thread = calls[0]
    assert stored.startswith("{ARGON2ID}$argon2id$")  # the file's most used scheme
    assert thread != threading.get_ident()  # hashing ran off the event loop's thread

    calls.clear()
    empty = PasswdFile(write(tmp_path / "empty", "# nobody yet\n"))
    assert run(empty.authenticate("nobody", "pw")) is None
    assert len(calls) == 1 and calls[0][0].startswith("{SHA512-CRYPT}$6$")


# -- passwd-file: editing --------------------------------------------------------------------


def test_add_passwd_delete_round_trip_keeps_other_lines(tmp_path: Path) -> None:
    original = (
        "# managed by hand and by cloudcote\n"
        "\n"
        "alice:{PLAIN}alicepw:1000:1000:Alice:/home/alice::userdb_quota_rule=*:storage=1G\n"
        "#   keep   this   spacing\n"
        f"bob:{OPENSSL_SHA512}\n"
    )
    path = write(tmp_path / "passwd", original)
    entry = add_user(path, "carol", "carolpw", extra={"userdb_mail": "sdbox:~/m", "nologin": ""})
    assert entry.user == "carol" and entry.extra == {"userdb_mail": "sdbox:~/m", "nologin": ""}
    text = path.read_text()
    assert text.startswith(original)
    new_line = text[len(original):]
    assert new_line.startswith("carol:{SHA512-CRYPT}$6$")
    assert new_line.endswith("::::::userdb_mail=sdbox:~/m nologin\n")
    assert [e.user for e in list_users(path)] == ["alice", "bob", "carol"]

    set_password(path, "alice", "newpw", scheme="BLF-CRYPT")
    lines = path.read_text().split("\n")
    assert lines[2].startswith("alice:{BLF-CRYPT}$2y$")
    assert lines[2].endswith(":1000:1000:Alice:/home/alice::userdb_quota_rule=*:storage=1G")
    assert [lines[i] for i in (0, 1, 3, 4)] == [original.split("\n")[i] for i in (0, 1, 3, 4)]
    db = PasswdFile(path)
    assert run(db.authenticate("alice", "newpw")) is not None
    assert run(db.authenticate("alice", "alicepw")) is None

    delete_user(path, "carol")
    delete_user(path, "alice")
    assert path.read_text() == original.replace(original.split("\n")[2] + "\n", "")
    assert [e.user for e in list_users(path)] == ["bob"]
    assert sorted(os.listdir(tmp_path)) == ["passwd"]  # no temp files left behind


def test_crlf_and_missing_final_newline_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "# dos\r\nalice:{PLAIN}a:::::\r\n")
    add_user(path, "bob", "b", scheme="PLAIN")
    set_password(path, "alice", "a2", scheme="PLAIN")
    assert path.read_bytes() == b"# dos\r\nalice:{PLAIN}a2:::::\r\nbob:{PLAIN}b\r\n"
    path2 = write(tmp_path / "q", "alice:{PLAIN}a")
    add_user(path2, "bob", "b", scheme="PLAIN")
    assert path2.read_text() == "alice:{PLAIN}a\nbob:{PLAIN}b\n"


def test_modes(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        path = tmp_path / "new"
        add_user(path, "alice", "pw")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path.chmod(0o640)
        set_password(path, "alice", "pw2")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)
    assert path.read_text().startswith("alice:{SHA512-CRYPT}$6$")


def test_edit_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    target = write(tmp_path / "real", "alice:{PLAIN}a\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    add_user(link, "bob", "b", scheme="PLAIN")
    assert link.is_symlink()
    assert target.read_text() == "alice:{PLAIN}a\nbob:{PLAIN}b\n"


def test_exists_and_not_found(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "alice:{PLAIN}a\n")
    with pytest.raises(UserExists, match="'alice'"):
        add_user(path, "alice", "x")
    with pytest.raises(UserNotFound, match="'bob'"):
        set_password(path, "bob", "x")
    with pytest.raises(UserNotFound, match="'bob'"):
        delete_user(path, "bob")
    with pytest.raises(UserNotFound):
        delete_user(tmp_path / "absent", "bob")
    assert path.read_text() == "alice:{PLAIN}a\n"


@pytest.mark.parametrize("name", ["", "a:b", "a b", "a\tb", "a\nb", "a\x7fb", "a\u200bb", "#x"])
def test_bad_user_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / "p"
    with pytest.raises(ValueError) as info:
        add_user(path, name, "pw")
    assert "user name" in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize("extra", [{"a b": "x"}, {"k": "two words"}, {"": "x"}, {"k=": "v"},
                                   {"allow_nets": "not-a-net"}])
def test_bad_extra_fields(tmp_path: Path, extra: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        add_user(tmp_path / "p", "alice", "pw", extra=extra)
    assert not (tmp_path / "p").exists()


def test_plain_password_that_cannot_be_stored(tmp_path: Path) -> None:
    path = tmp_path / "p"
    with pytest.raises(ValueError, match="hashed scheme"):
        add_user(path, "alice", "pass:word", scheme="PLAIN")
    add_user(path, "alice", "pass:word")  # hashed, a ':' is fine
    assert run(PasswdFile(path).authenticate("alice", "pass:word")) is not None


def test_refuses_to_edit_a_broken_file(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "alice:{PLAIN}a\nbroken\n")
    with pytest.raises(PasswdFileError, match=":2: "):
        add_user(path, "bob", "b")
    assert path.read_text() == "alice:{PLAIN}a\nbroken\n"


def test_concurrent_writer_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "p", "alice:{PLAIN}a\n")
    real_read = passdb_module._read_for_edit
    interfered: list[bool] = []

    def read_then_interfere(p: str):  # type: ignore[no-untyped-def]
        result = real_read(p)
        if not interfered:
            interfered.append(True)
            add_user(path, "carol", "c", scheme="PLAIN")  # lands after our read
        return result

    monkeypatch.setattr(passdb_module, "_read_for_edit", read_then_interfere)
    add_user(path, "bob", "b", scheme="PLAIN")
    assert [e.user for e in list_users(path)] == ["alice", "carol", "bob"]


# -- static and open_passdb ------------------------------------------------------------------


def test_static_passdb() -> None:
    db = open_passdb("static:password=s3cret")
    assert isinstance(db, StaticPassDb)
    entry = run(db.authenticate("anyone", "s3cret"))
    assert entry is not None and entry.user == "anyone"
    assert run(db.authenticate("anyone", "wrong")) is None
    assert "s3cret" not in repr(db) and "s3cret" not in repr(entry)
    hashed = StaticPassDb(hash_password("pw", "SHA256-CRYPT"))
    assert run(hashed.authenticate("x", "pw")) is not None
    assert run(hashed.authenticate("x", "pw!")) is None
    braces = StaticPassDb("{not closed")  # no '}': a PLAIN password, as in Dovecot
    assert run(braces.authenticate("x", "{not closed")) is not None
    nets = open_passdb("static:password=pw allow_nets=127.0.0.0/8")
    assert run(nets.authenticate("x", "pw", remote_ip="127.0.0.1")) is not None
    assert run(nets.authenticate("x", "pw", remote_ip="10.0.0.1")) is None


@pytest.mark.parametrize("spec, words", [
    ("sql:host=db dbname=mail", "unknown setting 'host'"),
    ("sql:connect=postgresql://u:hunter2@h/db password_query=x", "must select by the login"),
    ("sql:connect=postgresql://u:hunter2@h/db", "password_query: missing"),
    ("ldap:/etc/ldap.conf", "ldap:/etc/ldap.conf"),
    ("passwd-file", "passwd-file"),
    ("passwd-file:", "path"),
    ("static:", "password=SECRET"),
    ("static:password={NOPE}hunter2", "NOPE"),
    ("static:password=hunter2 allow_nets=nonsense", "allow_nets"),
])
def test_open_passdb_errors(spec: str, words: str) -> None:
    with pytest.raises(AuthConfigError) as info:
        open_passdb(spec)
    message = str(info.value)
    assert words in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_open_passdb_passwd_file(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "alice:{PLAIN}a\n")
    db = open_passdb(f"passwd-file:{path}")
    assert isinstance(db, PasswdFile) and db.path == str(path)
    assert db.lookup("alice") is not None


def test_every_passdb_closes() -> None:
    async def main() -> None:
        for db in (PasswdFile("/nonexistent"), StaticPassDb("pw")):
            await db.close()

    run(main())


# -- failed-login penalty --------------------------------------------------------------------


def test_penalty_doubles_up_to_the_cap_and_success_resets() -> None:
    penalty = AuthPenalty(2.0, 15.0)
    delays = [penalty.failed("192.0.2.1", f"guess{i}") for i in range(6)]
    assert delays == [2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert penalty.failures("192.0.2.1") == 6
    assert penalty.failed("192.0.2.2", "x") == 2.0  # another client starts afresh
    penalty.succeeded("192.0.2.1")
    assert penalty.failures("192.0.2.1") == 0
    assert penalty.failed("192.0.2.1", "x") == 2.0
    assert penalty.failures("192.0.2.2") == 1
    assert AuthPenalty(0.0, 0.0).failed("192.0.2.1", "x") == 0.0  # switched off
    assert AuthPenalty(0.5, 1.0).delay(3) == 1.0
    with pytest.raises(ValueError):
        AuthPenalty(5.0, 1.0)


def test_penalty_same_password_counts_once() -> None:
    penalty = AuthPenalty(1.0, 15.0)
    assert [penalty.failed("192.0.2.1", "old-password") for _ in range(4)] == [1.0] * 4
    assert penalty.failed("192.0.2.1", "another") == 2.0
    assert penalty.failed("192.0.2.1", "old-password") == 2.0


def test_penalty_client_keys() -> None:
    penalty = AuthPenalty(1.0, 100.0)
    penalty.failed("2001:db8:1:2::1", "a")
    penalty.failed("2001:db8:1:ffff::9", "b")  # the same /48
    assert penalty.failures("2001:db8:1::5") == 2
    assert penalty.failures("2001:db8:2::1") == 0
    penalty.failed("::ffff:192.0.2.7", "a")
    assert penalty.failures("192.0.2.7") == 1
    penalty.failed(None, "a")
    assert penalty.failures(None) == 1 and penalty.failures("") == 1
    penalty.failed("fe80::1%eth0", "a")
    assert penalty.failures("fe80::2") == 1


def test_penalty_expires_and_is_bounded() -> None:
    now = [1000.0]
    penalty = AuthPenalty(1.0, 15.0, max_clients=3, expire=60.0, timer=lambda: now[0])
    penalty.failed("192.0.2.1", "a")
    now[0] += 50
    penalty.failed("192.0.2.1", "b")  # a new failure keeps it another 60 s
    now[0] += 50
    assert penalty.failures("192.0.2.1") == 2
    now[0] += 61
    assert penalty.failures("192.0.2.1") == 0
    for i in range(10):
        penalty.failed(f"198.51.100.{i}", "x")
    assert sum(penalty.failures(f"198.51.100.{i}") for i in range(10)) == 3


# -- userdb fields ---------------------------------------------------------------------------


def test_user_fields() -> None:
    entry = UserEntry("alice", "{PLAIN}x", home="/home/alice",
                      extra={"userdb_quota_rule": "*:storage=2M:messages=10",
                             "quota_rule": "*:storage=1G", "userdb_mail": "posix:~/mail"})
    fields = user_fields(entry)
    assert fields.home == "/home/alice" and fields.mail == "posix:/home/alice/mail"
    assert fields.quota is not None
    assert (fields.quota.bytes, fields.quota.messages) == (2 << 20, 10)
    plain = user_fields(UserEntry("bob", "{PLAIN}x", extra={"quota_rule": "*:storage=1G"}))
    assert plain.quota is not None and plain.quota.bytes == 1 << 30
    assert plain.home is None and plain.mail is None
    assert user_fields(UserEntry("c", "x")) == UserFields()
    sql = user_fields(UserEntry("d", "x", extra={"userdb_home": "/srv/d/",
                                                 "mail": "compress:zstd:posix:~"}))
    assert sql.home == "/srv/d/" and sql.mail == "compress:zstd:posix:/srv/d/"


@pytest.mark.parametrize("extra, words", [
    ({"userdb_quota_rule": "lots"}, "quota_rule 'lots' is invalid"),
    ({"quota_rule": "*:storage=1Q"}, "quota_rule"),
    ({"userdb_mail": "posix:~/mail"}, "has no home"),
    ({"userdb_mail": "sdbox:~/mail", "userdb_home": "/h"}, "not a libfs chain"),
    ({"userdb_mail": "compress"}, "needs a parent stage"),
    ({"userdb_mail": "nosuch:secret_key=hunter2"}, "unknown libfs stage"),
])
def test_user_fields_errors(extra: dict[str, str], words: str) -> None:
    with pytest.raises(UserdbError) as info:
        user_fields(UserEntry("alice", "x", extra=extra))
    message = str(info.value)
    assert "'alice'" in message and words in message
    assert "hunter2" not in message and "\n" not in message


# -- the session side: check_password and user_mail ------------------------------------------


class _FailingPassDb:
    async def authenticate(self, user: str, password: str, *,
                           remote_ip: str | None = None) -> UserEntry | None:
        raise PassDbUnavailable("sql passdb postgresql://x@db:5432/mail: timed out")

    async def close(self) -> None:
        pass


class _CasePassDb:
    """Knows one user, whatever the case of the login name (as a MySQL collation does)."""

    async def authenticate(self, user: str, password: str, *,
                           remote_ip: str | None = None) -> UserEntry | None:
        if user.lower() == "alice" and password == "pw":
            return UserEntry("alice", "{PLAIN}pw", extra={"userdb_quota_rule": "*:messages=3"})
        return None

    async def close(self) -> None:
        pass


def _session(ctx: ServerContext, peer: str = "192.0.2.1:40000") -> LineSession:
    """A protocol session (POP3's) not yet reading: the shared login checks of the base."""
    conn = types.SimpleNamespace(peer=peer, session_id="s1", secured=True)
    return Pop3Session(conn, ctx)  # type: ignore[arg-type]


def test_check_password_penalty_and_user_entry(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        ctx = ServerContext(passdb=_CasePassDb(), ssl_context=None, disable_plaintext_auth=False,
                            auth_penalty=AuthPenalty(0.05, 0.2))
        session = _session(ctx)
        assert session.user_entry is None and session.user is None
        waits = []
        for guess in ("a", "b", "c", "d"):
            started = time.monotonic()
            assert await session.check_password("alice", guess) is False
            waits.append(time.monotonic() - started)
        assert all(d - 0.01 <= w < d + 0.5
                   for w, d in zip(waits, (0.05, 0.1, 0.2, 0.2), strict=True)), waits
        assert ctx.auth_penalty.failures("192.0.2.1") == 4
        assert session.user is None and session.user_entry is None
        # Another client is not slowed by this one's failures.
        other = _session(ctx, "198.51.100.1:1")
        started = time.monotonic()
        assert await other.check_password("alice", "x") is False
        assert time.monotonic() - started < 0.15
        assert await session.check_password("ALICE", "pw") is True
        assert session.user == "alice"  # the passdb's name, not the login's spelling
        assert session.user_entry is not None and session.user_entry.user == "alice"
        assert ctx.auth_penalty.failures("192.0.2.1") == 0

        failing = ServerContext(passdb=_FailingPassDb(), ssl_context=None,
                                disable_plaintext_auth=False, auth_penalty=AuthPenalty(5, 5))
        started = time.monotonic()
        assert await _session(failing).check_password("alice", "pw") is None
        assert time.monotonic() - started < 1.0  # a temporary failure earns no penalty
        assert failing.auth_penalty.failures("192.0.2.1") == 0

    with caplog.at_level(logging.INFO, logger="cloudcote.session"):
        run(main())
    text = caplog.text
    assert "192.0.2.1:40000: authentication failed for 'alice'" in text
    assert "user alice logged in" in text
    assert "passdb failed for 'alice': sql passdb postgresql://x@db:5432/mail: timed out" in text


def test_user_mail_default_store_override_chains_and_quota(tmp_path: Path) -> None:
    async def main() -> None:
        default_fs = await open_fs(f"posix:{tmp_path / 'default'}")
        mail = MailStore(default_fs, StorageSettings(quota_bytes=5000, quota_messages=7,
                                                     autocreate={}))
        ctx = ServerContext(passdb=_CasePassDb(), ssl_context=None,
                            disable_plaintext_auth=False, mail=mail,
                            open_store=store_opener(mail.settings))
        plain = await ctx.user_mail(UserEntry("plain", "x"))
        assert plain.store is mail
        assert (plain.quota_limits.bytes, plain.quota_limits.messages) == (5000, 7)
        ruled = await ctx.user_mail(UserEntry("ruled", "x",
                                              extra={"userdb_quota_rule": "*:storage=1M"}))
        assert ruled.store is mail and ruled.quota_limits.bytes == 1 << 20
        assert ruled.quota_limits.messages == 0

        vip = f"metrics:posix:{tmp_path / 'vip'}"
        entries = [UserEntry(f"v{i}", "x", extra={"userdb_mail": vip}) for i in range(5)]
        users = await asyncio.gather(*(ctx.user_mail(e) for e in entries))
        stores = {id(u.store) for u in users}
        assert len(stores) == 1 and users[0].store is not mail
        assert users[0].store.settings is mail.settings
        assert (users[0].quota_limits.bytes, users[0].quota_limits.messages) == (5000, 7)
        assert len(ctx._user_stores) == 1
        homed = await ctx.user_mail(UserEntry("h", "x", home=str(tmp_path / "home"),
                                              extra={"userdb_mail": "posix:~/mail"}))
        assert homed.store is not users[0].store and len(ctx._user_stores) == 2
        assert (tmp_path / "home" / "mail").is_dir()
        # The same user again: the same UserMail, with the quota the userdb says now.
        again = await ctx.user_mail(UserEntry("v0", "x", extra={
            "userdb_mail": vip, "userdb_quota_rule": "*:messages=9"}))
        assert again is users[0] and again.quota_limits.messages == 9

        with pytest.raises(StorageUnavailable, match="quota_rule 'lots'"):
            await ctx.user_mail(UserEntry("bad", "x", extra={"quota_rule": "lots"}))
        unreachable = "mysql:mysql://u:hunter2@127.0.0.1:1/x"
        with pytest.raises(StorageUnavailable) as info:
            await ctx.user_mail(UserEntry("gone", "x", extra={"userdb_mail": unreachable}))
        assert "hunter2" not in str(info.value)
        assert unreachable not in ctx._user_stores  # not cached: the next login tries again

        closed: list[str] = []
        for opening in ctx._user_stores.values():
            store = opening.result()
            real_close = store.fs.close

            async def spy(real_close: Any = real_close) -> None:
                closed.append("fs")
                await real_close()

            store.fs.close = spy  # type: ignore[method-assign]
        await ctx.close_user_stores()
        assert closed == ["fs", "fs"] and not ctx._user_stores
        with pytest.raises(StorageUnavailable, match="stopping"):
            await ctx.user_mail(UserEntry("late", "x", extra={"userdb_mail": vip}))
        assert (await ctx.user_mail(UserEntry("plain", "x"))).store is mail
        await mail.close()
        await default_fs.close()

        bare = ServerContext(passdb=_CasePassDb(), ssl_context=None,
                             disable_plaintext_auth=False,
                             open_store=store_opener(StorageSettings()))
        with pytest.raises(StorageUnavailable, match="no mail storage"):
            await bare.user_mail(UserEntry("x", "x"))
        alone = await bare.user_mail(UserEntry("x", "x", extra={
            "userdb_mail": f"posix:{tmp_path / 'alone'}"}))
        assert alone.store.settings == StorageSettings()
        await bare.close_user_stores()

    run(main())
