"""``latency``: a delay before every call, to prove that prefetching hides store latency.

``latency:20ms:...`` delays every operation by 20 ms; per-operation settings override it:
``latency:20ms,write=50ms,jitter=5ms:...`` (``jitter`` adds a uniform random 0..jitter).
A streaming read pays the delay once, before its first chunk, like a first byte from S3.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING

from .api import DEFAULT_CHUNK_SIZE, ForwardingFs, Fs, Stat, WriteMode

if TYPE_CHECKING:
    from .chain import Settings

OPS = ("read", "write", "append", "stat", "copy", "delete", "iter")


class LatencyFs(ForwardingFs):
    """Forwards every call after a configurable delay; changes no semantics."""

    name = "latency"

    def __init__(self, parent: Fs, delays: dict[str, float], jitter: float = 0.0) -> None:
        super().__init__(parent)
        self.delays = delays
        self.jitter = jitter

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> LatencyFs:
        assert parent is not None
        base = settings.duration("", 0.0)
        base = settings.duration("delay", base)
        delays = {op: settings.duration(op, base) for op in OPS}
        jitter = settings.duration("jitter", 0.0)
        settings.finish()
        return cls(parent, delays, jitter)

    def describe(self) -> str:
        return f"latency:{self.delays['read'] * 1000:g}ms:{self.parent.describe()}"

    async def _delay(self, op: str) -> None:
        delay = self.delays[op] + (random.uniform(0, self.jitter) if self.jitter else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

    async def read(self, path: str) -> bytes:
        await self._delay("read")
        return await self.parent.read(path)

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        await self._delay("read")
        return await self.parent.read_range(path, start, end)

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        await self._delay("read")
        async for chunk in self.parent.read_stream(path, chunk_size):
            yield chunk

    async def write(
        self, path: str, data: bytes, mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        await self._delay("write")
        await self.parent.write(path, data, mode, metadata)

    async def write_stream(
        self, path: str, chunks: AsyncIterable[bytes], mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        await self._delay("write")
        return await self.parent.write_stream(path, chunks, mode, metadata)

    async def write_unique(
        self, prefix: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> str:
        await self._delay("write")
        return await self.parent.write_unique(prefix, data, metadata)

    async def append(self, path: str, data: bytes) -> int:
        await self._delay("append")
        return await self.parent.append(path, data)

    async def stat(self, path: str) -> Stat:
        await self._delay("stat")
        return await self.parent.stat(path)

    async def exists(self, path: str) -> bool:
        await self._delay("stat")
        return await self.parent.exists(path)

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        await self._delay("copy")
        await self.parent.copy(src, dst, mode)

    async def delete(self, path: str) -> None:
        await self._delay("delete")
        await self.parent.delete(path)

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        await self._delay("iter")
        async for name in self.parent.iter(prefix):
            yield name
