"""What SORT and THREAD compare (RFC 5256), from the index and the cache: no message body
is read.  The session parses the command and writes the response; this module turns the
matching messages into an order (SORT) or a forest (THREAD).

A message never changes apart from its flags, so what SORT and THREAD derive from it (the
base subject, the sent date, the first address, the References ids) holds for as long as
its UID does.  Each opened mailbox keeps those derived values by UID, one table per sort
key (:class:`_Derived`, shared by every session of the mailbox, dropped with it): a
command computes only what no earlier command has, reading the cache entries of just
those messages, and the last THREAD result is kept for the next identical request.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import re
import sys
import weakref
from collections import defaultdict
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from cloudcote.core.mail import sort as sortmod
from cloudcote.core.mail.prefetch import Prefetch

if TYPE_CHECKING:
    from cloudcote.core.mail import api

#: The pseudo sort key under which the THREAD data of a message is kept.
_THREAD = "THREAD"


def header_value(block: bytes | str, name: str) -> str | None:
    """The unfolded value of the first header ``name`` in a header block, or None (a
    regular expression: a full header parse per message would cost THREAD most of its
    time)."""
    if isinstance(block, bytes):
        block = block.decode("utf-8", "surrogateescape")
    m = _header_re(name).search(block)
    if m is None:
        return None
    value = m.group(1)
    if "\udc80" <= max(value, default=" "):
        # Undecodable bytes: as a lenient UTF-8 decoder shows them.
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(value.split())


_HEADER_RES: dict[str, re.Pattern[str]] = {}


def _header_re(name: str) -> re.Pattern[str]:
    pattern = _HEADER_RES.get(name)
    if pattern is None:
        pattern = _HEADER_RES[name] = re.compile(
            r"(?aim)^" + re.escape(name) + r"[ \t]*:(.*(?:\r?\n[ \t].*)*)")
    return pattern


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """No cycle collection during a burst of short-lived objects (no await inside): a
    full collection walks every object of the process (the indexes and caches of all open
    mailboxes) and would cost a THREAD of 10,000 messages more than the threading."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Derived:
    """The derived SORT/THREAD values of one mailbox's messages, by UID, per key; valid
    for one UIDVALIDITY."""

    __slots__ = ("uidvalidity", "columns", "orders", "found", "results", "__weakref__")

    def __init__(self, uidvalidity: int) -> None:
        self.uidvalidity = uidvalidity
        self.columns: dict[str, dict[int, Any]] = {}
        #: Per (key, reverse): every UID of the key's table in that key's order (ties by
        #: UID, which is the order of sequence numbers); dropped when the table grows.
        self.orders: dict[tuple[str, bool], list[int]] = {}
        #: The messages ((sequence number, message) by sequence number) of the last SORT
        #: or THREAD, and its results by criteria: the same request again is answered from
        #: here (one comparison of the lists, in C: the same message objects compare by
        #: identity).
        self.found: list[tuple[int, api.Message]] = []
        self.results: dict[tuple[Any, ...], Any] = {}

    def result(self, found: list[tuple[int, api.Message]], criteria: tuple[Any, ...]) -> Any:
        """A kept result for these messages and criteria, or None."""
        if found != self.found:
            return None
        return self.results.get(criteria)

    def keep(self, found: list[tuple[int, api.Message]], criteria: tuple[Any, ...],
             result: Any) -> None:
        if found != self.found:
            self.found = found
            self.results = {}
        elif len(self.results) >= _RESULTS_KEPT:
            self.results.pop(next(iter(self.results)))
        self.results[criteria] = result


#: The most results kept per mailbox (for one set of messages).
_RESULTS_KEPT = 16


_DERIVED: weakref.WeakKeyDictionary[api.Mailbox, _Derived] = weakref.WeakKeyDictionary()


def _derived(box: api.Mailbox) -> _Derived:
    uidvalidity = box.state.uidvalidity
    data = _DERIVED.get(box)
    if data is None or data.uidvalidity != uidvalidity:
        data = _DERIVED[box] = _Derived(uidvalidity)
    return data


def forget(box: api.Mailbox) -> None:
    """Drop what is kept for ``box`` (tests; memory pressure)."""
    _DERIVED.pop(box, None)


def _prune(column: dict[int, Any], box: api.Mailbox) -> None:
    """Drop the values of expunged messages once they are a fifth of the table."""
    present = box.state.messages
    if len(column) > 64 and len(column) * 4 > len(present) * 5:
        for uid in [u for u in column if u not in present]:
            del column[uid]


def _table(data: _Derived, name: str, box: api.Mailbox) -> dict[int, Any]:
    table = data.columns.get(name)
    if table is None:
        table = data.columns[name] = {}
    else:
        _prune(table, box)
    return table


def _grown(data: _Derived, name: str) -> None:
    """``name``'s table has new values: its kept orders no longer cover it."""
    for reverse in (False, True):
        data.orders.pop((name, reverse), None)


