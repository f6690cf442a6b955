"""SQL driver: objects, chunks and append logs in three tables of PostgreSQL or MySQL/MariaDB.

Chain syntax (the DSN is the positional setting; it may not contain ``,``)::

    postgresql:postgresql://user:pass@127.0.0.1:5432/mail,prefix=tenant1
    mysql:mysql://user:pass@127.0.0.1:3306/mail,chunk_size=512k
    sql:postgresql://...        (``sql`` takes the dialect from the DSN's scheme)

An ``objects`` row is the object (inline, chunked, or an append log whose records are
``segments`` rows); every read of a payload joins its row in one statement.  The
settings, the schema, how each operation maps onto SQL, READ COMMITTED and the limits:
docs/libfs.md, section "PostgreSQL and MySQL/MariaDB".
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
)
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from cachetools import LRUCache

from cloudcote.libfs.api import (
    DEFAULT_CHUNK_SIZE,
    ChangeFeed,
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
from cloudcote.libfs.seglog import GroupCommit, RecordIndex

from .client import ErrorKind
from .dialects import (
    CHUNKED,
    DIALECTS,
    INLINE,
    LOG,
    MAX_KEY_BYTES,
    TOP_BYTES,
    TOP_STR,
    Dialect,
    Session,
    valid_table,
)

if TYPE_CHECKING:
    from cloudcote.libfs.chain import Settings

T = TypeVar("T")
log = logging.getLogger("cloudcote.backends.sql")

#: How often a reader or replacer starts over when the row changed under it before it
#: gives up with FsUnavailable (each restart means another writer made progress).
RACE_ROUNDS = 16
#: How often an appender may lose the race for a seq before it gives up (each loss means
#: another record went in).
APPEND_ROUNDS = 10_000
#: Most records, and bytes, one group-committed append statement carries.
BATCH_RECORDS = 256
BATCH_BYTES = 4 * 1024 * 1024
#: Rows per listing page.
LIST_PAGE = 1000
#: Logs whose id and next seq are remembered.
LOG_CACHE = 4096
#: A length "to the end" for SQL substring (an int4 on PostgreSQL).
TO_END = (1 << 31) - 1
MAX_SEQ = (1 << 62)


class SqlFs(Fs):
    """Objects as rows of PostgreSQL or MySQL/MariaDB; see docs/libfs.md."""

    name = "sql"

    def __init__(
        self,
        dialect: Dialect,
        *,
        prefix: str = "",
        table: str = "cloudcote_fs",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        retries: int = 3,
        durable: bool = False,
        max_value: int = 1 << 30,
    ) -> None:
        self.dialect = dialect
        self.stage = dialect.stage
        self.prefix = prefix
        self.table = table
        self.chunk_size = chunk_size
        self.retries = retries
        self.max_value = max_value
        # A range read of a log is one statement for the sizes and one for the records.
        feats = {Feature.ATOMIC_CREATE, Feature.CONSISTENT_LIST, Feature.METADATA,
                 Feature.COPY, Feature.BATCH_LOG_READ}
        if durable:
            feats.add(Feature.DURABLE)
        self._features = frozenset(feats)
        #: key -> (log id, next seq to try, bytes before that seq): saves the MAX(seq) probe
        #: and the offset aggregate on every append.
        self._logs: LRUCache[Any, tuple[uuid.UUID, int, int]] = LRUCache(LOG_CACHE)
        #: Appends waiting for one log go in one statement (group commit).
        self._appends: GroupCommit[Any] = GroupCommit(
            self._append_batch, max_records=BATCH_RECORDS,
            max_bytes=min(max_value, BATCH_BYTES))
        self._feed: ChangeFeed | None = None

    # -- opening --------------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> SqlFs:
        stage = settings.stage
        dsn = settings.str("", None) or settings.str("dsn", None, required=True)
        assert dsn is not None
        prefix = (settings.str("prefix", "") or "").strip("/")
        if prefix:
            try:
                check_path(prefix)
            except FsError as exc:
                raise settings.error("prefix", prefix, str(exc)) from None
        table = settings.str("table", "cloudcote_fs") or "cloudcote_fs"
        if not valid_table(table):
            raise settings.error("table", table, "expected letters, digits and '_' (48 at most)")
        pool = settings.int("pool", 10, minimum=1)
        chunk_size = settings.size("chunk_size", DEFAULT_CHUNK_SIZE)
        if not 4096 <= chunk_size <= 256 * 1024 * 1024:
            raise settings.error("chunk_size", chunk_size, "expected 4k to 256MB")
        create_schema = settings.bool("create_schema", True)
        timeout = settings.duration("timeout", 30.0)
        if timeout <= 0:
            raise settings.error("timeout", timeout, "expected a positive duration")
        retries = settings.int("retries", 3)
        notify = settings.bool("notify", True)
        settings.finish()

        scheme = urlsplit(dsn).scheme.lower()
        dialect_cls = DIALECTS.get(scheme)
        if dialect_cls is None or "://" not in dsn:
            raise FsInvalidSpec(
                f"{stage}: DSN must look like postgresql://user:pass@host:port/db or "
                f"mysql://user:pass@host:port/db, got scheme {scheme or '(none)'!r}")
        if stage != "sql" and dialect_cls.name != stage:
            raise FsInvalidSpec(
                f"{stage}: DSN scheme {scheme!r} is for the {dialect_cls.name} stage")
        module = "asyncpg" if dialect_cls.name == "postgresql" else "aiomysql"
        try:
            __import__(module)
        except ImportError as exc:
            raise FsInvalidSpec(
                f"{stage}: {module} is not installed ({exc}); "
                f"install it with: pip install 'cloudcote[sql]'") from exc
        try:
            dialect = dialect_cls(stage, dsn, table, timeout, notify=notify)
        except ValueError as exc:  # e.g. a port that is not a number
            raise FsInvalidSpec(f"{stage}: bad DSN: {exc}") from None
        await _connect(dialect, pool, retries)
        try:
            durable, max_value = await _prepare(dialect, create_schema)
            if chunk_size > max_value:
                raise FsInvalidSpec(
                    f"{stage}: chunk_size={chunk_size} does not fit one statement on "
                    f"{dialect.where()} (values travel hex-encoded, so the server's "
                    f"max_allowed_packet must exceed twice the chunk): use chunk_size <= "
                    f"{max_value // 1024}k or raise max_allowed_packet")
        except BaseException:
            await dialect.close()
            raise
        return cls(dialect, prefix=prefix, table=table, chunk_size=chunk_size,
                   retries=retries, durable=durable, max_value=max_value)

    @property
    def requests(self) -> Counter[str]:
        """Statements sent to the server, by statement: the store requests per op."""
        return self.dialect.requests

    @property
    def features(self) -> frozenset[Feature]:
        return self._features

    def describe(self) -> str:
        parts = [self.dialect.safe_dsn()]
        if self.table != "cloudcote_fs":
            parts.append(f"table={self.table}")
        if self.prefix:
            parts.append(f"prefix={self.prefix}")
        return f"{self.stage}:{','.join(parts)}"

    def change_feed(self) -> ChangeFeed | None:
        """PostgreSQL with ``notify``: a LISTEN connection of this stage's own, opened on
        the first subscription.  MySQL: None."""
        if self._feed is None and self.dialect.channel is not None:
            from .feed import PgChangeFeed

            self._feed = PgChangeFeed(self.dialect, self.prefix)
        return self._feed

    async def close(self) -> None:
        """Close the change feed and the pool; in-flight calls fail."""
        if self._feed is not None:
            await self._feed.close()
        await self.dialect.close()

    # -- plumbing -------------------------------------------------------------------------

    def _key(self, path: str) -> Any:
        check_path(path)
        full = f"{self.prefix}/{path}" if self.prefix else path
        try:
            size = len(full.encode("utf-8"))
        except UnicodeEncodeError:
            raise FsError(f"{self.stage}: invalid path {path!r}: not valid Unicode",
                          path=path) from None
        if size > MAX_KEY_BYTES:
            raise FsError(f"{self.stage}: path {path!r} is longer than {MAX_KEY_BYTES} bytes "
                          f"with the prefix", path=path)
        return self.dialect.key(full)

    def _error(self, exc: BaseException, op: str, path: str) -> FsError:
        kind = self.dialect.classify(exc)
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        msg = f"{self.stage}: {op} {path!r} at {self.dialect.where()}: {cause}"
        if kind.transient:
            return FsUnavailable(msg, path=path, op=op)
        if kind in (ErrorKind.AUTH, ErrorKind.PERMISSION):
            return FsPermission(msg, path=path, op=op)
        return FsError(msg, path=path, op=op)

    async def _call(
        self, op: str, path: str, fn: Callable[[Session, bool], Awaitable[T]]
    ) -> T:
        """Run ``fn(session, uncertain)`` on a pooled connection; transient failures are
        retried with backoff, ``uncertain`` telling the retry that an earlier attempt may
        have taken effect."""
        uncertain = False
        for attempt in range(self.retries + 1):
            try:
                async with self.dialect.session() as s:
                    return await fn(s, uncertain)
            except (FsError, Changed):
                raise
            except Exception as exc:
                err = self._error(exc, op, path)
                if not isinstance(err, FsUnavailable) or attempt == self.retries:
                    if isinstance(err, FsUnavailable):
                        log.warning("%s: %s %r failed after %d attempts: %s", self.stage, op,
                                    path, attempt + 1, exc)
                    raise err from exc
                log.info("%s: %s %r: retrying after %s: %s", self.stage, op, path,
                         type(exc).__name__, exc)
                uncertain = True
                await backoff(attempt, 0.05, 2.0)
        raise AssertionError("unreachable")

    def _remember(self, key: Any, log_id: uuid.UUID, next_seq: int, size: int) -> None:
        """The records before ``next_seq`` in log ``log_id`` of ``key`` hold ``size``
        bytes (they are immutable, so this stays true while the log lives)."""
        self._logs[key] = (log_id, next_seq, size)

    async def _drop_payload(self, s: Session, key: Any, kind: str, blob: Any) -> None:
        """Delete what a row that is going away pointed to (same transaction)."""
        if kind == CHUNKED:
            await s.execute("delete_chunks", blob)
        elif kind == LOG:
            await s.execute("delete_segments", blob)
            self._logs.pop(key, None)

    # -- reads ----------------------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        """The whole object, from one consistent snapshot. Raises FsNotFound."""
        return await self._read(path, 0, None, "read")

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        """Bytes [start, end), clipped, from one consistent snapshot. Raises FsNotFound."""
        if start < 0 or (end is not None and end < 0):
            raise FsError(f"{self.stage}: negative range {start}..{end}", path=path)
        return await self._read(path, start, end, "read_range")

    async def _read(self, path: str, start: int, end: int | None, op: str) -> bytes:
        key = self._key(path)

        async def run(s: Session, uncertain: bool) -> bytes:
            for _ in range(RACE_ROUNDS):
                length = TO_END if end is None else max(0, end - start)
                row = await s.fetchrow("read", min(start + 1, TO_END), length, key)
                if row is None:
                    raise FsNotFound(f"{self.stage}: no object {path!r}", path=path, op=op)
                kind, blob, size, chunk, data = row
                if kind == INLINE:
                    return _bytes(data)
                got = await self._read_payload(s, key, kind, blob, size, chunk, start, end)
                if got is not None:
                    return got
                # The row was replaced or deleted between our two statements: look again.
            raise FsUnavailable(f"{self.stage}: {path!r} kept changing while read",
                                path=path, op=op)

        return await self._call(op, path, run)

    async def _read_payload(
        self, s: Session, key: Any, kind: str, blob: Any, size: int, chunk: int,
        start: int, end: int | None,
    ) -> bytes | None:
        """A chunked object's or a log's bytes [start, end), or None when the row no longer
        points at ``blob``."""
        if kind == CHUNKED:
            stop = size if end is None else min(end, size)
            if start >= stop:
                return b""
            first, last = chunk_span(start, stop, chunk)
            rows = await s.fetch("chunks", key, blob, first, last)
            if len(rows) != last - first + 1:
                return None
            return clip(b"".join(_bytes(r[0]) for r in rows), first * chunk, start, stop)
        # A log: every record, or only those that overlap the range.
        if start == 0 and end is None:
            rows = await s.fetch("segments", key, blob, 0, MAX_SEQ)
            return b"".join(_bytes(r[0]) for r in rows) if rows else None
        sizes = await s.fetch("segment_sizes", key, blob)
        if not sizes:
            return None
        index = RecordIndex()
        for _, n in sizes:
            index.add(n)
        span = index.span(start, index.size if end is None else min(end, index.size))
        if not span:
            return b""
        lo, hi = sizes[span[0]][0], sizes[span[-1]][0]
        rows = await s.fetch("segments", key, blob, lo, hi)
        if len(rows) != hi - lo + 1:
            return None
        return clip(b"".join(_bytes(r[0]) for r in rows), index.start(span[0]), start, end)

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Pieces of at most ``chunk_size`` bytes, one stored chunk (or a chunk's worth of
        log records) in memory at a time.  A concurrent replace or delete before the first
        piece restarts the read; after it, the next piece raises FsNotFound.
        Raises FsNotFound."""
        key = self._key(path)
        if chunk_size <= 0:
            raise FsError(f"{self.stage}: chunk_size must be positive", path=path)
        for _ in range(RACE_ROUNDS):
            row = await self._call(
                "read_stream", path, lambda s, u: s.fetchrow("read", 1, TO_END, key))
            if row is None:
                raise FsNotFound(f"{self.stage}: no object {path!r}", path=path,
                                 op="read_stream")
            kind, blob, size, chunk, data = row
            if kind == INLINE:
                data = _bytes(data)
                for i in range(0, len(data), chunk_size):
                    yield data[i:i + chunk_size]
                return
            yielded = complete = False
            pieces = self._stream_payload(key, path, kind, blob, size, chunk,
                                          max(chunk_size, chunk))
            async with aclosing(pieces):
                async for piece in pieces:
                    if piece is None:
                        break
                    for i in range(0, len(piece), chunk_size):
                        yield piece[i:i + chunk_size]
                        yielded = True
                else:
                    complete = True
            if complete:
                return
            if yielded:
                raise FsNotFound(f"{self.stage}: {path!r} was replaced or deleted while "
                                 f"being read", path=path, op="read_stream")
        raise FsUnavailable(f"{self.stage}: {path!r} kept changing while read", path=path,
                            op="read_stream")

    async def _stream_payload(
        self, key: Any, path: str, kind: str, blob: Any, size: int, chunk: int, budget: int
    ) -> AsyncGenerator[bytes | None, None]:
        """Yield a chunked object's chunks or a log's records in batches of about
        ``budget`` bytes; yield None (and stop) when the row stopped pointing at ``blob``."""
        if kind == CHUNKED:
            for n in range(chunk_count(size, chunk)):
                rows = await self._call(
                    "read_stream", path,
                    lambda s, u, n=n: s.fetch("chunks", key, blob, n, n))  # type: ignore[misc]
                if not rows:
                    yield None
                    return
                yield _bytes(rows[0][0])
            return
        sizes = await self._call("read_stream", path,
                                 lambda s, u: s.fetch("segment_sizes", key, blob))
        if not sizes:
            yield None
            return
        i = 0
        while i < len(sizes):
            j, total = i, 0
            while j < len(sizes) and (j == i or total + sizes[j][1] <= budget):
                total += sizes[j][1]
                j += 1
            lo, hi = sizes[i][0], sizes[j - 1][0]
            rows = await self._call(
                "read_stream", path,
                lambda s, u, lo=lo, hi=hi: s.fetch("segments", key, blob, lo, hi))  # type: ignore[misc]
            if len(rows) != j - i:
                yield None
                return
            yield b"".join(_bytes(r[0]) for r in rows)
            i = j

    async def stat(self, path: str) -> Stat:
        """Size, mtime and metadata from one statement. Raises FsNotFound."""
        key = self._key(path)
        row = await self._call("stat", path, lambda s, u: s.fetchrow("stat", key))
        if row is None:
            raise FsNotFound(f"{self.stage}: no object {path!r}", path=path, op="stat")
        kind, size, mtime, metadata, log_size, log_mtime = row
        if kind == LOG:
            size = log_size or 0
            mtime = log_mtime if log_mtime is not None else mtime
        meta = json.loads(metadata) if metadata else {}
        return Stat(path, int(size), float(mtime), meta)

    async def exists(self, path: str) -> bool:
        """Whether the row exists now (one primary-key lookup)."""
        key = self._key(path)
        row = await self._call("exists", path, lambda s, u: s.fetchrow("exists", key))
        return row is not None

    # -- writes ---------------------------------------------------------------------------

    async def write(
        self,
        path: str,
        data: bytes,
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """CREATE: one primary-key insert (chunks first, same transaction) -> FsExists if
        the path exists; REPLACE: one transaction under the row lock. Atomic for readers."""
        key = self._key(path)
        meta = _meta_json(metadata)
        size = len(data)
        created = uuid.uuid4()  # kept across retries: an uncertain create finds its own id

        async def run(s: Session, uncertain: bool) -> None:
            blob = created if mode is WriteMode.CREATE else uuid.uuid4()
            if mode is WriteMode.CREATE and uncertain and await self._created(s, key, blob,
                                                                             path):
                return
            if size <= self.chunk_size:
                if mode is WriteMode.CREATE:
                    if await s.execute("insert", key, INLINE, blob, size, self.chunk_size,
                                       meta, data) == 0:
                        raise self._exists(path, "write")
                    return
                async with s.transaction():
                    await self._publish(s, key, path, INLINE, blob, size, meta, data, mode)
                return
            view = memoryview(data)
            async with s.transaction():
                if mode is WriteMode.CREATE and await s.fetchrow("exists", key):
                    raise self._exists(path, "write")
                for n, off in enumerate(range(0, size, self.chunk_size)):
                    await s.execute("insert_chunk", blob, n, view[off:off + self.chunk_size])
                await self._publish(s, key, path, CHUNKED, blob, size, meta, None, mode)

        await self._call("write", path, run)

    async def _created(self, s: Session, key: Any, blob: uuid.UUID, path: str) -> bool:
        """After an uncertain CREATE: True if the row is ours, FsExists if someone else's."""
        row = await s.fetchrow("head", key)
        if row is None:
            return False
        if self.dialect.unident(row[1]) == blob:
            return True
        raise self._exists(path, "write")

    def _exists(self, path: str, op: str) -> FsExists:
        return FsExists(f"{self.stage}: {path!r} exists", path=path, op=op)

    async def _publish(
        self, s: Session, key: Any, path: str, kind: str, blob: uuid.UUID, size: int,
        meta: str, data: Any, mode: WriteMode,
    ) -> None:
        """Inside a transaction: CREATE inserts the row (FsExists if present); REPLACE locks
        the current row, overwrites it and drops the payload it pointed to."""
        args = (kind, blob, size, self.chunk_size, meta, data)
        if mode is WriteMode.CREATE:
            if await s.execute("insert", key, *args) == 0:
                raise self._exists(path, "write")
            return
        for _ in range(RACE_ROUNDS):
            old = await s.fetchrow("head_lock", key)
            if old is not None:
                await s.execute("update", *args, key)
                await self._drop_payload(s, key, old[0], old[1])
                return
            if await s.execute("insert", key, *args) == 1:
                return
            # Created by someone else since our look: lock that row and replace it.
        raise FsUnavailable(f"{self.stage}: {path!r} kept changing while replaced",
                            path=path, op="write")

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Like :meth:`write`, holding about one chunk: the chunks go in one statement each,
        inside the transaction that publishes the row.  A transient failure after the
        input was consumed is raised as FsUnavailable (nothing was published)."""
        key = self._key(path)
        meta = _meta_json(metadata)
        if mode is WriteMode.CREATE and await self.exists(path):
            raise self._exists(path, "write_stream")  # before reading 64 MB for nothing
        it = aiter(chunks)
        buf = bytearray()
        done = False
        while len(buf) <= self.chunk_size:
            try:
                buf += await anext(it)
            except StopAsyncIteration:
                done = True
                break
        if done:
            await self.write(path, bytes(buf), mode, metadata)
            return len(buf)
        blob = uuid.uuid4()
        total = 0
        try:
            async with self.dialect.session() as s, s.transaction():
                n = 0
                while True:
                    while len(buf) >= self.chunk_size or (done and buf):
                        with memoryview(buf) as view:
                            piece = bytes(view[:self.chunk_size])
                        del buf[:self.chunk_size]
                        await s.execute("insert_chunk", blob, n, piece)
                        n += 1
                        total += len(piece)
                        del piece
                    if done:
                        break
                    try:
                        buf += await anext(it)
                    except StopAsyncIteration:
                        done = True
                    except Exception as exc:
                        raise _InputError() from exc  # the caller's, not the store's
                await self._publish(s, key, path, CHUNKED, blob, total, meta, None, mode)
        except FsError:
            raise
        except _InputError as exc:
            assert exc.__cause__ is not None
            raise exc.__cause__ from None
        except Exception as exc:
            raise self._error(exc, "write_stream", path) from exc
        return total

    async def append(self, path: str, data: bytes) -> int:
        """One ``segments`` row at the next free seq of the path's log (created with its
        first record).  Atomic, gap-free, never duplicated after an uncertain failure.
        Appends to one path waiting in this process go in together (group commit).
        Returns the record's offset.  FsExists if the path holds a whole object."""
        if not data:
            raise FsError(f"{self.stage}: append of an empty record", path=path, op="append")
        if len(data) > self.max_value:
            raise FsError(f"{self.stage}: append record of {len(data)} bytes is larger than "
                          f"one statement may carry ({self.max_value})", path=path,
                          op="append")
        return await self._appends.append(self._key(path), path, bytes(data))

    async def _append_batch(self, key: Any, path: str, records: list[bytes]) -> list[int]:
        """Write ``records`` at consecutive seqs of the path's log, all or none; return each
        record's offset."""
        # Each record's token, kept across retries: an uncertain attempt finds its own.
        tokens = [uuid.uuid4() for _ in records]
        count, first = len(records), tokens[0]
        new_log = uuid.uuid4()  # the id we give the log if we create it; kept across retries
        cached = self._logs.get(key)
        state: dict[str, Any] = {
            "log": cached[0] if cached else None,
            "seq": cached[1] if cached else None,
            # (seq, bytes): the records before ``seq`` in ``log`` hold ``bytes`` bytes.
            "known": (cached[1], cached[2]) if cached else (0, 0),
            "pending": None,  # lowest seq an uncertain attempt may have filled
            "landed": None,  # the seq our batch went in at, once it certainly did
        }

        def landed(log_id: uuid.UUID, seq: int) -> None:
            state["log"], state["landed"] = log_id, seq

        async def place(s: Session) -> None:
            for _ in range(APPEND_ROUNDS):
                if state["log"] is None:
                    row = await s.fetchrow("head", key)
                    if row is None:
                        try:
                            async with s.transaction():
                                created = await s.execute("insert", key, LOG, new_log, 0, 0,
                                                          "{}", None)
                                if created:
                                    await self._insert_records(s, key, new_log, 0, tokens,
                                                                  records, True)
                        except BaseException:
                            state["pending"] = 0  # the commit may have happened
                            raise
                        if created:
                            state["known"] = (0, 0)
                            landed(new_log, 0)
                            return
                        continue  # someone else created the log just now
                    if row[0] != LOG:
                        raise FsExists(f"{self.stage}: {path!r} was written whole; cannot "
                                       f"append to it", path=path, op="append")
                    state["log"], state["seq"] = self.dialect.unident(row[1]), None
                    state["known"] = (0, 0)
                log_id = state["log"]
                if state["pending"] is not None:
                    # An earlier attempt failed after its statement was sent.  If it landed,
                    # our first token is there now (a batch lands whole); if it is still in
                    # flight, it can only land at the seq we are about to try (each seq
                    # waits for its predecessor), and the probe below finds our token there.
                    mine = await s.fetch("mine", log_id, first, state["pending"])
                    if mine:
                        landed(log_id, int(mine[0][0]))
                        return
                    state["pending"] = None
                if state["seq"] is None:
                    last = (await s.fetchrow("tail", log_id) or (None,))[0]
                    state["seq"] = 0 if last is None else int(last) + 1
                seq = state["seq"]
                try:
                    inserted = await self._insert_records(s, key, log_id, seq, tokens, records,
                                                           False)
                except BaseException:
                    state["pending"] = seq
                    raise
                if inserted:
                    landed(log_id, seq)
                    return
                probe = await s.fetchrow("append_probe", key, log_id, seq)
                assert probe is not None  # a SELECT of three scalar subqueries: one row
                current, holder, last = probe
                if holder is not None and self.dialect.unident(holder) == first:
                    landed(log_id, seq)
                    return  # an earlier, uncertain attempt of ours got there
                if current is None or self.dialect.unident(current) != log_id:
                    state["log"] = None  # the log was deleted or replaced: look again
                    self._logs.pop(key, None)
                    continue
                state["seq"] = 0 if last is None else int(last) + 1
            raise FsUnavailable(f"{self.stage}: append to {path!r} lost {APPEND_ROUNDS} "
                                f"races in a row", path=path, op="append")

        async def run(s: Session, uncertain: bool) -> list[int]:
            if state["landed"] is None:
                await place(s)
            log_id, seq = state["log"], state["landed"]
            # Our batch is in at ``seq``, so every record before it is committed and
            # immutable: its start is what we know of them plus one aggregate over the rest
            # (none when we appended last, the usual case).
            known_seq, offset = state["known"]
            if seq < known_seq:
                known_seq, offset = 0, 0
            if seq > known_seq:
                row = await s.fetchrow("log_bytes", log_id, known_seq, seq)
                assert row is not None  # an aggregate: one row
                if int(row[0]) != seq - known_seq:
                    # Only a delete or replace removes segments: the log went away under us.
                    raise FsUnavailable(f"{self.stage}: {path!r} was deleted or replaced "
                                        f"while a record was appended to it", path=path,
                                        op="append")
                offset += int(row[1])
                state["known"] = (seq, offset)
            offsets = []
            for record in records:
                offsets.append(offset)
                offset += len(record)
            self._remember(key, log_id, seq + count, offset)
            return offsets

        return await self._call("append", path, run)

    async def _insert_records(
        self, s: Session, key: Any, log_id: uuid.UUID, seq: int, tokens: list[uuid.UUID],
        records: list[bytes], in_transaction: bool,
    ) -> bool:
        """Segments ``seq...`` for ``records``, all or none; False if a seq was taken or the
        path is no longer this log."""
        if len(records) == 1:
            return await s.execute("append", log_id, seq, tokens[0], len(records[0]),
                                   records[0], key) == 1
        if in_transaction:
            return await s.append_many(log_id, seq, tokens, records, key) == len(records)
        try:
            async with s.transaction():
                if await s.append_many(log_id, seq, tokens, records, key) != len(records):
                    raise Changed()  # some seqs were taken: undo the rest
        except Changed:
            return False
        return True

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        """Inside the server, in one transaction under a share lock on ``src``; ``dst`` is
        published per ``mode`` like :meth:`write`. Raises FsNotFound, FsExists."""
        skey, dkey = self._key(src), self._key(dst)
        created = uuid.uuid4()

        async def run(s: Session, uncertain: bool) -> None:
            blob = created if mode is WriteMode.CREATE else uuid.uuid4()
            if mode is WriteMode.CREATE and uncertain and await self._created(s, dkey, blob,
                                                                             dst):
                return
            async with s.transaction():
                source = await s.fetchrow("head_share", skey)
                if source is None:
                    raise FsNotFound(f"{self.stage}: no object {src!r}", path=src, op="copy")
                if skey == dkey:
                    if mode is WriteMode.CREATE:
                        raise self._exists(dst, "copy")
                    return
                old = None
                if mode is WriteMode.REPLACE:
                    old = await s.fetchrow("head_lock", dkey)
                    if old is not None:
                        await s.execute("delete", dkey)
                if await s.execute("copy_row", dkey, blob, skey) == 0:
                    if mode is WriteMode.CREATE:
                        raise self._exists(dst, "copy")
                    # Created by someone since our look: the transaction retries as a whole.
                    raise Changed()
                kind, sblob = source
                if kind == CHUNKED:
                    await s.execute("copy_chunks", blob, sblob)
                elif kind == LOG:
                    await s.execute("copy_segments", blob, sblob)
                if old is not None:
                    await self._drop_payload(s, dkey, old[0], old[1])

        for _ in range(RACE_ROUNDS):
            try:
                await self._call("copy", dst, run)
                return
            except Changed:
                continue
        raise FsUnavailable(f"{self.stage}: {dst!r} kept changing while copied to", path=dst,
                            op="copy")

    async def delete(self, path: str) -> None:
        """Row and payload in one transaction under the row lock. Idempotent."""
        key = self._key(path)

        async def run(s: Session, uncertain: bool) -> None:
            if await s.fetchrow("exists", key) is None:
                self._logs.pop(key, None)
                return
            async with s.transaction():
                old = await s.fetchrow("head_lock", key)
                if old is None:
                    return
                await s.execute("delete", key)
                await self._drop_payload(s, key, old[0], old[1])

        await self._call("delete", path, run)

    # -- listing --------------------------------------------------------------------------

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        """Every path under ``prefix``, by pages of a primary-key range scan; strongly
        consistent (``Feature.CONSISTENT_LIST``)."""
        check_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        low = self.dialect.key(full)
        high = self.dialect.successor(low)
        if high is None:
            high = TOP_BYTES if isinstance(low, bytes) else TOP_STR
        cut = len(self.prefix) + 1 if self.prefix else 0
        statement, bound = "list_from", low
        while True:
            rows = await self._call(
                "iter", prefix,
                lambda s, u, st=statement, b=bound: s.fetch(st, b, high, LIST_PAGE))  # type: ignore[misc]
            for (value,) in rows:
                yield self.dialect.unkey(value)[cut:]
            if len(rows) < LIST_PAGE:
                return
            statement, bound = "list_after", rows[-1][0]


