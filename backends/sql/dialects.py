"""The two SQL dialects of :mod:`cloudcote.backends.sql.driver`: PostgreSQL through asyncpg
and MySQL/MariaDB through aiomysql.

A dialect hands out :class:`Session` objects (one pooled connection, with a per-statement
timeout), converts keys and ids to the column types, and holds the text of every statement
the driver runs, keyed by name; the pool, the DSN and error classification come from
:mod:`cloudcote.backends.sql.client`.  Every connection runs at READ COMMITTED (why:
docs/libfs.md, "PostgreSQL and MySQL/MariaDB").
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from .client import DSN_SCHEMES, ErrorKind, classify, close_pool, open_pool, parse_dsn

log = logging.getLogger("cloudcote.backends.sql")

#: Longest object key (with the driver's prefix), in UTF-8 bytes.  PostgreSQL's btree
#: refuses index entries over ~2700 bytes and InnoDB's over 3072; one limit for both.
MAX_KEY_BYTES = 2048

#: Object kinds in the ``objects`` table.
INLINE, CHUNKED, LOG = "inline", "chunked", "log"


class Session(abc.ABC):
    """One pooled connection.  Statements are run by name (see ``Dialect.sql``) or as text;
    every call has the dialect's timeout."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    @abc.abstractmethod
    async def fetch(self, name: str, *args: Any) -> list[Sequence[Any]]:
        """All rows of a named statement."""

    async def fetchrow(self, name: str, *args: Any) -> Sequence[Any] | None:
        rows = await self.fetch(name, *args)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def execute(self, name: str, *args: Any) -> int:
        """Run a named statement; return the number of rows it inserted/updated/deleted."""

    @abc.abstractmethod
    async def script(self, text: str) -> None:
        """Run one literal statement (DDL), no parameters."""

    @abc.abstractmethod
    async def append_many(
        self, log_id: uuid.UUID, seq: int, tokens: Sequence[uuid.UUID],
        records: Sequence[bytes], key: Any,
    ) -> int:
        """Insert ``records`` as segments ``seq, seq+1, ...`` of ``log_id`` in one
        statement, while ``key`` is that log; return how many went in (a taken seq is
        skipped, so the caller runs this in a transaction and rolls back a partial one)."""

    @abc.abstractmethod
    def transaction(self) -> Any:
        """An async context manager: READ COMMITTED transaction, committed on success,
        rolled back on any exception."""


