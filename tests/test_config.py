"""Configuration: defaults, validation, and one clear line for every mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cloudcote.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cloudcote.toml"
    path.write_text(text)
    return path


def test_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.data_dir == tmp_path / "cloudcote-data"
    assert cfg.storage.fs == f"posix:{tmp_path / 'cloudcote-data' / 'mail'}"
    assert cfg.storage.layout == "sdbox" and cfg.storage.prefetch_count == 64
    assert cfg.auth.passdb == f"passwd-file:{tmp_path / 'cloudcote-data' / 'passwd'}"
    assert [str(x) for x in cfg.listen["imap"]] == ["127.0.0.1:1143"]
    assert [str(x) for x in cfg.listen["pop3"]] == ["127.0.0.1:1110"]
    assert [str(x) for x in cfg.listen["lmtp"]] == ["127.0.0.1:1024"]
    assert cfg.listen["imaps"] == [] and cfg.listen["pop3s"] == []
    assert cfg.tls.disable_plaintext_auth is True


def test_full_file(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    cfg = load_config(write(tmp_path, """
data_dir = "data"
[storage]
fs = "latency:20ms:s3:bucket=mail,endpoint=http://127.0.0.1:8333"
layout = "mdbox"
prefetch_count = 32
[auth]
passdb = "passwd-file:users"
[imap]
listen = ["0.0.0.0:143", "[::1]:1143"]
[imaps]
listen = ["127.0.0.1:993"]
[pop3]
listen = []
[lmtp]
listen = ["127.0.0.1:24", "run/lmtp.sock"]
[tls]
cert = "c.pem"
key = "k.pem"
disable_plaintext_auth = false
[log]
level = "DEBUG"
path = "cloudcote.log"
"""))
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.storage.layout == "mdbox" and cfg.storage.prefetch_count == 32
    assert cfg.auth.passdb == f"passwd-file:{tmp_path / 'users'}"
    assert [str(x) for x in cfg.listen["imap"]] == ["0.0.0.0:143", "[::1]:1143"]
    assert not cfg.listen["imap"][0].is_loopback and cfg.listen["imap"][1].is_loopback
    assert cfg.listen["pop3"] == []
    assert cfg.listen["lmtp"][0].port == 24
    assert cfg.listen["lmtp"][1].path == str(tmp_path / "run/lmtp.sock")
    assert cfg.log.level == "debug" and cfg.log.path == tmp_path / "cloudcote.log"
    assert cfg.tls.disable_plaintext_auth is False
    text = cfg.to_toml()
    assert 'layout = "mdbox"' in text and 'listen = ["127.0.0.1:993"]' in text


@pytest.mark.parametrize("text, expected", [
    ("data_dri = 'x'", "unknown key 'data_dri'"),
    ("[storage]\nlayot = 'sdbox'", "unknown key 'storage.layot'"),
    ("[storage]\nlayout = 'maildir'",
     "storage.layout = 'maildir' is invalid: expected one of sdbox, mdbox"),
    ("[storage]\nprefetch_count = 0", "storage.prefetch_count = 0 is invalid"),
    ("[storage]\nprefetch_count = true", "storage.prefetch_count = True is invalid"),
    ("[storage]\nfs = ''", "storage.fs = '' is invalid: empty libfs chain"),
    ("[storage]\nfs = 'nosuch:/x'", "unknown libfs stage 'nosuch'"),
    ("[storage]\nfs = [{stage = 'latency'}]", "the last entry must be a driver"),
    ("[auth]\npassdb = 'ldap:x'", "auth.passdb = 'ldap:x' is invalid"),
    ("[imap]\nlisten = '127.0.0.1:143'", "imap.listen = '127.0.0.1:143' is invalid"),
    ("[imap]\nlisten = ['127.0.0.1']", "imap.listen = '127.0.0.1' is invalid"),
    ("[imap]\nlisten = ['127.0.0.1:99999']", "imap.listen = '127.0.0.1:99999' is invalid"),
    ("[pop3]\nlisten = ['/run/pop3.sock']", "pop3.listen = '/run/pop3.sock' is invalid"),
    ("[imap]\nlisten = ['127.0.0.1:1110']", "already used by imap.listen"),
    ("[imaps]\nlisten = ['127.0.0.1:993']", "[imaps] listen needs tls.cert"),
    ("[tls]\ncert = 'c.pem'", "tls.cert and tls.key must be given together"),
    ("[tls]\ncert = 'c.pem'\nkey = 'k.pem'", "does not exist"),
    ("[tls]\ndisable_plaintext_auth = 'no'", "tls.disable_plaintext_auth = 'no' is invalid"),
    ("[log]\nlevel = 'loud'", "log.level = 'loud' is invalid: expected one of debug"),
    ("storage = 3", "storage = 3 is invalid"),
])
def test_bad_values_name_key_value_and_allowed(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text + ("\n[pop3]\nlisten = ['127.0.0.1:1110']\n"
                                   if "already used" in expected else "\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert expected in message
    assert "\n" not in message


def test_storage_chain_as_stage_tables(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[storage]
fs = [{stage = "latency", delay = "20ms"}, {stage = "posix", path = "/srv/mail"}]
"""))
    assert cfg.storage.fs == [{"stage": "latency", "delay": "20ms"},
                              {"stage": "posix", "path": "/srv/mail"}]
    assert 'fs = [{stage = "latency", delay = "20ms"}, {stage = "posix"' in cfg.to_toml()


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[storage\nfs = 1")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_mail_section(tmp_path: Path) -> None:
    from cloudcote.server import storage_settings

    cfg = load_config(write(tmp_path, """
[mail]
autocreate = false
quota_rule = "*:storage=1G:messages=5000"
max_message_size = 10485760
poll_interval = 0.5
"""))
    assert cfg.mail.quota_rule == "*:storage=1G:messages=5000"
    settings = storage_settings(cfg)
    assert settings.autocreate == {}
    assert (settings.quota_bytes, settings.quota_messages) == (1 << 30, 5000)
    assert settings.max_message_size == 10485760 and settings.poll_interval == 0.5
    assert "[mail]" in cfg.to_toml() and 'quota_rule = "*:storage=1G' in cfg.to_toml()
    default = storage_settings(load_config(write(tmp_path, "")))
    assert "Sent" in default.autocreate and default.quota_bytes == 0


@pytest.mark.parametrize("text, expected", [
    ('[mail]\nquota_rule = "lots"', "mail.quota_rule = 'lots' is invalid"),
    ("[mail]\npoll_interval = 0", "mail.poll_interval = 0 is invalid"),
    ("[mail]\nmax_message_size = 10", "mail.max_message_size = 10 is invalid"),
    ("[mail]\nautocreate = 1", "mail.autocreate = 1 is invalid"),
    ("[mail]\nsurprise = 1", "mail.surprise"),
])
def test_mail_section_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert expected in str(err.value)


SQL_QUERY = ("SELECT username AS user, password, home AS userdb_home\n"
             "  FROM users WHERE username = '%u' AND active")


def test_auth_sql_section(tmp_path: Path) -> None:
    from cloudcote.core.auth import SqlPassDb, open_passdb

    cfg = load_config(write(tmp_path, f"""
[auth]
passdb = "sql"
failure_delay = 0.5
failure_delay_max = 4
[auth.sql]
connect = "postgresql://mail:hunter2@db.example.com:5433/mail"
password_query = '''
{SQL_QUERY}'''
pool_size = 3
timeout = 2
default_pass_scheme = "sha512-crypt"
"""))
    auth = cfg.auth
    assert (auth.failure_delay, auth.failure_delay_max) == (0.5, 4.0)
    assert auth.sql is not None and auth.sql.password_query == SQL_QUERY
    assert (auth.sql.pool_size, auth.sql.timeout) == (3, 2.0)
    assert auth.sql.default_pass_scheme == "SHA512-CRYPT"
    assert auth.passdb == "sql" and auth.passdb_spec.startswith("sql:connect=")
    passdb = open_passdb(auth.passdb_spec)  # what the server opens; nothing connects yet
    assert isinstance(passdb, SqlPassDb) and passdb.settings == auth.sql
    text = cfg.to_toml()
    assert "hunter2" not in text
    assert 'connect = "postgresql://mail:***@db.example.com:5433/mail"' in text
    assert "failure_delay = 0.5" in text and "[auth.sql]" in text
    printed = tomllib.loads(text)
    assert printed["auth"]["sql"]["password_query"] == SQL_QUERY
    assert printed["auth"]["sql"]["pool_size"] == 3


def test_auth_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert (cfg.auth.failure_delay, cfg.auth.failure_delay_max) == (2.0, 15.0)
    assert cfg.auth.sql is None and cfg.auth.passdb_spec == cfg.auth.passdb
    text = cfg.to_toml()
    assert "failure_delay = 2.0" in text and "failure_delay_max = 15.0" in text
    assert "[auth.sql]" not in text


_SQL = "[auth]\npassdb = 'sql'\n[auth.sql]\n"
_CONNECT = "connect = 'postgresql://u:hunter2@db/mail'\n"
_QUERY = "password_query = \"SELECT password FROM users WHERE username = '%u'\"\n"


@pytest.mark.parametrize("text, expected", [
    ("[auth]\npassdb = 'sql'", "auth.passdb = 'sql' needs an [auth.sql] table"),
    ("[auth]\npassdb = 'sql:connect=x'", "auth.passdb = 'sql:connect=x' is invalid"),
    ("[auth]\nsql = 3", "auth.sql = 3 is invalid"),
    ("[auth.sql]\n" + _CONNECT + _QUERY, "[auth.sql] is given but auth.passdb = 'passwd-file:"),
    (_SQL + _QUERY, "auth.sql.connect is missing: expected a URL like 'postgresql://"),
    (_SQL + _CONNECT, "auth.sql.password_query is missing"),
    (_SQL + "connect = 'oracle://u:hunter2@db/x'\n" + _QUERY,
     "auth.sql.connect = 'oracle://u:***@db/x' is invalid: expected a URL"),
    (_SQL + "connect = 'mysql://u:hunter2@db:0x1/x'\n" + _QUERY, "the port is not a number"),
    (_SQL + _CONNECT + "password_query = 'SELECT password FROM t WHERE a = %x'",
     "auth.sql.password_query = 'SELECT password FROM t WHERE a = %x' is invalid: unknown "
     "variable '%x'"),
    (_SQL + _CONNECT + "password_query = 'SELECT password FROM t'",
     "must select by the login name"),
    (_SQL + _CONNECT + _QUERY + "pool_size = 0", "auth.sql.pool_size = 0 is invalid"),
    (_SQL + _CONNECT + _QUERY + "pool_size = '5'", "auth.sql.pool_size = '5' is invalid"),
    (_SQL + _CONNECT + _QUERY + "timeout = 0", "auth.sql.timeout = 0 is invalid"),
    (_SQL + _CONNECT + _QUERY + "default_pass_scheme = 'rot13'",
     "auth.sql.default_pass_scheme = 'ROT13' is invalid: unknown password scheme"),
    (_SQL + _CONNECT + _QUERY + "host = 'db'", "unknown key 'auth.sql.host'"),
    ("[auth]\nfailure_delay = -1", "auth.failure_delay = -1 is invalid: expected seconds"),
    ("[auth]\nfailure_delay = '2s'", "auth.failure_delay = '2s' is invalid"),
    ("[auth]\nfailure_delay = true", "auth.failure_delay = True is invalid"),
    ("[auth]\nfailure_delay = 5\nfailure_delay_max = 2",
     "auth.failure_delay_max = 2.0 is invalid: expected at least failure_delay (5)"),
])
def test_auth_section_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert expected in message
    assert "hunter2" not in message and "\n" not in message


def test_imap_limits_section(tmp_path: Path) -> None:
    import dataclasses

    from cloudcote.config import IMAP_LIMITS
    from cloudcote.protocols.imap.limits import ImapLimits
    from cloudcote.server import imap_limits

    assert list(IMAP_LIMITS) == [f.name for f in dataclasses.fields(ImapLimits)]
    default = load_config(write(tmp_path, "[mail]\nmax_message_size = 2000000\n"))
    limits = imap_limits(default)
    assert limits == dataclasses.replace(ImapLimits(), max_append_literal=2000000)
    text = default.to_toml()
    assert "[imap_limits]" in text
    assert "# max_append_literal = 2000000  (unset: follows mail.max_message_size)" in text
    assert tomllib.loads(text)["imap_limits"]["max_line"] == ImapLimits().max_line

    cfg = load_config(write(tmp_path, """
[imap_limits]
max_line = 8192
max_append_literal = 1048576
max_literal = 4096
max_nesting = 8
max_bad_commands = 3
idle_timeout = 120
"""))
    assert imap_limits(cfg) == ImapLimits(max_line=8192, max_append_literal=1048576,
                                          max_literal=4096, max_nesting=8,
                                          max_bad_commands=3, idle_timeout=120.0)
    assert isinstance(imap_limits(cfg).idle_timeout, float)
    text = cfg.to_toml()
    assert "max_append_literal = 1048576" in text and "idle_timeout = 120.0" in text


@pytest.mark.parametrize("text, expected", [
    ("max_line = 0", "imap_limits.max_line = 0 is invalid: expected an integer of bytes, "
                     "1024 to 16777216"),
    ("max_line = 8192.0", "imap_limits.max_line = 8192.0 is invalid"),
    ("max_append_literal = -5", "imap_limits.max_append_literal = -5 is invalid"),
    ("max_literal = '64k'", "imap_limits.max_literal = '64k' is invalid"),
    ("max_nesting = 0", "imap_limits.max_nesting = 0 is invalid"),
    ("max_bad_commands = true", "imap_limits.max_bad_commands = True is invalid"),
    ("idle_timeout = 0", "imap_limits.idle_timeout = 0 is invalid: expected a number of "
                         "seconds"),
    ("max_lines = 5", "unknown key 'imap_limits.max_lines'"),
])
def test_imap_limits_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[imap_limits]\n" + text + "\n"))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_effective_config_is_valid_toml_and_loads_again(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
data_dir = "data"
[mail]
quota_rule = "*:storage=1G"
[auth]
passdb = "static:password=pw"
failure_delay = 1
[imap_limits]
idle_timeout = 1800
"""))
    again_path = tmp_path / "again.toml"
    again_path.write_text(cfg.to_toml())
    again = load_config(again_path)
    assert again.to_toml().splitlines()[1:] == cfg.to_toml().splitlines()[1:]
