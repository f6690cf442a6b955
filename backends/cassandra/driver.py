"""Cassandra driver: objects, append logs and listings in four tables of one keyspace.

Chain syntax::

    cassandra:127.0.0.1:9042;10.0.0.2,keyspace=mail,replication=SimpleStrategy:3

Every write to ``objects`` is a lightweight transaction; an append inserts ``IF NOT
EXISTS`` at the next sequence number of its log's ``segments`` partition; ``listing`` keeps
one partition per "directory" for ``iter``.  The settings, the schema, how each operation
and each uncertain outcome is handled, and what is claimed: docs/libfs.md, section
"Cassandra".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import uuid
import warnings
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    CoordinationFailure,
    DependencyException,
    OperationTimedOut,
    ProtocolVersion,
    Timeout,
    Unauthorized,
    Unavailable,
)
from cassandra import RequestValidationException as CqlRequestInvalid
from cassandra.auth import PlainTextAuthProvider

with warnings.catch_warnings():
    # Without its libev extension cassandra-driver falls back to asyncore when
    # cassandra.cluster is imported, and importing asyncore warns on Python 3.11; we never
    # use that reactor (see _connection_class).  The wheels ship libev, so this is moot there.
    warnings.filterwarnings("ignore", message=".*asyncore.*", category=DeprecationWarning)
    from cassandra.cluster import (
        EXEC_PROFILE_DEFAULT,
        Cluster,
        ExecutionProfile,
        NoHostAvailable,
    )
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.protocol import (
    ErrorMessage,
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ServerError,
    TruncateError,
)
from cassandra.protocol import RequestValidationException as CqlMessageInvalid
from cassandra.query import (
    UNSET_VALUE,
    BatchStatement,
    BatchType,
    PreparedStatement,
    dict_factory,
)

from cloudcote.libfs.api import (
    DEFAULT_CHUNK_SIZE,
    Feature,
    Fs,
    FsError,
    FsExists,
    FsInvalidSpec,
    FsNotFound,
    FsPermission,
    FsUnavailable,
    Stat,
    WriteMode,
    check_metadata,
    check_path,
    check_prefix,
)
from cloudcote.libfs.backoff import backoff
from cloudcote.libfs.kit import Changed, chunk_count, chunk_span, clip
from cloudcote.libfs.seglog import GroupCommit, RecordIndex, claim

from .aio import Page, blocking, execute

if TYPE_CHECKING:
    from cassandra.cluster import Session

    from cloudcote.libfs.chain import Settings

log = logging.getLogger("cloudcote.backends.cassandra")

KIB = 1024
MIB = 1024 * KIB
DEFAULT_PORT = 9042
#: The tables this driver owns, in creation order.
TABLES = ("objects", "chunks", "segments", "listing")
#: Listing id of directory entries (``name/``), which are never deleted.
DIR_LID = uuid.UUID(int=0)
#: The ``listing`` partition of the top level when there is no prefix: Cassandra refuses
#: an empty partition key, and no key path (nor prefix) can be ``/``.
ROOT_DIR = "/"
#: How many chunk reads or writes one operation keeps in flight.
CHUNK_WINDOW = 4
#: Chunked objects up to this size are read whole before ``read_stream`` yields.
STREAM_WHOLE = 4 * MIB
#: A log read fetches segments in spans of about this many bytes.
SPAN_BYTES = 4 * MIB
#: Appends to one path sent as one conditional batch: at most this many records.
BATCH_RECORDS = 64
#: Rows per page for listings and segment-size scans.
SCAN_PAGE = 1000
#: Give up on an operation whose row keeps changing under it.
MAX_RESTARTS = 20
#: Append rounds lost to other appenders before giving up (each one means progress).
MAX_APPEND_ROUNDS = 10_000
#: Base of the random pause after losing an append round (doubles per loss, up to 32x).
APPEND_JITTER = 0.001
#: Logs whose segment sizes stay cached.
LOG_CACHE_ENTRIES = 4096
#: Directory entries remembered as written.
DIR_CACHE_ENTRIES = 65_536
#: Seconds a cluster shutdown may take before it is abandoned (left in its thread).
SHUTDOWN_TIMEOUT = 10.0
#: Consistency levels under which a read sees every acknowledged write (in one DC for
#: the LOCAL_ ones).
QUORUM_LEVELS = frozenset({"QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "ALL"})
#: Errors after which the request was certainly not executed.
_NOT_EXECUTED = (Unavailable, NoHostAvailable, OverloadedErrorMessage,
                 IsBootstrappingErrorMessage)
#: Errors that may go away on their own; the request may or may not have taken effect.
_TRANSIENT = (Timeout, OperationTimedOut, CoordinationFailure, ConnectionException,
              ServerError, TruncateError, OSError) + _NOT_EXECUTED
#: The statement itself is wrong (or the schema is not what it expects).
_INVALID = (CqlRequestInvalid, CqlMessageInvalid)

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
_DC = re.compile(r"^[A-Za-z0-9_.\-]+$")


# --- settings ---------------------------------------------------------------------------


def parse_hosts(text: str) -> list[tuple[str, int]]:
    """``a;b:9043;[::1]:9042`` -> [(host, port), ...]."""
    out = []
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise ValueError(item)
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        port = int(port_text) if port_text else DEFAULT_PORT
        if not host or not 0 < port < 65536:
            raise ValueError(item)
        out.append((host, port))
    if not out:
        raise ValueError(text)
    return out


def parse_replication(text: str) -> dict[str, str | int]:
    """``SimpleStrategy:3`` or ``NetworkTopologyStrategy:dc1=3;dc2=3`` -> a CQL map."""
    strategy, _, rest = text.partition(":")
    strategy = strategy.strip()
    if strategy.lower() in ("simplestrategy", "simple"):
        factor = int(rest or "1")
        if factor < 1:
            raise ValueError(text)
        return {"class": "SimpleStrategy", "replication_factor": factor}
    if strategy.lower() in ("networktopologystrategy", "nts"):
        out: dict[str, str | int] = {"class": "NetworkTopologyStrategy"}
        for item in rest.split(";"):
            dc, eq, factor_text = item.partition("=")
            dc = dc.strip()
            if not eq or not _DC.match(dc) or int(factor_text) < 0:
                raise ValueError(text)
            out[dc] = int(factor_text)
        if len(out) < 2:
            raise ValueError(text)
        return out
    raise ValueError(text)


def _cql_map(values: Mapping[str, str | int]) -> str:
    items = []
    for key, value in values.items():
        val = str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"
        items.append(f"'{key}': {val}")
    return "{" + ", ".join(items) + "}"


def schema_statements(keyspace: str) -> dict[str, str]:
    """The CREATE TABLE statement of each table, by table name."""
    return {
        "objects": f"""CREATE TABLE IF NOT EXISTS {keyspace}.objects (
            path text PRIMARY KEY, kind text, id uuid, lid uuid, size bigint, chunk int,
            mtime timestamp, metadata map<text, text>, data blob)""",
        "chunks": f"""CREATE TABLE IF NOT EXISTS {keyspace}.chunks (
            blob uuid, n int, data blob, PRIMARY KEY (blob, n))""",
        "segments": f"""CREATE TABLE IF NOT EXISTS {keyspace}.segments (
            log uuid, seq bigint, nonce uuid, size bigint, chunk int, blob uuid, data blob,
            PRIMARY KEY (log, seq))""",
        "listing": f"""CREATE TABLE IF NOT EXISTS {keyspace}.listing (
            dir text, name text, lid uuid, PRIMARY KEY (dir, name, lid))""",
    }


# --- values -----------------------------------------------------------------------------


@dataclass
class _Row:
    """An ``objects`` row."""

    kind: str
    id: uuid.UUID
    lid: uuid.UUID | None
    size: int
    chunk: int
    mtime: float
    metadata: dict[str, str]
    data: bytes | None = None


def _row(values: Mapping[str, Any] | None) -> _Row | None:
    if not values or values.get("id") is None:
        return None
    stamp = values.get("mtime")
    if isinstance(stamp, datetime):
        mtime = stamp.replace(tzinfo=UTC).timestamp()
    else:
        mtime = 0.0
    return _Row(
        kind=values.get("kind") or "inline",
        id=values["id"],
        lid=values.get("lid"),
        size=int(values.get("size") or 0),
        chunk=int(values.get("chunk") or 0),
        mtime=mtime,
        metadata=dict(values.get("metadata") or {}),
        data=values.get("data"),
    )


@dataclass
class _Payload:
    """What a write publishes: inline bytes, or the blob its chunks were written under."""

    kind: str
    id: uuid.UUID
    size: int
    chunk: int
    data: bytes | None


class _Log(RecordIndex):
    """Known segment sizes of one log generation, and where this process will try its
    next append (None: look up the tail)."""

    def __init__(self) -> None:
        super().__init__()
        self.next_seq: int | None = None


class _Uncertain(Exception):
    """A conditional write failed in a way where it may have been applied."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _connection_class() -> type:
    """libev's reactor (what the wheels ship), else the asyncio one: both import and run
    without warnings under ``-W error``; asyncore's does not (and is gone in 3.12)."""
    try:
        from cassandra.io.libevreactor import LibevConnection
        return LibevConnection
    except (ImportError, DependencyException):
        from cassandra.io.asyncioreactor import AsyncioConnection
        return AsyncioConnection


