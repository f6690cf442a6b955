"""Value types of the mail-storage API: settings, quota, a message to save."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from cloudcote.core.quota import QuotaLimits
from cloudcote.core.quota import parse_quota_rule as parse_quota_rule  # re-exported

from .index import Message
from .prefetch import DEFAULT_COUNT as DEFAULT_PREFETCH_COUNT

LAYOUTS = ("sdbox", "mdbox")
DEFAULT_AUTOCREATE = {
    "Drafts": ["\\Drafts"], "Sent": ["\\Sent"], "Trash": ["\\Trash"], "Junk": ["\\Junk"],
    "Archive": ["\\Archive"],
}


@dataclass
class StorageSettings:
    """What ``[storage]`` and ``[mail]`` configure for mail storage."""

    layout: str = "sdbox"
    #: Mailboxes created at a user's first login, with their SPECIAL-USE attributes.
    autocreate: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_AUTOCREATE))
    #: Default quota; 0 means unlimited.  Per-user values come from the userdb.
    quota_bytes: int = 0
    quota_messages: int = 0
    max_message_size: int = 50 * 1024 * 1024
    #: Seconds between polls of a mailbox's log tail for other processes' changes.
    poll_interval: float = 2.0
    #: With a change feed (posix inotify, PostgreSQL NOTIFY): seconds between the safety
    #: polls of a mailbox that sessions wait on, which catch what the feed may have missed
    #: (at least ``poll_interval``).
    feed_poll_interval: float = 30.0
    #: Objects younger than this are never treated as orphans (a save may still link them).
    orphan_grace: float = 3600.0
    #: Log rotation size; None picks one that suits the store.
    log_limit: int | None = None
    #: How old other mailboxes' sizes may be when a save checks the quota.
    quota_refresh: float = 10.0
    #: Message reads kept in flight ahead of a consumer (``[storage] prefetch_count``),
    #: and the bytes they may hold at once (see prefetch.py).
    prefetch_count: int = DEFAULT_PREFETCH_COUNT
    prefetch_bytes: int = 64 * 1024 * 1024


@dataclass
class SaveRequest:
    """One message to save: bytes as received, flags, internal date (aware) or now."""

    raw: bytes
    flags: Sequence[str] = ()
    internaldate: dt.datetime | None = None


@dataclass
class QuotaUsage:
    bytes: int
    messages: int
    limits: QuotaLimits


def internal_datetime(msg: Message) -> dt.datetime:
    """The INTERNALDATE of ``msg`` as an aware datetime in the zone it was saved with."""
    zone = dt.timezone(dt.timedelta(minutes=msg.tz))
    return dt.datetime.fromtimestamp(msg.internaldate, zone)
