"""The one configuration file: TOML, validated completely before anything starts.

Every key is declared here with its type, default and allowed values; an unknown key or
a bad value raises :class:`ConfigError` whose message names the file, the key, the value
and what is allowed.  Relative paths in a config file are taken relative to the file's
own directory; without a file (the embedded default) relative to the working directory.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cloudcote.core.auth.errors import SqlSettingError
from cloudcote.core.auth.penalty import FAILURE_DELAY, FAILURE_DELAY_MAX
from cloudcote.core.auth.sql import SqlPassDb, SqlSettings, redact_dsn
from cloudcote.core.mail.prefetch import DEFAULT_COUNT as DEFAULT_PREFETCH_COUNT
from cloudcote.core.quota import QUOTA_RULE_EXAMPLE, is_quota_rule
from cloudcote.libfs.api import FsInvalidSpec
from cloudcote.libfs.chain import parse_chain
from cloudcote.protocols.imap.limits import ImapLimits
from cloudcote.protocols.lmtp.settings import LmtpSettings
from cloudcote.protocols.pop3.settings import Pop3Settings

LOG_LEVELS = ("debug", "info", "warning", "error")
LAYOUTS = ("sdbox", "mdbox")
LISTENER_SECTIONS = ("imap", "imaps", "pop3", "pop3s", "lmtp")
#: Unprivileged ports of the embedded default; the implicit-TLS listeners are off there.
DEFAULT_LISTEN: dict[str, list[str]] = {
    "imap": ["127.0.0.1:1143"],
    "imaps": [],
    "pop3": ["127.0.0.1:1110"],
    "pop3s": [],
    "lmtp": ["127.0.0.1:1024"],
}


class ConfigError(Exception):
    """A configuration that must not start: the message is one line for the operator."""


@dataclass(frozen=True)
class Listen:
    """One listening address: TCP ``host:port`` or (LMTP only) a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.path is not None:
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return self.host == "localhost"


@dataclass
class StorageConfig:
    #: A chain string, or a list of stage tables (see cloudcote.libfs.chain).
    fs: str | list[dict[str, Any]]
    layout: str = "sdbox"
    #: Reads kept in flight ahead of a FETCH, SEARCH or pipelined RETR (docs/storage.md).
    prefetch_count: int = DEFAULT_PREFETCH_COUNT
    #: Seconds between background purges of the users a process serves (0: never), and
    #: the store requests one purge may spend per user (docs/storage.md, "Purge").
    purge_interval: float = 86400.0
    purge_budget: int = 1000


@dataclass
class MailConfig:
    #: Create INBOX's siblings Drafts, Sent, Trash, Junk and Archive (with their
    #: SPECIAL-USE attributes) at a user's first login.
    autocreate: bool = True
    #: Default quota in Dovecot's quota_rule form ("*:storage=1G:messages=100000");
    #: "" is unlimited.  A userdb extra field quota_rule overrides it per user.
    quota_rule: str = ""
    max_message_size: int = 50 * 1024 * 1024
    #: Seconds between looks at a mailbox's log for other processes' changes (IDLE, NOOP).
    poll_interval: float = 2.0
    #: The same where the store has a change feed (posix, PostgreSQL): a safety net only.
    feed_poll_interval: float = 30.0


@dataclass
class AuthConfig:
    #: ``passwd-file:PATH``, ``static:password=SECRET`` or ``sql`` (settings in ``sql``).
    passdb: str
    #: Seconds before the first failed login is answered; doubled for each further failure
    #: from the same client, up to ``failure_delay_max`` (Dovecot's auth_penalty).
    failure_delay: float = FAILURE_DELAY
    failure_delay_max: float = FAILURE_DELAY_MAX
    #: ``[auth.sql]``: the SQL passdb, when ``passdb = "sql"``.
    sql: SqlSettings | None = None

    @property
    def passdb_spec(self) -> str:
        """The spec ``open_passdb`` takes (``sql:...`` built from ``[auth.sql]``)."""
        if self.passdb == "sql" and self.sql is not None:
            return self.sql.spec()
        return self.passdb


