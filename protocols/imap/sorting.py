"""What SORT and THREAD compare (RFC 5256), from the index and the cache: no message body
is read.  The session parses the command and writes the response; this module turns the
matching messages into an order (SORT) or a forest (THREAD)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudcote.core.mail import sort as sortmod
from cloudcote.core.mail.prefetch import Prefetch
from cloudcote.core.mail.storage import internal_datetime

if TYPE_CHECKING:
    from cloudcote.core.mail.index import Message
    from cloudcote.core.mail.storage import Mailbox


@dataclass
class Sortable:
    """A message as SORT and THREAD see it (sortmod.SortMessage)."""

    seq: int
    uid: int
    size: int
    internaldate: dt.datetime
    envelope: list[object]
    references: str | None = None


def header_value(block: bytes, name: str) -> str | None:
    """The unfolded value of the first header ``name`` in a header block, or None (a
    regular expression: a full header parse per message would cost THREAD most of its
    time)."""
    m = re.search(rb"(?im)^" + re.escape(name.encode()) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)",
                  block)
    if m is None:
        return None
    return " ".join(m.group(1).decode("utf-8", "replace").split())


async def sortable(box: Mailbox, found: list[tuple[int, Message]],
                   references: bool = False) -> list[Sortable]:
    """The cached ENVELOPE and, for THREAD, the References header of the cached header
    block of each (seq, message); read ahead like FETCH."""

    async def load(job: tuple[int, Message]) -> Sortable:
        seq, m = job
        entry = await box.cache_entry(m)
        refs = None
        if references:
            refs = header_value(await box.header_block(m), "References")
        return Sortable(seq, m.uid, m.size, internal_datetime(m), entry["env"], refs)

    out = []
    async with Prefetch(found, load, count=box.mail_store.settings.prefetch_count) as ahead:
        async for done in ahead:
            out.append(done.result())
    return out


async def sort_order(box: Mailbox, found: list[tuple[int, Message]],
                     keys: list[tuple[str, bool]]) -> list[int]:
    """The sequence numbers of ``found`` in the order of the sort ``keys``."""
    return sortmod.sort_messages(await sortable(box, found), keys)


async def threads(box: Mailbox, found: list[tuple[int, Message]],
                  algorithm: str) -> list[sortmod.ThreadNode]:
    """The threads of ``found`` (by sequence number) under ``algorithm``."""
    msgs = [sortmod.thread_message(s, s.references)
            for s in await sortable(box, found, references=algorithm != "ORDEREDSUBJECT")]
    return sortmod.thread_messages(msgs, algorithm)
