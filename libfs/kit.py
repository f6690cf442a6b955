"""Small helpers the remote drivers share: the "changed under us" signal and the
arithmetic of byte ranges over fixed-size chunks."""

from __future__ import annotations


class Changed(Exception):
    """What an operation was reading or writing changed under it (a chunk, a segment or a
    log generation is gone; a row was replaced or created since it was looked at): the
    operation starts over from a fresh look.  Internal to a driver: it never escapes one."""


def chunk_count(size: int, chunk: int) -> int:
    """How many chunks of ``chunk`` bytes hold ``size`` bytes."""
    return (size + chunk - 1) // chunk


def chunk_span(start: int, stop: int, chunk: int) -> tuple[int, int]:
    """The first and last chunk holding bytes ``[start, stop)`` (``start < stop``)."""
    return start // chunk, (stop - 1) // chunk


def clip(whole: bytes, base: int, start: int, stop: int | None) -> bytes:
    """Bytes ``[start, stop)`` of an object from ``whole``, its bytes from offset ``base``
    on (``stop`` None: to the end of ``whole``)."""
    return whole[start - base:None if stop is None else stop - base]
