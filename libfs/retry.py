"""``retry``: retry transient failures without ever doing a write twice.

A call that failed with :class:`FsUnavailable` may or may not have taken effect (a store
timeout, a lost reply, ``randomfail``'s "after" failures).  This stage retries it with
exponential backoff and resolves that uncertainty instead of guessing:

- reads, ``stat``, ``iter``, REPLACE writes and ``delete`` are idempotent: retried as is;
- a CREATE (or CREATE-mode ``copy``) whose retry finds the object present reads it back:
  if it holds exactly our bytes the earlier attempt won and the call succeeds, otherwise it
  is someone else's object and the caller gets FsExists; a ``write`` whose last attempt
  failed is read back too before the failure is reported;
- an ``append`` that failed (the last attempt too) is followed by a read of the object: if
  our record is there the append happened and is not repeated, and where it was found is
  the offset returned.  This needs records that are unique within their object, as the
  mail transaction log's records are (each carries a unique id).  Only when that read
  fails as well does the caller get FsUnavailable with the outcome unknown;
- ``write_stream`` cannot replay its input and is not retried; ``read_stream`` is
  restarted only until its first chunk.

``retry:attempts=8,backoff=10ms,max_backoff=1s:...``.  Chains over a remote driver get
this stage at their top by default (``libfs/chain.py``); ``retry:attempts=0:`` turns that
off.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from .api import (
    DEFAULT_CHUNK_SIZE,
    ForwardingFs,
    Fs,
    FsExists,
    FsNotFound,
    FsUnavailable,
    Stat,
    WriteMode,
)
from .backoff import backoff

if TYPE_CHECKING:
    from .chain import Settings

T = TypeVar("T")
log = logging.getLogger("cloudcote.libfs.retry")


class RetryFs(ForwardingFs):
    """Retries FsUnavailable with backoff; resolves uncertain creates and appends."""

    name = "retry"

    def __init__(
        self, parent: Fs, attempts: int = 8, backoff: float = 0.01, max_backoff: float = 1.0
    ) -> None:
        super().__init__(parent)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> RetryFs:
        assert parent is not None
        attempts = settings.int("attempts", settings.int("", 8, minimum=1), minimum=1)
        backoff = settings.duration("backoff", 0.01)
        max_backoff = settings.duration("max_backoff", 1.0)
        settings.finish()
        return cls(parent, attempts, backoff, max_backoff)

    async def _sleep(self, attempt: int) -> None:
        await backoff(attempt, self.backoff, self.max_backoff)

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.attempts):
            try:
                return await call()
            except FsUnavailable as exc:
                if attempt == self.attempts - 1:
                    raise
                log.debug("retrying after %s (attempt %d)", exc, attempt + 1)
                await self._sleep(attempt)
        raise AssertionError("unreachable")

    async def read(self, path: str) -> bytes:
        return await self._retry(lambda: self.parent.read(path))

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        return await self._retry(lambda: self.parent.read_range(path, start, end))

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Restarted while nothing was yielded; a break after that is raised, since
        resuming by ranges could splice two versions of a replaced object."""
        for attempt in range(self.attempts):
            started = False
            try:
                async for chunk in self.parent.read_stream(path, chunk_size):
                    started = True
                    yield chunk
                return
            except FsUnavailable:
                if started or attempt == self.attempts - 1:
                    raise
                await self._sleep(attempt)

    async def stat(self, path: str) -> Stat:
        return await self._retry(lambda: self.parent.stat(path))

    async def exists(self, path: str) -> bool:
        return await self._retry(lambda: self.parent.exists(path))

    async def write(
        self, path: str, data: bytes, mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if mode is WriteMode.REPLACE:
            await self._retry(lambda: self.parent.write(path, data, mode, metadata))
            return
        await self._create(lambda: self.parent.write(path, data, mode, metadata), path, data)

    async def _create(self, call: Callable[[], Awaitable[None]], path: str, data: bytes) -> None:
        uncertain = False
        for attempt in range(self.attempts):
            try:
                await call()
                return
            except FsExists:
                if uncertain and await self._retry(lambda: self.parent.read(path)) == data:
                    return  # our earlier attempt did create it
                raise
            except FsUnavailable:
                uncertain = True
                if attempt == self.attempts - 1:
                    if await self._holds(path, data):
                        return  # the last attempt did create it
                    raise
                await self._sleep(attempt)

    async def _holds(self, path: str, data: bytes) -> bool:
        """Whether ``path`` now holds exactly ``data`` (False also when that cannot be
        read: the caller then reports its own failure)."""
        try:
            return await self._retry(lambda: self.parent.read(path)) == data
        except (FsNotFound, FsUnavailable):
            return False

    async def write_unique(
        self, prefix: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> str:
        return await Fs.write_unique(self, prefix, data, metadata)

    async def append(self, path: str, data: bytes) -> int:
        for attempt in range(self.attempts):
            try:
                return await self.parent.append(path, data)
            except FsUnavailable:
                # Should this read fail too, its FsUnavailable reaches the caller with the
                # outcome unknown (the mail layer then resolves it); never a blind repeat.
                try:
                    current = await self._retry(lambda: self.parent.read(path))
                except FsNotFound:
                    current = b""
                offset = current.find(data)
                if offset >= 0:
                    return offset  # the failed append did happen; records are unique
                if attempt == self.attempts - 1:
                    raise
                await self._sleep(attempt)
        raise AssertionError("unreachable")

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        if mode is WriteMode.REPLACE:
            await self._retry(lambda: self.parent.copy(src, dst, mode))
            return
        uncertain = False
        for attempt in range(self.attempts):
            try:
                await self.parent.copy(src, dst, mode)
                return
            except FsExists:
                if uncertain and await self.read(dst) == await self.read(src):
                    return
                raise
            except FsUnavailable:
                uncertain = True
                if attempt == self.attempts - 1:
                    raise
                await self._sleep(attempt)

    async def delete(self, path: str) -> None:
        await self._retry(lambda: self.parent.delete(path))

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        seen: set[str] = set()
        for attempt in range(self.attempts):
            try:
                async for name in self.parent.iter(prefix):
                    if name not in seen:
                        seen.add(name)
                        yield name
                return
            except FsUnavailable:
                if attempt == self.attempts - 1:
                    raise
                await self._sleep(attempt)