class Dialect(abc.ABC):
    """What differs between the servers; see docs/libfs.md."""

    #: ``postgresql`` or ``mysql``.
    name: str = ""
    default_port: int = 0
    #: Whether the server can announce changes to listeners (LISTEN/NOTIFY).
    can_notify: bool = False

    def __init__(self, stage: str, dsn: str, table: str, timeout: float, *,
                 notify: bool = False) -> None:
        self.stage = stage
        self.dsn = dsn
        self.timeout = timeout
        #: Where writes announce the paths they change (PostgreSQL NOTIFY), or None.
        self.channel: str | None = (f"{table}_changes" if notify and self.can_notify
                                    else None)
        #: Statements sent to the server, by statement name ("script" for literal text,
        #: "begin"/"commit"/"rollback" for MySQL's transaction control): requests per op.
        self.requests: Counter[str] = Counter()
        #: The parsed DSN (raises DsnError, a ValueError, when it cannot be used).
        self.conninfo = parse_dsn(dsn, mysql_options=frozenset({"unix_socket", "charset"}))
        self.user = self.conninfo.user
        self.pool: Any = None
        self.tables = {
            "objects": f"{table}_objects",
            "chunks": f"{table}_chunks",
            "segments": f"{table}_segments",
        }
        self.sql = self._statements(
            self.quote(self.tables["objects"]), self.quote(self.tables["chunks"]),
            self.quote(self.tables["segments"]))

    @staticmethod
    def _shared_statements(o: str, s: str) -> dict[str, str]:
        """The statements both servers take in the same words (``o``/``s``: the quoted
        objects and segments tables)."""
        return {
            # (path, log_id, seq) -> (current log id of path, token at seq, last seq)
            "append_probe": f"SELECT (SELECT blob_id FROM {o} WHERE path = $1 AND kind = 'log'),"
                            f" (SELECT token FROM {s} WHERE log_id = $2 AND seq = $3),"
                            f" (SELECT MAX(seq) FROM {s} WHERE log_id = $2)",
            "tail": f"SELECT MAX(seq) FROM {s} WHERE log_id = $1",
            # (log_id, token, from seq) -> seqs holding our record
            "mine": f"SELECT seq FROM {s} WHERE log_id = $1 AND seq >= $3 AND token = $2",
            # (log_id, from seq, to seq) -> (segments, bytes) in [from, to): where an
            # appended record starts, from the records before it.
            "log_bytes": f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {s} "
                         f"WHERE log_id = $1 AND seq >= $2 AND seq < $3",
            # (low, high, limit)
            "list_from": f"SELECT path FROM {o} WHERE path >= $1 AND path < $2 "
                         f"ORDER BY path LIMIT $3",
            "list_after": f"SELECT path FROM {o} WHERE path > $1 AND path < $2 "
                          f"ORDER BY path LIMIT $3",
        }

    # -- identity -------------------------------------------------------------------------

    def where(self) -> str:
        """``host:port/db`` for messages (never the password)."""
        return self.conninfo.address()

    def safe_dsn(self) -> str:
        return self.conninfo.safe()

    # -- pool -----------------------------------------------------------------------------

    async def connect(self, pool_size: int) -> None:
        """Open the pool with at least one connection (so bad credentials show now)."""
        self.pool = await open_pool(
            self.conninfo, min_size=1, max_size=pool_size, timeout=self.timeout,
            application_name="cloudcote", read_committed=True, recycle=3600.0,
            reset=self._reset())

    def _reset(self) -> object:
        """asyncpg's hook for a connection going back to the pool (None: its default)."""
        return None

    async def close(self) -> None:
        """Close the pool."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await close_pool(self.name, pool, self.timeout)

    @abc.abstractmethod
    def session(self) -> Any:
        """An async context manager yielding a :class:`Session` on a pooled connection."""

    # -- values ---------------------------------------------------------------------------

    @abc.abstractmethod
    def key(self, full: str) -> Any:
        """A full object key as its column value."""

    @abc.abstractmethod
    def unkey(self, value: Any) -> str:
        """A key column value back as ``str``."""

    @abc.abstractmethod
    def successor(self, key: Any) -> Any:
        """The least key greater than every key that starts with ``key`` (listing bound)."""

    @abc.abstractmethod
    def ident(self, value: uuid.UUID) -> Any:
        """A uuid as its column value."""

    @abc.abstractmethod
    def unident(self, value: Any) -> uuid.UUID:
        """A uuid column value back as :class:`uuid.UUID`."""

    # -- schema ---------------------------------------------------------------------------

    @abc.abstractmethod
    def quote(self, name: str) -> str:
        """A quoted identifier."""

    @abc.abstractmethod
    def ddl(self) -> dict[str, str]:
        """``{table name: CREATE TABLE IF NOT EXISTS ...}``."""

    @abc.abstractmethod
    async def missing_tables(self, s: Session) -> list[str]:
        """The names of our tables that do not exist in the database."""

    @abc.abstractmethod
    async def server_limits(self, s: Session) -> tuple[bool, int]:
        """``(durable, largest value one statement may carry in bytes)``."""

    @abc.abstractmethod
    def _statements(self, o: str, c: str, s: str) -> dict[str, str]:
        """Every statement the driver runs, by name."""

    # -- errors ---------------------------------------------------------------------------

    def classify(self, exc: BaseException) -> ErrorKind:
        """What ``exc`` (raised by the client library) means."""
        return classify(self.name, exc)


# --- PostgreSQL ---------------------------------------------------------------------------


async def _keep_session(conn: Any) -> None:
    """asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``... one more round trip per
    operation) undoes session state we never create; the pool still rolls back an open
    transaction before it calls this."""


def _int_tail(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PgSession(Session):
    def __init__(self, dialect: PgDialect, conn: Any) -> None:
        super().__init__(dialect)
        self.conn = conn
        self.sql = dialect.sql

    async def fetch(self, name: str, *args: Any) -> list[Sequence[Any]]:
        self.dialect.requests[name] += 1
        rows: list[Sequence[Any]] = await self.conn.fetch(
            self.sql[name], *args, timeout=self.dialect.timeout)
        return rows

    async def execute(self, name: str, *args: Any) -> int:
        self.dialect.requests[name] += 1
        status = await self.conn.execute(self.sql[name], *args, timeout=self.dialect.timeout)
        return _int_tail(status)

    async def script(self, text: str) -> None:
        self.dialect.requests["script"] += 1
        await self.conn.execute(text, timeout=self.dialect.timeout)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.dialect.requests["begin"] += 1
        self.dialect.requests["commit"] += 1  # or the rollback that replaces it
        async with self.conn.transaction(isolation="read_committed"):
            yield

    async def append_many(
        self, log_id: uuid.UUID, seq: int, tokens: Sequence[uuid.UUID],
        records: Sequence[bytes], key: Any,
    ) -> int:
        return await self.execute("append_many", log_id, seq, list(tokens), list(records), key)


class PgDialect(Dialect):
    """PostgreSQL (asyncpg): ``text COLLATE "C"`` keys (byte order, so a key range is a
    prefix), ``uuid`` ids, ``bytea`` payloads, ``jsonb`` metadata."""

    name = "postgresql"
    default_port = 5432

    can_notify = True

    def _reset(self) -> object:
        return _keep_session

    @asynccontextmanager
    async def session(self) -> AsyncIterator[PgSession]:
        async with self.pool.acquire(timeout=self.timeout) as conn:
            yield PgSession(self, conn)

    def key(self, full: str) -> str:
        return full

    def unkey(self, value: Any) -> str:
        return str(value)

    def successor(self, key: str) -> str | None:
        return _successor_str(key)

    def ident(self, value: uuid.UUID) -> uuid.UUID:
        return value

    def unident(self, value: Any) -> uuid.UUID:
        return value if type(value) is uuid.UUID else uuid.UUID(bytes=value.bytes)

    def quote(self, name: str) -> str:
        return f'"{name}"'

    def ddl(self) -> dict[str, str]:
        o, c, s = (self.quote(self.tables[t]) for t in ("objects", "chunks", "segments"))
        return {
            self.tables["objects"]: f"""
                CREATE TABLE IF NOT EXISTS {o} (
                    path     text COLLATE "C" NOT NULL PRIMARY KEY,
                    kind     text NOT NULL CHECK (kind IN ('inline', 'chunked', 'log')),
                    blob_id  uuid NOT NULL,
                    size     bigint NOT NULL,
                    chunk    integer NOT NULL,
                    mtime    double precision NOT NULL,
                    metadata jsonb NOT NULL,
                    data     bytea
                )""",
            self.tables["chunks"]: f"""
                CREATE TABLE IF NOT EXISTS {c} (
                    blob_id uuid NOT NULL,
                    n       integer NOT NULL,
                    data    bytea NOT NULL,
                    PRIMARY KEY (blob_id, n)
                )""",
            self.tables["segments"]: f"""
                CREATE TABLE IF NOT EXISTS {s} (
                    log_id uuid NOT NULL,
                    seq    bigint NOT NULL,
                    token  uuid NOT NULL,
                    size   integer NOT NULL,
                    mtime  double precision NOT NULL,
                    data   bytea NOT NULL,
                    PRIMARY KEY (log_id, seq)
                )""",
        }

    async def missing_tables(self, s: Session) -> list[str]:
        assert isinstance(s, PgSession)
        missing = []
        for name in self.tables.values():
            if await s.conn.fetchval("SELECT to_regclass($1)", self.quote(name)) is None:
                missing.append(name)
        return missing

    async def server_limits(self, s: Session) -> tuple[bool, int]:
        assert isinstance(s, PgSession)
        row = await s.conn.fetchrow(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit')")
        durable = row[0] == "on" and row[1] != "off"
        return durable, (1 << 30) - (1 << 20)  # bytea values stop at 1 GB

    def _statements(self, o: str, c: str, s: str) -> dict[str, str]:
        now = "extract(epoch from clock_timestamp())::float8"
        stmts = {
            "exists": f"SELECT 1 FROM {o} WHERE path = $1",
            "head": f"SELECT kind, blob_id FROM {o} WHERE path = $1",
            "head_lock": f"SELECT kind, blob_id FROM {o} WHERE path = $1 FOR UPDATE",
            "head_share": f"SELECT kind, blob_id FROM {o} WHERE path = $1 FOR SHARE",
            # (start, length, path): the inline payload is cut by the server.
            "read": f"SELECT kind, blob_id, size, chunk, substring(data from $1 for $2) "
                    f"FROM {o} WHERE path = $3",
            "stat": f"""SELECT o.kind, o.size, o.mtime, o.metadata,
                   CASE WHEN o.kind = 'log' THEN
                       (SELECT COALESCE(SUM(s.size), 0)::bigint FROM {s} s
                        WHERE s.log_id = o.blob_id) END,
                   CASE WHEN o.kind = 'log' THEN
                       (SELECT MAX(s.mtime) FROM {s} s WHERE s.log_id = o.blob_id) END
                   FROM {o} o WHERE o.path = $1""",
            # Payload reads join the row they belong to: one statement, one snapshot.
            "chunks": f"SELECT c.data FROM {o} o JOIN {c} c ON c.blob_id = o.blob_id "
                      f"WHERE o.path = $1 AND o.blob_id = $2 AND c.n >= $3 AND c.n <= $4 "
                      f"ORDER BY c.n",
            "segments": f"SELECT s.data FROM {o} o JOIN {s} s ON s.log_id = o.blob_id "
                        f"WHERE o.path = $1 AND o.blob_id = $2 AND s.seq >= $3 "
                        f"AND s.seq <= $4 ORDER BY s.seq",
            "segment_sizes": f"SELECT s.seq, s.size FROM {o} o JOIN {s} s "
                             f"ON s.log_id = o.blob_id WHERE o.path = $1 AND o.blob_id = $2 "
                             f"ORDER BY s.seq",
            # (path, kind, blob_id, size, chunk, metadata, data) -> 1 inserted, 0 exists.
            "insert": f"INSERT INTO {o} (path, kind, blob_id, size, chunk, mtime, metadata, "
                      f"data) VALUES ($1, $2, $3, $4, $5, {now}, $6, $7) "
                      f"ON CONFLICT (path) DO NOTHING",
            # (kind, blob_id, size, chunk, metadata, data, path)
            "update": f"UPDATE {o} SET kind = $1, blob_id = $2, size = $3, chunk = $4, "
                      f"mtime = {now}, metadata = $5, data = $6 WHERE path = $7",
            "delete": f"DELETE FROM {o} WHERE path = $1",
            # (dst, blob_id, src) -> 1 inserted, 0 dst exists.
            "copy_row": f"INSERT INTO {o} (path, kind, blob_id, size, chunk, mtime, "
                        f"metadata, data) SELECT $1, kind, $2, size, chunk, {now}, metadata, "
                        f"data FROM {o} WHERE path = $3 ON CONFLICT (path) DO NOTHING",
            "insert_chunk": f"INSERT INTO {c} (blob_id, n, data) VALUES ($1, $2, $3)",
            "delete_chunks": f"DELETE FROM {c} WHERE blob_id = $1",
            "copy_chunks": f"INSERT INTO {c} (blob_id, n, data) "
                           f"SELECT $1, n, data FROM {c} WHERE blob_id = $2",
            "delete_segments": f"DELETE FROM {s} WHERE log_id = $1",
            "copy_segments": f"INSERT INTO {s} (log_id, seq, token, size, mtime, data) "
                             f"SELECT $1, seq, token, size, mtime, data FROM {s} "
                             f"WHERE log_id = $2",
            # (log_id, seq, token, size, data, path): the segment goes in only while the
            # path is still this log; 0 when the seq is taken or the log is gone.
            "append": f"INSERT INTO {s} (log_id, seq, token, size, mtime, data) "
                      f"SELECT $1, $2, $3, $4, {now}, $5 FROM {o} "
                      f"WHERE path = $6 AND blob_id = $1 AND kind = 'log' "
                      f"ON CONFLICT (log_id, seq) DO NOTHING",
            # (log_id, first seq, tokens, records, path)
            "append_many": f"INSERT INTO {s} (log_id, seq, token, size, mtime, data) "
                           f"SELECT $1, $2 + u.i - 1, u.t, length(u.d), {now}, u.d "
                           f"FROM unnest($3::uuid[], $4::bytea[]) WITH ORDINALITY AS u(t, d, i) "
                           f"WHERE EXISTS (SELECT 1 FROM {o} WHERE path = $5 AND blob_id = $1 "
                           f"AND kind = 'log') ON CONFLICT (log_id, seq) DO NOTHING",
            **self._shared_statements(o, s),
        }
        if self.channel is not None:
            # Every statement that changes what a path holds announces the path, in the
            # same statement (so in its transaction): only for rows it changed, delivered
            # at commit, repeats within a transaction merged by the server.
            ch = f"'{self.channel}'"
            for name, path in (("insert", "path"), ("update", "path"), ("delete", "path"),
                               ("copy_row", "path"), ("append", "$6::text"),
                               ("append_many", "$5::text")):
                stmts[name] += f" RETURNING pg_notify({ch}, {path})"
        return stmts


# --- MySQL / MariaDB ----------------------------------------------------------------------


class MySqlSession(Session):
    """aiomysql renders parameters into the statement text; we render them ourselves so
    that bytes travel as hex literals (``X'..'``): twice their size, built in C, instead
    of PyMySQL's per-byte escaping through a surrogate-escaped str."""

    def __init__(self, dialect: MySqlDialect, conn: Any) -> None:
        super().__init__(dialect)
        self.conn = conn
        self.sql = dialect.sql

    def _render(self, text: str, args: Sequence[Any]) -> str:
        """Replace ``$1``..``$n`` (PostgreSQL's placeholders, so that both dialects take the
        same arguments) by literals; the statement texts hold no other ``$``."""
        return _PLACEHOLDER.sub(lambda m: self._literal(args[int(m.group(1)) - 1]), text)

    def _literal(self, value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, (bytes, bytearray, memoryview)):
            return "X'" + value.hex() + "'"
        if isinstance(value, uuid.UUID):
            return "X'" + value.hex + "'"
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, str):
            return str(self.conn.escape(value))
        raise TypeError(f"cannot pass {type(value).__name__} to MySQL")

    async def _run(self, text: str) -> Any:
        self.dialect.requests[text.split(None, 1)[0].lower() if text else "?"] += 1
        try:
            async with asyncio.timeout(self.dialect.timeout):
                await self.conn.query(text)
        except BaseException as exc:
            if _breaks_connection(exc):
                # A statement cut short leaves the protocol mid-reply: the connection is
                # useless and must not go back to the pool.
                self.conn.close()
            raise
        return self.conn._result  # noqa: SLF001 - where aiomysql keeps the last result

    async def fetch(self, name: str, *args: Any) -> list[Sequence[Any]]:
        result = await self._run(self._render(self.sql[name], args))
        return list(result.rows or ())

    async def execute(self, name: str, *args: Any) -> int:
        result = await self._run(self._render(self.sql[name], args))
        return int(result.affected_rows or 0)

    async def script(self, text: str) -> None:
        await self._run(text)

    async def append_many(
        self, log_id: uuid.UUID, seq: int, tokens: Sequence[uuid.UUID],
        records: Sequence[bytes], key: Any,
    ) -> int:
        lit = self._literal
        rows = " UNION ALL ".join(
            f"SELECT {seq + i} AS seq, {lit(tok)} AS token, {len(rec)} AS size, "
            f"{lit(rec)} AS data" for i, (tok, rec) in enumerate(zip(tokens, records, strict=True)))
        d = self.dialect
        o, s = d.quote(d.tables["objects"]), d.quote(d.tables["segments"])
        text = (f"INSERT INTO {s} (log_id, seq, token, size, mtime, data) "
                f"SELECT {lit(log_id)}, v.seq, v.token, v.size, UNIX_TIMESTAMP(NOW(6)), v.data "
                f"FROM ({rows}) AS v WHERE EXISTS (SELECT 1 FROM {o} WHERE path = {lit(key)} "
                f"AND blob_id = {lit(log_id)} AND kind = 'log') "
                f"ON DUPLICATE KEY UPDATE seq = {s}.seq")
        result = await self._run(text)
        return int(result.affected_rows or 0)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        await self._run("START TRANSACTION")
        try:
            yield
        except BaseException as exc:
            if not self.conn.closed:
                if isinstance(exc, Exception):
                    try:
                        await self._run("ROLLBACK")
                    except Exception:
                        self.conn.close()  # the server rolls back when the connection goes
                else:
                    self.conn.close()  # cancelled: no await here; closing rolls back
            raise
        await self._run("COMMIT")


