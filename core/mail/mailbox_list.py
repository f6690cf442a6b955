"""A user's mailbox list: names, hierarchy, GUIDs, UIDVALIDITY, SPECIAL-USE, subscriptions.

The list is a transaction log of its own (``users/<user>/list``), so creates, deletes and
renames are totally ordered without a lock: when two processes create or rename to the same
name at once, both records land in the log, the first one wins for every reader, and the
writer of the second learns from its record's result that it lost.

Records: ``["c", name, guid, uidvalidity, special_use]``, ``["d", guid]``,
``["r", guid, new_name]`` (the mailbox and its children move together),
``["s", name]`` / ``["u", name]`` (subscribe / unsubscribe), ``["su", guid, special_use]``.

Names are UTF-8 strings with ``/`` as the hierarchy separator (modified UTF-7 is the IMAP
layer's business).  ``INBOX`` is case-insensitive (RFC 3501 5.1).  Mailbox data lives under
the mailbox's GUID, never under its name, so no name can reach another user's objects.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidMailboxName

SEP = "/"
MAX_NAME_BYTES = 1024
MAX_SEGMENT_BYTES = 255
MAX_DEPTH = 32
SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
_SPECIAL_BY_LOWER = {s.lower(): s for s in SPECIAL_USES}


def normalize_name(name: str) -> str:
    """The canonical form of a mailbox name: ``INBOX`` (any case) as ``INBOX``, also as
    the first segment of a child.  Raises InvalidMailboxName."""
    if not isinstance(name, str) or not name:
        raise InvalidMailboxName("empty mailbox name")
    if name.startswith(SEP) or name.endswith(SEP) or SEP * 2 in name:
        raise InvalidMailboxName(f"mailbox name {name!r} has an empty hierarchy level")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidMailboxName("mailbox name contains control characters")
    if "*" in name or "%" in name:
        raise InvalidMailboxName("mailbox name contains a LIST wildcard (* or %)")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMailboxName("mailbox name is not valid Unicode") from None
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidMailboxName(f"mailbox name longer than {MAX_NAME_BYTES} bytes")
    parts = name.split(SEP)
    if len(parts) > MAX_DEPTH:
        raise InvalidMailboxName(f"mailbox name deeper than {MAX_DEPTH} levels")
    for part in parts:
        if len(part.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidMailboxName(f"a mailbox name level is longer than "
                                     f"{MAX_SEGMENT_BYTES} bytes")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return SEP.join(parts)


def normalize_special_use(values: list[str]) -> list[str]:
    out = []
    for v in values:
        canon = _SPECIAL_BY_LOWER.get(v.lower())
        if canon is None:
            raise InvalidMailboxName(f"unknown special-use attribute {v!r}")
        if canon not in out:
            out.append(canon)
    return out


@dataclass
class MailboxEntry:
    name: str
    guid: str
    uidvalidity: int
    special_use: list[str] = field(default_factory=list)


class MailboxListState:
    """The list as of a point of its log."""

    def __init__(self) -> None:
        self.by_name: dict[str, MailboxEntry] = {}
        self.by_guid: dict[str, MailboxEntry] = {}
        self.subscriptions: set[str] = set()
        #: Highest UIDVALIDITY ever given to a name, so a re-created mailbox gets a
        #: greater one (RFC 3501 2.3.1.1).
        self.last_uidvalidity: dict[str, int] = {}

    def apply(self, records: list[Any], where: tuple[int, int]) -> list[Any]:
        return [self._apply_one(r) for r in records]

    def _apply_one(self, rec: list[Any]) -> Any:
        kind = rec[0]
        if kind == "c":
            _, name, guid, uidvalidity, special = rec[:5]
            if name in self.by_name or guid in self.by_guid:
                return "exists"
            entry = MailboxEntry(name, guid, int(uidvalidity), list(special))
            self.by_name[name] = entry
            self.by_guid[guid] = entry
            self.last_uidvalidity[name] = max(self.last_uidvalidity.get(name, 0),
                                              int(uidvalidity))
            return "ok"
        if kind == "d":
            gone = self.by_guid.pop(rec[1], None)
            if gone is None:
                return "missing"
            del self.by_name[gone.name]
            return "ok"
        if kind == "r":
            _, guid, new = rec[:3]
            found = self.by_guid.get(guid)
            if found is None:
                return "missing"
            old = found.name
            if new == old or new.startswith(old + SEP):
                return "invalid"
            moving = [e for n, e in self.by_name.items() if n == old or n.startswith(old + SEP)]
            targets = {e.guid: new + e.name[len(old):] for e in moving}
            if any(t in self.by_name for t in targets.values()):
                return "exists"
            for e in moving:
                del self.by_name[e.name]
            for e in moving:
                e.name = targets[e.guid]
                self.by_name[e.name] = e
                self.last_uidvalidity[e.name] = max(self.last_uidvalidity.get(e.name, 0),
                                                    e.uidvalidity)
            return "ok"
        if kind == "s":
            self.subscriptions.add(rec[1])
            return "ok"
        if kind == "u":
            self.subscriptions.discard(rec[1])
            return "ok"
        if kind == "su":
            box = self.by_guid.get(rec[1])
            if box is None:
                return "missing"
            box.special_use = list(rec[2])
            return "ok"
        return None

    def encode_snapshot(self) -> bytes:
        doc = {
            "v": 1,
            "boxes": [[e.name, e.guid, e.uidvalidity, e.special_use]
                      for e in self.by_name.values()],
            "subs": sorted(self.subscriptions),
            "uv": self.last_uidvalidity,
        }
        return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)

    @classmethod
    def decode_snapshot(cls, data: bytes) -> MailboxListState:
        doc = json.loads(zlib.decompress(data))
        if doc.get("v") != 1:
            raise ValueError(f"unknown list snapshot version {doc.get('v')!r}")
        st = cls()
        for name, guid, uv, special in doc["boxes"]:
            e = MailboxEntry(name, guid, int(uv), list(special))
            st.by_name[name] = e
            st.by_guid[guid] = e
        st.subscriptions = set(doc["subs"])
        st.last_uidvalidity = {k: int(v) for k, v in doc["uv"].items()}
        return st

    def children(self, name: str) -> list[MailboxEntry]:
        prefix = name + SEP
        return [e for n, e in self.by_name.items() if n.startswith(prefix)]
