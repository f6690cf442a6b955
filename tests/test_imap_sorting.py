"""SORT and THREAD data of a stored mailbox (protocols/imap/sorting.py): the values kept per
mailbox give the same orders and threads as the algorithms of core/mail/sort.py applied to
the cached ENVELOPEs and header blocks, cold and warm, after expunges and appends, on cache
entries loose and in chunks, without reading a message body."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cloudcote.core.mail import sort as sortmod
from cloudcote.core.mail.index import Message
from cloudcote.core.mail.storage import (
    MAX_CACHED_HEADER,
    Mailbox,
    MailStore,
    SaveRequest,
    StorageSettings,
    internal_datetime,
)
from cloudcote.libfs.chain import open_fs
from cloudcote.protocols.imap import sorting

SUBJECTS = ["lunch", "Re: lunch", "Fwd: lunch", "[list] Re: lunch", "[fwd: lunch]",
            "=?utf-8?q?Re=3A_caf=C3=A9?=", "café", "Plan (fwd)", "plan", "", "[PATCH] x", "X"]
DATES = ["Mon, 05 Jan 2026 10:00:00 +0200", "Mon, 05 Jan 2026 08:00:00 +0000",
         "Sun, 04 Jan 2026 23:30:00 -0500", "5 Jan 2026 09:00 GMT", "junk", None]
PEOPLE = ["Zed <alice@example.org>", "carol@example.org", "=?utf-8?q?=C3=89mile?= <e@x.org>",
          "Bob <BOB@x.org>", "team: ann@x.org, dan@x.org;", "\"Ann\" <aa@x.org>", None]
KEYS = sorted(sortmod.SORT_KEYS)


def message(i: int, rng: random.Random) -> bytes:
    lines = []
    date = rng.choice(DATES)
    if date is not None:
        lines.append(f"Date: {date}")
    for name in ("From", "To", "Cc"):
        who = rng.choice(PEOPLE)
        if who is not None:
            lines.append(f"{name}: {who}")
    lines.append(f"Subject: {rng.choice(SUBJECTS)}")
    # Message-IDs: unique, duplicated, or missing; References chains with gaps.
    if rng.random() < 0.85:
        lines.append(f"Message-ID: <m{rng.randrange(i + 1) if rng.random() < 0.1 else i}@h>")
    refs = [f"<m{rng.randrange(max(1, i))}@h>" for _ in range(rng.randrange(4))]
    if refs and rng.random() < 0.7:
        lines.append("References: " + "\r\n\t".join(refs))
    elif refs:
        lines.append(f"In-Reply-To: {refs[-1]} <other@h>")
    if i == 7:
        # A header block too large for the cache: read from the message.
        lines.append("X-Big: " + "y" * MAX_CACHED_HEADER)
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


@dataclasses.dataclass
class Ref:
    seq: int
    uid: int
    size: int
    internaldate: dt.datetime
    envelope: Sequence[object]


async def reference(box: Mailbox, found: list[tuple[int, Message]],
                    ) -> tuple[list[Ref], list[sortmod.ThreadMessage]]:
    """The messages as the algorithms of core/mail/sort.py take them, the slow way."""
    refs = []
    threads = []
    for seq, m in found:
        entry = await box.cache_entry(m)
        ref = Ref(seq, m.uid, m.size, internal_datetime(m), entry["env"])
        refs.append(ref)
        header = sorting.header_value(await box.header_block(m), "References")
        threads.append(sortmod.thread_message(ref, header))
    return refs, threads


async def check(box: Mailbox, found: list[tuple[int, Message]]) -> None:
    refs, infos = await reference(box, found)
    rng = random.Random(len(found))
    criteria = [[(k, r)] for k in KEYS for r in (False, True)]
    criteria += [[(rng.choice(KEYS), rng.random() < 0.5) for _ in range(3)] for _ in range(10)]
    for keys in criteria:
        expected = sortmod.sort_messages(refs, keys)
        assert await sorting.sort_order(box, found, keys) == expected, keys
    for algorithm in sortmod.THREAD_ALGORITHMS:
        expected_text = sortmod.format_threads(sortmod.thread_messages(infos, algorithm))
        for _ in range(2):  # computed, then the kept result
            got = await sorting.threads(box, found, algorithm)
            assert sortmod.format_threads(got) == expected_text, algorithm


def test_sorting_matches_the_algorithms(tmp_path: Path) -> None:
    async def main() -> None:
        fs = await open_fs(f"posix:{tmp_path}")
        try:
            # A short log: rotations move the cache entries into chunks.
            store = MailStore(fs, StorageSettings(log_limit=4))
            um = await store.user("sorter")
            box = await um.mailbox("INBOX")
            rng = random.Random(8)
            raws = [message(i, rng) for i in range(240)]
            for start in range(0, 200, 20):
                await box.save_many([
                    SaveRequest(r, internaldate=dt.datetime(2026, 1, 1 + i % 9, tzinfo=dt.UTC))
                    for i, r in enumerate(raws[start:start + 20], start)])
            assert box.state.cache_where, "no cache chunk: the test needs one"
            reads: list[int] = []
            read_message = box.read_message

            async def counting(msg: Message, *args: Any) -> bytes:
                reads.append(msg.uid)
                return await read_message(msg, *args)

            box.read_message = counting  # type: ignore[method-assign]
            every = list(enumerate(box.state, 1))
            await check(box, every)
            # Only the message whose header block is too large for the cache was read.
            assert set(reads) == {every[7][1].uid}
            # A subset with other sequence numbers (a session's own view), warm.
            part = [(seq * 3, m) for seq, m in every if seq % 3 == 1]
            await check(box, list(reversed(part)))
            # Expunges and new messages: the kept values of the others still hold.
            await box.expunge([m.uid for seq, m in every if seq % 5 == 0])
            await box.save_many([SaveRequest(r) for r in raws[200:]])
            await check(box, list(enumerate(box.state, 1)))
            sorting.forget(box)
            await check(box, list(enumerate(box.state, 1)))
            await check(box, [])
        finally:
            await fs.close()

    asyncio.run(main())


@pytest.mark.parametrize(("block", "value"), [
    (b"References: <a@h>\r\n\t<b@h>\r\nX: y\r\n", "<a@h> <b@h>"),
    (b"X: y\r\nreferences :<a@h>\r\n", "<a@h>"),
    (b"X-References: <a@h>\r\n", None),
    ("References: <\udcff@h>\r\n", "<\ufffd@h>"),
])
def test_header_value(block: bytes | str, value: str | None) -> None:
    assert sorting.header_value(block, "References") == value


def test_full_order_and_subset_order() -> None:
    # UID -> value; ties go by ascending UID, reversed or not (as a stable sort keeps them).
    table = {5: "b", 1: "b", 9: "a", 3: "c", 7: "a"}
    assert sorting.full_order(table, False) == [7, 9, 1, 5, 3]
    assert sorting.full_order(table, True) == [3, 1, 5, 7, 9]
    order = sorting.full_order(table, False)
    # A subset (UID -> sequence number) in that order; UIDs of the order outside it (other
    # sessions' messages, expunged ones) are skipped.
    assert sorting.subset_order(order, {9: 4, 1: 1, 3: 2}) == [4, 1, 2]
    assert sorting.subset_order(order, {}) == []


def test_one_key_sorts_the_mailbox_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        ) -> None:
    """A one-key SORT sorts the whole mailbox once and then only picks its messages out of
    that order, until new messages come (which must then take their places)."""
    built: list[bool] = []
    full_order = sorting.full_order

    def counting(table: dict[int, Any], reverse: bool) -> list[int]:
        built.append(reverse)
        return full_order(table, reverse)

    monkeypatch.setattr(sorting, "full_order", counting)

    async def main() -> None:
        fs = await open_fs(f"posix:{tmp_path}")
        try:
            um = await MailStore(fs, StorageSettings()).user("sorter")
            box = await um.mailbox("INBOX")
            rng = random.Random(3)
            await box.save_many([SaveRequest(message(i, rng)) for i in range(30)])
            every = list(enumerate(box.state, 1))
            refs, _ = await reference(box, every)
            for key in ("SUBJECT", "ARRIVAL"):
                built.clear()
                for found in (every, every[1:], every[::2], every):
                    expected = sortmod.sort_messages([refs[seq - 1] for seq, _ in found],
                                                     [(key, True)])
                    assert await sorting.sort_order(box, found, [(key, True)]) == expected
                assert built == [True], key
            # Sequence numbers that fall as UIDs grow (no session numbers so): ties go
            # by sequence number all the same.
            odd = [(len(every) + 1 - seq, m) for seq, m in every]
            odd_refs, _ = await reference(box, odd)
            for key in ("SUBJECT", "ARRIVAL"):
                assert (await sorting.sort_order(box, odd, [(key, True)])
                        == sortmod.sort_messages(odd_refs, [(key, True)]))
            await box.save_many([SaveRequest(b"Subject: aaa first\r\n\r\nx\r\n",
                                             internaldate=dt.datetime(2001, 1, 1,
                                                                      tzinfo=dt.UTC))])
            every = list(enumerate(box.state, 1))
            refs, _ = await reference(box, every)
            for key in ("SUBJECT", "ARRIVAL"):
                built.clear()
                order = await sorting.sort_order(box, every, [(key, False)])
                assert order == sortmod.sort_messages(refs, [(key, False)])
                assert order[-1] != len(every), key  # the new message has its place
                assert built == [False]
        finally:
            await fs.close()

    asyncio.run(main())