class MySqlDialect(Dialect):
    """MySQL and MariaDB (aiomysql): ``VARBINARY`` keys (byte order, binary-safe, no
    collation surprises), ``BINARY(16)`` ids, ``LONGBLOB`` payloads, ``JSON`` metadata."""

    name = "mysql"
    default_port = 3306

    @asynccontextmanager
    async def session(self) -> AsyncIterator[MySqlSession]:
        async with asyncio.timeout(self.timeout):
            conn = await self.pool.acquire()
        try:
            yield MySqlSession(self, conn)
        except BaseException as exc:
            if _breaks_connection(exc) and not conn.closed:
                conn.close()  # do not hand a possibly broken connection to the next caller
            raise
        finally:
            await self.pool.release(conn)

    def key(self, full: str) -> bytes:
        return full.encode("utf-8")

    def unkey(self, value: Any) -> str:
        return bytes(value).decode("utf-8")

    def successor(self, key: bytes) -> bytes | None:
        stripped = key.rstrip(b"\xff")
        if not stripped:
            return None
        return stripped[:-1] + bytes([stripped[-1] + 1])

    def ident(self, value: uuid.UUID) -> uuid.UUID:
        return value  # rendered as X'<32 hex digits>' into BINARY(16)

    def unident(self, value: Any) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(value))

    def quote(self, name: str) -> str:
        return f"`{name}`"

    def ddl(self) -> dict[str, str]:
        o, c, s = (self.quote(self.tables[t]) for t in ("objects", "chunks", "segments"))
        tail = "ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        return {
            self.tables["objects"]: f"""
                CREATE TABLE IF NOT EXISTS {o} (
                    path     VARBINARY({MAX_KEY_BYTES}) NOT NULL,
                    kind     VARCHAR(8) CHARACTER SET ascii NOT NULL,
                    blob_id  BINARY(16) NOT NULL,
                    size     BIGINT NOT NULL,
                    chunk    INT NOT NULL,
                    mtime    DOUBLE NOT NULL,
                    metadata JSON NOT NULL,
                    data     LONGBLOB NULL,
                    PRIMARY KEY (path)
                ) {tail}""",
            self.tables["chunks"]: f"""
                CREATE TABLE IF NOT EXISTS {c} (
                    blob_id BINARY(16) NOT NULL,
                    n       INT NOT NULL,
                    data    LONGBLOB NOT NULL,
                    PRIMARY KEY (blob_id, n)
                ) {tail}""",
            self.tables["segments"]: f"""
                CREATE TABLE IF NOT EXISTS {s} (
                    log_id BINARY(16) NOT NULL,
                    seq    BIGINT NOT NULL,
                    token  BINARY(16) NOT NULL,
                    size   INT NOT NULL,
                    mtime  DOUBLE NOT NULL,
                    data   LONGBLOB NOT NULL,
                    PRIMARY KEY (log_id, seq)
                ) {tail}""",
        }

    async def missing_tables(self, s: Session) -> list[str]:
        assert isinstance(s, MySqlSession)
        names = ", ".join(s._literal(n) for n in self.tables.values())
        result = await s._run(
            "SELECT table_name FROM information_schema.tables "
            f"WHERE table_schema = DATABASE() AND table_name IN ({names})")
        present = {str(r[0]) for r in result.rows or ()}
        return [n for n in self.tables.values() if n not in present]

    async def server_limits(self, s: Session) -> tuple[bool, int]:
        assert isinstance(s, MySqlSession)
        result = await s._run("SELECT @@max_allowed_packet, @@innodb_flush_log_at_trx_commit")
        packet, flush = result.rows[0]
        # A value travels as hex inside one statement: 2 bytes per byte, plus the text of
        # the statement around it.
        return int(flush) == 1, (int(packet) - 64 * 1024) // 2

    def _statements(self, o: str, c: str, s: str) -> dict[str, str]:
        now = "UNIX_TIMESTAMP(NOW(6))"
        return {
            "exists": f"SELECT 1 FROM {o} WHERE path = $1",
            "head": f"SELECT kind, blob_id FROM {o} WHERE path = $1",
            "head_lock": f"SELECT kind, blob_id FROM {o} WHERE path = $1 FOR UPDATE",
            "head_share": f"SELECT kind, blob_id FROM {o} WHERE path = $1 LOCK IN SHARE MODE",
            "read": f"SELECT kind, blob_id, size, chunk, SUBSTRING(data, $1, $2) "
                    f"FROM {o} WHERE path = $3",
            "stat": f"""SELECT o.kind, o.size, o.mtime, o.metadata,
                   CASE WHEN o.kind = 'log' THEN
                       (SELECT COALESCE(SUM(s.size), 0) FROM {s} s
                        WHERE s.log_id = o.blob_id) END,
                   CASE WHEN o.kind = 'log' THEN
                       (SELECT MAX(s.mtime) FROM {s} s WHERE s.log_id = o.blob_id) END
                   FROM {o} o WHERE o.path = $1""",
            "chunks": f"SELECT c.data FROM {o} o JOIN {c} c ON c.blob_id = o.blob_id "
                      f"WHERE o.path = $1 AND o.blob_id = $2 AND c.n >= $3 AND c.n <= $4 "
                      f"ORDER BY c.n",
            "segments": f"SELECT s.data FROM {o} o JOIN {s} s ON s.log_id = o.blob_id "
                        f"WHERE o.path = $1 AND o.blob_id = $2 AND s.seq >= $3 "
                        f"AND s.seq <= $4 ORDER BY s.seq",
            "segment_sizes": f"SELECT s.seq, s.size FROM {o} o JOIN {s} s "
                             f"ON s.log_id = o.blob_id WHERE o.path = $1 AND o.blob_id = $2 "
                             f"ORDER BY s.seq",
            # ON DUPLICATE KEY UPDATE with no change reports 0 rows for an existing key
            # (we do not set CLIENT_FOUND_ROWS) and takes the row's X lock directly: no
            # shared-then-exclusive upgrade for concurrent creators to deadlock on.
            "insert": f"INSERT INTO {o} (path, kind, blob_id, size, chunk, mtime, metadata, "
                      f"data) VALUES ($1, $2, $3, $4, $5, {now}, $6, $7) "
                      f"ON DUPLICATE KEY UPDATE path = {o}.path",
            "update": f"UPDATE {o} SET kind = $1, blob_id = $2, size = $3, chunk = $4, "
                      f"mtime = {now}, metadata = $5, data = $6 WHERE path = $7",
            "delete": f"DELETE FROM {o} WHERE path = $1",
            "copy_row": f"INSERT INTO {o} (path, kind, blob_id, size, chunk, mtime, "
                        f"metadata, data) SELECT $1, src.kind, $2, src.size, src.chunk, "
                        f"{now}, src.metadata, src.data FROM {o} AS src WHERE src.path = $3 "
                        f"ON DUPLICATE KEY UPDATE path = {o}.path",
            "insert_chunk": f"INSERT INTO {c} (blob_id, n, data) VALUES ($1, $2, $3)",
            "delete_chunks": f"DELETE FROM {c} WHERE blob_id = $1",
            "copy_chunks": f"INSERT INTO {c} (blob_id, n, data) "
                           f"SELECT $1, n, data FROM {c} AS src WHERE src.blob_id = $2",
            "delete_segments": f"DELETE FROM {s} WHERE log_id = $1",
            "copy_segments": f"INSERT INTO {s} (log_id, seq, token, size, mtime, data) "
                             f"SELECT $1, seq, token, size, mtime, data FROM {s} AS src "
                             f"WHERE src.log_id = $2",
            "append": f"INSERT INTO {s} (log_id, seq, token, size, mtime, data) "
                      f"SELECT $1, $2, $3, $4, {now}, $5 FROM {o} "
                      f"WHERE path = $6 AND blob_id = $1 AND kind = 'log' "
                      f"ON DUPLICATE KEY UPDATE seq = {s}.seq",
            **self._shared_statements(o, s),
        }


