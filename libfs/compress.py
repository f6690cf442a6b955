"""``compress``: transparent compression, self-describing so plain objects stay readable.

``compress:zstd:...`` (or ``zstd,level=3``, ``zlib``, ``none``).  An object is either
written whole or built by appends, never both:

- written whole (``write``, ``write_stream``): compressed, as a sequence of frames, each
  ``CCZ1`` + algorithm byte + raw length + stored length (both 32-bit big-endian) +
  payload; a streamed object is a frame per chunk, and readers decode frame by frame in
  bounded memory;
- built by appends: stored uncompressed.  Log records are small and gain nothing from
  per-record frames, and a raw record keeps the offset the parent's ``append`` returns
  exact in the stream ``read`` returns.  A record that starts with the frame magic (or is
  a prefix of it) is refused, so a log can never be taken for frames.

An object that does not start with the magic (a log, or an object written without this
stage) is returned as it is.  ``stat`` reports the uncompressed size: from the
``cc-raw-size`` metadata that ``write`` stores, else by walking the frame headers.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from .api import (
    DEFAULT_CHUNK_SIZE,
    Feature,
    ForwardingFs,
    Fs,
    FsError,
    FsInvalidSpec,
    Stat,
    WriteMode,
)

if TYPE_CHECKING:
    from .chain import Settings

MAGIC = b"CCZ1"
HEADER = struct.Struct(">4scII")
FRAME_RAW = 1024 * 1024
RAW_SIZE_KEY = "cc-raw-size"
ALGORITHMS = {"none": b"n", "zlib": b"d", "zstd": b"z"}


class _Codec:
    def __init__(self, algorithm: str, level: int | None) -> None:
        self.algorithm = algorithm
        self.tag = ALGORITHMS[algorithm]
        self.level = level
        self._zstd: Any = None
        if algorithm == "zstd":
            self._zstd = _import_zstd()

    def compress(self, data: bytes) -> bytes:
        if self.algorithm == "zstd":
            return self._zstd.ZstdCompressor(level=self.level or 3).compress(data)
        if self.algorithm == "zlib":
            return zlib.compress(data, self.level if self.level is not None else 6)
        return data


def _import_zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise FsInvalidSpec(
            "compress: zstd needs the zstandard library; install it with: "
            "pip install 'cloudcote[compress]'"
        ) from exc
    return zstandard


def _decompress(tag: bytes, payload: bytes, raw_len: int) -> bytes:
    if raw_len == 0 and not payload:
        return b""
    if tag == b"n":
        out = payload
    elif tag == b"d":
        out = zlib.decompress(payload)
    elif tag == b"z":
        out = _import_zstd().ZstdDecompressor().decompress(payload, max_output_size=raw_len)
    else:
        raise FsError(f"compress: unknown algorithm tag {tag!r} in stored frame")
    if len(out) != raw_len:
        raise FsError("compress: corrupt frame (length mismatch)")
    return out


class CompressFs(ForwardingFs):
    """Compresses on write, decompresses on read, appends records as they are; see the
    module docstring."""

    name = "compress"
    #: The uncompressed size of a written object travels as metadata.
    requires = frozenset({Feature.METADATA})

    def __init__(self, parent: Fs, algorithm: str = "zstd", level: int | None = None) -> None:
        super().__init__(parent)
        self.codec = _Codec(algorithm, level)

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> CompressFs:
        assert parent is not None
        algorithm = settings.str("", None) or settings.str("algorithm", "zstd") or "zstd"
        if algorithm not in ALGORITHMS:
            raise settings.error("algorithm", algorithm, "expected zstd, zlib or none")
        level_text = settings.str("level")
        settings.finish()
        level = int(level_text) if level_text is not None else None
        return cls(parent, algorithm, level)

    def describe(self) -> str:
        return f"compress:{self.codec.algorithm}:{self.parent.describe()}"

    def _frames(self, data: bytes) -> bytes:
        out = []
        for pos in range(0, len(data), FRAME_RAW):
            raw = data[pos:pos + FRAME_RAW]
            payload = self.codec.compress(raw)
            out.append(HEADER.pack(MAGIC, self.codec.tag, len(raw), len(payload)) + payload)
        return b"".join(out) if out else HEADER.pack(MAGIC, self.codec.tag, 0, 0)

    async def _frames_of(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[tuple[bytes | None, int, bytes]]:
        """``(tag, raw length, payload)`` per stored frame; an object written without this
        stage comes as ``(None, len, bytes)`` pieces."""
        buf = b""
        framed: bool | None = None
        async for chunk in self.parent.read_stream(path, chunk_size):
            buf += chunk
            if framed is None:
                if len(buf) < len(MAGIC) and buf == MAGIC[:len(buf)]:
                    continue
                framed = buf.startswith(MAGIC)
            if not framed:
                yield None, len(buf), buf
                buf = b""
                continue
            while len(buf) >= HEADER.size:
                magic, tag, raw_len, stored_len = HEADER.unpack_from(buf)
                if magic != MAGIC:
                    raise FsError(f"compress: corrupt frame in {path!r}", path=path)
                end = HEADER.size + stored_len
                if len(buf) < end:
                    break
                payload, buf = buf[HEADER.size:end], buf[end:]
                yield tag, raw_len, payload
        if buf:
            if framed:
                raise FsError(f"compress: truncated frame in {path!r}", path=path)
            yield None, len(buf), buf

    async def _decode(self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
                      ) -> AsyncIterator[bytes]:
        async for tag, raw_len, payload in self._frames_of(path, chunk_size):
            yield payload if tag is None else _decompress(tag, payload, raw_len)

    async def read(self, path: str) -> bytes:
        return b"".join([c async for c in self._decode(path)])

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        out = []
        pos = 0
        async for raw in self._decode(path):
            lo, hi = pos, pos + len(raw)
            pos = hi
            if hi <= start:
                continue
            if end is not None and lo >= end:
                break
            out.append(raw[max(0, start - lo):(None if end is None else end - lo)])
        return b"".join(out)

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        async for raw in self._decode(path, chunk_size):
            for pos in range(0, len(raw), chunk_size):
                yield raw[pos:pos + chunk_size]

    async def stat(self, path: str) -> Stat:
        st = await self.parent.stat(path)
        meta = dict(st.metadata)
        raw_size = meta.pop(RAW_SIZE_KEY, None)
        if raw_size is not None:
            size = int(raw_size)
        else:
            size = 0
            async for _, raw_len, _ in self._frames_of(path):
                size += raw_len
        return Stat(path, size, st.mtime, meta)

    async def write(
        self, path: str, data: bytes, mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        meta = dict(metadata or {})
        meta[RAW_SIZE_KEY] = str(len(data))
        await self.parent.write(path, self._frames(data), mode, meta)

    async def write_stream(
        self, path: str, chunks: AsyncIterable[bytes], mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        size = 0

        async def frames() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                if chunk:
                    yield self._frames(chunk)

        await self.parent.write_stream(path, frames(), mode, metadata)
        return size

    async def write_unique(
        self, prefix: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> str:
        return await Fs.write_unique(self, prefix, data, metadata)

    async def append(self, path: str, data: bytes) -> int:
        """The record goes to the parent raw, so the parent's offset is exact here too.
        Raises FsError for a record that could read as the frame magic at a log's start."""
        if data and data[:len(MAGIC)] == MAGIC[:len(data)]:
            raise FsError(f"compress append {path!r}: a record may not start with the frame "
                          f"magic {MAGIC!r}", path=path, op="append")
        return await self.parent.append(path, data)