#: ``[imap_limits]`` keys -> (kind, lowest, highest, what).  Every field of ImapLimits.
IMAP_LIMITS: dict[str, tuple[type, float, float, str]] = {
    "max_line": (int, 1024, 16 * 1024 ** 2, "bytes"),
    "max_append_literal": (int, 1024, 2 * 1024 ** 3, "bytes"),
    "max_literal": (int, 1024, 2 * 1024 ** 3, "bytes"),
    "max_nesting": (int, 1, 1000, "levels"),
    "max_bad_commands": (int, 1, 100_000, "commands"),
    "idle_timeout": (float, 1, 7 * 24 * 3600, "seconds"),
}


#: Keys of ``[lmtp]`` and ``[pop3]`` besides ``listen`` -> (kind, check, what is allowed).
PROTOCOL_KEYS: dict[str, dict[str, tuple[type, Any, str]]] = {
    "lmtp": {
        "recipient_delimiter": (str, lambda v: len(v) <= 8 and "@" not in v,
                                "expected up to 8 characters, not '@' (\"\" for none)"),
        "save_to_detail_mailbox": (bool, None, "expected true or false"),
        "add_received_header": (bool, None, "expected true or false"),
        "max_recipients": (int, lambda v: 1 <= v <= 100_000, "expected 1 to 100000"),
        "max_message_size": (int, lambda v: 0 <= v <= 2 * 1024 ** 3,
                             "expected bytes, 0 (follows mail.max_message_size) to 2 GiB"),
        "idle_timeout": (float, lambda v: 1 <= v <= 86400, "expected 1 to 86400 seconds"),
        "max_bad_commands": (int, lambda v: 1 <= v <= 100_000, "expected 1 to 100000"),
    },
    "pop3": {
        "uidl_format": (str, lambda v: Pop3Settings.check_uidl_format(v) is None,
                        "expected Dovecot's pop3_uidl_format: %v %u %g %m with optional "
                        "width and x/X, e.g. '%08Xu%08Xv'"),
        "idle_timeout": (float, lambda v: 1 <= v <= 86400, "expected 1 to 86400 seconds"),
        "max_bad_commands": (int, lambda v: 1 <= v <= 100_000, "expected 1 to 100000"),
    },
}