class _InputError(Exception):
    """The chunks given to ``write_stream`` failed; raised again as they were."""


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else bytes(value)


def _meta_json(metadata: Mapping[str, str] | None) -> str:
    return json.dumps(check_metadata(metadata), separators=(",", ":"), sort_keys=True)


async def _connect(dialect: Dialect, pool: int, retries: int) -> None:
    """Open the pool: bad credentials or a missing database are an FsInvalidSpec naming the
    stage and host; a server that does not answer is retried, then FsUnavailable."""
    stage, where = dialect.stage, dialect.where()
    for attempt in range(retries + 1):
        try:
            await dialect.connect(pool)
            return
        except Exception as exc:
            kind = dialect.classify(exc)
            if kind is ErrorKind.AUTH:
                raise FsInvalidSpec(
                    f"{stage}: authentication failed for user {dialect.user!r} at {where}: "
                    f"{exc}") from None
            if kind in (ErrorKind.PERMISSION, ErrorKind.NO_DATABASE, ErrorKind.NO_TABLE):
                raise FsInvalidSpec(f"{stage}: cannot use database at {where} as "
                                    f"{dialect.user!r}: {exc}") from None
            if not kind.transient:
                raise FsInvalidSpec(f"{stage}: cannot connect to {where}: "
                                    f"{type(exc).__name__}: {exc}") from None
            if attempt == retries:
                raise FsUnavailable(f"{stage}: cannot connect to {where}: "
                                    f"{type(exc).__name__}: {exc}") from exc
            log.info("%s: connecting to %s: %s; retrying", stage, where, exc)
            await backoff(attempt, 0.1, 2.0)


