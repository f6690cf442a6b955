"""The libfs contract: one small, lock-free storage API that every driver keeps.

Modelled on Dovecot's lib-fs (``fs-api.h``).  Paths are ``/``-separated keys relative to
the driver's root; they never start with ``/`` and never contain empty, ``.`` or ``..``
segments (:func:`check_path`).  The only synchronisation primitives are atomic
create-if-absent (``write(..., mode=CREATE)``) and atomic append; everything above libfs is
built from those two, so no driver ever needs a lock.
"""

from __future__ import annotations

import abc
import enum
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

#: Default size of the chunks a streaming read yields and a chunked store keeps.
DEFAULT_CHUNK_SIZE = 1024 * 1024


class WriteMode(enum.Enum):
    """How :meth:`Fs.write` treats an existing object."""

    #: Atomic create-if-absent: of N concurrent creators exactly one wins, the rest get
    #: :class:`FsExists`; a reader sees nothing or the whole object.
    CREATE = "create"
    #: Atomic replace: a reader sees the old or the new object, never a mix.
    REPLACE = "replace"


CREATE = WriteMode.CREATE
REPLACE = WriteMode.REPLACE


class Feature(enum.StrEnum):
    """What a driver does natively; wrappers report their parent's set (plus their own)."""

    #: ``append`` is a single native operation (not emulated by segment objects).
    APPEND = "append"
    #: ``copy`` happens inside the store, without the bytes passing through the client.
    COPY = "copy"
    #: object metadata is kept by the store itself.
    METADATA = "metadata"
    #: ``iter`` shows every object whose create has returned (read-after-write listing).
    CONSISTENT_LIST = "consistent-list"
    #: ``write(mode=CREATE)`` is atomic in the store: safe for races between processes.
    ATOMIC_CREATE = "atomic-create"
    #: writes, copies and deletes are durable on stable storage when they return, and
    #: appends when they return or, on a store that defers them, when :meth:`Fs.sync`
    #: of their path returns.
    DURABLE = "durable"
    #: reading any byte range of an append log costs a bounded number of store requests
    #: however many records it spans (S3 lacks it: one segment object per record).
    BATCH_LOG_READ = "batch-log-read"


# --- errors ---------------------------------------------------------------------------


