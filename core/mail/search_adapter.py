"""The view SEARCH (core/mail/search.py) runs over: any backend's mailbox, through the
mail-storage API."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import search
from .index import Message
from .values import internal_datetime

if TYPE_CHECKING:
    from .api import Mailbox


@dataclass
class SearchMessage:
    """A message as the SEARCH engine sees it (search.py's SearchMessage)."""

    msg: Message
    recent: bool

    @property
    def uid(self) -> int:
        return self.msg.uid

    @property
    def flags(self) -> frozenset[str]:
        return self.msg.flags

    @property
    def modseq(self) -> int:
        return self.msg.modseq

    @property
    def size(self) -> int:
        return self.msg.size

    @property
    def internaldate(self) -> dt.datetime:
        return internal_datetime(self.msg)


class SearchView:
    """Headers from the mailbox's cache, bodies from its stored bytes."""

    def __init__(self, box: Mailbox, messages: Sequence[SearchMessage]) -> None:
        self.box = box
        self.messages = messages

    async def header(self, m: SearchMessage) -> bytes:
        return await self.box.header_block(m.msg)

    async def body(self, m: SearchMessage) -> bytes:
        return await self.box.read_message(m.msg)


async def search_mailbox(box: Mailbox, key: Any, messages: Sequence[Message] | None = None,
                         recent: frozenset[int] = frozenset()) -> list[int]:
    """RFC 3501 6.4.4 SEARCH over ``messages`` (default: the mailbox in UID order; a
    session passes its own view, whose order gives the sequence numbers).  Returns the
    matching sequence numbers.  Header keys are answered from the cache; body keys read
    the messages."""
    msgs = list(box.state) if messages is None else list(messages)
    view = SearchView(box, [SearchMessage(m, m.uid in recent) for m in msgs])
    settings = box.settings
    return await search.search(key, view,
                               concurrency=settings.prefetch_count,
                               max_bytes=settings.prefetch_bytes)
