"""Stored message objects: each message carries its own metadata.

Both layouts store a message as one line of metadata followed by the message bytes::

    CCM1 {"g": guid, "m": mailbox guid, "d": internal date, "z": tz minutes,
          "s": size, "r": [[user, mailbox guid], ...]}\\r\\n
    <the message as saved, CRLF line endings>

so that force-resync can rebuild an index from the objects alone.  An sdbox object holds
one such message; an mdbox storage object holds several back to back (a multi-recipient
delivery, a batch of saves, or what ``purge`` repacked), and the ``r`` list says which
mailboxes it was saved into.

Object ids start with the creation time in hex seconds, so that purge and resync can tell
an object that a save still in flight may link from an orphan without asking the store.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"CCM1 "
#: Largest metadata line accepted when parsing.
MAX_META = 64 * 1024


def new_object_id(now: float | None = None) -> str:
    """A fresh object id: creation time (hex seconds) and 64 random bits."""
    return f"{int(now if now is not None else time.time()):08x}{secrets.token_hex(8)}"


def object_age(object_id: str, now: float | None = None) -> float:
    """Seconds since the object with this id was created (0 if the id has no time)."""
    try:
        born = int(object_id[:8], 16)
    except ValueError:
        return 0.0
    return (now if now is not None else time.time()) - born


@dataclass
class StoredMeta:
    guid: str
    mailbox: str
    internaldate: int
    tz: int
    size: int
    refs: list[list[str]] = field(default_factory=list)
    #: Offset of the message bytes within the object, and of the metadata line.
    offset: int = 0
    meta_offset: int = 0

    def to_line(self) -> bytes:
        doc: dict[str, Any] = {"g": self.guid, "m": self.mailbox, "d": self.internaldate,
                               "z": self.tz, "s": self.size}
        if self.refs:
            doc["r"] = self.refs
        return MAGIC + json.dumps(doc, separators=(",", ":")).encode() + b"\r\n"


def encode_message(meta: StoredMeta, raw: bytes) -> bytes:
    """Metadata line plus message; sets ``meta.offset`` relative to the returned bytes."""
    line = meta.to_line()
    meta.offset = len(line)
    return line + raw


def parse_meta_line(data: bytes, pos: int = 0) -> StoredMeta | None:
    """The metadata line of the message starting at ``pos`` (its ``offset`` set to where
    the message's bytes begin), or None if there is no whole line there."""
    if not data.startswith(MAGIC, pos):
        return None
    nl = data.find(b"\r\n", pos, pos + MAX_META)
    if nl < 0:
        return None
    try:
        doc = json.loads(data[pos + len(MAGIC):nl])
        meta = StoredMeta(str(doc["g"]), str(doc["m"]), int(doc["d"]), int(doc["z"]),
                          int(doc["s"]), [list(r) for r in doc.get("r", [])])
    except (ValueError, KeyError, TypeError):
        return None
    meta.meta_offset = pos
    meta.offset = nl + 2
    return meta


def parse_objects(data: bytes) -> Iterator[StoredMeta]:
    """The messages in an object's bytes, in order.  Stops at the first thing that is not
    a whole message (a torn object is reported by the caller)."""
    pos = 0
    while pos < len(data):
        meta = parse_meta_line(data, pos)
        if meta is None or meta.offset + meta.size > len(data):
            return
        yield meta
        pos = meta.offset + meta.size


def normalize_crlf(raw: bytes) -> bytes:
    """CRLF line endings: bare LF (and bare CR) become CRLF; nothing else changes."""
    if b"\n" not in raw and b"\r" not in raw:
        return raw
    out = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return out