class FsError(Exception):
    """Base of every libfs error; ``path`` and ``op`` say what failed when known."""

    def __init__(self, message: str, *, path: str | None = None, op: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.op = op


class FsNotFound(FsError):
    """The object does not exist."""


class FsExists(FsError):
    """``write(mode=CREATE)`` or ``copy`` found the destination already there."""


class FsUnavailable(FsError):
    """A transient failure (timeout, 5xx, throttling, connection lost): safe to retry.

    The operation may or may not have taken effect: a retried create may then see
    :class:`FsExists` for its own object, and a retried append must check for its record
    (see :mod:`cloudcote.libfs.retry`).
    """


class FsPermission(FsError):
    """The store refused access (credentials, permissions): retrying will not help."""


class FsInvalidSpec(FsError):
    """A driver chain that cannot be opened: bad syntax, unknown stage, bad setting,
    missing dependency, or a wrapper whose parent lacks what it needs."""


# --- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """What ``stat`` returns: size in bytes, mtime in seconds since the epoch, metadata."""

    path: str
    size: int
    mtime: float
    metadata: Mapping[str, str] = field(default_factory=dict)


def check_path(path: str) -> str:
    """Return ``path`` if it is a valid object key, else raise :class:`FsError`."""
    if not isinstance(path, str) or not path:
        raise FsError(f"invalid path {path!r}: empty", path=str(path))
    if path.startswith("/") or path.endswith("/"):
        raise FsError(f"invalid path {path!r}: leading or trailing '/'", path=path)
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            raise FsError(f"invalid path {path!r}: empty, '.' or '..' segment", path=path)
    if "\x00" in path:
        raise FsError(f"invalid path {path!r}: NUL byte", path=path)
    return path


def check_prefix(prefix: str) -> str:
    """A listing prefix: ``""`` or a path, optionally ending in ``/``."""
    if prefix:
        check_path(prefix.rstrip("/") or "x")
    return prefix


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Metadata keys are lowercase ``[a-z0-9-]`` names; values are printable ASCII < 1 KiB."""
    out: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not key or not all(c.islower() or c.isdigit() or c == "-" for c in key):
            raise FsError(f"invalid metadata key {key!r}: use lowercase letters, digits, '-'")
        if not isinstance(value, str) or len(value) > 1024 or not value.isprintable() \
                or not value.isascii():
            raise FsError(f"invalid metadata value for {key!r}: printable ASCII up to 1 KiB")
        out[key] = value
    return out


def unique_name(prefix: str) -> str:
    """A fresh object name under ``prefix`` for :meth:`Fs.write_unique`."""
    return f"{prefix}{uuid.uuid4().hex}"


# --- change feeds ---------------------------------------------------------------------

log = logging.getLogger("cloudcote.libfs")

#: What a feed calls on a change: the changed object's path (or, after the feed may have
#: missed changes, the subscribed prefix itself).  Called in the event loop; it must not
#: block or raise (an exception is logged and dropped).
ChangeCallback = Callable[[str], None]


def feed_directory(prefix: str) -> str:
    """The "directory" a feed prefix covers: the prefix up to its last ``/`` (``""`` for
    the top level)."""
    return prefix.rsplit("/", 1)[0] if "/" in prefix else ""


class Subscription:
    """One subscriber's interest in a prefix; :meth:`close` ends it (idempotent, sync, so a
    finalizer may call it)."""

    def __init__(self, feed: ChangeFeed, prefix: str, callback: ChangeCallback) -> None:
        self.feed = feed
        self.prefix = prefix
        self.directory = feed_directory(prefix)
        self.callback = callback
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed._unsubscribe(self)

    def deliver(self, path: str) -> None:
        if self.closed:
            return
        try:
            self.callback(path)
        except Exception:  # noqa: BLE001 - one subscriber must not break the feed
            log.exception("change feed subscriber of %r failed on %r", self.prefix, path)


class PrefixRouter:
    """Subscriptions by directory, so that one change costs one dict lookup however many
    prefixes are subscribed."""

    def __init__(self) -> None:
        self._by_dir: dict[str, list[Subscription]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_dir.values())

    def directories(self) -> list[str]:
        return list(self._by_dir)

    def add(self, sub: Subscription) -> bool:
        """Add ``sub``; True if it is the first of its directory."""
        subs = self._by_dir.setdefault(sub.directory, [])
        subs.append(sub)
        return len(subs) == 1

    def remove(self, sub: Subscription) -> bool:
        """Remove ``sub``; True if its directory has no subscriber left."""
        subs = self._by_dir.get(sub.directory)
        if subs is None:
            return False
        if sub in subs:
            subs.remove(sub)
        if subs:
            return False
        del self._by_dir[sub.directory]
        return True

    def dispatch(self, path: str) -> None:
        """Tell the subscribers whose prefix ``path`` falls under."""
        for sub in list(self._by_dir.get(feed_directory(path), ())):
            if path.startswith(sub.prefix):
                sub.deliver(path)

    def dispatch_directory(self, directory: str) -> None:
        """Tell every subscriber of ``directory`` (its changes may have been missed)."""
        for sub in list(self._by_dir.get(directory, ())):
            sub.deliver(sub.prefix)

    def dispatch_all(self) -> None:
        """Tell every subscriber (the feed may have missed changes)."""
        for directory in list(self._by_dir):
            self.dispatch_directory(directory)


class ChangeFeed(abc.ABC):
    """Announces changes to objects of a store, made through any Fs on the same store, by
    this process or another (see docs/libfs.md, "Change feeds").

    A subscription to ``prefix`` covers the objects whose path starts with ``prefix`` and
    that lie directly in the prefix's directory (:func:`feed_directory`): ``a/b/`` covers
    ``a/b/log.1`` but not ``a/b/c/d``.  A change is announced after it is visible to
    readers, soon (milliseconds), as a hint: announcements may be merged or repeated, and
    where the feed may have missed some (overflow, reconnect) it calls every subscriber
    concerned with its prefix.  Callers keep a slow safety poll all the same.
    """

    def __init__(self) -> None:
        self.router = PrefixRouter()

    @property
    def subscriptions(self) -> int:
        """Subscriptions open now."""
        return len(self.router)

    @abc.abstractmethod
    async def subscribe(self, prefix: str, callback: ChangeCallback) -> Subscription | None:
        """Call ``callback(path)`` on changes under ``prefix`` until the returned
        subscription is closed.  None when this prefix cannot be watched (a resource limit
        of the store or the kernel, logged once): the caller polls it instead."""

    @abc.abstractmethod
    def _unsubscribe(self, sub: Subscription) -> None:
        """Release what ``sub`` held (a watch, a listener) once no one else needs it."""

    async def close(self) -> None:  # noqa: B027 - some feeds hold nothing
        """Stop announcing; every subscription is dropped."""


# --- the API --------------------------------------------------------------------------


class Fs(abc.ABC):
    """An open libfs stage: a driver, or a wrapper around a parent stage.

    All methods are coroutines and safe to call concurrently from one event loop.
    """

    #: The name this stage has in a chain string (``posix``, ``s3``, ``latency``...).
    name: ClassVar[str] = ""

    @property
    @abc.abstractmethod
    def features(self) -> frozenset[Feature]:
        """What this stage does natively."""

    @abc.abstractmethod
    async def read(self, path: str) -> bytes:
        """The whole object; for one being appended to, whole records only (see
        :meth:`append`). Raises FsNotFound."""

    @abc.abstractmethod
    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` (``end=None``: to the end; clipped to the size).  A range
        that meets the end of an object being appended to ends where :meth:`read` would,
        after a whole record; an ``end`` inside a record is the caller's own cut.
        Raises FsNotFound."""

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Yield the object in chunks of at most ``chunk_size`` bytes, holding about one
        chunk in memory.  The object is the one that existed when the first chunk was read;
        a concurrent replace may make a later chunk fail with FsNotFound, never mix.  The
        last chunk of an object being appended to ends after a whole record, as
        :meth:`read_range` does. Raises FsNotFound."""
        pos = 0
        while True:
            chunk = await self.read_range(path, pos, pos + chunk_size)
            if chunk:
                yield chunk
            if len(chunk) < chunk_size:
                return
            pos += len(chunk)

    @abc.abstractmethod
    async def write(
        self,
        path: str,
        data: bytes,
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Store ``data`` (and ``metadata``) at ``path``, atomically per ``mode``:
        CREATE raises FsExists if the object exists; REPLACE overwrites it."""

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Like :meth:`write` for an object given in chunks; drivers of large-object stores
        override it to hold one chunk at a time.  Returns the size written."""
        parts = [c async for c in chunks]
        data = b"".join(parts)
        await self.write(path, data, mode, metadata)
        return len(data)

    async def write_unique(
        self, prefix: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> str:
        """Create a new object under a fresh name starting with ``prefix``; return its path.
        Atomic as CREATE; never overwrites."""
        while True:
            path = unique_name(prefix)
            try:
                await self.write(path, data, WriteMode.CREATE, metadata)
            except FsExists:
                continue
            return path

    @abc.abstractmethod
    async def append(self, path: str, data: bytes) -> int:
        """Add ``data`` as one record at the end of ``path``, creating it if absent, and
        return the offset of the record's first byte in the object (the byte stream
        :meth:`read` returns; a new log's first record is at 0).  Atomic: concurrent
        appenders never lose or interleave records, and every reader sees the same total
        order.  No reader ever sees part of a record: :meth:`read`, :meth:`read_range` and
        :meth:`read_stream` that meet the end of the object, and the size :meth:`stat`
        reports, end after a whole record; one still being appended is not there at all.
        ``data`` must not be empty.

        Durability: on most stores the record is durable when this returns; a store may
        defer that (posix ``fsync=optimized``) until :meth:`sync` of the path returns.
        Either way it is visible to every reader at once and survives the end of the
        process; only a power loss or an OS crash can take a deferred record, and then
        with every record after it in the same object."""

    async def sync(self, path: str) -> None:  # noqa: B027 - durable stores have nothing to do
        """Make every record appended to ``path`` whose :meth:`append` has returned (in any
        process) durable on stable storage.  A no-op where appends are durable on return,
        which is every store but posix with ``fsync=optimized``."""

    @abc.abstractmethod
    async def stat(self, path: str) -> Stat:
        """Size, mtime and metadata. Raises FsNotFound."""

    async def exists(self, path: str) -> bool:
        """Whether ``path`` exists now."""
        try:
            await self.stat(path)
        except FsNotFound:
            return False
        return True

    @abc.abstractmethod
    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        """Copy ``src`` with its metadata to ``dst``, atomically per ``mode`` at ``dst``;
        inside the store where it can (``Feature.COPY``). Raises FsNotFound, FsExists."""

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Remove ``path``. Idempotent: deleting an absent object succeeds."""

    @abc.abstractmethod
    def iter(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield the paths of all objects whose path starts with ``prefix`` (recursively),
        each once, in no promised order.  Complete only if ``Feature.CONSISTENT_LIST``."""

    def change_feed(self) -> ChangeFeed | None:
        """The store's change feed, or None when it has none (callers poll).  One per Fs
        instance: every call returns the same object, closed with the stage."""
        return None

    async def close(self) -> None:  # noqa: B027 - most stages have nothing to release
        """Release connections and pools. The stage must not be used afterwards."""

    async def __aenter__(self) -> Fs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def describe(self) -> str:
        """The stage as it would appear in a chain string, for logs and errors."""
        return self.name


class ForwardingFs(Fs):
    """Base of wrappers: forwards every call to ``parent``; subclasses override only
    what they change (Dovecot's ``fs-wrapper.c``).  ``requires`` lists the features the
    parent must have; a parent without them is refused when the chain is opened."""

    requires: ClassVar[frozenset[Feature]] = frozenset()

    def __init__(self, parent: Fs) -> None:
        missing = self.requires - parent.features
        if missing:
            names = ", ".join(sorted(missing))
            raise FsInvalidSpec(
                f"{self.name}: parent stage {parent.describe()!r} lacks {names}"
            )
        self.parent = parent

    @property
    def features(self) -> frozenset[Feature]:
        return self.parent.features

    async def read(self, path: str) -> bytes:
        return await self.parent.read(path)

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        return await self.parent.read_range(path, start, end)

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        async for chunk in self.parent.read_stream(path, chunk_size):
            yield chunk

    async def write(
        self,
        path: str,
        data: bytes,
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        await self.parent.write(path, data, mode, metadata)

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        return await self.parent.write_stream(path, chunks, mode, metadata)

    async def write_unique(
        self, prefix: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> str:
        return await self.parent.write_unique(prefix, data, metadata)

    async def append(self, path: str, data: bytes) -> int:
        return await self.parent.append(path, data)

    async def sync(self, path: str) -> None:
        await self.parent.sync(path)

    async def stat(self, path: str) -> Stat:
        return await self.parent.stat(path)

    async def exists(self, path: str) -> bool:
        return await self.parent.exists(path)

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        await self.parent.copy(src, dst, mode)

    async def delete(self, path: str) -> None:
        await self.parent.delete(path)

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        async for name in self.parent.iter(prefix):
            yield name

    def change_feed(self) -> ChangeFeed | None:
        """The parent's feed: wrappers keep paths as they are, so its announcements hold."""
        return self.parent.change_feed()

    async def close(self) -> None:
        await self.parent.close()

    def describe(self) -> str:
        return f"{self.name}:{self.parent.describe()}"
