"""The in-memory mail backend: users, mailboxes and messages in Python objects of this
process, with the semantics of the libfs backend (UIDs, UIDVALIDITY, MODSEQ, \\Recent
claims, quota, change waiting).

Each mailbox and mailbox list is a list of JSON-encoded log frames with the same records
the libfs backend writes (index.py, mailbox_list.py); every handle applies them to its own
state, so two stores opened on one named root (``memory:<name>``) behave like two
processes on one libfs chain: each sees the other's changes after a refresh, and
``wait_for_change`` wakes at once.  ``memory`` alone is a root of its own.  Nothing
survives the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from . import objects
from .entries import cache_entry_of, stored_idate
from .errors import MailboxNotFound, MessageExpunged, MessageTooLarge
from .index import MailboxState, Message, new_guid, normalize_flag, ranges_of
from .mailbox_base import MailboxBase
from .mailbox_list import MailboxEntry, MailboxListState
from .user_base import UserBase
from .values import QuotaLimits, SaveRequest, StorageSettings

if TYPE_CHECKING:
    from .api import Mailbox as AnyMailbox


class _State(Protocol):
    def apply(self, records: list[Any], where: tuple[int, int]) -> list[Any]: ...


S = TypeVar("S", bound=_State)


class SharedLog:
    """The frames of one log, and the event that wakes its waiters."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self._changed: asyncio.Event | None = None

    def changed(self) -> asyncio.Event:
        """Set at the next commit."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def announce(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class MemoryLog(Generic[S]):
    """One handle's view of a shared log: its state and how far it has read.  A commit
    reads what others committed first, so every handle applies the same records in the
    same order and gets the same results (first creator of a name wins, and so on)."""

    def __init__(self, shared: SharedLog, state: S) -> None:
        self.shared = shared
        self.state = state
        self.pos = 0
        self.generation = 0

    @property
    def behind(self) -> bool:
        return self.pos < len(self.shared.frames)

    def catch_up(self) -> bool:
        new = self.shared.frames[self.pos:]
        for frame in new:
            self.state.apply(json.loads(frame), (0, 0))
        self.pos += len(new)
        if new:
            self.generation += 1
        return bool(new)

    async def refresh(self) -> bool:
        return self.catch_up()

    async def commit(self, records: list[Any]) -> list[Any]:
        """Append ``records`` as one frame (all or nothing); their results."""
        self.catch_up()
        frame = json.dumps(records, separators=(",", ":"))
        self.shared.frames.append(frame)
        self.pos += 1
        results = self.state.apply(json.loads(frame), (0, 0))
        self.generation += 1
        self.shared.announce()
        return results


class MailboxData:
    """A mailbox as every handle on the root shares it: its log and its messages' bytes."""

    def __init__(self) -> None:
        self.log = SharedLog()
        self.blobs: dict[str, bytes] = {}
        self.deleted = False


class UserData:
    def __init__(self) -> None:
        self.list = SharedLog()
        self.boxes: dict[str, MailboxData] = {}


class Root:
    """The data of one in-memory store (shared by the stores opened on its name)."""

    def __init__(self) -> None:
        self.users: dict[str, UserData] = {}
        self._next_loc = 0

    def new_loc(self) -> str:
        self._next_loc += 1
        return f"m{self._next_loc}"


#: Named roots, alive while a store uses them.
_NAMED: weakref.WeakValueDictionary[str, Root] = weakref.WeakValueDictionary()


class MemoryStore:
    """The mail storage of one process, in memory."""

    def __init__(self, root: Root | None = None,
                 settings: StorageSettings | None = None) -> None:
        self.root = root or Root()
        self.settings = settings or StorageSettings()
        self._users: dict[str, MemoryUser] = {}

    async def user(self, name: str, quota: QuotaLimits | None = None) -> MemoryUser:
        """The user's mail, set up on first use (INBOX and the autocreated mailboxes)."""
        um = self._users.get(name)
        if um is None:
            um = MemoryUser(self, name, quota or QuotaLimits(self.settings.quota_bytes,
                                                             self.settings.quota_messages))
            await um.open()
            um = self._users.setdefault(name, um)
        if quota is not None:
            um.quota_limits = quota
        return um

    async def deliver_to(self, raw: bytes,
                         boxes: Sequence[AnyMailbox]) -> list[int | Exception]:
        """One message into several mailboxes, each checked against its user's size limit
        and quota; per mailbox the UID or the error."""
        results: list[int | Exception] = []
        for box in boxes:
            try:
                results.append(await box.save(raw))
            except Exception as exc:  # noqa: BLE001 - reported per recipient
                results.append(exc)
        return results

    async def close(self) -> None:
        self._users.clear()


