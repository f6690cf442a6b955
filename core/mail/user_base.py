"""What every backend's user does the same way on top of its list log (``list_log``:
``state``, ``commit``) and its opened mailboxes: the mailbox list and its changes
(RFC 3501 6.3), subscriptions, SPECIAL-USE (RFC 6154) and quota (RFC 9208)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from .errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxInUse,
    MailboxNotFound,
    QuotaExceeded,
)
from .index import new_guid
from .mailbox_list import (
    SEP,
    MailboxEntry,
    MailboxListState,
    normalize_name,
    normalize_special_use,
)
from .values import QuotaLimits, QuotaUsage, StorageSettings

if TYPE_CHECKING:
    from .api import Mailbox


class ListLog(Protocol):
    """The log of a user's mailbox list, as a backend keeps it."""

    @property
    def state(self) -> MailboxListState | None: ...

    async def commit(self, records: list[Any]) -> list[Any]: ...


class UserBase:
    """The shared half of a user; a backend provides ``store``, ``open``,
    ``refresh_list``, ``list_may_be_behind``, ``wait_for_list_change``,
    ``mailbox_by_guid`` and ``remove_mailbox_data``."""

    user: str
    quota_limits: QuotaLimits
    list_log: ListLog
    _mailboxes: dict[str, Any]

    store: Any
    if TYPE_CHECKING:
        async def refresh_list(self) -> None: ...

        def list_may_be_behind(self) -> bool: ...

        async def mailbox_by_guid(self, guid: str) -> Any: ...

        async def remove_mailbox_data(self, guid: str) -> None: ...

    @property
    def settings(self) -> StorageSettings:
        return self.store.settings

    @property
    def list_state(self) -> MailboxListState:
        assert self.list_log.state is not None
        return self.list_log.state

    async def autocreate(self) -> None:
        """INBOX and the configured special-use mailboxes, where missing (first login)."""
        wanted: dict[str, list[str]] = {"INBOX": []} | dict(self.settings.autocreate)
        missing = [(n, su) for n, su in wanted.items() if n not in self.list_state.by_name]
        if missing:
            recs = [self._create_record(n, normalize_special_use(su)) for n, su in missing]
            await self.list_log.commit(recs)

    def _create_record(self, name: str, special_use: list[str]) -> list[Any]:
        last = self.list_state.last_uidvalidity.get(name, 0)
        uidvalidity = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
        return ["c", name, new_guid(), uidvalidity, special_use]

    def list_mailboxes(self) -> list[MailboxEntry]:
        """Every mailbox, sorted by name (as of the last refresh)."""
        return sorted(self.list_state.by_name.values(), key=lambda e: e.name)

    def subscriptions(self) -> set[str]:
        return set(self.list_state.subscriptions)

    def entry(self, name: str) -> MailboxEntry:
        canon = normalize_name(name)
        entry = self.list_state.by_name.get(canon)
        if entry is None:
            raise MailboxNotFound(f"no mailbox {name!r}")
        return entry

    def entry_by_guid(self, guid: str) -> MailboxEntry:
        """The list entry of the mailbox ``guid``; ``MailboxNotFound`` if there is none."""
        entry = self.list_state.by_guid.get(guid)
        if entry is None:
            raise MailboxNotFound(f"no mailbox with GUID {guid}")
        return entry

    async def create_mailbox(self, name: str, special_use: Iterable[str] = ()) -> MailboxEntry:
        """RFC 3501 6.3.3 CREATE (with RFC 6154 CREATE-SPECIAL-USE).  One of two concurrent
        creators of a name wins; the other gets MailboxExists."""
        canon = normalize_name(name)
        su = normalize_special_use(list(special_use))
        await self.refresh_list()
        if canon in self.list_state.by_name:
            raise MailboxExists(f"mailbox {canon!r} exists")
        # RFC 3501 6.3.3: superior names that are needed are created too.
        parts = canon.split(SEP)
        parents = [SEP.join(parts[:i]) for i in range(1, len(parts))]
        recs = [self._create_record(p, []) for p in parents
                if p not in self.list_state.by_name]
        rec = self._create_record(canon, su)
        *_, result = await self.list_log.commit([*recs, rec])
        if result != "ok":
            raise MailboxExists(f"mailbox {canon!r} exists")
        return self.list_state.by_guid[rec[2]]

    async def delete_mailbox(self, name: str) -> None:
        """RFC 3501 6.3.4 DELETE: the mailbox and its messages go; its children stay."""
        entry = self.entry(name)
        if entry.name == "INBOX":
            raise MailboxInUse("INBOX cannot be deleted")
        (result,) = await self.list_log.commit([["d", entry.guid]])
        if result != "ok":
            raise MailboxNotFound(f"no mailbox {name!r}")
        box = self._mailboxes.pop(entry.guid, None)
        if box is not None:
            box.deleted = True
            box.close()
        await self.remove_mailbox_data(entry.guid)

    async def rename_mailbox(self, old: str, new: str) -> None:
        """RFC 3501 6.3.5 RENAME: the mailbox and its children.  Renaming INBOX moves its
        messages into a new mailbox and leaves INBOX empty."""
        entry = self.entry(old)
        canon = normalize_name(new)
        if canon == entry.name:
            raise MailboxExists(f"mailbox {canon!r} exists")
        if entry.name == "INBOX":
            # INBOX's children are not moved, so INBOX/old is a fine new name.
            target = await self.create_mailbox(canon)
            src = await self.mailbox("INBOX")
            dst = await self.mailbox_by_guid(target.guid)
            uids = list(src.state.uids)
            if uids:
                await src.move(uids, dst)
            return
        if canon.startswith(entry.name + SEP):
            raise MailboxInUse("a mailbox cannot be renamed into its own child")
        await self.refresh_list()
        if canon in self.list_state.by_name:
            raise MailboxExists(f"mailbox {canon!r} exists")
        (result,) = await self.list_log.commit([["r", entry.guid, canon]])
        if result == "exists":
            raise MailboxExists(f"mailbox {canon!r} (or one of its children) exists")
        if result == "missing":
            raise MailboxNotFound(f"no mailbox {old!r}")
        if result != "ok":
            raise InvalidMailboxName(f"cannot rename {old!r} to {new!r}")

    async def subscribe(self, name: str) -> None:
        await self.list_log.commit([["s", normalize_name(name)]])

    async def unsubscribe(self, name: str) -> None:
        await self.list_log.commit([["u", normalize_name(name)]])

    async def set_special_use(self, name: str, special_use: Iterable[str]) -> None:
        entry = self.entry(name)
        await self.list_log.commit([["su", entry.guid, normalize_special_use(list(special_use))]])

    # -- mailboxes ------------------------------------------------------------------------

    async def mailbox(self, name: str) -> Mailbox:
        """The opened mailbox (shared with every session of this process).  The list is
        read again first when it may be behind, so that a mailbox another process deleted
        and created again is never served from its old index."""
        fresh = self.list_may_be_behind()
        if fresh:
            await self.refresh_list()
        try:
            entry = self.entry(name)
        except MailboxNotFound:
            if fresh:
                raise
            await self.refresh_list()
            entry = self.entry(name)
        return await self.mailbox_by_guid(entry.guid)

    # -- quota ----------------------------------------------------------------------------

    async def quota_usage(self, *, max_age: float | None = None) -> QuotaUsage:
        """Bytes and messages over all mailboxes (RFC 9208 STORAGE and MESSAGE), from the
        indexes; mailboxes refreshed if their view is older than ``max_age`` seconds."""
        age = self.settings.quota_refresh if max_age is None else max_age
        total = count = 0
        for entry in list(self.list_state.by_name.values()):
            try:
                box = await self.mailbox_by_guid(entry.guid)
                if time.monotonic() - box.refreshed_at > age:
                    await box.refresh()
            except MailboxNotFound:
                continue
            total += box.state.total_size
            count += box.state.exists
        return QuotaUsage(total, count, self.quota_limits)

    async def check_quota(self, add_bytes: int, add_messages: int) -> None:
        limits = self.quota_limits
        if not limits.bytes and not limits.messages:
            return
        usage = await self.quota_usage()
        if limits.bytes and usage.bytes + add_bytes > limits.bytes:
            raise QuotaExceeded("storage", limits.bytes, usage.bytes, add_bytes)
        if limits.messages and usage.messages + add_messages > limits.messages:
            raise QuotaExceeded("messages", limits.messages, usage.messages, add_messages)