def _index_columns(data: _Derived, box: api.Mailbox, msgs: list[api.Message],
                   names: list[str]) -> None:
    """The tables of ARRIVAL and SIZE among ``names``, from the index (no read)."""
    for name in names:
        table = _table(data, name, box)
        attr = "internaldate" if name == "ARRIVAL" else "size"
        added = False
        for m in msgs:
            if m.uid not in table:
                table[m.uid] = getattr(m, attr)
                added = True
        if added:
            _grown(data, name)


def full_order(table: dict[int, Any], reverse: bool) -> list[int]:
    """Every UID of ``table`` (UID to sort value) in the order SORT gives them: by value,
    reversed if ``reverse``, ties by ascending UID (a stable sort keeps them so)."""
    order = sorted(table)
    order.sort(key=table.__getitem__, reverse=reverse)
    return order


def subset_order(order: list[int], seq_of: dict[int, int]) -> list[int]:
    """The sequence numbers of the messages of ``seq_of`` (UID to sequence number), in
    the order of ``order`` (a ``full_order`` covering all of them): sequence numbers
    grow with UIDs, so the ties of the subset stay by sequence number."""
    return list(filter(None, map(seq_of.get, order)))  # sequence numbers are never 0


async def _entries(box: api.Mailbox, msgs: list[api.Message],
                   headers: bool) -> list[tuple[api.Message, dict[str, Any], str | None]]:
    """The cache entry (and, if ``headers``, the cached header block) of each of ``msgs``:
    loose entries at once, cache chunks one read each (read ahead like FETCH), and only
    a message whose entry or header block the cache lacks read from the store."""
    st = box.state
    count = box.settings.prefetch_count
    done: list[tuple[api.Message, dict[str, Any]]] = []
    by_chunk: dict[str, list[api.Message]] = defaultdict(list)
    slow: list[api.Message] = []
    for m in msgs:
        entry = st.loose_cache.get(m.guid)
        if entry is not None:
            done.append((m, entry))
            continue
        chunk = st.cache_where.get(m.guid)
        if chunk is None:
            slow.append(m)
        else:
            by_chunk[chunk].append(m)
    if by_chunk:
        async with Prefetch(list(by_chunk), box.cache_chunk, count=count) as chunks:
            async for got in chunks:
                data = got.result()
                for m in by_chunk[got.job]:
                    entry = data.get(m.guid) if data is not None else None
                    if entry is None:
                        slow.append(m)
                    else:
                        done.append((m, entry))
    if slow:
        async with Prefetch(slow, box.cache_entry, count=count) as reads:
            async for read in reads:
                done.append((read.job, read.result()))
    out: list[tuple[api.Message, dict[str, Any], str | None]] = []
    uncached: list[tuple[api.Message, dict[str, Any]]] = []
    for m, entry in done:
        if not headers:
            out.append((m, entry, None))
        elif (hdr := entry.get("h")) is not None:
            out.append((m, entry, str(hdr)))
        else:
            uncached.append((m, entry))
    if uncached:
        # Header blocks too large for the cache: from the message itself.
        entries = {m.uid: entry for m, entry in uncached}
        async with Prefetch([m for m, _ in uncached], box.header_block,
                            count=count) as blocks:
            async for block in blocks:
                text = block.result().decode("utf-8", "surrogateescape")
                out.append((block.job, entries[block.job.uid], text))
    return out


def _thread_data(m: api.Message, entry: dict[str, Any], header: str | None,
                 ) -> tuple[str | None, tuple[str, ...], str, bool, int]:
    """(Message-ID, parent ids, casefolded base subject, reply, sent date) of a message,
    as ``sortmod.thread_message`` and ``sortmod.thread_info`` derive them."""
    env = entry.get("env") or []

    def field(index: int) -> str:
        value = env[index] if len(env) > index else None
        return value if isinstance(value, str) else ""

    own = sortmod.parse_msgids(field(9))
    refs = (sortmod.parse_msgids(header_value(header, "References") if header else None)
            or sortmod.parse_msgids(field(8))[:1])
    base, reply = sortmod.base_subject_info(field(1))
    date = env[0] if len(env) > 0 and isinstance(env[0], str) else None
    # Interned: a thread's ids and subject recur in many of its messages.
    return (sys.intern(own[0]) if own else None, tuple(map(sys.intern, refs)),
            sys.intern(base.casefold()), reply, sortmod.sent_date_micros(date, m.internaldate))


def _compute(name: str, m: api.Message, entry: dict[str, Any], header: str | None) -> Any:
    if name == _THREAD:
        return _thread_data(m, entry, header)
    return sortmod.envelope_key(name, entry.get("env"), m.internaldate)


