"""The SQL passdb (cloudcote.core.auth.sql) against the real PostgreSQL and MariaDB servers.

Each test creates its own users table (a fresh name) in the test database and drops it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from cloudcote.core.auth import (
    AuthConfigError,
    PassDbUnavailable,
    SqlPassDb,
    SqlSettingError,
    SqlSettings,
    UserEntry,
    hash_password,
    open_passdb,
    user_fields,
)
from cloudcote.core.auth import sql as sql_module
from cloudcote.core.auth.sql import compile_query

from .conftest import require_server, service

DIALECTS = ["postgresql", "mysql"]
QUERY = ("SELECT username AS user, password, home AS userdb_home, "
         "quota_rule AS userdb_quota_rule, mail AS userdb_mail, nologin, allow_nets "
         "FROM {table} WHERE username = '%u'")
INJECTIONS = [
    "' OR '1'='1",
    "alice' OR '1'='1",
    "alice' --",
    "alice'; DROP TABLE {table}; --",
    "alice\\' OR 1=1 -- ",
    "alice\\",
    '" OR ""="',
    "%u",
    "alice%' OR username LIKE '%",
    "alice\0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Db:
    """A users table on one server, reached with the client library directly."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.dsn = service("CLOUDCOTE_PG_DSN" if dialect == "postgresql"
                           else "CLOUDCOTE_MYSQL_DSN")
        self.table = f"users_{uuid.uuid4().hex[:12]}"

    def query(self, text: str = QUERY) -> str:
        return text.format(table=self.table)

    def settings(self, query: str | None = None, **kw: Any) -> SqlSettings:
        return SqlSettings(connect=self.dsn, password_query=query or self.query(), **kw)

    async def execute(self, *statements: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        if self.dialect == "postgresql":
            import asyncpg

            conn = await asyncpg.connect(self.dsn)
            try:
                for statement in statements:
                    if rows is not None and "$1" in statement:
                        await conn.executemany(statement, rows)
                    else:
                        await conn.execute(statement)
            finally:
                await conn.close()
            return
        import aiomysql

        parts = urlsplit(self.dsn)
        conn = await aiomysql.connect(host=parts.hostname, port=parts.port,
                                      user=unquote(parts.username or ""),
                                      password=unquote(parts.password or ""),
                                      db=parts.path.lstrip("/"), autocommit=True,
                                      charset="utf8mb4")
        try:
            async with conn.cursor() as cur:
                for statement in statements:
                    if rows is not None and "$1" in statement:
                        text = statement
                        for i in range(9, 0, -1):
                            text = text.replace(f"${i}", "%s")
                        await cur.executemany(text, rows)
                    else:
                        await cur.execute(statement)
        finally:
            conn.close()

    async def create(self, users: list[tuple[Any, ...]]) -> None:
        """Columns: username, password, home, quota_rule, mail, nologin, allow_nets."""
        await self.execute(
            f"CREATE TABLE {self.table} (username VARCHAR(255) NOT NULL, "
            "password VARCHAR(255), home VARCHAR(255), quota_rule VARCHAR(255), "
            "mail VARCHAR(255), nologin VARCHAR(8), allow_nets VARCHAR(255))",
            f"INSERT INTO {self.table} (username, password, home, quota_rule, mail, nologin, "
            "allow_nets) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            rows=users)

    async def drop(self) -> None:
        with warnings.catch_warnings():  # MariaDB warns when the test made no table
            warnings.simplefilter("ignore")
            await self.execute(f"DROP TABLE IF EXISTS {self.table}")


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest) -> Iterator[Db]:
    database = Db(request.param)
    require_server("PostgreSQL" if database.dialect == "postgresql" else "MariaDB",
                   database.dsn)
    yield database
    asyncio.run(database.drop())


def run(test: Callable[[], Awaitable[None]]) -> None:
    """One event loop per test: the passdb's pool belongs to the loop of its first login."""
    asyncio.run(test())  # type: ignore[arg-type]


@asynccontextmanager
async def opened(settings: SqlSettings) -> AsyncIterator[SqlPassDb]:
    passdb = SqlPassDb(settings)
    try:
        yield passdb
    finally:
        await passdb.close()


def _users() -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    passwords = {"plain": "plain pw", "sha": "sha-pw", "blf": "blf-pw", "argon": "argon-pw",
                 "bare": "bare-pw", "alice@example.com": "alice-pw"}
    users: list[tuple[Any, ...]] = [
        ("plain", hash_password(passwords["plain"], "PLAIN"), None, None, None, None, None),
        ("sha", hash_password(passwords["sha"], "SHA512-CRYPT", rounds=1000), "/home/sha",
         "*:storage=1G:messages=500", None, None, None),
        ("blf", hash_password(passwords["blf"], "BLF-CRYPT", rounds=4), None, None, None, None,
         None),
        ("argon", hash_password(passwords["argon"], "ARGON2ID", rounds=1), None, None, None,
         None, None),
        # No {SCHEME}: the default_pass_scheme (CRYPT) reads the $6$ value.
        ("bare", hash_password(passwords["bare"], "SHA512-CRYPT",
                               rounds=1000).removeprefix("{SHA512-CRYPT}"),
         None, None, None, None, None),
        ("alice@example.com", "{PLAIN}alice-pw", "/home/alice", None, "posix:~/mail", None,
         None),
        ("nopass", None, None, None, None, None, None),
        ("blocked", "{PLAIN}blocked-pw", None, None, None, "y", None),
        ("netted", "{PLAIN}netted-pw", None, None, None, None, "192.0.2.0/24"),
        ("twice", "{PLAIN}a", None, None, None, None, None),
        ("twice", "{PLAIN}b", None, None, None, None, None),
    ]
    return users, passwords


def test_schemes_unknown_user_wrong_password_and_extra_fields(db: Db) -> None:
    users, passwords = _users()

    async def test() -> None:
        await db.create(users)
        async with opened(db.settings()) as passdb:
            assert passdb._pool is None  # nothing connects before the first login
            for user in ("plain", "sha", "blf", "argon", "bare"):
                entry = await passdb.authenticate(user, passwords[user])
                assert entry is not None and entry.user == user, user
                assert await passdb.authenticate(user, passwords[user] + "x") is None
                assert await passdb.authenticate(user, "") is None
            sha = await passdb.authenticate("sha", passwords["sha"])
            assert sha is not None
            assert sha.password.startswith("{SHA512-CRYPT}$6$")
            assert sha.extra == {"userdb_home": "/home/sha",
                                 "userdb_quota_rule": "*:storage=1G:messages=500"}
            assert sha.home is None and sha.uid is None
            bare = await passdb.authenticate("bare", passwords["bare"])
            assert bare is not None and bare.password.startswith("{CRYPT}$6$")
            alice = await passdb.authenticate("alice@example.com", "alice-pw")
            assert alice is not None and alice.extra["userdb_mail"] == "posix:~/mail"
            fields = user_fields(alice)
            assert fields.home == "/home/alice" and fields.mail == "posix:/home/alice/mail"
            assert user_fields(sha).quota is not None
            assert (user_fields(sha).quota.bytes, user_fields(sha).quota.messages) \
                == (1 << 30, 500)  # type: ignore[union-attr]
            assert await passdb.authenticate("nobody", "x") is None
            assert await passdb.authenticate("", "x") is None
            assert await passdb.authenticate("nopass", "") is None  # NULL password: no login
            assert await passdb.authenticate("blocked", "blocked-pw") is None  # nologin
            assert await passdb.authenticate("netted", "netted-pw",
                                             remote_ip="192.0.2.9") is not None
            assert await passdb.authenticate("netted", "netted-pw",
                                             remote_ip="198.51.100.1") is None
            with pytest.raises(AuthConfigError, match="exists 2 times"):
                await passdb.authenticate("twice", "a")
            assert "cloudcote:" not in repr(passdb) and "cloudcote@" in repr(passdb)

    run(test)


def test_unknown_user_costs_a_verification(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = sql_module.verify_password

    def spy(stored: str, password: str, **kw: str) -> bool:
        calls.append(stored)
        return real(stored, password, **kw)

    monkeypatch.setattr(sql_module, "verify_password", spy)

    async def test() -> None:
        await db.create([])
        async with opened(db.settings()) as passdb:
            assert await passdb.authenticate("nobody", "pw") is None
        assert len(calls) == 1 and calls[0].startswith("{SHA512-CRYPT}$6$")

    run(test)


def test_injection_attempts_fail_cleanly(db: Db) -> None:
    users, passwords = _users()

    async def test() -> None:
        await db.create(users)
        async with opened(db.settings()) as passdb:
            text = passdb.query.text
            assert "'%u'" not in text and ("$1" in text or "%s" in text)
            for attempt in INJECTIONS:
                name = attempt.format(table=db.table)
                for password in ("x", "alice-pw", passwords["plain"], "' OR '1'='1"):
                    assert await passdb.authenticate(name, password) is None, (name, password)
            assert passdb.query.text == text  # the SQL text never sees a user name
            # The table is still there, with every user.
            assert await passdb.authenticate("plain", passwords["plain"]) is not None
            assert await passdb.authenticate("alice@example.com", "alice-pw") is not None

    run(test)


def test_variables_are_parameters(db: Db) -> None:
    """%n, %d, %Lu, %r and a variable inside a longer literal, all bound."""

    async def test() -> None:
        await db.create([("Bob@Example.org", "{PLAIN}bob-pw", None, None, None, None,
                          "127.0.0.1")])
        queries = [
            "SELECT username AS user, password FROM {table} "
            "WHERE username = concat('%n', '@', '%d')"
            if db.dialect == "postgresql" else
            "SELECT username AS user, password FROM {table} "
            "WHERE username = CONCAT('%n', '@', '%d')",
            "SELECT username AS user, password FROM {table} WHERE username = '%n@%d'",
            "SELECT username AS user, password FROM {table} "
            "WHERE lower(username) = '%Lu' AND allow_nets = '%r'",
            "SELECT username AS user, password FROM {table} "
            "WHERE username = %{{user}} AND password LIKE '{{PLAIN}}%%'",
        ]
        for query in queries:
            async with opened(db.settings(db.query(query))) as passdb:
                login = "bob@example.org" if "%L" in query else "Bob@Example.org"
                entry = await passdb.authenticate(login, "bob-pw", remote_ip="127.0.0.1")
                assert entry is not None, query
                assert entry.user == "Bob@Example.org"  # the database's spelling wins
                assert await passdb.authenticate("Bob@Example.org'--", "bob-pw",
                                                 remote_ip="127.0.0.1") is None

    run(test)


def test_concurrent_logins_share_a_small_pool(db: Db) -> None:
    async def test() -> None:
        await db.create([(f"u{i}", f"{{PLAIN}}pw{i}", None, None, None, None, None)
                         for i in range(10)])
        async with opened(db.settings(pool_size=2)) as passdb:
            results = await asyncio.gather(*(passdb.authenticate(f"u{i % 10}", f"pw{i % 10}")
                                             for i in range(40)))
            assert all(r is not None for r in results)
        with pytest.raises(PassDbUnavailable, match="closed"):
            await passdb.authenticate("u1", "pw1")

    run(test)


def test_a_pooled_connection_the_server_killed_is_replaced(db: Db) -> None:
    backend = "pg_backend_pid()" if db.dialect == "postgresql" else "CONNECTION_ID()"
    query = db.query(f"SELECT password, {backend} AS backend FROM {{table}} "
                     "WHERE username = '%u'")

    async def test() -> None:
        await db.create([("plain", "{PLAIN}pw", None, None, None, None, None)])
        async with opened(db.settings(query, pool_size=1)) as passdb:
            first = await passdb.authenticate("plain", "pw")
            assert first is not None
            pid = first.extra["backend"]
            await db.execute(f"SELECT pg_terminate_backend({pid})" if db.dialect == "postgresql"
                             else f"KILL {pid}")
            again = await passdb.authenticate("plain", "pw")
            assert again is not None and again.extra["backend"] != pid

    run(test)


def test_server_unreachable_raises_unavailable(db: Db) -> None:
    port = free_port()
    parts = urlsplit(db.dsn)
    dead = db.dsn.replace(f":{parts.port}/", f":{port}/")

    async def test() -> None:
        async with opened(db.settings(timeout=2.0)) as good:
            await db.create([("plain", "{PLAIN}pw", None, None, None, None, None)])
            assert await good.authenticate("plain", "pw") is not None
        async with opened(replace(db.settings(timeout=2.0), connect=dead)) as passdb:
            started = time.monotonic()
            for _ in range(2):  # still failing, and no pool is left half-open
                with pytest.raises(PassDbUnavailable) as info:
                    await passdb.authenticate("plain", "pw")
                message = str(info.value)
                assert f"127.0.0.1:{port}" in message and "\n" not in message
                assert ":cloudcote@" not in message  # never the DSN's password
            assert time.monotonic() - started < 10

    run(test)


def test_wrong_database_credentials_raise_unavailable(db: Db) -> None:
    bad = db.dsn.replace("cloudcote:cloudcote@", "nosuchuser:wrong-secret@")

    async def test() -> None:
        async with opened(replace(db.settings(), connect=bad)) as passdb:
            with pytest.raises(PassDbUnavailable) as info:
                await passdb.authenticate("plain", "pw")
            assert "wrong-secret" not in str(info.value)

    run(test)


def test_query_errors_are_config_errors(db: Db) -> None:
    async def test() -> None:
        await db.create([("plain", "{PLAIN}pw", None, None, None, None, None)])
        missing = db.query("SELECT password FROM {table}_missing WHERE username = '%u'")
        async with opened(db.settings(missing)) as passdb:
            with pytest.raises(AuthConfigError, match="password_query failed"):
                await passdb.authenticate("plain", "pw")
        no_password = db.query("SELECT username AS user FROM {table} WHERE username = '%u'")
        async with opened(db.settings(no_password)) as passdb:
            with pytest.raises(AuthConfigError, match="no 'password' column"):
                await passdb.authenticate("plain", "pw")
            assert await passdb.authenticate("nobody", "pw") is None

    run(test)


def test_open_passdb_spec_round_trip(db: Db) -> None:
    settings = db.settings(pool_size=3, timeout=4.5, default_pass_scheme="SHA512-CRYPT")
    spec = settings.spec()
    assert spec.startswith("sql:connect=")
    passdb = open_passdb(spec)
    assert isinstance(passdb, SqlPassDb) and passdb.settings == settings

    async def test() -> None:
        await db.create([("plain", "{PLAIN}pw", None, None, None, None, None)])
        try:
            entry = await passdb.authenticate("plain", "pw")
            assert isinstance(entry, UserEntry) and entry.user == "plain"
        finally:
            await passdb.close()

    run(test)


# -- settings and query compilation (no server) ---------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_compile_query(dialect: str) -> None:
    q = compile_query("SELECT password FROM t WHERE a = '%u' AND b = %n AND c = '%Ld' "
                      "AND d = 'x%%y' AND e = '%n@%d' AND f = '%r' AND g = 'it''s'", dialect)
    if dialect == "postgresql":
        assert q.text == ("SELECT password FROM t WHERE a = $1 AND b = $2 AND c = $3 "
                          "AND d = 'x%y' AND e = concat($2::text, '@', $4::text) AND f = $5 "
                          "AND g = 'it''s'")
    else:
        assert q.text == ("SELECT password FROM t WHERE a = %s AND b = %s AND c = %s "
                          "AND d = 'x%%y' AND e = CONCAT(%s, '@', %s) AND f = %s "
                          "AND g = 'it''s'")
    assert q.values("Ann@Example.COM", None)[:3] == ("Ann@Example.COM", "Ann", "example.com")
    assert q.values("ann", "192.0.2.1")[-1] == "192.0.2.1"


@pytest.mark.parametrize("query, words", [
    ("", "empty"),
    ("SELECT password FROM t WHERE a = '%x'", "unknown variable '%x'"),
    ("SELECT password FROM t WHERE a = '%{nope}'", "unknown variable '%{nope}'"),
    ("SELECT password FROM t WHERE a = '100%'", "write %% for a literal %"),
    ("SELECT password FROM t WHERE a = '%u", "unterminated string literal"),
    ("SELECT password FROM t WHERE d = '%d'", "must select by the login name"),
])
def test_bad_queries(query: str, words: str) -> None:
    with pytest.raises(SqlSettingError) as info:
        compile_query(query, "postgresql")
    assert info.value.key == "password_query" and words in str(info.value)


@pytest.mark.parametrize("args, words", [
    ("connect=postgresql://h/db", "password_query: missing"),
    ("password_query='SELECT password FROM t WHERE u = %u'", "connect: missing"),
    ("connect=ldap://h password_query='SELECT password FROM t WHERE u = %u'", "connect: "),
    ("connect=mysql://h/db?ssl=1 password_query='SELECT password FROM t WHERE u = %u'",
     "unknown option 'ssl'"),
    ("connect=postgresql://h:99999/db password_query='SELECT password FROM t WHERE u = %u'",
     "port"),
    ("connect=postgresql://h/db password_query='SELECT password FROM t WHERE u = %u' "
     "pool_size=0", "pool_size"),
    ("connect=postgresql://h/db password_query='SELECT password FROM t WHERE u = %u' "
     "default_pass_scheme=NOPE", "default_pass_scheme"),
    ("connect=postgresql://h/db password_query='SELECT password FROM t WHERE u = %u' "
     "host=db", "unknown setting 'host'"),
    ("connect=postgresql://u:hunter2@h/db password_query='unclosed", "cannot split"),
])
def test_bad_specs(args: str, words: str) -> None:
    with pytest.raises(AuthConfigError) as info:
        open_passdb(f"sql:{args}")
    message = str(info.value)
    assert words in message and "hunter2" not in message and "\n" not in message


# -- the server with an SQL passdb --------------------------------------------------------


def _imap(port: int, user: str, password: str) -> tuple[str, str]:
    import imaplib

    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        try:
            client.login(user, password)
        except imaplib.IMAP4.error as exc:
            return "NO", str(exc)
        typ, data = client.select("INBOX")
        return typ, data[0].decode() if data and data[0] else ""
    finally:
        try:
            client.logout()
        except Exception:
            client.shutdown()


def test_server_logs_in_through_sql(db: Db, tmp_path: Path) -> None:
    from cloudcote.config import load_config
    from cloudcote.core.auth import SqlPassDb
    from cloudcote.server import Server

    def config(connect: str) -> Path:
        path = tmp_path / f"c{uuid.uuid4().hex[:6]}.toml"
        path.write_text(f"""
data_dir = "{tmp_path / 'data'}"
[auth]
passdb = "sql"
failure_delay = 0.01
failure_delay_max = 0.05
[auth.sql]
connect = "{connect}"
password_query = {json.dumps(db.query())}
timeout = 2
[imap]
listen = ["127.0.0.1:{free_port()}"]
[pop3]
listen = []
[lmtp]
listen = []
""")
        return path

    dead = db.dsn.replace(f":{urlsplit(db.dsn).port}/", f":{free_port()}/")

    async def test() -> None:
        await db.create([("alice@example.com", hash_password("alice-pw", "SHA512-CRYPT"),
                          None, "*:messages=5", None, None, None)])
        for connect, expected in ((db.dsn, "OK"), (dead, "UNAVAILABLE")):
            server = Server(load_config(config(connect)))
            await server.start()
            try:
                assert server.ctx is not None
                passdb = server.ctx.passdb
                assert isinstance(passdb, SqlPassDb)
                port = int(server.listeners[0].address.rpartition(":")[2])
                result = await asyncio.to_thread(_imap, port, "alice@example.com", "alice-pw")
                if expected == "OK":
                    assert result[0] == "OK", result
                    wrong = await asyncio.to_thread(_imap, port, "alice@example.com", "nope")
                    assert wrong[0] == "NO" and "AUTHENTICATIONFAILED" in wrong[1], wrong
                    # imaplib sends the user name as it is: quote it for IMAP ourselves.
                    sneaky = await asyncio.to_thread(_imap, port, '"x\' OR \'1\'=\'1"',
                                                     "alice-pw")
                    assert sneaky[0] == "NO" and "AUTHENTICATIONFAILED" in sneaky[1], sneaky
                else:
                    assert result[0] == "NO" and "UNAVAILABLE" in result[1], result
            finally:
                await server.stop()
            assert passdb._closed and passdb._pool is None

    run(test)
