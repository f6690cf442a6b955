"""What every backend's mailbox does the same way on top of its own primitives
(``read_message``, ``cache_entry``, ``save_many``, ``copy``, ``expunge``, ``log.commit``):
APPEND of one message, header blocks and body sections, MOVE, SEARCH and \\Recent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import mime
from .index import MailboxState, Message
from .mailbox_list import MailboxEntry
from .recent import claim_recent
from .search_adapter import search_mailbox
from .values import SaveRequest, StorageSettings, internal_datetime

if TYPE_CHECKING:
    from .api import Mailbox


class MailboxBase:
    """The shared half of a mailbox; a backend provides the rest of api.Mailbox."""

    entry: MailboxEntry

    @property
    def name(self) -> str:
        return self.entry.name

    if TYPE_CHECKING:
        @property
        def state(self) -> MailboxState: ...

        @property
        def settings(self) -> StorageSettings: ...

        async def save_many(self, requests: Sequence[SaveRequest]) -> list[int]: ...

        async def read_message(self, msg: Message, start: int = 0,
                               end: int | None = None) -> bytes: ...

        async def cache_entry(self, msg: Message) -> dict[str, Any]: ...

        async def copy(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]: ...

        async def expunge(self, uids: Iterable[int] | None = None) -> list[int]: ...

    async def save(self, raw: bytes, flags: Sequence[str] = (),
                   internaldate: dt.datetime | None = None) -> int:
        """Save one message (RFC 3501 6.3.11 APPEND); returns its UID once it is durable."""
        (uid,) = await self.save_many([SaveRequest(raw, flags, internaldate)])
        return uid

    async def header_block(self, msg: Message) -> bytes:
        """The message's header block (cached; read from the message if too large)."""
        entry = await self.cache_entry(msg)
        hdr = entry.get("h")
        if hdr is not None:
            return str(hdr).encode("utf-8", "surrogateescape")
        return mime.header_block(await self.read_message(msg))

    async def body_section(self, msg: Message, parts: tuple[int, ...] = (),
                           kind: str | None = None, fields: tuple[str, ...] = ()) -> bytes:
        """``BODY[section]`` (RFC 3501 6.4.5) from the stored bytes.  The top-level HEADER
        and HEADER.FIELDS[.NOT] come from the cached header block without reading the
        message; a partial ``<o.n>`` is the caller's slice (``mime.partial``)."""
        if not parts and kind is None:
            return await self.read_message(msg)
        if not parts and kind in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            hdr = await self.header_block(msg)
            return mime.section(hdr, mime.parse(hdr), (), kind, fields)
        raw = await self.read_message(msg)
        return mime.section(raw, mime.parse(raw), parts, kind, fields)

    async def move(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """RFC 6851 MOVE: copy, then expunge the originals."""
        pairs = await self.copy(uids, dest)
        await self.expunge([s for s, _ in pairs])
        return pairs

    async def copy_by_saving(self, msgs: Sequence[Message],
                             dest: Mailbox) -> list[tuple[int, int]]:
        """COPY into another backend's mailbox: read here, saved there with the same flags
        and internal date (all or nothing in ``dest``)."""
        reqs = [SaveRequest(await self.read_message(m), sorted(m.flags), internal_datetime(m))
                for m in msgs]
        new = await dest.save_many(reqs)
        return [(m.uid, u) for m, u in zip(msgs, new, strict=True)]

    async def search(self, key: Any, messages: Sequence[Message] | None = None,
                     recent: frozenset[int] = frozenset()) -> list[int]:
        """RFC 3501 6.4.4 SEARCH; see :func:`search_adapter.search_mailbox`."""
        return await search_mailbox(self, key, messages, recent)  # type: ignore[arg-type]

    async def claim_recent(self, upto: int) -> range:
        """RFC 3501 2.3.2 \\Recent; see core/mail/recent.py."""
        return await claim_recent(self, upto)  # type: ignore[arg-type]