async def _columns(box: api.Mailbox, msgs: list[api.Message], names: list[str],
                   ) -> dict[str, dict[int, Any]]:
    """The tables of ``names`` (sort keys or _THREAD), filled for every one of ``msgs``."""
    data = _derived(box)
    tables = {}
    missing: dict[int, api.Message] = {}
    for name in names:
        table = tables[name] = _table(data, name, box)
        if not all(map(table.__contains__, map(_UID, msgs))):
            for m in msgs:
                if m.uid not in table:
                    missing[m.uid] = m
    if missing:
        loaded = await _entries(box, list(missing.values()), headers=_THREAD in tables)
        with _no_cycle_collection():
            for m, entry, header in loaded:
                for name, table in tables.items():
                    if m.uid not in table:
                        table[m.uid] = _compute(name, m, entry, header)
        for name in names:
            _grown(data, name)
    return tables


async def sort_order(box: api.Mailbox, found: list[tuple[int, api.Message]],
                     keys: list[tuple[str, bool]]) -> list[int]:
    """The sequence numbers of ``found`` in the order of the sort ``keys``."""
    # C-level passes (map, itemgetter) rather than comprehensions: this runs over every
    # message of the mailbox on each command.
    found = sorted(found, key=_SEQ)
    data = _derived(box)
    criteria = ("SORT", *keys)
    kept = data.result(found, criteria)
    if kept is not None:
        return list(kept)
    seqs = list(map(_SEQ, found))
    msgs = list(map(_MSG, found))
    uids = list(map(_UID, msgs))
    names = {name for name, _ in keys}
    derived = sorted(names - {"ARRIVAL", "SIZE"})
    tables = await _columns(box, msgs, derived) if derived else {}
    with _no_cycle_collection():
        order = None
        if len(keys) == 1 and _derived(box) is data:
            order = _single_key_order(data, box, msgs, tables, keys[0], uids, seqs)
        if order is None:
            columns: list[tuple[list[Any], bool]] = []
            for name, reverse in keys:
                if name == "ARRIVAL":
                    values: list[Any] = [m.internaldate for m in msgs]
                elif name == "SIZE":
                    values = [m.size for m in msgs]
                else:
                    table = tables[name]
                    values = [table[m.uid] for m in msgs]
                columns.append((values, reverse))
            order = sortmod.order_by(seqs, columns)
    if _derived(box) is data:
        data.keep(found, criteria, order)
    return list(order)


async def sort_line(box: api.Mailbox, found: list[tuple[int, api.Message]],
                    keys: list[tuple[str, bool]]) -> str:
    """The untagged ``* SORT`` response (sequence numbers) for ``found``, kept with the
    order: a repeated request costs no rendering either."""
    found = sorted(found, key=_SEQ)
    criteria = ("SORT-LINE", *keys)
    data = _derived(box)
    kept = data.result(found, criteria)
    if kept is not None:
        return str(kept)
    order = await sort_order(box, found, keys)
    line = ("* SORT " + " ".join(map(str, order)) if order else "* SORT") + "\r\n"
    if _derived(box) is data:
        data.keep(found, criteria, line)
    return line


_SEQ = operator.itemgetter(0)
_MSG = operator.itemgetter(1)
_UID = operator.attrgetter("uid")


def _single_key_order(data: _Derived, box: api.Mailbox, msgs: list[api.Message],
                      tables: dict[str, dict[int, Any]], key: tuple[str, bool],
                      uids: list[int], seqs: list[int]) -> list[int] | None:
    """The order of one sort key, the usual SORT: the mailbox's messages are sorted by it
    once and kept, and a command takes its messages out of that order in linear time.
    None if the kept order does not cover them all (an expunge raced the command), or
    if the sequence numbers do not grow with the UIDs (a session's always do)."""
    if not all(map(operator.lt, uids, islice(uids, 1, None))):
        return None
    name, reverse = key
    if name in ("ARRIVAL", "SIZE"):
        _index_columns(data, box, msgs, [name])
        table = data.columns[name]
    else:
        table = tables[name]
    full = data.orders.get(key)
    if full is None:
        full = data.orders[key] = full_order(table, reverse)
    order = subset_order(full, dict(zip(uids, seqs, strict=True)))
    return order if len(order) == len(seqs) else None


async def threads(box: api.Mailbox, found: list[tuple[int, api.Message]],
                  algorithm: str) -> list[sortmod.ThreadNode]:
    """The threads of ``found`` (by sequence number) under ``algorithm``.  The same request
    again (same messages, same sequence numbers) gets the same forest back: it is shared,
    callers must not change it."""
    algorithm = algorithm.upper()
    found = sorted(found, key=_SEQ)
    data = _derived(box)
    criteria = ("THREAD", algorithm)
    kept = data.result(found, criteria)
    if kept is not None:
        return kept
    seqs = list(map(_SEQ, found))
    uids = [m.uid for _, m in found]
    table = (await _columns(box, [m for _, m in found], [_THREAD]))[_THREAD]
    with _no_cycle_collection():
        infos = [sortmod.ThreadInfo(seq, *table[uid])
                 for seq, uid in zip(seqs, uids, strict=True)]
        result = sortmod.thread_infos(infos, algorithm)
    if _derived(box) is data:
        data.keep(found, criteria, result)
    return result
