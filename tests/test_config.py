"""Configuration: defaults, validation, and one clear line for every mistake."""

from __future__ import annotations

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
    assert cfg.storage.layout == "sdbox" and cfg.storage.prefetch_count == 16
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
prefetch_count = 64
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
    assert cfg.storage.layout == "mdbox" and cfg.storage.prefetch_count == 64
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
