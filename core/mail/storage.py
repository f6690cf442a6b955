"""The libfs mail backend's public names in one place, for the application, benchmarks and
tests (protocols use core/mail/api.py).  The code lives in store.py (users and the mailbox
list), mailbox.py (an opened mailbox), layout.py (objects), delivery.py and
search_adapter.py."""

from __future__ import annotations

from .delivery import deliver, deliver_to
from .entries import MAX_CACHED_HEADER, cache_entry_of
from .layout import user_prefix
from .mailbox import Mailbox
from .search_adapter import search_mailbox
from .store import KEEP_USERS, MailStore, UserMail
from .values import (
    DEFAULT_AUTOCREATE,
    LAYOUTS,
    QuotaLimits,
    QuotaUsage,
    SaveRequest,
    StorageSettings,
    internal_datetime,
    parse_quota_rule,
)

__all__ = [
    "DEFAULT_AUTOCREATE", "KEEP_USERS", "LAYOUTS", "MAX_CACHED_HEADER", "MailStore", "Mailbox",
    "QuotaLimits", "QuotaUsage", "SaveRequest", "StorageSettings", "UserMail",
    "cache_entry_of", "deliver", "deliver_to", "internal_datetime", "parse_quota_rule",
    "search_mailbox", "user_prefix",
]