class MemoryUser(UserBase):
    """One user's mailboxes, in memory."""

    def __init__(self, store: MemoryStore, user: str, quota: QuotaLimits) -> None:
        self.store = store
        self.user = user
        self.quota_limits = quota
        self.data = store.root.users.setdefault(user, UserData())
        self.list_log: MemoryLog[MailboxListState] = MemoryLog(self.data.list,
                                                                MailboxListState())
        self._mailboxes: dict[str, MemoryMailbox] = {}

    async def open(self) -> None:
        self.list_log.catch_up()
        await self.autocreate()

    async def refresh_list(self) -> None:
        self.list_log.catch_up()
        for guid in [g for g in self._mailboxes if g not in self.list_state.by_guid]:
            self._mailboxes.pop(guid).deleted = True

    def list_may_be_behind(self) -> bool:
        return self.list_log.behind

    async def wait_for_list_change(self, timeout: float) -> bool:
        gen = self.list_log.generation
        deadline = time.monotonic() + timeout
        while True:
            await self.refresh_list()
            if self.list_log.generation != gen:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.data.list.changed().wait(), left)

    async def mailbox_by_guid(self, guid: str) -> MemoryMailbox:
        box = self._mailboxes.get(guid)
        if box is not None:
            return box
        entry = self.entry_by_guid(guid)
        data = self.data.boxes.setdefault(guid, MailboxData())
        box = MemoryMailbox(self, entry, data)
        box.refresh_now()
        return self._mailboxes.setdefault(guid, box)

    async def remove_mailbox_data(self, guid: str) -> None:
        data = self.data.boxes.pop(guid, None)
        if data is not None:
            data.deleted = True
            data.blobs.clear()
            data.log.announce()


