"""What every backend computes for a message at save time: its cache entry (ENVELOPE,
BODYSTRUCTURE, BODY and the header block) and its internal date as stored."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from . import mime

#: Cache entries keep a header block up to this size; bigger ones are read from the message.
MAX_CACHED_HEADER = 64 * 1024


def cache_entry_of(raw: bytes) -> dict[str, Any]:
    """The cache fields of a message (ENVELOPE, BODYSTRUCTURE, BODY and the header block)."""
    ms = mime.parse(raw)
    hdr = mime.header_block(raw)
    entry: dict[str, Any] = {
        "env": mime.envelope(ms),
        "bs": mime.bodystructure(ms, extended=True),
        "b": mime.bodystructure(ms, extended=False),
    }
    if len(hdr) <= MAX_CACHED_HEADER:
        entry["h"] = hdr.decode("utf-8", "surrogateescape")
    return entry


def stored_idate(when: dt.datetime | None) -> tuple[int, int]:
    """An internal date as the index keeps it: (seconds, zone offset in minutes); now
    (UTC) when None, a naive datetime taken as UTC."""
    if when is None:
        return int(time.time()), 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    off = when.utcoffset() or dt.timedelta(0)
    return int(when.timestamp()), int(off.total_seconds() // 60)
