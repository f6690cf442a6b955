"""``cache``: keep recently read objects in memory (and optionally on local disk).

``cache:size=64MB:...`` bounds the memory by bytes (cachetools LRU); ``disk=/var/cache/cc``
with ``disk_size=1GB`` spills evicted objects to local files.  Every write, append, copy
and delete through this stage invalidates its own entries.  Changes made by *other*
processes are not seen until an entry is evicted: put this stage in front of objects that
are never changed once written (message bodies, attachments), or on a single node.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING

from cachetools import LRUCache

from .api import DEFAULT_CHUNK_SIZE, ForwardingFs, Fs, FsInvalidSpec, Stat, WriteMode

if TYPE_CHECKING:
    from .chain import Settings


class _DiskCache:
    """Local files named by the hash of the path; this process's own, wiped at start."""

    def __init__(self, directory: str, size: int) -> None:
        self.dir = os.path.join(directory, f"pid-{os.getpid()}")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.index: LRUCache[str, int] = LRUCache(maxsize=size, getsizeof=lambda n: n)

    def _file(self, path: str) -> str:
        return os.path.join(self.dir, hashlib.sha256(path.encode()).hexdigest())

    def get(self, path: str) -> bytes | None:
        if path not in self.index:
            return None
        try:
            with open(self._file(path), "rb") as f:
                return f.read()
        except OSError:
            self.index.pop(path, None)
            return None

    def put(self, path: str, data: bytes) -> None:
        if len(data) > self.index.maxsize:
            return
        tmp = self._file(path) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self._file(path))
        before = set(self.index)
        self.index[path] = len(data)
        for gone in before - set(self.index):
            self._remove(gone)

    def _remove(self, path: str) -> None:
        try:
            os.unlink(self._file(path))
        except OSError:
            pass

    def drop(self, path: str) -> None:
        if self.index.pop(path, None) is not None:
            self._remove(path)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class CacheFs(ForwardingFs):
    """An LRU of whole objects (and of stats) in front of the parent stage."""

    name = "cache"

    def __init__(self, parent: Fs, size: int = 64 << 20, disk: _DiskCache | None = None,
                 max_object: int | None = None) -> None:
        super().__init__(parent)
        self.objects: LRUCache[str, bytes] = LRUCache(maxsize=size, getsizeof=len)
        self.stats: LRUCache[str, Stat] = LRUCache(maxsize=10_000)
        self.disk = disk
        self.max_object = max_object if max_object is not None else max(1, size // 8)
        self.hits = 0
        self.misses = 0

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> CacheFs:
        assert parent is not None
        size = settings.size("size", settings.size("", 64 << 20))
        disk_dir = settings.str("disk")
        disk_size = settings.size("disk_size", 1 << 30)
        max_object = settings.size("max_object", max(1, size // 8))
        settings.finish()
        disk = None
        if disk_dir:
            try:
                disk = _DiskCache(disk_dir, disk_size)
            except OSError as exc:
                raise FsInvalidSpec(f"cache: cannot use disk={disk_dir!r}: {exc}") from exc
        return cls(parent, size, disk, max_object)

    def _drop(self, path: str) -> None:
        self.objects.pop(path, None)
        self.stats.pop(path, None)
        if self.disk:
            self.disk.drop(path)

    def _keep(self, path: str, data: bytes) -> None:
        if len(data) > self.max_object:
            return
        self.objects[path] = data
        if self.disk:
            # The disk copy outlives the memory one, which the LRU may evict first.
            self.disk.put(path, data)

    def _cached(self, path: str) -> bytes | None:
        data = self.objects.get(path)
        if data is None and self.disk:
            data = self.disk.get(path)
            if data is not None:
                self.objects[path] = data
        return data

    async def read(self, path: str) -> bytes:
        data = self._cached(path)
        if data is not None:
            self.hits += 1
            return data
        self.misses += 1
        data = await self.parent.read(path)
        self._keep(path, data)
        return data

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        data = self._cached(path)
        if data is not None:
            self.hits += 1
            return data[start:end]
        self.misses += 1
        return await self.parent.read_range(path, start, end)

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        data = self._cached(path)
        if data is None:
            async for chunk in self.parent.read_stream(path, chunk_size):
                yield chunk
            return
        self.hits += 1
        for pos in range(0, len(data), chunk_size):
            yield data[pos:pos + chunk_size]

    async def stat(self, path: str) -> Stat:
        st = self.stats.get(path)
        if st is None:
            st = await self.parent.stat(path)
            self.stats[path] = st
        return st

    async def exists(self, path: str) -> bool:
        if path in self.objects or path in self.stats:
            return True
        return await self.parent.exists(path)

    async def write(
        self, path: str, data: bytes, mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._drop(path)
        try:
            await self.parent.write(path, data, mode, metadata)
        finally:
            self._drop(path)

    async def write_stream(
        self, path: str, chunks: AsyncIterable[bytes], mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        self._drop(path)
        try:
            return await self.parent.write_stream(path, chunks, mode, metadata)
        finally:
            self._drop(path)

    async def write_unique(
        self, prefix: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> str:
        return await Fs.write_unique(self, prefix, data, metadata)

    async def append(self, path: str, data: bytes) -> int:
        self._drop(path)
        try:
            return await self.parent.append(path, data)
        finally:
            self._drop(path)

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        self._drop(dst)
        try:
            await self.parent.copy(src, dst, mode)
        finally:
            self._drop(dst)

    async def delete(self, path: str) -> None:
        self._drop(path)
        try:
            await self.parent.delete(path)
        finally:
            self._drop(path)

    async def close(self) -> None:
        if self.disk:
            await asyncio.to_thread(self.disk.close)
        await super().close()
