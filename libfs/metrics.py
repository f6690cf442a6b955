"""``metrics``: count calls, bytes, errors and time per operation.

``metrics:...`` changes nothing in the data path; ``MetricsFs.snapshot()`` returns the
counters (the admin CLI and the benchmarks read them).  Requests that the driver itself
sends to its store (S3 GET/PUT/LIST) are counted by the driver, see its ``requests``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypeVar

from .api import DEFAULT_CHUNK_SIZE, ForwardingFs, Fs, Stat, WriteMode

if TYPE_CHECKING:
    from .chain import Settings

T = TypeVar("T")


@dataclass
class OpStats:
    calls: int = 0
    errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0


class MetricsFs(ForwardingFs):
    """Forwards every call and records its count, bytes, errors and duration."""

    name = "metrics"

    def __init__(self, parent: Fs) -> None:
        super().__init__(parent)
        self.ops: dict[str, OpStats] = {}

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> MetricsFs:
        assert parent is not None
        settings.finish()
        return cls(parent)

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {op: asdict(s) for op, s in sorted(self.ops.items())}

    def reset(self) -> None:
        self.ops.clear()

    def _stats(self, op: str) -> OpStats:
        return self.ops.setdefault(op, OpStats())

    async def _measure(self, op: str, call: Callable[[], Awaitable[T]], sent: int = 0) -> T:
        stats = self._stats(op)
        stats.calls += 1
        stats.bytes_out += sent
        start = time.perf_counter()
        try:
            result = await call()
        except BaseException:
            stats.errors += 1
            raise
        finally:
            stats.seconds += time.perf_counter() - start
        if isinstance(result, bytes):
            stats.bytes_in += len(result)
        return result

    async def read(self, path: str) -> bytes:
        return await self._measure("read", lambda: self.parent.read(path))

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        return await self._measure("read_range",
                                   lambda: self.parent.read_range(path, start, end))

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        stats = self._stats("read_stream")
        stats.calls += 1
        start = time.perf_counter()
        try:
            async for chunk in self.parent.read_stream(path, chunk_size):
                stats.bytes_in += len(chunk)
                yield chunk
        except BaseException:
            stats.errors += 1
            raise
        finally:
            stats.seconds += time.perf_counter() - start

    async def write(
        self, path: str, data: bytes, mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        await self._measure("write", lambda: self.parent.write(path, data, mode, metadata),
                            len(data))

    async def write_stream(
        self, path: str, chunks: AsyncIterable[bytes], mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        size = await self._measure(
            "write_stream", lambda: self.parent.write_stream(path, chunks, mode, metadata))
        self._stats("write_stream").bytes_out += size
        return size

    async def write_unique(
        self, prefix: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> str:
        return await self._measure(
            "write", lambda: self.parent.write_unique(prefix, data, metadata), len(data))

    async def append(self, path: str, data: bytes) -> int:
        return await self._measure("append", lambda: self.parent.append(path, data),
                                   len(data))

    async def stat(self, path: str) -> Stat:
        return await self._measure("stat", lambda: self.parent.stat(path))

    async def exists(self, path: str) -> bool:
        return await self._measure("stat", lambda: self.parent.exists(path))

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        await self._measure("copy", lambda: self.parent.copy(src, dst, mode))

    async def delete(self, path: str) -> None:
        await self._measure("delete", lambda: self.parent.delete(path))

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        stats = self._stats("iter")
        stats.calls += 1
        start = time.perf_counter()
        try:
            async for name in self.parent.iter(prefix):
                yield name
        finally:
            stats.seconds += time.perf_counter() - start