def _protocol_keys(sec: _Section, name: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, (kind, check, allowed) in PROTOCOL_KEYS.get(name, {}).items():
        value = sec.get(key, (int, float) if kind is float else kind, None, allowed)
        if value is None:
            continue
        if check is not None and not check(value):
            raise sec.error(key, value, allowed)
        values[key] = kind(value)
    return values


@dataclass
class ImapLimitsConfig:
    """``[imap_limits]``: the bounds of an IMAP session (cloudcote.protocols.imap.limits)."""

    max_line: int = ImapLimits.max_line
    #: None: ``[mail] max_message_size``.
    max_append_literal: int | None = None
    max_literal: int = ImapLimits.max_literal
    max_nesting: int = ImapLimits.max_nesting
    max_bad_commands: int = ImapLimits.max_bad_commands
    idle_timeout: float = ImapLimits.idle_timeout

    def limits(self, max_message_size: int) -> ImapLimits:
        """The session's ImapLimits; APPEND follows ``max_message_size`` unless set."""
        return ImapLimits(
            max_line=self.max_line,
            max_append_literal=self.max_append_literal or max_message_size,
            max_literal=self.max_literal, max_nesting=self.max_nesting,
            max_bad_commands=self.max_bad_commands, idle_timeout=self.idle_timeout)


@dataclass
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None
    #: Refuse LOGIN/USER/AUTH PLAIN before TLS, except on loopback connections (as Dovecot).
    disable_plaintext_auth: bool = True


@dataclass
class ServerConfig:
    #: Worker processes serving the listeners; 0 is one per core.  With 1 the server is a
    #: single process (no master).
    workers: int = 0
    #: Connections the server holds at most, all workers together (each takes its share);
    #: 0 is as many as the file descriptor limit allows.  Beyond: a BYE-style refusal.
    max_connections: int = 0
    #: The listen backlog of every listening socket: connections the kernel holds
    #: established until a process accepts them; 0 is the kernel's net.core.somaxconn.
    listen_backlog: int = 0

    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    def backlog(self) -> int:
        """The backlog to listen with."""
        return self.listen_backlog or kernel_somaxconn()


#: The backlog when the kernel's somaxconn cannot be read (Linux's default since 5.4).
DEFAULT_BACKLOG = 4096


def kernel_somaxconn() -> int:
    """The kernel's cap on a listen backlog (Linux's net.core.somaxconn), or
    ``DEFAULT_BACKLOG`` where it cannot be read."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return DEFAULT_BACKLOG
    return value if value > 0 else DEFAULT_BACKLOG


@dataclass
class LogConfig:
    level: str = "info"
    path: Path | None = None


@dataclass
class Config:
    data_dir: Path
    storage: StorageConfig
    auth: AuthConfig
    tls: TlsConfig
    log: LogConfig
    listen: dict[str, list[Listen]] = field(default_factory=dict)
    source: Path | None = None
    mail: MailConfig = field(default_factory=MailConfig)
    imap_limits: ImapLimitsConfig = field(default_factory=ImapLimitsConfig)
    #: ``[lmtp]`` and ``[pop3]`` keys besides ``listen`` (``[pop3]``'s apply to pop3s too).
    lmtp: LmtpSettings = field(default_factory=LmtpSettings)
    pop3: Pop3Settings = field(default_factory=Pop3Settings)
    server: ServerConfig = field(default_factory=ServerConfig)

    def to_toml(self) -> str:
        """The effective configuration as TOML, like ``doveconf -n``."""
        lines = [f"# cloudcote effective configuration (from {self.source or 'embedded default'})"]
        lines.append(f"data_dir = {_toml_value(str(self.data_dir))}")
        lines.append("")
        lines.append("[server]")
        lines.append(f"workers = {self.server.workers}"
                     + ("  # one per core" if not self.server.workers else ""))
        lines.append(f"max_connections = {self.server.max_connections}"
                     + ("  # as file descriptors allow" if not self.server.max_connections
                        else ""))
        lines.append(f"listen_backlog = {self.server.listen_backlog}"
                     + (f"  # the kernel's somaxconn ({kernel_somaxconn()})"
                        if not self.server.listen_backlog else ""))
        lines.append("")
        lines.append("[storage]")
        if isinstance(self.storage.fs, str):
            lines.append(f"fs = {_toml_value(self.storage.fs)}")
        else:
            stages = ", ".join(
                "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in stage.items()) + "}"
                for stage in self.storage.fs)
            lines.append(f"fs = [{stages}]")
        lines.append(f"layout = {_toml_value(self.storage.layout)}")
        lines.append(f"prefetch_count = {self.storage.prefetch_count}")
        lines.append(f"purge_interval = {self.storage.purge_interval}")
        lines.append(f"purge_budget = {self.storage.purge_budget}")
        lines.append("")
        lines.append("[mail]")
        lines.append(f"autocreate = {_toml_value(self.mail.autocreate)}")
        lines.append(f"quota_rule = {_toml_value(self.mail.quota_rule)}")
        lines.append(f"max_message_size = {self.mail.max_message_size}")
        lines.append(f"poll_interval = {self.mail.poll_interval}")
        lines.append(f"feed_poll_interval = {self.mail.feed_poll_interval}")
        lines.append("")
        lines.append("[auth]")
        lines.append(f"passdb = {_toml_value(self.auth.passdb)}")
        lines.append(f"failure_delay = {_toml_value(self.auth.failure_delay)}")
        lines.append(f"failure_delay_max = {_toml_value(self.auth.failure_delay_max)}")
        if self.auth.sql is not None:
            sql = self.auth.sql
            lines.append("")
            lines.append("[auth.sql]")
            if redact_dsn(sql.connect) != sql.connect:
                lines.append("# the password in connect is hidden")
            lines.append(f"connect = {_toml_value(redact_dsn(sql.connect))}")
            lines.append(f"password_query = {_toml_text(sql.password_query)}")
            lines.append(f"pool_size = {_toml_value(sql.pool_size)}")
            lines.append(f"timeout = {_toml_value(sql.timeout)}")
            lines.append(f"default_pass_scheme = {_toml_value(sql.default_pass_scheme)}")
        for section in LISTENER_SECTIONS:
            lines.append("")
            lines.append(f"[{section}]")
            lines.append(f"listen = {_toml_value([str(x) for x in self.listen[section]])}")
            extra = {"lmtp": self.lmtp, "pop3": self.pop3}.get(section)
            for key in PROTOCOL_KEYS.get(section, {}):
                lines.append(f"{key} = {_toml_value(getattr(extra, key))}")
        lines.append("")
        lines.append("[imap_limits]")
        limits = self.imap_limits
        for key in IMAP_LIMITS:
            value = getattr(limits, key)
            if value is None:
                lines.append(f"# {key} = {self.mail.max_message_size}  "
                             "(unset: follows mail.max_message_size)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        lines.append("[tls]")
        if self.tls.cert is not None:
            lines.append(f"cert = {_toml_value(str(self.tls.cert))}")
        if self.tls.key is not None:
            lines.append(f"key = {_toml_value(str(self.tls.key))}")
        lines.append(f"disable_plaintext_auth = {_toml_value(self.tls.disable_plaintext_auth)}")
        lines.append("")
        lines.append("[log]")
        lines.append(f"level = {_toml_value(self.log.level)}")
        if self.log.path is not None:
            lines.append(f"path = {_toml_value(str(self.log.path))}")
        return "\n".join(lines) + "\n"


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127
                                            else c) for c in str(value))
    return f'"{text}"'


def _toml_text(text: str) -> str:
    """A string, as a multi-line literal (``'''...'''``) if it has line breaks and can be one."""
    if "\n" not in text or "'''" in text or any(
            (ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in text):
        return _toml_value(text)
    return "'''\n" + text + "'''"  # the line break after the opening quotes is not part


class _Section:
    """Reads one table of the file, remembering which keys were used."""

    def __init__(self, origin: str, name: str, table: Any) -> None:
        self.origin = origin
        self.name = name
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table, not {table!r}")
        self.table = table
        self.used: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def error(self, key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {self.key(key)} = {value!r} is invalid: {allowed}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, allowed: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        # bool is an int in Python; never accept it where a number is meant, or vice versa.
        if isinstance(value, bool) and kind is not bool:
            raise self.error(key, value, allowed)
        if not isinstance(value, kind):
            raise self.error(key, value, allowed)
        return value

    def finish(self, extra_allowed: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(self.table) - self.used - set(extra_allowed))
        if unknown:
            known = ", ".join(sorted(self.used | set(extra_allowed)))
            raise ConfigError(
                f"{self.origin}: unknown key {self.key(unknown[0])!r}; "
                f"known keys{' in [' + self.name + ']' if self.name else ''}: {known}"
            )


def parse_listen(origin: str, section: str, value: str) -> Listen:
    """``host:port``, ``[v6]:port``, or for LMTP a unix socket path (``/run/lmtp``,
    ``unix:/run/lmtp`` or a relative path without ``:``)."""
    key = f"{section}.listen"
    if section == "lmtp" and (value.startswith("/") or value.startswith("unix:")
                              or ":" not in value):
        path = value.removeprefix("unix:")
        if not path:
            raise ConfigError(f"{origin}: {key} = {value!r} is invalid: empty socket path")
        return Listen(path=path)
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
    allowed = "expected 'host:port' with port 1-65535" + (
        " or a unix socket path" if section == "lmtp" else ""
    )
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{origin}: {key} = {value!r} is invalid: {allowed}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"{origin}: {key} = {value!r} is invalid: {allowed}")
    return Listen(host=host, port=port)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate ``path``, or build the embedded default when ``path`` is None."""
    if path is None:
        return build_config({}, origin="embedded default", base=Path.cwd(), source=None)
    file = Path(path)
    origin = str(file)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: malformed TOML: {exc}") from exc
    return build_config(data, origin=origin, base=file.resolve().parent, source=file.resolve())


def build_config(data: dict[str, Any], *, origin: str, base: Path, source: Path | None) -> Config:
    top = _Section(origin, "", data)

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    data_dir_text = top.get("data_dir", str, "./cloudcote-data", "expected a directory path")
    if not data_dir_text:
        raise top.error("data_dir", data_dir_text, "expected a non-empty directory path")
    data_dir = resolve(data_dir_text).resolve()

    st = _Section(origin, "storage", top.get("storage", dict, {}, "expected a table"))
    fs = st.get("fs", (str, list), f"posix:{data_dir / 'mail'}",
                "expected a libfs chain string or a list of stage tables")
    try:
        parse_chain(fs)
    except FsInvalidSpec as exc:
        raise st.error("fs", fs, str(exc)) from None
    layout = st.get("layout", str, "sdbox", f"expected one of {', '.join(LAYOUTS)}")
    if layout not in LAYOUTS:
        raise st.error("layout", layout, f"expected one of {', '.join(LAYOUTS)}")
    prefetch = st.get("prefetch_count", int, DEFAULT_PREFETCH_COUNT, "expected an integer 1-4096")
    if not 1 <= prefetch <= 4096:
        raise st.error("prefetch_count", prefetch, "expected an integer 1-4096")
    purge_every = st.get("purge_interval", (int, float), 86400.0,
                         "expected seconds: 0 (off) or 60 and more")
    if not (purge_every == 0 or purge_every >= 60):
        raise st.error("purge_interval", purge_every, "expected seconds: 0 (off) or 60 and more")
    purge_budget = st.get("purge_budget", int, 1000, "expected an integer 10 or more")
    if purge_budget < 10:
        raise st.error("purge_budget", purge_budget, "expected an integer 10 or more")
    st.finish()
    storage = StorageConfig(fs=fs, layout=layout, prefetch_count=prefetch,
                            purge_interval=float(purge_every), purge_budget=purge_budget)

    ml = _Section(origin, "mail", top.get("mail", dict, {}, "expected a table"))
    autocreate = ml.get("autocreate", bool, True, "expected true or false")
    quota_rule = ml.get("quota_rule", str, "", f"expected a quota rule like {QUOTA_RULE_EXAMPLE!r}")
    if quota_rule and not is_quota_rule(quota_rule):
        raise ml.error("quota_rule", quota_rule,
                       f"expected a quota rule like {QUOTA_RULE_EXAMPLE!r}")
    max_size = ml.get("max_message_size", int, 50 * 1024 * 1024,
                      "expected a size in bytes, 1 KiB to 2 GiB")
    if not 1024 <= max_size <= 2 * 1024 ** 3:
        raise ml.error("max_message_size", max_size, "expected a size in bytes, 1 KiB to 2 GiB")
    poll = ml.get("poll_interval", (int, float), 2.0, "expected seconds, 0.05 to 600")
    if isinstance(poll, bool) or not 0.05 <= poll <= 600:
        raise ml.error("poll_interval", poll, "expected seconds, 0.05 to 600")
    feed_poll = ml.get("feed_poll_interval", (int, float), 30.0,
                       "expected seconds, 0.05 to 3600")
    if isinstance(feed_poll, bool) or not 0.05 <= feed_poll <= 3600:
        raise ml.error("feed_poll_interval", feed_poll, "expected seconds, 0.05 to 3600")
    ml.finish()
    mail = MailConfig(autocreate=autocreate, quota_rule=quota_rule,
                      max_message_size=max_size, poll_interval=float(poll),
                      feed_poll_interval=float(feed_poll))

    auth = _auth_section(origin, top, resolve, data_dir)

    listen: dict[str, list[Listen]] = {}
    protocol_values: dict[str, dict[str, Any]] = {}
    for name in LISTENER_SECTIONS:
        sec = _Section(origin, name, top.get(name, dict, {}, "expected a table"))
        values = sec.get("listen", list, DEFAULT_LISTEN[name], "expected a list of 'host:port'")
        parsed = []
        for v in values:
            if not isinstance(v, str):
                raise sec.error("listen", v, "expected a list of 'host:port' strings")
            item = parse_listen(origin, name, v)
            if item.path is not None:
                item = Listen(path=str(resolve(item.path)))
            parsed.append(item)
        protocol_values[name] = _protocol_keys(sec, name)
        sec.finish()
        listen[name] = parsed
    seen: dict[str, str] = {}
    for name, items in listen.items():
        for item in items:
            if str(item) in seen:
                raise ConfigError(
                    f"{origin}: {name}.listen = {str(item)!r} is invalid: "
                    f"already used by {seen[str(item)]}.listen"
                )
            seen[str(item)] = name

    imap_limits = _imap_limits_section(origin, top)

    tl = _Section(origin, "tls", top.get("tls", dict, {}, "expected a table"))
    cert = tl.get("cert", str, None, "expected a PEM certificate file path")
    key = tl.get("key", str, None, "expected a PEM private key file path")
    dpa = tl.get("disable_plaintext_auth", bool, True, "expected true or false")
    tl.finish()
    if (cert is None) != (key is None):
        raise ConfigError(f"{origin}: tls.cert and tls.key must be given together")
    tls = TlsConfig(
        cert=resolve(cert) if cert else None, key=resolve(key) if key else None,
        disable_plaintext_auth=dpa,
    )
    for section in ("imaps", "pop3s"):
        if listen[section] and tls.cert is None:
            raise ConfigError(f"{origin}: [{section}] listen needs tls.cert and tls.key")
    for p in (tls.cert, tls.key):
        if p is not None and not p.is_file():
            raise ConfigError(f"{origin}: tls file {str(p)!r} does not exist or is not a file")

    sv = _Section(origin, "server", top.get("server", dict, {}, "expected a table"))
    workers = sv.get("workers", int, 0, "expected 0 (one per core) or 1-256")
    if isinstance(workers, bool) or not 0 <= workers <= 256:
        raise sv.error("workers", workers, "expected 0 (one per core) or 1-256")
    max_conn = sv.get("max_connections", int, 0,
                      "expected 0 (as descriptors allow) or 1-10000000")
    if isinstance(max_conn, bool) or not 0 <= max_conn <= 10_000_000:
        raise sv.error("max_connections", max_conn,
                       "expected 0 (as descriptors allow) or 1-10000000")
    backlog_allowed = "expected 0 (the kernel's net.core.somaxconn) or 1-65535"
    backlog = sv.get("listen_backlog", int, 0, backlog_allowed)
    if not 0 <= backlog <= 65535:
        raise sv.error("listen_backlog", backlog, backlog_allowed)
    sv.finish()
    server = ServerConfig(workers=workers, max_connections=max_conn, listen_backlog=backlog)

    lg = _Section(origin, "log", top.get("log", dict, {}, "expected a table"))
    level = lg.get("level", str, "info", f"expected one of {', '.join(LOG_LEVELS)}")
    if level.lower() not in LOG_LEVELS:
        raise lg.error("level", level, f"expected one of {', '.join(LOG_LEVELS)}")
    log_path = lg.get("path", str, None, "expected a log file path")
    lg.finish()
    log = LogConfig(level=level.lower(), path=resolve(log_path) if log_path else None)

    top.finish()
    return Config(
        data_dir=data_dir, storage=storage, auth=auth, tls=tls, log=log, listen=listen,
        source=source, mail=mail, imap_limits=imap_limits,
        lmtp=LmtpSettings(**protocol_values["lmtp"]),
        pop3=Pop3Settings(**protocol_values["pop3"]),
        server=server,
    )


_PASSDB_ALLOWED = ("expected 'passwd-file:PATH', 'static:password=SECRET' or 'sql' (with an "
                   "[auth.sql] table)")
_DSN_ALLOWED = ("expected a URL like 'postgresql://user:password@host:port/database' or "
                "'mysql://user:password@host:port/database'")


def _seconds(sec: _Section, key: str, default: float, low: float, high: float) -> float:
    allowed = f"expected seconds, {low:g} to {high:g}"
    value = sec.get(key, (int, float), default, allowed)
    if not low <= value <= high:
        raise sec.error(key, value, allowed)
    return float(value)


def _auth_section(origin: str, top: _Section, resolve: Callable[[str], Path],
                  data_dir: Path) -> AuthConfig:
    au = _Section(origin, "auth", top.get("auth", dict, {}, "expected a table"))
    passdb = au.get("passdb", str, f"passwd-file:{data_dir / 'passwd'}", _PASSDB_ALLOWED)
    kind, sep, arg = passdb.partition(":")
    if passdb != "sql" and (kind not in ("passwd-file", "static") or not sep or not arg):
        raise au.error("passdb", passdb, _PASSDB_ALLOWED)
    if kind == "passwd-file":
        passdb = f"passwd-file:{resolve(arg)}"
    delay = _seconds(au, "failure_delay", FAILURE_DELAY, 0, 60)
    delay_max = _seconds(au, "failure_delay_max", FAILURE_DELAY_MAX, 0, 3600)
    if delay_max < delay:
        raise au.error("failure_delay_max", delay_max,
                       f"expected at least failure_delay ({delay:g})")
    table = au.get("sql", dict, None, "expected a table [auth.sql]")
    au.finish()
    sql = _sql_section(origin, table) if table is not None else None
    if passdb == "sql" and sql is None:
        raise ConfigError(f"{origin}: auth.passdb = 'sql' needs an [auth.sql] table with "
                          "connect and password_query")
    if sql is not None and passdb != "sql":
        raise ConfigError(f"{origin}: [auth.sql] is given but auth.passdb = {passdb!r}; set "
                          "passdb = \"sql\" to use it")
    return AuthConfig(passdb=passdb, failure_delay=delay, failure_delay_max=delay_max, sql=sql)


def _sql_section(origin: str, table: dict[str, Any]) -> SqlSettings:
    sq = _Section(origin, "auth.sql", table)
    connect = sq.get("connect", str, "", _DSN_ALLOWED)
    query = sq.get("password_query", str, "", "expected a SELECT returning user, password")
    pool_size = sq.get("pool_size", int, SqlSettings.pool_size,
                       "expected a number of connections, 1-1000")
    timeout = sq.get("timeout", (int, float), SqlSettings.timeout,
                     "expected seconds, more than 0 and at most 3600")
    scheme = sq.get("default_pass_scheme", str, SqlSettings.default_pass_scheme,
                    "expected a password scheme name such as CRYPT or SHA512-CRYPT")
    sq.finish()
    for key, value in (("connect", connect), ("password_query", query)):
        if not value:
            raise ConfigError(f"{origin}: auth.sql.{key} is missing: "
                              + (_DSN_ALLOWED if key == "connect" else
                                 "expected a query such as \"SELECT username AS user, password "
                                 "FROM users WHERE username = '%u'\""))
    settings = SqlSettings(connect=connect, password_query=query, pool_size=pool_size,
                           timeout=timeout, default_pass_scheme=scheme.upper())
    try:
        settings.validate()
    except SqlSettingError as exc:
        value = getattr(settings, exc.key)
        raise sq.error(exc.key, redact_dsn(value) if exc.key == "connect" else value,
                       exc.problem) from None
    settings = replace(settings, timeout=float(timeout))
    try:
        SqlPassDb(settings)  # the client library is installed (nothing connects yet)
    except ValueError as exc:
        raise ConfigError(f"{origin}: auth.sql: {exc}") from None
    return settings


def _imap_limits_section(origin: str, top: _Section) -> ImapLimitsConfig:
    li = _Section(origin, "imap_limits", top.get("imap_limits", dict, {}, "expected a table"))
    values: dict[str, Any] = {}
    for key, (kind, low, high, unit) in IMAP_LIMITS.items():
        allowed = f"expected {'an integer' if kind is int else 'a number'} of {unit}, " \
                  f"{int(low)} to {int(high)}"
        value = li.get(key, (int, float) if kind is float else int, None, allowed)
        if value is None:
            continue
        if not low <= value <= high:
            raise li.error(key, value, allowed)
        values[key] = kind(value)
    li.finish()
    return ImapLimitsConfig(**values)
