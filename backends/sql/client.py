"""SQL client plumbing shared by the SQL libfs driver and the SQL passdb: DSN parsing and
password redaction, opening an asyncpg (PostgreSQL) or aiomysql (MySQL/MariaDB) pool, and
what an exception of either client library means (:func:`classify`)."""

from __future__ import annotations

import asyncio
import enum
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

#: DSN scheme -> dialect.
DSN_SCHEMES = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql",
               "mariadb": "mysql"}
#: dialect -> client library.
CLIENTS = {"postgresql": "asyncpg", "mysql": "aiomysql"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
#: What a DSN should look like, for messages.
DSN_EXAMPLE = ("'postgresql://user:password@host/database' or "
               "'mysql://user:password@host/database'")


class DsnError(ValueError):
    """A DSN that cannot be used; the message says why (never with the password)."""


@dataclass(frozen=True)
class Dsn:
    """A parsed ``postgresql://`` / ``mysql://`` (``postgres://``, ``mariadb://``) URL."""

    scheme: str
    dialect: str
    url: str
    host: str
    port: int
    user: str
    password: str = ""
    database: str = ""
    options: tuple[tuple[str, str], ...] = ()

    def where(self) -> str:
        """``dialect://user@host:port/database`` for messages: never the password."""
        user = f"{self.user}@" if self.user else ""
        return f"{self.dialect}://{user}{self.host}:{self.port}/{self.database}"

    def address(self) -> str:
        """``host:port/database``."""
        return f"{self.host}:{self.port}/{self.database}"

    def safe(self) -> str:
        """The DSN as given, without its password and options."""
        parts = urlsplit(self.url)
        user = f"{parts.username}@" if parts.username else ""
        return f"{self.scheme}://{user}{self.address()}"

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***``."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", dsn)


def parse_dsn(dsn: str, *, mysql_options: frozenset[str] = frozenset({"unix_socket"})) -> Dsn:
    """Parse ``dsn``; raises :class:`DsnError` for an unknown scheme, a bad port or a
    MySQL option not in ``mysql_options`` (PostgreSQL's options go to asyncpg as given)."""
    scheme, sep, _ = dsn.partition("://")
    dialect = DSN_SCHEMES.get(scheme.lower()) if sep else None
    if dialect is None:
        raise DsnError(f"expected a URL like {DSN_EXAMPLE}")
    parts = urlsplit(dsn)
    try:
        port = parts.port or DEFAULT_PORTS[dialect]
    except ValueError:
        raise DsnError("the port is not a number 1-65535") from None
    options = tuple(parse_qsl(parts.query))
    if dialect == "mysql":
        unknown = sorted({k for k, _ in options} - mysql_options)
        if unknown:
            raise DsnError(f"unknown option {unknown[0]!r} (known: "
                           f"{', '.join(sorted(mysql_options))})")
    url = "postgresql" + dsn[len(scheme):] if dialect == "postgresql" else dsn
    return Dsn(scheme=scheme.lower(), dialect=dialect, url=url,
               host=parts.hostname or "localhost", port=port,
               user=unquote(parts.username or ""), password=unquote(parts.password or ""),
               database=unquote(parts.path.lstrip("/")), options=options)


# -- pools -------------------------------------------------------------------------------------


async def open_pool(
    dsn: Dsn, *, min_size: int, max_size: int, timeout: float, application_name: str,
    read_committed: bool = False, recycle: float = 300.0, reset: Any = None,
) -> Any:
    """An asyncpg or aiomysql pool for ``dsn``, autocommit, UTF-8; ``timeout`` bounds
    connecting and (PostgreSQL) each statement.  ``read_committed`` sets that isolation
    on every connection (why: docs/libfs.md) and, on MySQL, strict SQL mode; ``reset`` is
    asyncpg's hook run when a connection goes back to the pool (None: its default)."""
    if dsn.dialect == "postgresql":
        import asyncpg

        settings = {"application_name": application_name}
        if read_committed:
            settings["default_transaction_isolation"] = "read committed"
        kwargs: dict[str, Any] = {}
        if reset is not None:
            kwargs["reset"] = reset
        return await asyncpg.create_pool(
            dsn=dsn.url, min_size=min_size, max_size=max_size, timeout=timeout,
            command_timeout=timeout, max_inactive_connection_lifetime=300.0,
            server_settings=settings, **kwargs)
    import aiomysql

    extra: dict[str, Any] = {}
    if read_committed:
        extra["sql_mode"] = "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"
        extra["init_command"] = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
    return await aiomysql.create_pool(
        host=dsn.host, port=dsn.port, user=dsn.user, password=dsn.password,
        db=dsn.database or None, unix_socket=dsn.option("unix_socket"),
        minsize=min_size, maxsize=max_size, autocommit=True, charset="utf8mb4",
        connect_timeout=timeout, pool_recycle=recycle, **extra)


