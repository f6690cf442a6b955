"""S3 driver: objects in one bucket of an S3-compatible store (AWS, SeaweedFS, MinIO, moto).

Chain syntax::

    s3:mail,endpoint=http://127.0.0.1:8333,access_key=...,secret_key=...,prefix=site1

Creates are conditional PUTs (``If-None-Match: *``); an append log is its head object at
the path plus one segment object per append (or group of appends) under the reserved
``.cloudcote-seg/``.  The settings, how each operation maps onto S3, the key scheme and
the SeaweedFS notes: docs/libfs.md, section "S3".
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from cachetools import LRUCache

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
from cloudcote.libfs.kit import Changed
from cloudcote.libfs.seglog import GroupCommit, RecordIndex, claim

if TYPE_CHECKING:
    from cloudcote.libfs.chain import Settings

log = logging.getLogger("cloudcote.backends.s3")

MIB = 1024 * 1024
#: Reserved top-level names under the prefix: append segments, and temporary objects of
#: multipart creates (the name posix uses for its temporary files, too).
SEG_DIR = ".cloudcote-seg"
TMP_DIR = ".cloudcote-tmp"
RESERVED = (SEG_DIR, TMP_DIR)
CT_BLOB = "application/octet-stream"
CT_LOG = "application/x-cloudcote-log"
CT_SEG = "application/x-cloudcote-segment"
#: CopyObject's limit; bigger sources are copied through the client.
MAX_COPY_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
#: How many append logs keep their cached tail.
LOG_CACHE_ENTRIES = 4096
#: Segments up to this size are fetched whole (and cached) even for a partial range.
SEGMENT_FETCH_WHOLE = MIB
#: Give up on an operation whose object keeps changing under it.
MAX_RESTARTS = 20
#: Appends to one path waiting in this process go as one object of at most this many
#: records and bytes (a larger record alone).
BATCH_RECORDS = 64
BATCH_BYTES = MIB
#: Segment numbers lost to other appenders before giving up (each one means progress).
MAX_APPEND_ROUNDS = 10_000

_PERMISSION_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "InvalidSecurity", "InvalidToken", "ExpiredToken", "AccountProblem", "Forbidden",
})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "OperationAborted", "RequestLimitExceeded",
    "TooManyRequests", "BandwidthLimitExceeded",
})


class S3AccessDenied(FsInvalidSpec, FsPermission):
    """The store refused our credentials when the chain was opened: both a spec error
    (the chain cannot be opened) and a permission error (retrying will not help)."""


class _Log(RecordIndex):
    """What this driver knows about one generation of an append log: record 0 is the
    head, record n >= 1 segment n.  Segments are immutable while their generation lives,
    so this only ever grows."""

    def __init__(self, gen: str, head_size: int, mtime: float) -> None:
        super().__init__(mtime)
        self.gen = gen
        self.tail_known = False
        self.add(head_size)


def _segment_cache(limit: int) -> LRUCache[str, bytes]:
    """Immutable segment bytes by key, bounded in bytes (0: nothing is kept)."""
    return LRUCache(maxsize=limit, getsizeof=len)


def _parse_ctype(value: str | None) -> tuple[str, dict[str, str]]:
    main, *params = (value or "").split(";")
    out = {}
    for param in params:
        key, _, val = param.strip().partition("=")
        out[key.strip().lower()] = val.strip()
    return main.strip().lower(), out


def _mtime(resp: Mapping[str, Any]) -> float:
    stamp = resp.get("LastModified")
    return stamp.timestamp() if stamp is not None else time.time()


def _retried(exc: BaseException) -> bool:
    """Whether botocore resent the request that ended in ``exc`` (its first send may
    have taken effect)."""
    cause = exc.__cause__ if isinstance(exc, FsError) else exc
    if isinstance(cause, ClientError):
        return int(cause.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) > 0
    return False


def _token() -> str:
    return secrets.token_hex(8)


def _body(data: bytes | bytearray | io.BytesIO) -> bytes | bytearray | io.BytesIO:
    """A request body aiohttp sends without blocking: it warns about (and the test suite
    refuses) raw bodies above 1 MiB, but streams a BytesIO in chunks."""
    if isinstance(data, io.BytesIO) or len(data) <= MIB:
        return data
    return io.BytesIO(data)


class S3Fs(Fs):
    """Objects in one S3 bucket; see docs/libfs.md for the guarantees."""

    name = "s3"

    def __init__(
        self,
        *,
        client: Any,
        stack: contextlib.AsyncExitStack,
        bucket: str,
        prefix: str,
        endpoint: str | None,
        part_size: int,
        multipart_threshold: int,
        pool: int,
        atomic_create: bool,
        segment_cache: int,
        multipart_create: str = "copy",
    ) -> None:
        self.client = client
        self._stack = stack
        self.bucket = bucket
        self.prefix = prefix
        self._root = f"{prefix}/" if prefix else ""
        self._seg_root = f"{self._root}{SEG_DIR}/"
        self._tmp_root = f"{self._root}{TMP_DIR}/"
        self.endpoint = endpoint
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.atomic_create = atomic_create
        self.multipart_create = multipart_create
        #: HTTP requests sent, by S3 operation name (resends included).
        self.requests: Counter[str] = Counter()
        self._logs: LRUCache[str, _Log] = LRUCache(LOG_CACHE_ENTRIES)
        self._segments = _segment_cache(segment_cache)
        # One append per path at a time in this process, the ones waiting meanwhile going
        # together as the next segment: racing our own tasks for a segment number would
        # only cost 412s and listings, and on a store whose conditional PUT is not atomic
        # (atomic_create=no) two of them could both "win" and one record be lost.
        self._appends: GroupCommit[str] = GroupCommit(
            self._append, max_records=BATCH_RECORDS, max_bytes=BATCH_BYTES)
        self._fetch_slots = asyncio.Semaphore(max(1, pool // 2))
        feats = {Feature.COPY, Feature.METADATA, Feature.CONSISTENT_LIST, Feature.DURABLE}
        if atomic_create:
            feats.add(Feature.ATOMIC_CREATE)
        self._features = frozenset(feats)
        client.meta.events.register("before-send.s3", self._count_request)

    # -- opening --------------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> S3Fs:
        """Create the client once and check the bucket with HeadBucket.  Bad credentials
        raise :class:`S3AccessDenied`; a missing bucket FsInvalidSpec (unless
        ``create_bucket=yes``); an unreachable endpoint FsUnavailable."""
        positional = settings.str("", None)
        named = settings.str("bucket", None)
        if positional and named and positional != named:
            raise FsInvalidSpec(f"s3: bucket given twice ({positional!r} and {named!r})")
        bucket = positional or named
        if not bucket:
            raise FsInvalidSpec("s3: setting 'bucket' is required")
        endpoint = settings.str("endpoint", None) or None
        region = settings.str("region", "us-east-1") or "us-east-1"
        prefix = (settings.str("prefix", "") or "").strip("/")
        access_key = settings.str("access_key", None)
        secret_key = settings.str("secret_key", None)
        addressing = settings.choice(
            "addressing", "path" if endpoint else "auto", ("path", "virtual", "auto"))
        pool = settings.int("pool", 32, minimum=1)
        threshold = settings.size("multipart_threshold", 16 * MIB)
        part_size = settings.size("part_size", 8 * MIB)
        retries = settings.int("retries", 5, minimum=0)
        timeout = settings.duration("timeout", 30.0)
        create_bucket = settings.bool("create_bucket", False)
        atomic_create = settings.bool("atomic_create", True)
        segment_cache = settings.size("segment_cache", 8 * MIB)
        multipart_create = settings.choice("multipart_create", "copy", ("copy", "complete"))
        settings.finish()

        if part_size < 5 * MIB:
            raise settings.error("part_size", part_size, "S3 parts are at least 5MB")
        if part_size > 5 * 1024 * MIB:
            raise settings.error("part_size", part_size, "S3 parts are at most 5GB")
        if threshold < 1:
            raise settings.error("multipart_threshold", threshold, "expected a size > 0")
        if timeout <= 0:
            raise settings.error("timeout", timeout, "expected a duration > 0")
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise settings.error("endpoint", endpoint, "expected an http:// or https:// URL")
        if (access_key is None) != (secret_key is None):
            raise FsInvalidSpec("s3: give both access_key and secret_key, or neither")
        if prefix:
            try:
                check_path(prefix)
            except FsError as exc:
                raise settings.error("prefix", prefix, str(exc)) from None

        config = AioConfig(
            region_name=region,
            signature_version="s3v4",
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
            max_pool_connections=pool,
            s3={"addressing_style": addressing},
        )
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(get_session().create_client(
                "s3",
                endpoint_url=endpoint,
                region_name=region,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                config=config,
            ))
            fs = cls(client=client, stack=stack, bucket=bucket, prefix=prefix,
                     endpoint=endpoint, part_size=part_size, multipart_threshold=threshold,
                     pool=pool, atomic_create=atomic_create, segment_cache=segment_cache,
                     multipart_create=multipart_create)
            await fs._check_bucket(create_bucket, region)
        except BaseException:
            await stack.aclose()
            raise
        return fs

    async def _check_bucket(self, create: bool, region: str) -> None:
        where = f"s3: bucket {self.bucket!r} at {self.endpoint or 'AWS'}"
        try:
            await self.client.head_bucket(Bucket=self.bucket)
            return
        except NoCredentialsError as exc:
            raise FsInvalidSpec(f"{where}: no credentials; set access_key and secret_key "
                                "or the AWS environment") from exc
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code", "")
            if status in (401, 403) or code in _PERMISSION_CODES:
                raise S3AccessDenied(f"{where}: access denied ({code or status}); check "
                                     "access_key and secret_key") from exc
            if status != 404 and code not in ("NoSuchBucket", "NotFound", "404"):
                raise self._map(exc, "open", "") from exc
            if not create:
                raise FsInvalidSpec(f"{where} does not exist; create it or set "
                                    "create_bucket=yes") from exc
        except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise FsUnavailable(f"{where}: cannot reach the store: {exc}") from exc
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self.client.create_bucket(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise FsInvalidSpec(f"{where}: cannot create it: {code or exc}") from exc
        except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise FsUnavailable(f"{where}: cannot reach the store: {exc}") from exc
        log.info("%s created", where)

    def _count_request(self, event_name: str = "", **kwargs: Any) -> None:
        self.requests[event_name.rsplit(".", 1)[-1]] += 1

    @property
    def features(self) -> frozenset[Feature]:
        return self._features

    def describe(self) -> str:
        parts = [f"bucket={self.bucket}"]
        if self.endpoint:
            parts.append(f"endpoint={self.endpoint}")
        if self.prefix:
            parts.append(f"prefix={self.prefix}")
        return "s3:" + ",".join(parts)

    async def close(self) -> None:
        """Close the client and its connection pool."""
        await self._stack.aclose()

    # -- keys and errors ------------------------------------------------------------------

    def _key(self, path: str) -> str:
        check_path(path)
        if path.split("/", 1)[0] in RESERVED:
            raise FsError(f"s3: the top-level names {', '.join(RESERVED)} are reserved",
                          path=path)
        return self._root + path

    def _seg_prefix(self, path: str, gen: str) -> str:
        return f"{self._seg_root}{path}/{gen}."

    def _seg_key(self, path: str, gen: str, n: int) -> str:
        return f"{self._seg_prefix(path, gen)}{n:012d}"

    def _map(self, exc: BaseException, op: str, path: str) -> FsError:
        where = f"{self.describe()} {op} {path!r}"
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            msg = f"{where}: {code or status} {err.get('Message', '')}".rstrip()
            if code != "NoSuchBucket" and (status == 404 or code in ("NoSuchKey", "NotFound",
                                                                     "NoSuchUpload")):
                return FsNotFound(msg, path=path, op=op)
            if status == 412 or code == "PreconditionFailed":
                return FsExists(msg, path=path, op=op)
            if status in (401, 403) or code in _PERMISSION_CODES:
                log.error("%s: permission denied: %s", where, code or status)
                return FsPermission(msg, path=path, op=op)
            if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
                log.warning("%s: store unavailable after retries: %s", where, code or status)
                return FsUnavailable(msg, path=path, op=op)
            return FsError(msg, path=path, op=op)
        if isinstance(exc, NoCredentialsError):
            return FsPermission(f"{where}: no credentials", path=path, op=op)
        if isinstance(exc, (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError,
                            OSError)):
            log.warning("%s: store unavailable after retries: %s", where, exc)
            return FsUnavailable(f"{where}: {exc}", path=path, op=op)
        return FsError(f"{where}: {exc}", path=path, op=op)

    async def _call(self, method: str, op: str, path: str, **kwargs: Any) -> Any:
        """One S3 API call (botocore resends transient failures); errors as libfs errors.
        A 409 ConditionalRequestConflict (a conditional write to the same key still in
        flight) is retried here, since the key may yet turn out free."""
        for attempt in range(6):
            try:
                return await getattr(self.client, method)(Bucket=self.bucket, **kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "ConditionalRequestConflict" and attempt < 5:
                    await backoff(attempt, 0.05, 1.6)
                    continue
                raise self._map(exc, op, path) from exc
            except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
                raise self._map(exc, op, path) from exc
        raise FsUnavailable(f"{self.describe()} {op} {path!r}: conditional write conflicts "
                            "persist", path=path, op=op)

    async def _head(self, key: str, op: str, path: str) -> dict[str, Any]:
        return await self._call("head_object", op, path, Key=key)

    async def _holds_token(self, key: str, token: str, op: str, path: str) -> bool:
        """Whether the object at ``key`` was written by the attempt carrying ``token``."""
        try:
            head = await self._head(key, op, path)
        except FsNotFound:
            return False
        return _parse_ctype(head.get("ContentType"))[1].get("token") == token

    # -- append logs: cached state --------------------------------------------------------

    def _log_for(self, path: str, gen: str, head_size: int, mtime: float) -> _Log:
        """The cached state of generation ``gen`` of ``path``'s log (fresh if unknown)."""
        state = self._logs.get(path)
        if state is None or state.gen != gen:
            state = self._logs[path] = _Log(gen, head_size, mtime)
        return state

    def _as_log(self, path: str, resp: Mapping[str, Any], head_size: int) -> _Log | None:
        """The log state if ``resp`` (a HEAD or GET of the path's key) is a log head."""
        main, params = _parse_ctype(resp.get("ContentType"))
        if main != CT_LOG or not params.get("gen"):
            self._logs.pop(path, None)
            return None
        return self._log_for(path, params["gen"], head_size, _mtime(resp))

    async def _list_tail(self, path: str, state: _Log) -> None:
        """Learn the segments created after the last one ``state`` knows (ListObjectsV2
        from there, not from zero).  Stops at a hole: only a log being deleted has one."""
        prefix = self._seg_prefix(path, state.gen)
        kwargs: dict[str, Any] = {"Prefix": prefix, "Delimiter": "/"}
        if state.count > 1:
            kwargs["StartAfter"] = self._seg_key(path, state.gen, state.count - 1)
        while True:
            page = await self._call("list_objects_v2", "append-list", path, **kwargs)
            for obj in page.get("Contents", ()):
                suffix = obj["Key"][len(prefix):]
                if len(suffix) != 12 or not suffix.isdigit():
                    continue
                n = int(suffix)
                if n < state.count:
                    continue
                if n > state.count:
                    log.warning("%s %r: log generation %s has no segment %d; reading it up "
                                "to there", self.describe(), path, state.gen, state.count)
                    state.tail_known = True
                    return
                state.add(int(obj["Size"]), _mtime(obj))
            if not page.get("IsTruncated"):
                break
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        state.tail_known = True

    async def _fetch_segment(
        self, path: str, state: _Log, n: int, start: int = 0, end: int | None = None
    ) -> bytes:
        """Bytes ``[start, end)`` of segment ``n >= 1``; raises Changed if it is gone."""
        key = self._seg_key(path, state.gen, n)
        size = state.record_size(n)
        end = size if end is None else min(end, size)
        if start >= end:
            return b""
        data = self._segments.get(key)
        if data is None:
            whole = size <= SEGMENT_FETCH_WHOLE or (start == 0 and end == size)
            kwargs: dict[str, Any] = {"Key": key}
            if not whole:
                kwargs["Range"] = f"bytes={start}-{end - 1}"
            async with self._fetch_slots:
                try:
                    resp = await self._call("get_object", "read", path, **kwargs)
                except FsNotFound:
                    raise Changed from None
                data = await self._read_body(resp, "read", path)
            if not whole:
                return data
            self._cache_segment(key, data)
        return data[start:end]

    async def _read_body(self, resp: Mapping[str, Any], op: str, path: str) -> bytes:
        body = resp["Body"]
        try:
            return await body.read()
        except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise self._map(exc, op, path) from exc
        finally:
            body.close()

    async def _log_range(self, path: str, state: _Log, head: bytes | None, start: int,
                         end: int | None) -> bytes:
        """Bytes ``[start, end)`` of a log whose head (``head``: its bytes, if read)
        belongs to ``state``; lists the tail first."""
        await self._list_tail(path, state)
        size = state.size
        end = size if end is None else min(end, size)
        if start >= end:
            return b""
        jobs = []
        for n in state.span(start, end):
            a, b = state.cut(n, start, end)
            if n == 0:
                jobs.append(self._head_range(path, state, head, a, b))
            else:
                jobs.append(self._fetch_segment(path, state, n, a, b))
        return b"".join(await asyncio.gather(*jobs))

    async def _head_range(self, path: str, state: _Log, head: bytes | None, a: int,
                          b: int) -> bytes:
        if head is not None:
            return head[a:b]
        resp = await self._call("get_object", "read", path, Key=self._key(path),
                                Range=f"bytes={a}-{b - 1}")
        data = await self._read_body(resp, "read", path)
        if _parse_ctype(resp.get("ContentType"))[1].get("gen") != state.gen:
            raise Changed
        return data

    # -- reads ----------------------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        """One GetObject (a log: its head, the tail listing, uncached segments).
        Raises FsNotFound."""
        key = self._key(path)
        for _ in range(MAX_RESTARTS):
            resp = await self._call("get_object", "read", path, Key=key)
            data = await self._read_body(resp, "read", path)
            state = self._as_log(path, resp, len(data))
            if state is None:
                return data
            try:
                return await self._log_range(path, state, data, 0, None)
            except Changed:
                continue
        raise FsUnavailable(f"{self.describe()} read {path!r}: log keeps changing", path=path)

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        """GetObject with Range (a log: the segments covering the range).
        Raises FsNotFound."""
        key = self._key(path)
        if start < 0 or (end is not None and end < 0):
            raise FsError(f"s3 read_range {path!r}: negative offset", path=path)
        for _ in range(MAX_RESTARTS):
            if (end is not None and end <= start) or path in self._logs:
                # Known logs (tail reads) start with a HEAD: a ranged GET past record 0
                # would say nothing about the object.
                head = await self._head(key, "read", path)
                state = self._as_log(path, head, int(head["ContentLength"]))
                if state is None and end is not None and end <= start:
                    return b""
                if state is not None:
                    try:
                        return await self._log_range(path, state, None, start, end)
                    except Changed:
                        continue
            rng = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
            try:
                resp = await self._call("get_object", "read", path, Key=key, Range=rng)
            except FsError as exc:
                if _status(exc) != 416:
                    raise
                # Past the end of the object (or of a log's head): which is it?
                head = await self._head(key, "read", path)
                state = self._as_log(path, head, int(head["ContentLength"]))
                if state is None:
                    return b""
                try:
                    return await self._log_range(path, state, None, start, end)
                except Changed:
                    continue
            data = await self._read_body(resp, "read", path)
            main, params = _parse_ctype(resp.get("ContentType"))
            if main != CT_LOG:
                return data
            total = _range_total(resp)
            state = self._log_for(path, params.get("gen", ""), total, _mtime(resp))
            try:
                return await self._log_range(path, state, None, start, end)
            except Changed:
                continue
        raise FsUnavailable(f"{self.describe()} read {path!r}: log keeps changing", path=path)

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """One GetObject read chunk by chunk (a log: its segments in order, as listed when
        the stream started).  Holds about one chunk.  Raises FsNotFound."""
        key = self._key(path)
        if chunk_size < 1:
            raise FsError(f"s3 read_stream {path!r}: chunk_size must be positive", path=path)
        resp = await self._call("get_object", "read", path, Key=key)
        body = resp["Body"]
        main, params = _parse_ctype(resp.get("ContentType"))
        if main == CT_LOG:
            head = await self._read_body(resp, "read", path)
            state = self._log_for(path, params.get("gen", ""), len(head), _mtime(resp))
            async for chunk in self._stream_log(path, state, head, chunk_size):
                yield chunk
            return
        try:
            while True:
                buf = bytearray()
                while len(buf) < chunk_size:
                    piece = await body.read(chunk_size - len(buf))
                    if not piece:
                        break
                    buf += piece
                if not buf:
                    return
                yield bytes(buf)
                del buf
        except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise self._map(exc, "read", path) from exc
        finally:
            body.close()

    async def _stream_log(
        self, path: str, state: _Log, head: bytes, chunk_size: int
    ) -> AsyncIterator[bytes]:
        await self._list_tail(path, state)
        count = state.count
        window = 8
        pending: list[asyncio.Task[bytes]] = []
        buf = bytearray(head)
        next_n = 1
        try:
            while True:
                while next_n < count and len(pending) < window:
                    pending.append(asyncio.ensure_future(
                        self._fetch_segment(path, state, next_n)))
                    next_n += 1
                while len(buf) >= chunk_size:
                    yield bytes(buf[:chunk_size])
                    del buf[:chunk_size]
                if not pending:
                    break
                try:
                    buf += await pending.pop(0)
                except Changed:
                    raise FsNotFound(f"{self.describe()} read {path!r}: the log was deleted "
                                     "while being read", path=path, op="read") from None
            if buf:
                yield bytes(buf)
        finally:
            for task in pending:
                task.cancel()

    async def stat(self, path: str) -> Stat:
        """HeadObject (a log: plus its tail listing). Raises FsNotFound."""
        key = self._key(path)
        head = await self._head(key, "stat", path)
        state = self._as_log(path, head, int(head["ContentLength"]))
        if state is None:
            return Stat(path, int(head["ContentLength"]), _mtime(head),
                        dict(head.get("Metadata") or {}))
        await self._list_tail(path, state)
        return Stat(path, state.size, state.mtime, {})

    async def exists(self, path: str) -> bool:
        """One HeadObject."""
        try:
            await self._head(self._key(path), "stat", path)
        except FsNotFound:
            return False
        return True

    # -- writes ---------------------------------------------------------------------------

    async def write(
        self,
        path: str,
        data: bytes,
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """CREATE: PutObject If-None-Match * (412 -> FsExists); REPLACE: PutObject.
        Above ``multipart_threshold``: a multipart upload, completed the same way."""
        key = self._key(path)
        meta = check_metadata(metadata)
        if len(data) > self.multipart_threshold:
            view = memoryview(data)

            async def slices() -> AsyncIterator[memoryview]:
                for pos in range(0, len(view), MIB):
                    yield view[pos:pos + MIB]

            await self._upload(path, key, slices(), mode, meta)
            return
        await self._put(path, key, data, mode, meta)

    async def _put(self, path: str, key: str, data: bytes | bytearray | io.BytesIO,
                   mode: WriteMode, meta: dict[str, str]) -> None:
        if mode is WriteMode.REPLACE:
            await self._call("put_object", "write", path, Key=key, Body=_body(data),
                             ContentType=CT_BLOB, Metadata=meta)
        else:
            token = _token()
            try:
                await self._call("put_object", "write", path, Key=key, Body=_body(data),
                                 ContentType=f"{CT_BLOB}; token={token}", Metadata=meta,
                                 IfNoneMatch="*")
            except FsExists as exc:
                if not (_retried(exc) and await self._holds_token(key, token, "write", path)):
                    raise
        self._logs.pop(path, None)

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Like ``write``; holds at most one part: a stream longer than
        ``min(part_size, multipart_threshold)`` becomes a multipart upload whose CREATE
        completes with If-None-Match *.  Returns the size written."""
        key = self._key(path)
        meta = check_metadata(metadata)
        return await self._upload(path, key, aiter(chunks), mode, meta)

    async def _upload(
        self,
        path: str,
        key: str,
        chunks: AsyncIterator[bytes | memoryview],
        mode: WriteMode,
        meta: dict[str, str],
    ) -> int:
        """Store ``chunks`` at ``key`` holding at most one part (plus one chunk).  Up to
        ``min(part_size, multipart_threshold)`` bytes: one PutObject.  Beyond: a multipart
        upload.  REPLACE completes at ``key``.  CREATE completes at a temporary key and
        publishes it with one conditional CopyObject (``multipart_create=copy``), or
        completes at ``key`` with If-None-Match (``multipart_create=complete``)."""
        # A part is collected in a BytesIO that owns its buffer: aiohttp then sends it
        # without copying it (a BytesIO sharing a bytes object is copied when sent).
        part = io.BytesIO()
        limit = min(self.part_size, self.multipart_threshold)
        while part.tell() <= limit:
            try:
                part.write(await anext(chunks))
            except StopAsyncIteration:
                size = part.tell()
                part.seek(0)
                await self._put(path, key, part if size > MIB else part.getvalue(), mode, meta)
                return size

        create = mode is WriteMode.CREATE
        via_copy = create and self.multipart_create == "copy"
        if create and await self.exists(path):
            # Fail before uploading what may be gigabytes; the conditional request at the
            # end is what makes the create atomic.
            raise FsExists(f"{self.describe()} write {path!r}: exists", path=path, op="write")
        token = _token()
        ctype = f"{CT_BLOB}; token={token}" if create else CT_BLOB
        target = f"{self._tmp_root}{uuid.uuid4().hex}" if via_copy else key
        upload = await self._call("create_multipart_upload", "write", path, Key=target,
                                  ContentType=ctype, Metadata=meta)
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        size = 0

        async def send(body: io.BytesIO, length: int) -> None:
            nonlocal size
            if len(parts) >= MAX_PARTS:
                raise FsError(f"{self.describe()} write {path!r}: more than {MAX_PARTS} "
                              "parts; raise part_size", path=path, op="write")
            body.seek(0)
            resp = await self._call("upload_part", "write", path, Key=target,
                                    UploadId=upload_id, PartNumber=len(parts) + 1, Body=body)
            parts.append({"PartNumber": len(parts) + 1, "ETag": resp["ETag"]})
            size += length

        try:
            exhausted = False
            while True:
                while part.tell() >= self.part_size:
                    with part.getbuffer() as view:
                        rest = bytes(view[self.part_size:])
                    part.truncate(self.part_size)
                    await send(part, self.part_size)
                    part = io.BytesIO()
                    part.write(rest)
                    del rest
                if exhausted:
                    break
                try:
                    part.write(await anext(chunks))
                except StopAsyncIteration:
                    exhausted = True
            if part.tell() or not parts:
                await send(part, part.tell())
            del part
            if via_copy and size > MAX_COPY_SIZE:
                raise FsError(f"{self.describe()} write {path!r}: a CREATE above 5 GiB cannot "
                              "be published by CopyObject; use multipart_create=complete on "
                              "a store whose conditional complete is atomic (AWS)",
                              path=path, op="write")
            kwargs: dict[str, Any] = {"Key": target, "UploadId": upload_id,
                                      "MultipartUpload": {"Parts": parts}}
            if create and not via_copy:
                kwargs["IfNoneMatch"] = "*"
            try:
                await self._call("complete_multipart_upload", "write", path, **kwargs)
            except (FsExists, FsNotFound) as exc:
                # A resent complete may find the upload already completed (NoSuchUpload)
                # or the object it created (412): it is ours if it holds our token.
                if not (create and _retried(exc)
                        and await self._holds_token(target, token, "write", path)):
                    raise
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._call("abort_multipart_upload", "write", path,
                                                Key=target, UploadId=upload_id))
            raise
        if via_copy:
            try:
                await self._publish_copy(path, key, target, token)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._call("delete_object", "write", path,
                                                    Key=target))
        self._logs.pop(path, None)
        return size

    async def _publish_copy(self, path: str, key: str, temp: str, token: str) -> None:
        """CREATE ``key`` from the finished temporary object ``temp`` by CopyObject with
        If-None-Match * (atomic on SeaweedFS and AWS; moto ignores the condition, hence
        the check first when ``atomic_create=no``)."""
        if not self.atomic_create and await self.exists(path):
            raise FsExists(f"{self.describe()} write {path!r}: exists", path=path, op="write")
        try:
            await self._call("copy_object", "write", path, Key=key,
                             CopySource={"Bucket": self.bucket, "Key": temp},
                             MetadataDirective="COPY", IfNoneMatch="*")
        except FsExists as exc:
            if not (_retried(exc) and await self._holds_token(key, token, "write", path)):
                raise

    async def append(self, path: str, data: bytes) -> int:
        """PutObject If-None-Match * of the next segment (the head for the first record);
        on 412 re-list the tail and take the next number.  Gap-free total order; a resent
        request that got 412 checks the segment's token, so a record is never stored
        twice.  Appends to the path waiting in this process go as one segment.  Returns
        the record's offset: 0 for the head, else the sum of the sizes of the segments
        before ours, all known once we pick our number.  FsExists if ``path`` was written
        whole."""
        key = self._key(path)
        if not data:
            raise FsError("s3 append: empty record", path=path, op="append")
        return await self._appends.append(key, path, bytes(data))

    async def _append(self, key: str, path: str, records: list[bytes]) -> list[int]:
        """Store ``records`` as one object, the head or the next segment; their offsets."""
        data = records[0] if len(records) == 1 else b"".join(records)
        offset = await self._append_object(path, key, data)
        offsets = []
        for record in records:
            offsets.append(offset)
            offset += len(record)
        return offsets

    async def _append_object(self, path: str, key: str, data: bytes) -> int:
        token = _token()
        known = self._logs.get(path)
        if known is not None and known.tail_known:
            offset = await self._append_known(path, key, known, data, token)
            if offset is not None:
                return offset
            token = _token()
        phantom = 0
        for _ in range(MAX_RESTARTS):
            try:
                head = await self._head(key, "append", path)
            except FsNotFound:
                gen = _token()
                try:
                    await self._call("put_object", "append", path, Key=key, Body=_body(data),
                                     ContentType=f"{CT_LOG}; gen={gen}; token={token}",
                                     IfNoneMatch="*")
                except FsExists as exc:
                    if not (_retried(exc)
                            and await self._holds_token(key, token, "append", path)):
                        # Someone else started the log (or wrote the path whole): look
                        # again.  A key that is absent to HEAD yet refuses a conditional
                        # PUT over and over is a SeaweedFS directory: objects exist under
                        # "path/", which SeaweedFS counts as the key existing.
                        phantom += 1
                        if phantom >= 3:
                            raise FsError(f"{self.describe()} append {path!r}: the store "
                                          "refuses to create the key but cannot show it; "
                                          f"on SeaweedFS objects under '{path}/' do this",
                                          path=path, op="append") from exc
                        continue
                state = self._log_for(path, gen, len(data), time.time())
                state.tail_known = True
                return 0
            live = self._as_log(path, head, int(head["ContentLength"]))
            if live is None:
                raise FsExists(f"{self.describe()} append {path!r}: the path holds an object "
                               "written whole, not an append log", path=path, op="append")
            return await self._append_segment(path, live, data, token)
        raise FsUnavailable(f"{self.describe()} append {path!r}: log keeps changing",
                            path=path, op="append")

    async def _append_known(self, path: str, key: str, state: _Log, data: bytes,
                            token: str) -> int | None:
        """Append to a log whose tail this process knows: segment ``state.count`` is put
        while a HEAD checks, at the same time, that ``state``'s generation is still the
        live one; one round trip where HEAD-then-PUT takes two.  The HEAD proves the
        segment is in the live log whichever of the two the store served first: a
        generation never comes back once deleted, and deleting a log removes its head
        before its segments.  None when the slow path must decide (the segment number was
        taken, or the log changed generation: then our segment, in a dead generation, is
        removed again).  Raises when the store fails, the segment possibly stored (an
        uncertain append, as a lost reply is)."""
        n = state.count
        seg_key = self._seg_key(path, state.gen, n)
        put, head = await asyncio.gather(
            self._call("put_object", "append", path, Key=seg_key, Body=_body(data),
                       ContentType=f"{CT_SEG}; token={token}", IfNoneMatch="*"),
            self._head(key, "append", path), return_exceptions=True)
        stored = not isinstance(put, BaseException)
        if isinstance(put, FsExists) and _retried(put):
            stored = await self._holds_token(seg_key, token, "append", path)
        elif isinstance(put, BaseException) and not isinstance(put, FsExists):
            state.tail_known = False
            raise put
        live = False
        if isinstance(head, FsNotFound):
            self._logs.pop(path, None)
        elif isinstance(head, BaseException):
            state.tail_known = False
            raise head
        else:
            main, params = _parse_ctype(head.get("ContentType"))
            live = main == CT_LOG and params.get("gen") == state.gen
            if not live:
                self._logs.pop(path, None)
        if not live:
            if stored:
                with contextlib.suppress(FsError):
                    await self._call("delete_object", "append", path, Key=seg_key)
            return None
        if not stored:  # another appender took number n
            state.tail_known = False
            return None
        self._cache_segment(seg_key, data)
        offset = state.start(n)
        if state.count == n:
            state.add(len(data), time.time())
        else:  # a listing overtook us (our own segment was listed)
            state.tail_known = False
        return offset

    async def _append_segment(self, path: str, state: _Log, data: bytes, token: str) -> int:
        """Segment ``state.count`` (or the next free one after it); its offset."""
        if not state.tail_known:
            await self._list_tail(path, state)
        unseen = 0
        lost: FsExists | None = None

        async def create(n: int) -> bool:
            nonlocal lost
            seg_key = self._seg_key(path, state.gen, n)
            try:
                await self._call("put_object", "append", path, Key=seg_key, Body=_body(data),
                                 ContentType=f"{CT_SEG}; token={token}", IfNoneMatch="*")
            except FsExists as exc:
                if _retried(exc) and await self._holds_token(seg_key, token, "append", path):
                    return True
                lost = exc
                return False
            return True

        async def tail(n: int) -> int:
            nonlocal unseen
            await self._list_tail(path, state)
            if state.count > n:
                unseen = 0
                return state.count
            # 412 for a segment the listing does not show yet: give it a moment.
            unseen += 1
            if unseen > MAX_RESTARTS:
                raise FsUnavailable(f"{self.describe()} append {path!r}: segment {n} "
                                    "is taken but never listed", path=path,
                                    op="append") from lost
            await asyncio.sleep(0.01 * unseen)
            return n

        n = await claim(state.count, create, tail, rounds=MAX_APPEND_ROUNDS,
                        what=f"{self.describe()} append", path=path)
        # The writer may read its own record back soon.
        self._cache_segment(self._seg_key(path, state.gen, n), data)
        # Segment n is ours, and n was state.count when we took it: the sizes of records
        # 0..n-1 are known (they only ever grow), hence our exact offset.
        offset = state.start(n)
        if state.count == n:
            state.add(len(data), time.time())
        else:  # the listing overtook us (our own segment was listed)
            state.tail_known = False
        return offset

    def _cache_segment(self, key: str, data: bytes) -> None:
        """Keep a segment's bytes unless it is large for the cache (over 1/8 of it)."""
        if len(data) <= self._segments.maxsize // 8 and key not in self._segments:
            self._segments[key] = bytes(data)

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        """Server-side CopyObject of the object HeadObject saw (copy-source-if-match),
        If-None-Match * for CREATE.  A log source is copied through the client as one
        whole object.  Raises FsNotFound, FsExists."""
        src_key, dst_key = self._key(src), self._key(dst)
        what = f"{src} -> {dst}"
        create = mode is WriteMode.CREATE
        for _ in range(MAX_RESTARTS):
            head = await self._head(src_key, "copy", src)
            is_log = _parse_ctype(head.get("ContentType"))[0] == CT_LOG
            if is_log or int(head["ContentLength"]) > MAX_COPY_SIZE:
                meta = {} if is_log else dict(head.get("Metadata") or {})
                await self.write_stream(dst, self.read_stream(src, self.part_size), mode, meta)
                return
            if create and not self.atomic_create and await self.exists(dst):
                raise FsExists(f"{self.describe()} copy {what!r}: destination exists",
                               path=dst, op="copy")
            kwargs: dict[str, Any] = {
                "Key": dst_key,
                "CopySource": {"Bucket": self.bucket, "Key": src_key},
                "CopySourceIfMatch": head["ETag"],
                "MetadataDirective": "COPY",
            }
            if create:
                kwargs["IfNoneMatch"] = "*"
            try:
                await self._call("copy_object", "copy", what, **kwargs)
            except FsExists as exc:
                # 412: the destination exists (If-None-Match) or the source changed since
                # the HEAD (copy-source-if-match).  Look at the destination to tell.
                if not create:
                    continue
                try:
                    dhead = await self._head(dst_key, "copy", dst)
                except FsNotFound:
                    continue  # the source changed: copy what it is now
                if _retried(exc) and dhead.get("ETag") == head["ETag"] \
                        and dhead.get("ContentType") == head.get("ContentType"):
                    break  # our first send made it
                raise
            break
        else:
            raise FsUnavailable(f"{self.describe()} copy {what!r}: source keeps changing",
                                path=src, op="copy")
        self._logs.pop(dst, None)

    async def delete(self, path: str) -> None:
        """HeadObject, DeleteObject (atomic for readers); for a log then its segments.
        Idempotent."""
        key = self._key(path)
        try:
            head = await self._head(key, "delete", path)
        except FsNotFound:
            self._logs.pop(path, None)
            return
        await self._call("delete_object", "delete", path, Key=key)
        self._logs.pop(path, None)
        main, params = _parse_ctype(head.get("ContentType"))
        if main != CT_LOG or not params.get("gen"):
            return
        # The head is gone, so the log is gone for every reader; its generation's segments
        # are unreachable now.  Remove them; what a crash leaves behind is garbage only.
        prefix = self._seg_prefix(path, params["gen"])
        kwargs: dict[str, Any] = {"Prefix": prefix, "Delimiter": "/"}
        while True:
            page = await self._call("list_objects_v2", "delete", path, **kwargs)
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", ())]
            if keys:
                resp = await self._call("delete_objects", "delete", path,
                                        Delete={"Objects": keys, "Quiet": True})
                for err in resp.get("Errors", ()):
                    log.warning("%s delete %r: segment %s left behind: %s", self.describe(),
                                path, err.get("Key"), err.get("Code"))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        """ListObjectsV2 pages; an append log appears once (its head); the reserved
        segment and temporary areas are skipped.  Strongly consistent on S3, SeaweedFS
        and moto."""
        check_prefix(prefix)
        s3_prefix = self._root + prefix
        areas = (self._seg_root, self._tmp_root)
        if s3_prefix.startswith(areas):
            return
        kwargs: dict[str, Any] = {"Prefix": s3_prefix}
        jumped: set[str] = set()
        while True:
            page = await self._call("list_objects_v2", "iter", prefix, **kwargs)
            restart = None
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                area = next((a for a in areas if key.startswith(a)), None)
                if area is not None:
                    if area not in jumped:
                        # Jump over the whole area with one new listing that starts after
                        # it (on SeaweedFS, StartAfter inside a directory skips the rest
                        # of that directory; on AWS and moto it is plain key order).
                        jumped.add(area)
                        restart = area
                        break
                    continue
                name = key[len(self._root):]
                try:
                    check_path(name)
                except FsError:
                    continue  # e.g. a "dir/" marker made by another tool
                yield name
            if restart is not None:
                kwargs = {"Prefix": s3_prefix, "StartAfter": restart + "\U0010ffff"}
                continue
            if not page.get("IsTruncated"):
                return
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = page["NextContinuationToken"]


def _status(exc: FsError) -> int:
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        return int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return 0


def _range_total(resp: Mapping[str, Any]) -> int:
    """The whole object's size from a ranged GET's Content-Range (``bytes a-b/total``)."""
    text = str(resp.get("ContentRange") or "")
    _, _, total = text.rpartition("/")
    return int(total) if total.isdigit() else int(resp.get("ContentLength", 0))