async def _shutdown(cluster: Cluster) -> None:
    try:
        await blocking(cluster.shutdown, timeout=SHUTDOWN_TIMEOUT, name="cassandra-shutdown")
    except TimeoutError:
        log.warning("cassandra: cluster shutdown still running after %.0fs; abandoned",
                    SHUTDOWN_TIMEOUT)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _denied(exc: BaseException) -> bool:
    """Refused credentials or permissions: retrying will not help."""
    if isinstance(exc, NoHostAvailable):
        return any(_denied(e) for e in exc.errors.values())
    return isinstance(exc, (Unauthorized, AuthenticationFailed))


def _transient(exc: BaseException) -> bool:
    """An error that may go away by itself (the request may or may not have run).
    An unknown error code (such as protocol v5's CAS_WRITE_UNKNOWN, which this
    cassandra-driver does not name) arrives as a bare ErrorMessage and counts too."""
    if _denied(exc):
        return False
    return isinstance(exc, _TRANSIENT) or type(exc) is ErrorMessage


class _Unsettled(FsUnavailable):
    """A conditional write whose outcome could not be learnt: it may be live, so
    nothing it wrote may be cleaned up."""


# --- the driver -------------------------------------------------------------------------


class CassandraFs(Fs):
    """Objects in a Cassandra keyspace; see docs/libfs.md for the guarantees."""

    name = "cassandra"

    def __init__(
        self,
        *,
        cluster: Cluster,
        session: Session,
        hosts: list[tuple[str, int]],
        keyspace: str,
        prefix: str,
        consistency: str,
        serial_consistency: str,
        chunk_size: int,
        timeout: float,
        retries: int,
    ) -> None:
        self.cluster = cluster
        self.session = session
        #: CQL statements sent, by prepared statement ("cas-<op>" for lightweight
        #: transactions): the store requests per op.
        self.requests: Counter[str] = Counter()
        self.hosts = hosts
        self.keyspace = keyspace
        self.prefix = prefix
        self.consistency = consistency
        self.serial_consistency = serial_consistency
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.attempts = retries + 1
        self._ps: dict[str, PreparedStatement] = {}
        self._logs: LRUCache[uuid.UUID, _Log] = LRUCache(LOG_CACHE_ENTRIES)
        #: Directory entries known to be written.
        self._dirs: LRUCache[tuple[str, str], None] = LRUCache(DIR_CACHE_ENTRIES)
        # Small records waiting for one path go as one conditional batch of up to a
        # chunk's bytes; a larger (chunked) record goes alone.
        self._appends: GroupCommit[str] = GroupCommit(
            self._append_batch, max_records=BATCH_RECORDS, max_bytes=chunk_size)
        # A range read fetches its segments in spans of SPAN_BYTES: BATCH_LOG_READ.
        feats = {Feature.ATOMIC_CREATE, Feature.METADATA, Feature.BATCH_LOG_READ}
        if consistency in QUORUM_LEVELS:
            feats.add(Feature.CONSISTENT_LIST)
        self._features = frozenset(feats)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> CassandraFs:
        """Connect, check (or create) the keyspace and tables, prepare every statement.
        Bad settings and a missing schema with ``create_schema=no`` raise FsInvalidSpec;
        refused credentials FsPermission; unreachable hosts FsUnavailable."""
        positional = settings.str("", None)
        named = settings.str("hosts", None)
        if positional and named and positional != named:
            raise FsInvalidSpec(f"cassandra: hosts given twice ({positional!r}, {named!r})")
        hosts_text = positional or named or f"127.0.0.1:{DEFAULT_PORT}"
        keyspace = settings.str("keyspace", "cloudcote") or "cloudcote"
        prefix = (settings.str("prefix", "") or "").strip("/")
        replication_text = settings.str("replication", "SimpleStrategy:1") or ""
        levels = [name for name in ConsistencyLevel.name_to_value
                  if name not in ("ANY", "SERIAL", "LOCAL_SERIAL")]
        consistency = settings.choice("consistency", "LOCAL_QUORUM", levels)
        serial = settings.choice("serial_consistency", "SERIAL", ("SERIAL", "LOCAL_SERIAL"))
        chunk_size = settings.size("chunk_size", 256 * KIB)
        create_schema = settings.bool("create_schema", True)
        username = settings.str("username", None)
        password = settings.str("password", None)
        timeout = settings.duration("timeout", 12.0)
        retries = settings.int("retries", 3, minimum=0)
        local_dc = settings.str("local_dc", None) or None
        protocol = settings.int("protocol", ProtocolVersion.V5, minimum=3)
        settings.finish()

        try:
            hosts = parse_hosts(hosts_text)
        except ValueError:
            raise settings.error("hosts", hosts_text,
                                 "expected host[:port] items separated by ';'") from None
        if not _IDENT.match(keyspace):
            raise settings.error("keyspace", keyspace,
                                 "expected a CQL identifier (letters, digits, '_')")
        try:
            replication = parse_replication(replication_text)
        except ValueError:
            raise settings.error(
                "replication", replication_text,
                "expected SimpleStrategy:N or NetworkTopologyStrategy:dc1=N;dc2=N") from None
        if not 4 * KIB <= chunk_size <= 4 * MIB:
            raise settings.error("chunk_size", chunk_size, "expected a size from 4k to 4MB")
        if timeout <= 0:
            raise settings.error("timeout", timeout, "expected a duration > 0")
        if (username is None) != (password is None):
            raise FsInvalidSpec("cassandra: give both username and password, or neither")
        if protocol > ProtocolVersion.V5:
            raise settings.error("protocol", protocol, "expected 3, 4 or 5")
        if prefix:
            try:
                check_path(prefix)
            except FsError as exc:
                raise settings.error("prefix", prefix, str(exc)) from None

        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
            consistency_level=ConsistencyLevel.name_to_value[consistency],
            serial_consistency_level=ConsistencyLevel.name_to_value[serial],
            request_timeout=timeout,
            row_factory=dict_factory,
        )
        auth = PlainTextAuthProvider(username, password) if username is not None else None
        cluster = Cluster(
            contact_points=hosts,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            protocol_version=protocol,
            connection_class=_connection_class(),
            auth_provider=auth,
            connect_timeout=timeout,
            control_connection_timeout=timeout,
            # Without TCP_NODELAY, Nagle holds back the tail of a 4 KB+ request until the
            # server's delayed ACK: about 45 ms per insert instead of about 2 ms.
            sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        where = "cassandra at " + ";".join(f"{h}:{p}" for h, p in hosts)
        try:
            session = await blocking(cluster.connect, name="cassandra-connect")
        except NoHostAvailable as exc:
            await _shutdown(cluster)
            errors = list(exc.errors.values())
            if any(isinstance(e, AuthenticationFailed) for e in errors):
                raise FsPermission(f"{where}: authentication failed; check username and "
                                   f"password ({errors[0]})") from exc
            raise FsUnavailable(f"{where}: no host answered: {exc}") from exc
        except AuthenticationFailed as exc:
            await _shutdown(cluster)
            raise FsPermission(f"{where}: authentication failed: {exc}") from exc
        except BaseException:
            await _shutdown(cluster)
            raise
        fs = cls(cluster=cluster, session=session, hosts=hosts, keyspace=keyspace,
                 prefix=prefix, consistency=consistency, serial_consistency=serial,
                 chunk_size=chunk_size, timeout=timeout, retries=retries)
        try:
            await fs._check_schema(create_schema, replication)
            await blocking(fs._prepare_all, name="cassandra-prepare")
        except BaseException:
            await fs.close()
            raise
        return fs

    async def _check_schema(self, create: bool, replication: Mapping[str, str | int]) -> None:
        """Create what is missing (once per process, when the driver's schema metadata
        says so), or name it."""
        ks_meta = self.cluster.metadata.keyspaces.get(self.keyspace)
        missing = [t for t in TABLES if ks_meta is None or t not in ks_meta.tables]
        if not missing:
            return
        if not create:
            what = (f"keyspace {self.keyspace!r}" if ks_meta is None else
                    f"table {self.keyspace}.{missing[0]}")
            raise FsInvalidSpec(f"cassandra: {what} does not exist; create it or set "
                                "create_schema=yes")
        statements = []
        if ks_meta is None:
            statements.append(f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} "
                              f"WITH replication = {_cql_map(replication)}")
        tables = schema_statements(self.keyspace)
        statements += [tables[t] for t in missing]
        for cql in statements:
            try:
                self.requests["schema"] += 1
                await execute(self.session, cql, timeout=max(self.timeout, 60.0))
            except (Unauthorized, AuthenticationFailed) as exc:
                raise FsPermission(f"cassandra: cannot create the schema: {exc}") from exc
            except _INVALID as exc:
                raise FsInvalidSpec(f"cassandra: cannot create the schema: {exc}") from exc
            except _TRANSIENT as exc:
                raise FsUnavailable(f"cassandra: cannot create the schema: {exc}") from exc
        log.info("cassandra: created %s in keyspace %s", ", ".join(missing), self.keyspace)

    def _prepare_all(self) -> None:
        """Prepare every statement once (blocking; run in a thread at open)."""
        ks = self.keyspace
        head = "kind, id, lid, size, chunk, mtime, metadata"
        cols = "path, kind, id, lid, size, chunk, mtime, metadata, data"
        queries = {
            "row": (f"SELECT {head}, data FROM {ks}.objects WHERE path = ?", True),
            "head": (f"SELECT {head} FROM {ks}.objects WHERE path = ?", True),
            "head_serial": (f"SELECT {head} FROM {ks}.objects WHERE path = ?", True),
            "create": (f"INSERT INTO {ks}.objects ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                       "IF NOT EXISTS", False),
            "replace": (f"UPDATE {ks}.objects SET kind = ?, id = ?, size = ?, chunk = ?, "
                        "mtime = ?, metadata = ?, data = ? WHERE path = ? "
                        "IF kind = ? AND id = ?", False),
            "delete": (f"DELETE FROM {ks}.objects WHERE path = ? IF kind = ? AND id = ?",
                       False),
            "put_chunk": (f"INSERT INTO {ks}.chunks (blob, n, data) VALUES (?, ?, ?)", True),
            "get_chunk": (f"SELECT data FROM {ks}.chunks WHERE blob = ? AND n = ?", True),
            "drop_chunks": (f"DELETE FROM {ks}.chunks WHERE blob = ?", True),
            "put_seg": (f"INSERT INTO {ks}.segments (log, seq, nonce, size, chunk, blob, "
                        "data) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS", False),
            "tail": (f"SELECT seq FROM {ks}.segments WHERE log = ? "
                     "ORDER BY seq DESC LIMIT 1", True),
            "sizes": (f"SELECT seq, size, writetime(nonce) AS wt FROM {ks}.segments "
                      "WHERE log = ? AND seq >= ?", True),
            "segs": (f"SELECT seq, chunk, blob, data FROM {ks}.segments "
                     "WHERE log = ? AND seq >= ? AND seq <= ?", True),
            "tokens_serial": (f"SELECT seq, nonce FROM {ks}.segments "
                              "WHERE log = ? AND seq >= ? AND seq <= ?", True),
            "sizes_serial": (f"SELECT seq, size FROM {ks}.segments "
                             "WHERE log = ? AND seq >= ? AND seq < ?", True),
            "seg_blobs": (f"SELECT seq, blob FROM {ks}.segments WHERE log = ?", True),
            "drop_segs": (f"DELETE FROM {ks}.segments WHERE log = ?", True),
            "put_entry": (f"INSERT INTO {ks}.listing (dir, name, lid) VALUES (?, ?, ?)", True),
            "drop_entry": (f"DELETE FROM {ks}.listing WHERE dir = ? AND name = ? AND lid = ?",
                           True),
            "entries": (f"SELECT name FROM {ks}.listing WHERE dir = ? AND name >= ?", True),
        }
        serial = ConsistencyLevel.name_to_value[self.serial_consistency]
        for key, (cql, idempotent) in queries.items():
            try:
                ps = self.session.prepare(cql)
            except _INVALID as exc:
                raise FsInvalidSpec(
                    f"cassandra: keyspace {self.keyspace!r} does not have the tables this "
                    f"driver expects ({exc}); see the schema in "
                    "cloudcote.backends.cassandra.driver") from exc
            except _TRANSIENT as exc:
                raise FsUnavailable(f"cassandra: cannot prepare statements: {exc}") from exc
            ps.is_idempotent = idempotent
            if key.endswith("_serial"):
                ps.consistency_level = serial
            self._ps[key] = ps

    @property
    def features(self) -> frozenset[Feature]:
        return self._features

    def describe(self) -> str:
        parts = [";".join(f"{h}:{p}" for h, p in self.hosts), f"keyspace={self.keyspace}"]
        if self.prefix:
            parts.append(f"prefix={self.prefix}")
        return "cassandra:" + ",".join(parts)

    async def close(self) -> None:
        """Close the cluster connections."""
        await _shutdown(self.cluster)

    # -- keys --------------------------------------------------------------------------------

    def _key(self, path: str) -> str:
        check_path(path)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _entries(self, path: str) -> tuple[list[tuple[str, str]], tuple[str, str]]:
        """The directory entries on the way to ``path`` and its own, as (listing
        partition, name)."""
        parts = path.split("/")
        d = self.prefix
        dirs = []
        for seg in parts[:-1]:
            dirs.append((d or ROOT_DIR, seg + "/"))
            d = f"{d}/{seg}" if d else seg
        return dirs, (d or ROOT_DIR, parts[-1])

    # -- running statements --------------------------------------------------------------------

    def _map(self, exc: BaseException, op: str, path: str) -> FsError:
        msg = f"cassandra {op} {path!r}: {type(exc).__name__}: {exc}"
        if _denied(exc):
            return FsPermission(msg, path=path, op=op)
        if _transient(exc):
            return FsUnavailable(msg, path=path, op=op)
        return FsError(msg, path=path, op=op)

    async def _run(self, key: str, params: Sequence[Any], *, op: str, path: str,
                   paging_state: bytes | None = None, fetch_size: int | None = None) -> Page:
        """An idempotent statement (a read, or a write that may be repeated), retried
        with backoff on transient errors."""
        stmt: Any = self._ps[key]
        if fetch_size is not None:
            stmt = stmt.bind(params)
            stmt.fetch_size = fetch_size
            params = None  # type: ignore[assignment]
        for attempt in range(self.attempts):
            self.requests[key] += 1
            try:
                return await execute(self.session, stmt, params, timeout=self.timeout,
                                     paging_state=paging_state)
            except Exception as exc:
                if _transient(exc) and attempt < self.attempts - 1:
                    log.info("cassandra %s %r: retrying after %s: %s", op, path,
                             type(exc).__name__, exc)
                    await backoff(attempt, 0.05, 1.0)
                    continue
                raise self._map(exc, op, path) from exc
        raise AssertionError("unreachable")

    async def _rows(self, key: str, params: Sequence[Any], *, op: str, path: str,
                    fetch_size: int = SCAN_PAGE) -> AsyncGenerator[dict[str, Any], None]:
        """Every row of a paged query, one page in memory at a time."""
        state = None
        while True:
            page = await self._run(key, params, op=op, path=path, paging_state=state,
                                   fetch_size=fetch_size)
            for row in page.rows:
                yield row
            state = page.paging_state
            if not state:
                return

    async def _cas(self, stmt: Any, params: Sequence[Any] | None, *, op: str,
                   path: str) -> dict[str, Any]:
        """A lightweight transaction; returns its result row (``[applied]`` and, when not
        applied, the current values).  Retried only when it certainly did not run; an
        outcome that may or may not have been applied raises :class:`_Uncertain`."""
        for attempt in range(self.attempts):
            self.requests["cas-" + op] += 1
            try:
                page = await execute(self.session, stmt, params, timeout=self.timeout)
            except _NOT_EXECUTED as exc:
                if isinstance(exc, NoHostAvailable) and not _transient(exc):
                    raise self._map(exc, op, path) from exc
                if attempt < self.attempts - 1:
                    log.info("cassandra %s %r: retrying after %s", op, path, exc)
                    await backoff(attempt, 0.05, 1.0)
                    continue
                raise self._map(exc, op, path) from exc
            except Exception as exc:
                if _transient(exc):
                    log.info("cassandra %s %r: outcome unknown after %s: %s", op, path,
                             type(exc).__name__, exc)
                    raise _Uncertain(exc) from exc
                raise self._map(exc, op, path) from exc
            return page.rows[0]
        raise AssertionError("unreachable")

    # -- rows ----------------------------------------------------------------------------------

    async def _head(self, key: str, path: str, *, data: bool = False,
                    serial: bool = False) -> _Row | None:
        stmt = "row" if data else ("head_serial" if serial else "head")
        page = await self._run(stmt, (key,), op="read", path=path)
        return _row(page.rows[0]) if page.rows else None

    async def _existing(self, key: str, path: str) -> _Row:
        row = await self._head(key, path, data=True)
        if row is None:
            raise FsNotFound(f"cassandra: {path!r} not found", path=path, op="read")
        return row

    # -- payloads ------------------------------------------------------------------------------

    async def _put_chunks(self, blob: uuid.UUID, data: bytes, path: str) -> None:
        size = self.chunk_size
        sem = asyncio.Semaphore(CHUNK_WINDOW)

        async def put(n: int) -> None:
            async with sem:
                part = data[n * size:(n + 1) * size]
                await self._run("put_chunk", (blob, n, part), op="write", path=path)

        await asyncio.gather(*(put(n) for n in range(chunk_count(len(data), size))))

    async def _payload(self, data: bytes, path: str) -> _Payload:
        if len(data) <= self.chunk_size:
            return _Payload("inline", uuid.uuid4(), len(data), 0, bytes(data))
        blob = uuid.uuid4()
        try:
            await self._put_chunks(blob, data, path)
        except BaseException:
            await self._drop_blob(blob, path)
            raise
        return _Payload("chunked", blob, len(data), self.chunk_size, None)

    async def _drop_blob(self, blob: uuid.UUID, path: str) -> None:
        """Best effort: a failure leaves unreachable chunks behind, and says so."""
        try:
            await self._run("drop_chunks", (blob,), op="cleanup", path=path)
        except FsError as exc:
            log.warning("cassandra cleanup %r: chunks of blob %s left behind: %s",
                        path, blob, exc)

    async def _drop_payload(self, row: _Row, path: str) -> None:
        """Delete what a row that was just displaced pointed to (best effort)."""
        if row.kind == "chunked":
            await self._drop_blob(row.id, path)
        elif row.kind == "log":
            self._logs.pop(row.id, None)
            try:
                async for seg in self._rows("seg_blobs", (row.id,), op="cleanup", path=path):
                    if seg.get("blob") is not None:
                        await self._drop_blob(seg["blob"], path)
                await self._run("drop_segs", (row.id,), op="cleanup", path=path)
            except FsError as exc:
                log.warning("cassandra cleanup %r: segments of log %s left behind: %s",
                            path, row.id, exc)

    async def _get_chunk(self, blob: uuid.UUID, n: int, path: str) -> bytes:
        page = await self._run("get_chunk", (blob, n), op="read", path=path)
        if not page.rows or page.rows[0].get("data") is None:
            raise Changed(f"chunk {n} of blob {blob}")
        return bytes(page.rows[0]["data"])

    async def _blob_range(self, blob: uuid.UUID, chunk: int, size: int, start: int,
                          end: int, path: str) -> bytes:
        """Bytes ``[start, end)`` of a chunked payload, chunks fetched in parallel."""
        if start >= end:
            return b""
        first, last = chunk_span(start, end, chunk)
        sem = asyncio.Semaphore(CHUNK_WINDOW)

        async def get(n: int) -> bytes:
            async with sem:
                return await self._get_chunk(blob, n, path)

        parts = await asyncio.gather(*(get(n) for n in range(first, last + 1)))
        return clip(b"".join(parts), first * chunk, start, end)

    # -- listing entries -----------------------------------------------------------------------

    async def _add_entries(self, path: str, lid: uuid.UUID) -> None:
        """Write the directory entries on the way to ``path`` (once per process) and its
        own entry; called before the row is published."""
        dirs, (d, name) = self._entries(path)
        todo = [(dd, nn) for dd, nn in dirs if (dd, nn) not in self._dirs]
        calls = [self._run("put_entry", (dd, nn, DIR_LID), op="write", path=path)
                 for dd, nn in todo]
        calls.append(self._run("put_entry", (d, name, lid), op="write", path=path))
        await asyncio.gather(*calls)
        for item in todo:
            self._dirs[item] = None

    async def _drop_entry(self, path: str, lid: uuid.UUID | None) -> None:
        if lid is None:
            return
        _, (d, name) = self._entries(path)
        try:
            await self._run("drop_entry", (d, name, lid), op="cleanup", path=path)
        except FsError as exc:
            log.warning("cassandra cleanup %r: listing entry left behind: %s", path, exc)

    # -- publishing ----------------------------------------------------------------------------

    async def _create_row(self, key: str, path: str, p: _Payload,
                          metadata: Mapping[str, str]) -> _Row | None:
        """Publish ``p`` at ``path`` if absent (one LWT).  Returns None when published,
        else the row that is there (the caller owns cleaning up ``p``).  The listing
        entry is written first and removed again when the create loses."""
        lid = uuid.uuid4()
        await self._add_entries(path, lid)
        # UNSET, not None, for what is absent: a bound null is a tombstone.
        params = (key, p.kind, p.id, lid, p.size, p.chunk, _now_ms(),
                  dict(metadata) or UNSET_VALUE, UNSET_VALUE if p.data is None else p.data)
        for attempt in range(self.attempts):
            try:
                res = await self._cas(self._ps["create"], params, op="create", path=path)
            except _Uncertain as unc:
                cur = await self._settle(key, path, unc)
                if cur is None:
                    if attempt < self.attempts - 1:
                        continue  # certainly not there: try again
                    await self._drop_entry(path, lid)
                    raise self._map(unc.cause, "create", path) from unc.cause
                if cur.id == p.id:
                    return None
                await self._drop_entry(path, lid)
                return cur
            if res.get("[applied]"):
                return None
            cur = _row(res)
            if cur is not None and cur.id == p.id:
                return None  # an earlier, uncertain attempt of ours was applied after all
            await self._drop_entry(path, lid)
            if cur is None:
                cur = await self._head(key, path)
                if cur is None:
                    continue
            return cur
        raise FsUnavailable(f"cassandra create {path!r}: gave up", path=path, op="create")

    async def _settle(self, key: str, path: str, unc: _Uncertain) -> _Row | None:
        """After an uncertain LWT: the row as a SERIAL read sees it (which also completes
        any Paxos round left in flight)."""
        try:
            return await self._head(key, path, serial=True)
        except FsError as exc:
            raise _Unsettled(f"cassandra write {path!r}: outcome unknown after "
                             f"{type(unc.cause).__name__}: {unc.cause}; then {exc}",
                             path=path, op="write") from exc

    async def _publish(self, path: str, p: _Payload, mode: WriteMode,
                       metadata: Mapping[str, str]) -> None:
        """Make ``p`` the object at ``path`` (cleaning up ``p`` if it is not published)."""
        key = self._key(path)
        try:
            if mode is WriteMode.CREATE:
                cur = await self._create_row(key, path, p, metadata)
                if cur is not None:
                    raise FsExists(f"cassandra: {path!r} exists", path=path, op="create")
            else:
                await self._replace_row(key, path, p, metadata)
        except _Unsettled:
            raise  # the row may point at p: keep its chunks
        except BaseException:
            if p.kind == "chunked":
                await self._drop_blob(p.id, path)
            raise

    async def _replace_row(self, key: str, path: str, p: _Payload,
                           metadata: Mapping[str, str]) -> None:
        """Compare-and-set the row to ``p``; the displaced payload is deleted after."""
        cur = await self._head(key, path)
        meta = dict(metadata) or None
        unsure = 0
        for _ in range(MAX_RESTARTS):
            if cur is None:
                cur = await self._create_row(key, path, p, metadata)
                if cur is None:
                    return
                continue
            params = (p.kind, p.id, p.size, p.chunk, _now_ms(), meta, p.data, key,
                      cur.kind, cur.id)
            try:
                res = await self._cas(self._ps["replace"], params, op="replace", path=path)
            except _Uncertain as unc:
                now = await self._settle(key, path, unc)
                if now is not None and now.id == p.id:
                    await self._drop_payload(cur, path)
                    return
                unsure += 1
                if now is not None and now.id == cur.id and unsure < self.attempts:
                    continue  # ids are never reused: ours certainly did not apply
                # Ours may have been applied and displaced already (whoever displaced it
                # deleted its chunks): do not publish it again; the caller may retry, and
                # _publish deletes our chunks (gone already, or never published).
                raise self._map(unc.cause, "replace", path) from unc.cause
            if res.get("[applied]"):
                await self._drop_payload(cur, path)
                return
            cur = await self._head(key, path) if res.get("id") is not None else None
        raise FsUnavailable(f"cassandra replace {path!r}: the object keeps changing",
                            path=path, op="replace")

    # -- the API: writes -----------------------------------------------------------------------

    async def write(
        self,
        path: str,
        data: bytes,
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """CREATE: one ``INSERT ... IF NOT EXISTS`` after the chunks (atomic; FsExists).
        REPLACE: compare-and-set of the row (atomic for readers). Raises FsUnavailable."""
        key = self._key(path)
        meta = check_metadata(metadata)
        if mode is WriteMode.CREATE and len(data) > self.chunk_size:
            if await self._head(key, path) is not None:  # don't upload in vain
                raise FsExists(f"cassandra: {path!r} exists", path=path, op="create")
        p = await self._payload(data, path)
        await self._publish(path, p, mode, meta)

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """As :meth:`write`, holding about ``CHUNK_WINDOW`` chunks in memory; the object
        appears atomically when the stream ends. Raises FsExists, FsUnavailable."""
        key = self._key(path)
        meta = check_metadata(metadata)
        size = self.chunk_size
        buf = bytearray()
        blob: uuid.UUID | None = None
        n = 0
        total = 0
        pending: set[asyncio.Task[Page]] = set()

        async def flush(part: bytes) -> None:
            nonlocal n
            while len(pending) >= CHUNK_WINDOW:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.difference_update(done)
                for task in done:
                    task.result()
            pending.add(asyncio.ensure_future(
                self._run("put_chunk", (blob, n, part), op="write", path=path)))
            n += 1

        try:
            async for piece in chunks:
                buf += piece
                total += len(piece)
                while len(buf) > size:
                    if blob is None:
                        if mode is WriteMode.CREATE and await self._head(key, path):
                            raise FsExists(f"cassandra: {path!r} exists", path=path,
                                           op="create")
                        blob = uuid.uuid4()
                    part = bytes(buf[:size])
                    del buf[:size]
                    await flush(part)
            if blob is None:
                p = _Payload("inline", uuid.uuid4(), total, 0, bytes(buf))
            else:
                if buf:
                    await flush(bytes(buf))
                buf = bytearray()
                if pending:
                    await asyncio.gather(*pending)
                    pending.clear()
                p = _Payload("chunked", blob, total, size, None)
        except BaseException:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if blob is not None:
                await self._drop_blob(blob, path)
            raise
        await self._publish(path, p, mode, meta)
        return total

    async def delete(self, path: str) -> None:
        """Compare-and-delete of the row, then its payload and listing entry.  Idempotent.
        Raises FsUnavailable."""
        key = self._key(path)
        cur = await self._head(key, path)
        for _ in range(MAX_RESTARTS):
            if cur is None:
                return
            try:
                res = await self._cas(self._ps["delete"], (key, cur.kind, cur.id),
                                      op="delete", path=path)
                applied = bool(res.get("[applied]"))
            except _Uncertain as unc:
                now = await self._settle(key, path, unc)
                # Gone, or a new object (another listing id) since: ours went through.
                applied = now is None or now.lid != cur.lid
                if not applied:
                    cur = now
                    continue
            if applied:
                await self._drop_entry(path, cur.lid)
                await self._drop_payload(cur, path)
                return
            cur = await self._head(key, path)
        raise FsUnavailable(f"cassandra delete {path!r}: the object keeps changing",
                            path=path, op="delete")

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        """Read ``src`` through the client and write ``dst`` per ``mode`` (atomic at
        ``dst``); a ``src`` replaced meanwhile is read again. Raises FsNotFound, FsExists."""
        skey = self._key(src)
        self._key(dst)
        for _ in range(MAX_RESTARTS):
            row = await self._existing(skey, src)
            if row.kind == "inline":
                p = _Payload("inline", uuid.uuid4(), row.size, 0, row.data or b"")
                await self._publish(dst, p, mode, row.metadata)
                return
            try:
                await self.write_stream(dst, self._stream(src, skey, row, self.chunk_size),
                                        mode, row.metadata)
            except Changed:
                continue
            return
        raise FsUnavailable(f"cassandra copy {src!r}: the source keeps changing",
                            path=src, op="copy")

    # -- the API: reads ------------------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        """The whole object, as of one row read (never a mix). Raises FsNotFound."""
        return await self.read_range(path, 0, None)

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of one version of the object. Raises FsNotFound."""
        key = self._key(path)
        if start < 0 or (end is not None and end < start):
            raise FsError(f"cassandra: bad range {start}..{end} of {path!r}", path=path)
        for _ in range(MAX_RESTARTS):
            row = await self._existing(key, path)
            try:
                return await self._row_range(row, path, start, end)
            except Changed:
                continue  # replaced or deleted meanwhile: look again
        raise FsUnavailable(f"cassandra read {path!r}: the object keeps changing",
                            path=path, op="read")

    async def _row_range(self, row: _Row, path: str, start: int, end: int | None) -> bytes:
        if row.kind == "log":
            return await self._log_range(row, path, start, end)
        stop = row.size if end is None else min(end, row.size)
        if row.kind == "inline":
            return (row.data or b"")[start:stop]
        return await self._blob_range(row.id, row.chunk, row.size, start, stop, path)

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Yield the object in pieces of at most ``chunk_size``, holding a few stored chunks.
        Objects up to 4 MiB are read whole first (never fail midway); a larger one replaced
        or deleted while streaming raises FsNotFound at that point. Raises FsNotFound."""
        key = self._key(path)
        for _ in range(MAX_RESTARTS):
            row = await self._existing(key, path)
            if row.kind != "log" and row.size <= STREAM_WHOLE:
                try:
                    data = await self._row_range(row, path, 0, None)
                except Changed:
                    continue
                for i in range(0, len(data), chunk_size):
                    yield data[i:i + chunk_size]
                return
            started = False
            try:
                async for piece in self._stream(path, key, row, chunk_size):
                    started = True
                    yield piece
                return
            except Changed:
                if started:
                    raise FsNotFound(f"cassandra: {path!r} was replaced or deleted while "
                                     "being read", path=path, op="read") from None
        raise FsUnavailable(f"cassandra read {path!r}: the object keeps changing",
                            path=path, op="read")

    async def _stream(self, path: str, key: str, row: _Row,
                      piece: int) -> AsyncIterator[bytes]:
        """The payload of ``row`` in pieces of at most ``piece`` bytes; raises Changed
        when part of it is gone."""
        if row.kind == "inline":
            data = row.data or b""
            for i in range(0, len(data), piece):
                yield data[i:i + piece]
            return
        if row.kind == "log":
            async for part in self._log_stream(row, path):
                for i in range(0, len(part), piece):
                    yield part[i:i + piece]
            return
        count = chunk_count(row.size, row.chunk)
        ahead: deque[asyncio.Task[bytes]] = deque()
        nxt = 0
        try:
            for _ in range(count):
                while nxt < count and len(ahead) < 2:
                    ahead.append(asyncio.ensure_future(self._get_chunk(row.id, nxt, path)))
                    nxt += 1
                data = await ahead.popleft()
                for i in range(0, len(data), piece):
                    yield data[i:i + piece]
                del data
        finally:
            for task in ahead:
                task.cancel()
            if ahead:
                await asyncio.gather(*ahead, return_exceptions=True)

    async def stat(self, path: str) -> Stat:
        """Size, mtime and metadata from the row (and a log's segment sizes).
        Raises FsNotFound."""
        key = self._key(path)
        for _ in range(MAX_RESTARTS):
            row = await self._head(key, path)
            if row is None:
                raise FsNotFound(f"cassandra: {path!r} not found", path=path, op="stat")
            if row.kind != "log":
                return Stat(path, row.size, row.mtime, row.metadata)
            try:
                info = await self._log_info(row, path)
            except Changed:
                continue
            return Stat(path, info.size, info.mtime or row.mtime, {})
        raise FsUnavailable(f"cassandra stat {path!r}: the object keeps changing",
                            path=path, op="stat")

    async def exists(self, path: str) -> bool:
        """Whether the row exists now (one read)."""
        return await self._head(self._key(path), path) is not None

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        """Walk the listing partitions under ``prefix`` (see docs/libfs.md for what
        is promised). Raises FsUnavailable."""
        check_prefix(prefix)
        if not prefix or prefix.endswith("/"):
            rel_dir, start = prefix.rstrip("/"), ""
        else:
            rel_dir, _, start = prefix.rpartition("/")
        base = self.prefix
        root = f"{base}/" if base else ""
        first = f"{base}/{rel_dir}" if base and rel_dir else (base or rel_dir)
        todo: deque[tuple[str, str]] = deque([(first, start)])
        while todo:
            d, begin = todo.popleft()
            last = None
            rows = self._rows("entries", (d or ROOT_DIR, begin), op="iter", path=prefix)
            async with contextlib.aclosing(rows):
                async for entry in rows:
                    name = entry["name"]
                    if not name.startswith(begin):
                        break  # names are sorted: the prefix's block is over
                    if name == last:
                        continue
                    last = name
                    full = f"{d}/{name}" if d else name
                    if name.endswith("/"):
                        todo.append((full[:-1], ""))
                    else:
                        yield full[len(root):]

    # -- append logs ---------------------------------------------------------------------------

    def _log(self, gen: uuid.UUID) -> _Log:
        info = self._logs.get(gen)
        if info is None:
            info = self._logs[gen] = _Log()
        return info

    async def _log_sizes(self, gen: uuid.UUID, path: str) -> _Log:
        """Learn the sizes of the segments added since we last looked."""
        info = self._log(gen)
        rows = self._rows("sizes", (gen, info.count), op="read", path=path, fetch_size=5000)
        async with contextlib.aclosing(rows):
            async for seg in rows:
                seq = seg["seq"]
                if seq != info.count:
                    break  # no holes (next number only): don't trust what follows one
                info.note(seq, int(seg["size"]), (seg.get("wt") or 0) / 1e6)
        return info

    async def _log_info(self, row: _Row, path: str) -> _Log:
        """The sizes of log ``row``; raises Changed if it has no segment because it was
        deleted after ``row`` was read (rather than not appended to yet)."""
        info = await self._log_sizes(row.id, path)
        if not info.count:
            now = await self._head(self._key(path), path)
            if now is None or now.id != row.id:
                raise Changed(f"log {row.id}")
        return info

    async def _log_range(self, row: _Row, path: str, start: int, end: int | None) -> bytes:
        info = await self._log_info(row, path)
        stop = info.size if end is None else min(end, info.size)
        if start >= stop:
            return b""
        parts = []
        async for seq, data in self._log_segments(row.id, path, info, start, stop):
            seg_start = info.start(seq)
            lo = max(start - seg_start, 0)
            hi = min(stop - seg_start, len(data))
            parts.append(data[lo:hi])
        return b"".join(parts)

    async def _log_stream(self, row: _Row, path: str) -> AsyncIterator[bytes]:
        info = await self._log_info(row, path)
        async for _, data in self._log_segments(row.id, path, info, 0, info.size):
            yield data

    async def _log_segments(self, gen: uuid.UUID, path: str, info: _Log, start: int,
                            stop: int) -> AsyncIterator[tuple[int, bytes]]:
        """The segments covering bytes ``[start, stop)``, fetched in spans of about
        ``SPAN_BYTES``.  Raises Changed when the log was deleted meanwhile."""
        ends = info.ends
        records = info.span(start, stop)
        if not records:
            return
        seq, last = records[0], records[-1]
        while seq <= last:
            span_end = seq
            while span_end < last and ends[span_end + 1] - info.start(seq) <= SPAN_BYTES:
                span_end += 1
            expect = seq
            page = await self._run("segs", (gen, seq, span_end), op="read", path=path,
                                   fetch_size=span_end - seq + 1)
            rows = page.rows
            for seg in rows:
                if seg["seq"] != expect:
                    raise Changed(f"segment {expect} of log {gen}")
                data = seg.get("data")
                if seg.get("blob") is not None:
                    size = info.record_size(expect)
                    data = await self._blob_range(seg["blob"], seg["chunk"], size, 0,
                                                  size, path)
                yield expect, bytes(data or b"")
                expect += 1
            if expect != span_end + 1:
                raise Changed(f"segment {expect} of log {gen}")
            seq = span_end + 1

    async def append(self, path: str, data: bytes) -> int:
        """Add one record (a ``segments`` row at the next sequence number, by LWT); waiting
        appends to one path are batched atomically.  Returns the record's offset.  Raises
        FsExists (a whole object is there), FsUnavailable (the record may or may not be
        there)."""
        self._key(path)
        if not data:
            raise FsError("cassandra append: empty record", path=path, op="append")
        return await self._appends.append(path, path, bytes(data))

    async def _log_row(self, key: str, path: str) -> _Row:
        """The live log row at ``path``, created if absent. Raises FsExists."""
        for _ in range(MAX_RESTARTS):
            row = await self._head(key, path)
            if row is None:
                gen = uuid.uuid4()
                p = _Payload("log", gen, 0, 0, None)
                cur = await self._create_row(key, path, p, {})
                if cur is None:
                    return _Row("log", gen, None, 0, 0, time.time(), {})
                row = cur
            if row.kind != "log":
                raise FsExists(f"cassandra append {path!r}: a whole object is there",
                               path=path, op="append")
            return row
        raise FsUnavailable(f"cassandra append {path!r}: gave up", path=path, op="append")

    async def _append_batch(self, path: str, _path: str, records: list[bytes]) -> list[int]:
        """Append ``records`` at consecutive sequence numbers, all or none; their offsets."""
        key = self._key(path)
        row = await self._log_row(key, path)
        gen = row.id
        info = self._log(gen)
        tokens = [uuid.uuid4() for _ in records]
        blob: uuid.UUID | None = None
        if len(records) == 1 and len(records[0]) > self.chunk_size:
            blob = uuid.uuid4()
            await self._put_chunks(blob, records[0], path)
        applied = unsettled = False
        unsure = 0

        async def create(seq: int) -> bool:
            nonlocal unsure
            while True:
                stmt = self._segment_batch(gen, seq, tokens, records, blob)
                try:
                    res = await self._cas(stmt, None, op="append", path=path)
                except _Uncertain as unc:
                    owner = await self._settle_segment(gen, seq, path, unc)
                    if owner is None:
                        unsure += 1
                        if unsure >= self.attempts:
                            raise self._map(unc.cause, "append", path) from unc.cause
                        continue  # certainly not there: the same number again
                    return owner == tokens[0]
                if res.get("[applied]"):
                    return True
                # Not applied: ours anyway if an earlier uncertain round got through.
                return res.get("seq") == seq and res.get("nonce") == tokens[0]

        async def pause(lost: int) -> None:
            # Lost to another appender: step back a random moment, so that the losers do
            # not all start their next Paxos round together (measured: about 1.5x the
            # throughput of 8 contending processes).
            await backoff(lost, APPEND_JITTER, APPEND_JITTER * 32, full=True)

        try:
            seq = info.next_seq
            if seq is None:
                seq = await self._next_seq(gen, path)
            seq = await claim(seq, create, lambda _: self._next_seq(gen, path),
                              rounds=MAX_APPEND_ROUNDS, pause=pause,
                              what="cassandra append", path=path)
            applied = True
            info.next_seq = seq + len(records)
        except _Unsettled:
            unsettled = True
            raise
        finally:
            if not applied:
                info.next_seq = None
                if blob is not None and not unsettled:
                    await self._drop_blob(blob, path)
        offset = await self._record_start(gen, seq, path, info)
        offsets = []
        now = time.time()
        for i, data in enumerate(records):
            offsets.append(offset)
            info.note(seq + i, len(data), now)  # known from now on: the next append's start
            offset += len(data)
        return offsets

    async def _record_start(self, gen: uuid.UUID, seq: int, path: str, info: _Log) -> int:
        """The offset of segment ``seq``, which we have just inserted: the sizes of segments
        ``0..seq-1``.  They are immutable now (each number is taken only after the one
        before it exists), so what this process knows of them is still right; the rest are
        read once.  The Paxos round of our insert first completed every earlier round at
        a quorum, so a quorum read sees them; a SERIAL read settles a gap all the same."""
        if info.count < seq:
            await self._log_sizes(gen, path)
        if info.count < seq:
            page = await self._run("sizes_serial", (gen, info.count, seq), op="append",
                                   path=path, fetch_size=max(1, seq - info.count))
            for seg in page.rows:
                if seg["seq"] != info.count:
                    break
                info.note(seg["seq"], int(seg["size"]), 0.0)
        if info.count < seq:
            # Only a delete removes segments: the log went away under our append.
            raise FsUnavailable(f"cassandra append {path!r}: the log was deleted while the "
                                "record was appended", path=path, op="append")
        return info.start(seq)

    def _segment_batch(self, gen: uuid.UUID, seq: int, tokens: list[uuid.UUID],
                       records: list[bytes], blob: uuid.UUID | None) -> Any:
        ps = self._ps["put_seg"]
        if len(records) == 1:
            if blob is not None:
                return ps.bind((gen, seq, tokens[0], len(records[0]), self.chunk_size, blob,
                                UNSET_VALUE))
            return ps.bind((gen, seq, tokens[0], len(records[0]), 0, UNSET_VALUE, records[0]))
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for i, (token, data) in enumerate(zip(tokens, records, strict=True)):
            batch.add(ps, (gen, seq + i, token, len(data), 0, UNSET_VALUE, data))
        return batch

    async def _next_seq(self, gen: uuid.UUID, path: str) -> int:
        page = await self._run("tail", (gen,), op="append", path=path)
        return int(page.rows[0]["seq"]) + 1 if page.rows else 0

    async def _settle_segment(self, gen: uuid.UUID, seq: int, path: str,
                              unc: _Uncertain) -> uuid.UUID | None:
        """After an uncertain segment insert: the token at ``seq`` as a SERIAL read sees
        it (None: the number is free)."""
        try:
            page = await self._run("tokens_serial", (gen, seq, seq), op="append", path=path)
        except FsError as exc:
            raise _Unsettled(f"cassandra append {path!r}: outcome unknown after "
                             f"{type(unc.cause).__name__}: {unc.cause}; then {exc}",
                             path=path, op="append") from exc
        return page.rows[0]["nonce"] if page.rows else None