class MemoryMailbox(MailboxBase):
    """An opened mailbox, in memory (shared by the sessions of its store)."""

    def __init__(self, user: MemoryUser, entry: MailboxEntry, data: MailboxData) -> None:
        self.user = user
        self.entry = entry
        self.guid = entry.guid
        self.data = data
        self.log: MemoryLog[MailboxState] = MemoryLog(
            data.log, MailboxState(entry.guid, entry.uidvalidity))
        self.refreshed_at = 0.0
        self.deleted = False

    @property
    def state(self) -> MailboxState:
        return self.log.state

    @property
    def settings(self) -> StorageSettings:
        return self.user.store.settings

    def close(self) -> None:
        """Nothing to let go of (the libfs backend ends a change subscription here)."""

    def _check_live(self) -> None:
        if self.data.deleted:
            self.deleted = True
            raise MailboxNotFound(f"mailbox {self.name!r} was deleted")

    def refresh_now(self) -> bool:
        self._check_live()
        changed = self.log.catch_up()
        self.refreshed_at = time.monotonic()
        return changed

    def needs_refresh(self) -> bool:
        return self.log.behind or self.data.deleted

    async def refresh(self) -> bool:
        return self.refresh_now()

    async def wait_for_change(self, timeout: float) -> bool:
        gen = self.log.generation
        deadline = time.monotonic() + timeout
        while True:
            self.refresh_now()
            if self.log.generation != gen:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.data.log.changed().wait(), left)

    async def _commit(self, records: list[Any]) -> list[Any]:
        self._check_live()
        results = await self.log.commit(records)
        self.refreshed_at = time.monotonic()
        return results

    # -- saving ---------------------------------------------------------------------------

    async def save_many(self, requests: Sequence[SaveRequest]) -> list[int]:
        """Every message or (on an error) none; their UIDs, ascending."""
        if not requests:
            return []
        self._check_live()
        limit = self.settings.max_message_size
        prepared = []
        for req in requests:
            raw = objects.normalize_crlf(req.raw)
            if len(raw) > limit:
                raise MessageTooLarge(f"message of {len(raw)} bytes is above the limit of "
                                      f"{limit}")
            flags = sorted({normalize_flag(f) for f in req.flags if f.lower() != "\\recent"})
            prepared.append((raw, stored_idate(req.internaldate), flags))
        await self.user.check_quota(sum(len(p[0]) for p in prepared), len(prepared))
        records = []
        for raw, (idate, tz), flags in prepared:
            loc = self.user.store.root.new_loc()
            self.data.blobs[loc] = raw
            records.append(["a", new_guid(), loc, len(raw), idate, tz, flags,
                            cache_entry_of(raw)])
        return [int(u) for u in await self._commit(records)]

    # -- reading --------------------------------------------------------------------------

    async def read_message(self, msg: Message, start: int = 0, end: int | None = None) -> bytes:
        end = msg.size if end is None else min(end, msg.size)
        blob = self.data.blobs.get(msg.loc)
        if blob is None:
            raise MessageExpunged(f"message UID {msg.uid} of {self.name!r} is gone")
        return blob[start:end] if start < end else b""

    async def cache_entry(self, msg: Message) -> dict[str, Any]:
        st = self.state
        entry = st.loose_cache.get(msg.guid)
        if entry is None:
            entry = cache_entry_of(await self.read_message(msg))
            st.loose_cache[msg.guid] = entry
        return entry

    def cache_chunk_name(self, msg: Message) -> str | None:
        return None  # every entry is loose: nothing to read in chunks

    async def cache_chunk(self, name: str) -> dict[str, Any] | None:
        return None

    # -- changes --------------------------------------------------------------------------

    async def store(self, uids: Iterable[int], mode: str, flags: Iterable[str],
                    unchangedsince: int | None = None) -> dict[str, list[int]]:
        if mode not in ("+", "-", "="):
            raise ValueError(f"bad store mode {mode!r}")
        fl = sorted({normalize_flag(f) for f in flags if f.lower() != "\\recent"})
        ranges = ranges_of(uids)
        if not ranges:
            return {"changed": [], "failed": []}
        (result,) = await self._commit([["f", ranges, mode, fl, unchangedsince]])
        return result

    async def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        if uids is None:
            self.refresh_now()
            uids = [m.uid for m in self.state if "\\Deleted" in m.flags]
        victims = {u: self.state.messages[u] for u in uids if u in self.state.messages}
        if not victims:
            return []
        (gone,) = await self._commit([["x", ranges_of(victims)]])
        for uid in gone:
            self.data.blobs.pop(victims[uid].loc, None)
        return [int(u) for u in gone]

    async def copy(self, uids: Iterable[int], dest: AnyMailbox) -> list[tuple[int, int]]:
        msgs = [self.state.messages[u] for u in sorted(set(uids)) if u in self.state.messages]
        if not msgs:
            return []
        if not isinstance(dest, MemoryMailbox):
            return await self.copy_by_saving(msgs, dest)
        await dest.user.check_quota(sum(m.size for m in msgs), len(msgs))
        records = []
        for m in msgs:
            entry = await self.cache_entry(m)
            raw = await self.read_message(m)
            loc = dest.user.store.root.new_loc()
            dest.data.blobs[loc] = raw
            records.append(["a", m.guid, loc, m.size, m.internaldate, m.tz, sorted(m.flags),
                            entry])
        new = await dest._commit(records)
        return [(m.uid, int(u)) for m, u in zip(msgs, new, strict=True)]


async def open_memory_store(spec: str, settings: StorageSettings) -> MemoryStore:
    """The registry's opener: ``memory`` (a root of its own) or ``memory:<name>`` (the
    root of that name in this process, shared while a store uses it)."""
    _, _, name = spec.partition(":")
    if not name:
        return MemoryStore(Root(), settings)
    root = _NAMED.get(name)
    if root is None:
        root = Root()
        _NAMED[name] = root
    return MemoryStore(root, settings)
