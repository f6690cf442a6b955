"""``randomfail``: fail a share of calls, before OR after the real operation.

As Dovecot's ``fs-randomfail``: ``randomfail:0.1:...`` fails 10 % of every operation;
``randomfail:read=0.2,write=0.1,after=0.5:...`` sets shares per operation and which part of
the failures happen *after* the store did the work (default half).  A failure after the
operation is the hard case for callers: the write happened, yet they were told it did not.
Failures are :class:`FsUnavailable`, the retryable error, as a store timeout would be.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from .api import DEFAULT_CHUNK_SIZE, ForwardingFs, Fs, FsUnavailable, Stat, WriteMode

if TYPE_CHECKING:
    from .chain import Settings

T = TypeVar("T")
OPS = ("read", "write", "append", "stat", "copy", "delete", "iter")


class RandomFailFs(ForwardingFs):
    """Forwards calls, failing a configured share of them with FsUnavailable."""

    name = "randomfail"

    def __init__(
        self, parent: Fs, rates: dict[str, float], after: float = 0.5, seed: int | None = None
    ) -> None:
        super().__init__(parent)
        self.rates = rates
        self.after = after
        self.rng = random.Random(seed)
        #: How many failures were injected, by op and "before"/"after".
        self.injected: dict[str, int] = {}

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> RandomFailFs:
        assert parent is not None

        def rate(key: str, default: float) -> float:
            value = settings.float(key, default)
            if not 0.0 <= value <= 1.0:
                raise settings.error(key or "rate", value, "expected a share from 0 to 1")
            return value

        base = rate("rate", rate("", 0.0))
        rates = {op: rate(op, base) for op in OPS}
        after = rate("after", 0.5)
        seed = settings.str("seed")
        settings.finish()
        return cls(parent, rates, after, int(seed) if seed is not None else None)

    def describe(self) -> str:
        return f"randomfail:{self.rates['read']:g}:{self.parent.describe()}"

    def _fail(self, op: str, when: str, path: str) -> FsUnavailable:
        key = f"{op}-{when}"
        self.injected[key] = self.injected.get(key, 0) + 1
        return FsUnavailable(f"randomfail: injected failure {when} {op}", path=path, op=op)

    async def _call(self, op: str, path: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.rng.random() < self.rates[op]:
            if self.rng.random() < self.after:
                await call()
                raise self._fail(op, "after", path)
            raise self._fail(op, "before", path)
        return await call()

    async def read(self, path: str) -> bytes:
        return await self._call("read", path, lambda: self.parent.read(path))

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        return await self._call("read", path, lambda: self.parent.read_range(path, start, end))

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        if self.rng.random() < self.rates["read"]:
            raise self._fail("read", "before", path)
        async for chunk in self.parent.read_stream(path, chunk_size):
            yield chunk

    async def write(
        self, path: str, data: bytes, mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        await self._call("write", path, lambda: self.parent.write(path, data, mode, metadata))

    async def write_stream(
        self, path: str, chunks: AsyncIterable[bytes], mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        return await self._call(
            "write", path, lambda: self.parent.write_stream(path, chunks, mode, metadata))

    async def write_unique(
        self, prefix: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> str:
        # Built on this stage's own write, so its failures are injected there.
        return await Fs.write_unique(self, prefix, data, metadata)

    async def append(self, path: str, data: bytes) -> int:
        return await self._call("append", path, lambda: self.parent.append(path, data))

    async def stat(self, path: str) -> Stat:
        return await self._call("stat", path, lambda: self.parent.stat(path))

    async def exists(self, path: str) -> bool:
        return await self._call("stat", path, lambda: self.parent.exists(path))

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        await self._call("copy", dst, lambda: self.parent.copy(src, dst, mode))

    async def delete(self, path: str) -> None:
        await self._call("delete", path, lambda: self.parent.delete(path))

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        if self.rng.random() < self.rates["iter"]:
            raise self._fail("iter", "before", prefix)
        async for name in self.parent.iter(prefix):
            yield name