async def close_pool(dialect: str, pool: Any, timeout: float) -> None:
    """Close ``pool`` gracefully within ``timeout``, else terminate it."""
    try:
        if dialect == "postgresql":
            await asyncio.wait_for(pool.close(), timeout)
        else:
            pool.close()
            await asyncio.wait_for(pool.wait_closed(), timeout)
    except (TimeoutError, Exception):
        pool.terminate()


# -- errors ------------------------------------------------------------------------------------


class ErrorKind(enum.Enum):
    """What an exception of the client library means."""

    #: A pooled connection the server dropped (restart, killed backend): try a fresh one.
    LOST = "lost"
    #: Cannot connect, connection broken, server shutting down or out of resources.
    UNREACHABLE = "unreachable"
    #: Deadlock, serialization failure, lock wait timeout, statement cancelled.
    CONFLICT = "conflict"
    #: Bad credentials.
    AUTH = "auth"
    #: Authenticated, but not allowed.
    PERMISSION = "permission"
    NO_DATABASE = "no-database"
    NO_TABLE = "no-table"
    #: The server refused the statement for another reason.
    REFUSED = "refused"
    #: Not an error the server reported: the client library's own (or a bug).
    UNKNOWN = "unknown"

    @property
    def transient(self) -> bool:
        """Whether trying again may succeed."""
        return self in (ErrorKind.LOST, ErrorKind.UNREACHABLE, ErrorKind.CONFLICT)


# PostgreSQL SQLSTATEs (appendix A).
_PG_LOST = ("57P01", "57P02", "08003", "08006")
_PG_UNREACHABLE = ("08", "53", "57P", "58")
_PG_CONFLICT = ("40", "57014", "55P03", "55006")
# MySQL/MariaDB error numbers (server below 2000, client from 2000).
_MY_LOST = frozenset({1927, 2006, 2013, 2055, 4031})
_MY_UNREACHABLE = frozenset({1040, 1053, 1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159, 1160,
                             1161, 2002, 2003, 2005, 2014, 2027})
_MY_CONFLICT = frozenset({1180, 1181, 1205, 1213, 1317})
_MY_AUTH = frozenset({1045, 1251, 1698, 2059, 2061})
_MY_PERMISSION = frozenset({1044, 1142, 1143, 1227, 1370})


def classify(dialect: str, exc: BaseException) -> ErrorKind:
    """What ``exc``, raised by ``dialect``'s client library (or the network), means."""
    if isinstance(exc, (OSError, TimeoutError, ConnectionError, EOFError)):
        return ErrorKind.UNREACHABLE
    if dialect == "postgresql":
        return _classify_pg(exc)
    return _classify_mysql(exc)


def _classify_pg(exc: BaseException) -> ErrorKind:
    import asyncpg

    state = str(getattr(exc, "sqlstate", "") or "")
    if isinstance(exc, (asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError)) \
            or state in _PG_LOST or (isinstance(exc, asyncpg.InterfaceError)
                                     and "closed" in str(exc) and "pool" not in str(exc)):
        # A pooled connection the server dropped: asyncpg may report it as a protocol
        # state error on first use.
        return ErrorKind.LOST
    if not isinstance(exc, asyncpg.PostgresError):
        return ErrorKind.UNKNOWN
    if state.startswith("28"):
        return ErrorKind.AUTH
    if state == "42501":
        return ErrorKind.PERMISSION
    if state.startswith("3D"):
        return ErrorKind.NO_DATABASE
    if state == "42P01":
        return ErrorKind.NO_TABLE
    if state.startswith(_PG_CONFLICT):
        return ErrorKind.CONFLICT
    if state.startswith(_PG_UNREACHABLE):
        return ErrorKind.UNREACHABLE
    return ErrorKind.REFUSED


def _classify_mysql(exc: BaseException) -> ErrorKind:
    import pymysql

    if isinstance(exc, pymysql.err.InterfaceError):
        return ErrorKind.UNREACHABLE  # "Not connected", "Cancelled during execution"
    if not isinstance(exc, pymysql.err.MySQLError):
        return ErrorKind.UNKNOWN
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    for codes, kind in ((_MY_LOST, ErrorKind.LOST), (_MY_UNREACHABLE, ErrorKind.UNREACHABLE),
                        (_MY_CONFLICT, ErrorKind.CONFLICT), (_MY_AUTH, ErrorKind.AUTH),
                        (_MY_PERMISSION, ErrorKind.PERMISSION)):
        if code in codes:
            return kind
    if code == 1049:
        return ErrorKind.NO_DATABASE
    if code == 1146:
        return ErrorKind.NO_TABLE
    return ErrorKind.REFUSED if 0 < code < 2000 else ErrorKind.UNKNOWN