async def _prepare(dialect: Dialect, create: bool) -> tuple[bool, int]:
    """Check (and with ``create``, make) the tables; return the server's limits."""
    stage, where = dialect.stage, dialect.where()
    try:
        async with dialect.session() as s:
            missing = await dialect.missing_tables(s)
            if missing and not create:
                raise FsInvalidSpec(
                    f"{stage}: table {missing[0]!r} does not exist in {where} "
                    f"(create_schema=no)")
            ddl = dialect.ddl()
            for name in missing:
                try:
                    await s.script(ddl[name])
                except Exception as exc:
                    # Two processes creating the same table at once: PostgreSQL may report
                    # a duplicate catalog row; the table is there all the same.
                    if name in await dialect.missing_tables(s):
                        raise FsInvalidSpec(
                            f"{stage}: cannot create table {name!r} in {where}: "
                            f"{exc}") from None
            for name, columns in (
                ("objects", "path, kind, blob_id, size, chunk, mtime, metadata, data"),
                ("chunks", "blob_id, n, data"),
                ("segments", "log_id, seq, token, size, mtime, data"),
            ):
                table = dialect.tables[name]
                try:
                    await s.script(f"SELECT {columns} FROM {dialect.quote(table)} WHERE 1 = 0")
                except Exception as exc:
                    if dialect.classify(exc).transient:
                        raise
                    raise FsInvalidSpec(
                        f"{stage}: table {table!r} in {where} does not have the expected "
                        f"columns ({columns}): {exc}") from None
            return await dialect.server_limits(s)
    except FsError:
        raise
    except Exception as exc:
        if dialect.classify(exc).transient:
            raise FsUnavailable(f"{stage}: preparing {where}: {exc}") from exc
        raise FsInvalidSpec(f"{stage}: preparing {where}: {type(exc).__name__}: "
                            f"{exc}") from None