# --- helpers ------------------------------------------------------------------------------


def _breaks_connection(exc: BaseException) -> bool:
    """Whether a MySQL connection that raised ``exc`` is out of step with its server: every
    failure but an error the server reported in an orderly reply (codes below 2000)."""
    import pymysql

    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    if isinstance(exc, pymysql.err.MySQLError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        return not 0 < code < 2000
    # Our own exceptions (FsExists...) are raised between statements: the connection is
    # in step.  Cancellation, timeouts and socket errors may strike mid-reply.
    return isinstance(exc, (OSError, asyncio.TimeoutError, asyncio.CancelledError))


def _successor_str(key: str) -> str | None:
    """The least string above every string starting with ``key`` (code point order, which
    is also UTF-8 byte order and PostgreSQL's "C" collation order)."""
    chars = list(key)
    while chars:
        cp = ord(chars[-1]) + 1
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xE000  # surrogates cannot be stored; skip past them
        if cp <= 0x10FFFF:
            chars[-1] = chr(cp)
            return "".join(chars)
        chars.pop()
    return None


#: A bound above every key of at most MAX_KEY_BYTES (UTF-8 never contains 0xFF, and U+10FFFF
#: is the largest code point).
TOP_STR = "\U0010ffff" * (MAX_KEY_BYTES // 4 + 1)
TOP_BYTES = b"\xff" * (MAX_KEY_BYTES + 1)

_PLACEHOLDER = re.compile(r"\$(\d+)")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
DIALECTS: dict[str, type[Dialect]] = {
    scheme: PgDialect if dialect == "postgresql" else MySqlDialect
    for scheme, dialect in DSN_SCHEMES.items()
}


def valid_table(name: str) -> bool:
    return bool(_TABLE.match(name))
