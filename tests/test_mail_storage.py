"""Mail storage (core/mail) on every backend and both layouts, against the real servers.

The invariants of DESIGN.md each have their own test here:

1. acknowledged changes survive SIGKILL  -> test_inv1_acknowledged_survives_kill
2. concurrent deliveries lose nothing     -> test_inv2_concurrent_processes
3. no partial message or record is seen   -> test_inv3_readers_never_see_partial
4. crashes leave it readable; resync     -> test_inv4_crash_then_resync
5. BODY[] is byte-exact                    -> test_inv5_bytes_exact

The tests of the mail-storage API's behaviour (core/mail/api.py) run on every backend: the
libfs targets with both layouts and the in-memory backend (the ``store_env`` and
``store_spec`` fixtures), also on each remote driver in its README form (no prefix,
default names: a namespace other runs share, so there ``uname`` tags the user names with
the test's own); the tests of libfs internals (durability, concurrent processes, logs,
resync and purge, corruption) run on the libfs targets (``mail_env``, ``mail_spec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudcote.core.mail import api
from cloudcote.core.mail.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxInUse,
    MailboxNotFound,
    MessageExpunged,
    MessageTooLarge,
    QuotaExceeded,
)
from cloudcote.core.mail.resync import force_resync, purge
from cloudcote.core.mail.storage import (
    QuotaLimits,
    StorageSettings,
    deliver,
    parse_quota_rule,
    user_prefix,
)

from .conftest import README_TARGETS, driver_spec, shared_namespace, unique_prefix
from .mailsamples import check_message, message

MAIL_TARGETS = ["posix", "seaweedfs", "cassandra", "postgresql", "mysql"]
LAYOUTS = ["sdbox", "mdbox"]
#: The in-memory backend has no layout; it runs once; the README forms run sdbox, the
#: default layout.
STORE_ENVS = [*((t, lay) for t in MAIL_TARGETS for lay in LAYOUTS), ("memory", "sdbox"),
              *((t, "sdbox") for t in README_TARGETS)]
REPO = Path(__file__).resolve().parent.parent


def store_target_spec(target: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage spec for ``open_store``: a libfs chain, or a memory root of this test's
    own (two stores opened on it share it, like two processes on one chain)."""
    if target == "memory":
        return f"memory:{tmp_path}"
    return driver_spec(target, request, tmp_path)


@pytest.fixture(params=[(t, lay) for t in MAIL_TARGETS for lay in LAYOUTS],
                ids=[f"{t}-{lay}" for t in MAIL_TARGETS for lay in LAYOUTS])
def mail_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    target, layout = request.param
    yield driver_spec(target, request, tmp_path), layout


@pytest.fixture(params=MAIL_TARGETS)
def mail_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield driver_spec(request.param, request, tmp_path)


@pytest.fixture(params=STORE_ENVS,
                ids=[t if t == "memory" else f"{t}-{lay}" for t, lay in STORE_ENVS])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Every mail backend: libfs targets x layouts, and memory."""
    target, layout = request.param
    yield store_target_spec(target, request, tmp_path), layout


@pytest.fixture(params=[*MAIL_TARGETS, "memory", *README_TARGETS])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every mail backend: libfs targets (sdbox) and memory."""
    yield store_target_spec(request.param, request, tmp_path)


@pytest.fixture
def uname(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """The user name a test uses for ``user``: the same, unless the store is a namespace
    that other runs share (a README form), where it gets a tag of this test's own."""
    tag = unique_prefix() if shared_namespace(request) else ""

    def name(user: str) -> str:
        if not tag:
            return user
        local, at, domain = user.partition("@")
        return f"{local}-{tag}{at}{domain}"

    return name


def settings(layout: str = "sdbox", **kw: Any) -> StorageSettings:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("orphan_grace", 0.0)
    kw.setdefault("quota_refresh", 0.0)
    return StorageSettings(layout=layout, **kw)


async def open_store(spec: str, layout: str = "sdbox", **kw: Any) -> Any:
    """The store of a spec through the backend registry (a libfs ``MailStore`` owns its
    chain: ``close`` closes it)."""
    store = await api.open_store(spec, settings(layout, **kw))
    assert isinstance(store, api.Store)
    return store


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- mailboxes -----------------------------------------------------------------------------


def test_mailbox_list(store_spec: str, uname: Callable[[str], str]) -> None:
    async def main() -> None:
        store = await open_store(store_spec)
        try:
            um = await store.user(uname("alice@example.com"))
            names = [e.name for e in um.list_mailboxes()]
            assert names == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
            special = {e.name: e.special_use for e in um.list_mailboxes()}
            assert special["Sent"] == ["\\Sent"] and special["INBOX"] == []
            inbox = um.entry("iNbOx")
            assert inbox.name == "INBOX" and len(inbox.guid) == 32
            await um.create_mailbox("Projects/2026/Q4")
            # RFC 3501 6.3.3: the superior names were created as well.
            assert {"Projects", "Projects/2026"} <= {e.name for e in um.list_mailboxes()}
            await um.create_mailbox("inbox/Sub")
            assert "INBOX/Sub" in {e.name for e in um.list_mailboxes()}
            with pytest.raises(MailboxExists):
                await um.create_mailbox("Projects")
            with pytest.raises(MailboxExists):
                await um.create_mailbox("INBOX")
            for bad in ("", "a//b", "/a", "a/", "x\x01", "%", "a*b"):
                with pytest.raises(InvalidMailboxName):
                    await um.create_mailbox(bad)
            # UTF-8 names are kept as they are; "../" is just a name.
            await um.create_mailbox("Entwürfe/日本")
            await um.create_mailbox("../etc")
            box = await um.mailbox("../etc")
            await box.save(message(1))
            # Rename with children; the old names are gone, GUIDs kept.
            g = um.entry("Projects/2026/Q4").guid
            await um.rename_mailbox("Projects", "Work")
            names = {e.name for e in um.list_mailboxes()}
            assert {"Work", "Work/2026/Q4"} <= names and "Projects" not in names
            assert um.entry("Work/2026/Q4").guid == g
            with pytest.raises(MailboxInUse):
                await um.rename_mailbox("Work", "Work/child")
            with pytest.raises(MailboxExists):
                await um.rename_mailbox("Work/2026", "Sent")
            with pytest.raises(MailboxInUse):
                await um.delete_mailbox("INBOX")
            # Delete and re-create: a new GUID and a greater UIDVALIDITY.
            old = um.entry("Work/2026/Q4")
            await um.delete_mailbox("Work/2026/Q4")
            with pytest.raises(MailboxNotFound):
                await um.mailbox("Work/2026/Q4")
            again = await um.create_mailbox("Work/2026/Q4")
            assert again.guid != old.guid and again.uidvalidity > old.uidvalidity
            # Subscriptions, special-use.
            await um.subscribe("Work")
            await um.subscribe("Gone")
            await um.unsubscribe("Gone")
            assert um.subscriptions() == {"Work"}
            await um.create_mailbox("Spam", ["\\junk"])
            assert um.entry("Spam").special_use == ["\\Junk"]
            # Renaming INBOX moves its messages and leaves INBOX empty (RFC 3501 6.3.5).
            inbox_box = await um.mailbox("INBOX")
            await inbox_box.save(message(2))
            await um.rename_mailbox("INBOX", "Old Inbox")
            assert inbox_box.state.exists == 0
            assert (await um.mailbox("Old Inbox")).state.exists == 1
            # Even into a child of INBOX: INBOX's children stay where they are.
            await inbox_box.save(message(3))
            await um.rename_mailbox("INBOX", "INBOX/old")
            assert inbox_box.state.exists == 0
            assert (await um.mailbox("INBOX/old")).state.exists == 1
            # Another process sees the same list; another user sees none of it.
            other = await open_store(store_spec)
            um2 = await other.user(uname("alice@example.com"))
            assert {e.name for e in um2.list_mailboxes()} == \
                {e.name for e in um.list_mailboxes()}
            bob = await other.user(uname("bob@example.com"))
            assert {e.name for e in bob.list_mailboxes()} == \
                {"Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"}
            with pytest.raises(MailboxNotFound):
                await bob.mailbox("../etc")
            await other.close()
        finally:
            await store.close()

    run(main())


def test_user_prefix_cannot_escape() -> None:
    assert user_prefix("alice@example.com") == "users/alice@example.com"
    evil = ("..", ".", "../bob", "a/b", "/abs", "x\x00", "bob", "%2E%2E", "a%2Fb")
    prefixes = [user_prefix(u) for u in evil]
    for p in prefixes:
        top, seg = p.split("/")
        assert top == "users" and seg not in (".", "..") and "\x00" not in seg
    assert len(set(prefixes)) == len(evil)  # one prefix per user, never shared


def _race_create_mailbox(spec: str, name: str, i: int, barrier: Any, results: Any) -> None:
    async def main() -> str:
        store = await open_store(spec)
        try:
            um = await store.user("racer")
            barrier.wait()
            try:
                entry = await um.create_mailbox(name)
                return f"won {entry.guid}"
            except MailboxExists:
                return "exists"
        finally:
            await store.fs.close()

    try:
        results.put((i, run(main())))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put((i, f"error: {exc!r}"))


@pytest.mark.slow
def test_concurrent_create_same_name(mail_spec: str) -> None:
    async def prepare() -> None:
        store = await open_store(mail_spec)
        await store.user("racer")
        await store.fs.close()

    run(prepare())
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_create_mailbox,
                         args=(mail_spec, "Contested", i, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=180)[1] for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(r.startswith("won") for r in got) == 1, got
    assert got.count("exists") == n - 1, got

    async def check() -> None:
        store = await open_store(mail_spec)
        um = await store.user("racer")
        winner = next(r for r in got if r.startswith("won")).split()[1]
        assert um.entry("Contested").guid == winner
        await store.fs.close()

    run(check())


# --- messages, flags, MODSEQ ----------------------------------------------------------------


def test_save_flags_expunge_copy_move(store_env: tuple[str, str],
                                      uname: Callable[[str], str]) -> None:
    spec, layout = store_env

    async def main() -> None:
        store = await open_store(spec, layout)
        other = await open_store(spec, layout)
        try:
            um = await store.user(uname("carol"))
            box = await um.mailbox("INBOX")
            uv = box.state.uidvalidity
            uids = [await box.save(message(i), ["\\Seen"] if i % 2 else []) for i in range(6)]
            assert uids == [1, 2, 3, 4, 5, 6]
            st = box.state
            assert (st.exists, st.next_uid, st.unseen) == (6, 7, 3)
            modseq0 = st.highest_modseq
            res = await box.store([1, 2], "+", ["\\Flagged", "$Important"])
            assert res == {"changed": [1, 2], "failed": []}
            assert st.highest_modseq > modseq0
            assert st.messages[1].modseq == st.highest_modseq
            assert "$Important" in st.keywords
            # CONDSTORE: UNCHANGEDSINCE refuses messages changed after it.
            res = await box.store([1, 3], "-", ["\\Flagged"], unchangedsince=modseq0)
            assert res == {"changed": [3], "failed": [1]} or res["failed"] == [1]
            await box.store([4], "=", ["\\Seen", "\\Deleted"])
            gone = await box.expunge()
            assert gone == [4]
            assert box.state.expunged_since(modseq0) == [4]
            # Bytes back exactly, and ranges of them.
            for uid in box.state.uids:
                data = await box.read_message(box.state.messages[uid])
                check_message(data)
                assert data == message(uid - 1)
            msg = box.state.messages[1]
            assert await box.read_message(msg, 6, 12) == message(0)[6:12]
            head, _, text = message(0).partition(b"\r\n\r\n")
            assert await box.body_section(msg, (), "HEADER") == head + b"\r\n\r\n"
            assert await box.body_section(msg, (), "TEXT") == text
            assert await box.body_section(msg, (1,)) == text
            assert await box.body_section(msg, (), "HEADER.FIELDS", ("subject",)) == \
                b"Subject: message 0 \r\n\r\n"
            # Copy and move (UIDPLUS pairs), across mailboxes.
            work = await um.create_mailbox("Work")
            dest = await um.mailbox_by_guid(work.guid)
            assert await box.copy([1, 2], dest) == [(1, 1), (2, 2)]
            assert await box.move([3], dest) == [(3, 3)]
            assert 3 not in box.state.messages
            assert dest.state.messages[1].guid == box.state.messages[1].guid
            assert "\\Flagged" in dest.state.messages[2].flags
            assert await dest.read_message(dest.state.messages[3]) == message(2)
            # Another process agrees on everything.
            um2 = await other.user(uname("carol"))
            box2 = await um2.mailbox("INBOX")
            assert box2.state.uidvalidity == uv
            assert [(m.uid, m.guid, m.flags, m.modseq) for m in box2.state] == \
                [(m.uid, m.guid, m.flags, m.modseq) for m in box.state]
            # ... and sees later changes after a refresh.
            await box.store([5], "+", ["\\Answered"])
            assert await box2.refresh()
            assert "\\Answered" in box2.state.messages[5].flags
            # Cache: envelope and bodystructure without reading the body.
            entry = await box2.cache_entry(box2.state.messages[5])
            assert entry["env"][1].strip() == "message 4"
            assert entry["bs"][0].lower() == "text"
            # An expunged message reads as such in a session that has not noticed yet.
            stale = box2.state.messages[6]
            await box.expunge([6])
            if layout == "sdbox":
                with pytest.raises(MessageExpunged):
                    await box2.read_message(stale)
        finally:
            await store.close()
            await other.close()

    run(main())


def test_multi_recipient_delivery(store_env: tuple[str, str],
                                  uname: Callable[[str], str]) -> None:
    spec, layout = store_env

    async def main() -> None:
        store = await open_store(spec, layout)
        try:
            await (await store.user(uname("u1"))).create_mailbox("Lists")
            raw = message(7, "multi").replace(b"\r\n", b"\n")  # bare LF is normalized
            res = await deliver(store, raw, [(uname("u1"), "INBOX"), (uname("u2"), "INBOX"),
                                             (uname("u1"), "Lists"), (uname("u3"), "Nope")])
            assert res[:3] == [1, 1, 1], res
            assert isinstance(res[3], MailboxNotFound)
            boxes = [await (await store.user(u)).mailbox(n)
                     for u, n in ((uname("u1"), "INBOX"), (uname("u2"), "INBOX"),
                                  (uname("u1"), "Lists"))]
            for box in boxes:
                assert await box.read_message(box.state.messages[1]) == message(7, "multi")
            locs = {b.state.messages[1].loc for b in boxes}
            if layout == "mdbox":
                # Stored once for every recipient.
                assert len(locs) == 1
                objs = [p async for p in store.fs.iter("storage/")]
                assert len(objs) == 1
        finally:
            await store.close()

    run(main())


def test_quota(store_spec: str, uname: Callable[[str], str]) -> None:
    async def main() -> None:
        store = await open_store(store_spec)
        try:
            assert parse_quota_rule("*:storage=1M:messages=10") == QuotaLimits(1 << 20, 10)
            size = len(message(0))
            um = await store.user(uname("dave"), QuotaLimits(bytes=size * 3 + 10, messages=5))
            box = await um.mailbox("INBOX")
            await box.save(message(0))
            await (await um.mailbox("Sent")).save(message(1))
            await box.save(message(2))
            with pytest.raises(QuotaExceeded) as err:
                await box.save(message(3))
            assert err.value.resource == "storage"
            usage = await um.quota_usage()
            assert (usage.bytes, usage.messages) == (size * 3, 3)
            res = await deliver(store, message(4), [(uname("dave"), "INBOX"),
                                                    (uname("erin"), "INBOX")])
            assert isinstance(res[0], QuotaExceeded) and res[1] == 1
            await box.expunge([1])
            await box.save(message(5))
            um.quota_limits = QuotaLimits(messages=3)
            with pytest.raises(QuotaExceeded) as err:
                await box.save(message(6))
            assert err.value.resource == "messages"
        finally:
            await store.close()

    run(main())


def test_change_notification(store_spec: str, uname: Callable[[str], str]) -> None:
    async def main() -> None:
        a = await open_store(store_spec)
        b = await open_store(store_spec)
        try:
            box_a = await (await a.user(uname("fay"))).mailbox("INBOX")
            box_b = await (await b.user(uname("fay"))).mailbox("INBOX")
            assert not await box_b.wait_for_change(0.1)
            waiter = asyncio.create_task(box_b.wait_for_change(10))
            await asyncio.sleep(0.1)
            await box_a.save(message(1))
            assert await waiter
            assert box_b.state.exists == 1
            # Within one store, a commit wakes waiters at once.
            waiter = asyncio.create_task(box_a.wait_for_change(10))
            await asyncio.sleep(0)
            t0 = time.monotonic()
            await box_a.store([1], "+", ["\\Seen"])
            assert await waiter and time.monotonic() - t0 < 5
        finally:
            await a.close()
            await b.close()

    run(main())


def test_log_rotation_and_snapshots(mail_env: tuple[str, str]) -> None:
    """Many changes with a small rotation limit: snapshots get written, old logs go, and a
    fresh open reads one snapshot plus a short tail."""
    spec, layout = mail_env

    async def main() -> None:
        store = await open_store(spec, layout, log_limit=3000)
        try:
            box = await (await store.user("gus")).mailbox("INBOX")
            for i in range(40):
                await box.save(message(i))
                if i % 3 == 0:
                    await box.store([i + 1], "+", ["\\Seen"])
            await box.expunge([2, 5, 9])
            snaps, logs = await box.log.list_objects()
            assert len(logs) <= 5 and len(snaps) <= 5 and snaps[-1] > 4, (snaps, logs)
            fresh = await open_store(spec, layout, log_limit=3000)
            box2 = await (await fresh.user("gus")).mailbox("INBOX")
            assert [(m.uid, m.flags, m.modseq) for m in box2.state] == \
                [(m.uid, m.flags, m.modseq) for m in box.state]
            assert box2.log.k == snaps[-1] or box2.log.k == logs[-1]
            # Cache entries survive chunking into cache objects.
            for m in box2.state:
                assert (await box2.cache_entry(m))["env"][1].startswith("message")
            await fresh.fs.close()
        finally:
            await store.fs.close()

    run(main())


def test_reader_far_behind_catches_up(mail_spec: str) -> None:
    """A reader that stalled while another process rotated the log several times (its log
    deleted under it) catches up from the newest snapshot instead of failing."""

    async def main() -> None:
        writer_store = await open_store(mail_spec, log_limit=3000)
        reader_store = await open_store(mail_spec, log_limit=3000)
        try:
            writer = await (await writer_store.user("hal")).mailbox("INBOX")
            reader = await (await reader_store.user("hal")).mailbox("INBOX")
            await writer.save(message(0))
            assert await reader.refresh()
            for i in range(1, 60):
                await writer.save(message(i))
            await writer.expunge([3])
            # Rotation leaves old generations to purge (the grace keeps young objects).
            await purge(writer_store, ["hal"], grace=3600.0)
            snaps, _ = await writer.log.list_objects()
            assert snaps[0] > reader.log.k + 1, "the reader's log was not rotated away"
            assert await reader.refresh()
            assert [(m.uid, m.guid) for m in reader.state] == \
                [(m.uid, m.guid) for m in writer.state]
            await reader.save(message(99))
            await writer.refresh()
            assert writer.state.exists == reader.state.exists == 60
        finally:
            await writer_store.fs.close()
            await reader_store.fs.close()

    run(main())


# --- invariant 1: acknowledged changes survive SIGKILL ---------------------------------------

_ACK_CHILD = r"""
import asyncio, sys
sys.path[:0] = [{tests!r}]
from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs.chain import open_fs
from mailsamples import message

async def main():
    store = MailStore(await open_fs({spec!r}), StorageSettings(layout={layout!r}))
    box = await (await store.user("ivan")).mailbox("INBOX")
    i = 0
    while True:
        uid = await box.save(message(i, "ack"))
        print("saved", uid, i, flush=True)
        if i % 3 == 2:
            await box.store([uid], "+", ["\\Flagged"])
            print("flagged", uid, flush=True)
        if i % 5 == 4:
            await box.expunge([uid - 1])
            print("expunged", uid - 1, flush=True)
        i += 1

asyncio.run(main())
"""


def _child_cmd(template: str, spec: str, layout: str) -> list[str]:
    code = template.format(tests=str(REPO / "tests"), spec=spec, layout=layout)
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_inv1_acknowledged_survives_kill(mail_env: tuple[str, str]) -> None:
    spec, layout = mail_env
    proc = subprocess.Popen(_child_cmd(_ACK_CHILD, spec, layout), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    acks: list[list[str]] = []
    assert proc.stdout is not None
    try:
        while len(acks) < 25:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child died: {proc.stderr.read() if proc.stderr else ''}")
            acks.append(line.split())
    finally:
        proc.send_signal(signal.SIGKILL)  # right after the last acknowledgement
        proc.wait(30)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()

    async def check() -> None:
        store = await open_store(spec, layout)
        box = await (await store.user("ivan")).mailbox("INBOX")
        expunged = {int(a[1]) for a in acks if a[0] == "expunged"}
        for a in acks:
            uid = int(a[1])
            if a[0] == "saved" and uid not in expunged:
                msg = box.state.messages[uid]
                assert await box.read_message(msg) == message(int(a[2]), "ack")
            elif a[0] == "flagged" and uid not in expunged:
                assert "\\Flagged" in box.state.messages[uid].flags
            elif a[0] == "expunged":
                assert uid not in box.state.messages
        await store.fs.close()

    run(check())


# --- invariants 2 and 3: concurrent processes ------------------------------------------------

SAVERS = 4
SAVES = 100


def _saver(spec: str, layout: str, proc: int, barrier: Any, results: Any) -> None:
    async def main() -> list[tuple[int, str]]:
        store = await open_store(spec, layout)
        try:
            box = await (await store.user("judy")).mailbox("INBOX")
            barrier.wait()
            out = []
            for i in range(SAVES):
                uid = await box.save(message(i, f"p{proc}"))
                out.append((uid, box.state.messages[uid].guid if uid in box.state.messages
                            else ""))
            return out
        finally:
            await store.fs.close()

    try:
        results.put(("saver", proc, run(main())))
    except BaseException as exc:  # noqa: BLE001
        results.put(("saver", proc, f"error: {exc!r}"))


def _meddler(spec: str, layout: str, barrier: Any, stop: Any, results: Any) -> None:
    """Expunges and flags while the savers save; reads every body it can (invariant 3)."""

    async def main() -> dict[str, Any]:
        store = await open_store(spec, layout)
        expunged: list[int] = []
        checked = 0
        try:
            box = await (await store.user("judy")).mailbox("INBOX")
            barrier.wait()
            rnd = random.Random(7)
            while not stop.is_set():
                await box.refresh()
                uids = box.state.uids
                assert uids == sorted(uids) and len(set(uids)) == len(uids)
                if uids:
                    pick = rnd.sample(uids, min(3, len(uids)))
                    await box.store(pick[:2], "+", ["\\Seen", "$Meddled"])
                    if rnd.random() < 0.5:
                        expunged += await box.expunge(pick[2:])
                    for uid in pick[:2]:
                        msg = box.state.messages.get(uid)
                        if msg is None:
                            continue
                        with contextlib.suppress(MessageExpunged):
                            check_message(await box.read_message(msg))
                            checked += 1
                await asyncio.sleep(0.02)
            await box.refresh()
            return {"expunged": expunged, "checked": checked,
                    "map": {m.uid: m.guid for m in box.state}}
        finally:
            await store.fs.close()

    try:
        results.put(("meddler", 0, run(main())))
    except BaseException as exc:  # noqa: BLE001
        results.put(("meddler", 0, f"error: {exc!r}"))


@pytest.mark.slow
def test_inv2_concurrent_processes(mail_env: tuple[str, str]) -> None:
    spec, layout = mail_env
    run(_touch_user(spec, layout, "judy"))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(SAVERS + 1)
    stop = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_saver, args=(spec, layout, i, barrier, results))
             for i in range(SAVERS)]
    procs.append(ctx.Process(target=_meddler, args=(spec, layout, barrier, stop, results)))
    for p in procs:
        p.start()
    got: dict[tuple[str, int], Any] = {}
    for _ in range(SAVERS):
        kind, i, value = results.get(timeout=600)
        got[(kind, i)] = value
    stop.set()
    kind, i, value = results.get(timeout=120)
    got[(kind, i)] = value
    for p in procs:
        p.join(30)
    errors = [v for v in got.values() if isinstance(v, str)]
    assert not errors, errors
    saved = [pair for k, v in got.items() if k[0] == "saver" for pair in v]
    assert len(saved) == SAVERS * SAVES
    uids = [u for u, _ in saved]
    assert len(set(uids)) == len(uids), "a UID was given twice"
    for k, v in got.items():
        if k[0] == "saver":
            assert [u for u, _ in v] == sorted(u for u, _ in v), "UIDs not ascending"
    meddler = got[("meddler", 0)]
    assert meddler["checked"] > 0

    async def check() -> None:
        store = await open_store(spec, layout)
        box = await (await store.user("judy")).mailbox("INBOX")
        final = {m.uid: m.guid for m in box.state}
        expunged = set(meddler["expunged"])
        for uid, guid in saved:
            if uid in expunged:
                assert uid not in final
            else:
                assert final[uid] == guid or guid == ""
        assert len(final) == SAVERS * SAVES - len(expunged)
        # Everyone agrees on UID -> GUID.
        for uid, guid in meddler["map"].items():
            assert final.get(int(uid), guid) == guid
        for m in box.state:
            check_message(await box.read_message(m))
        await store.fs.close()

    run(check())


async def _touch_user(spec: str, layout: str, user: str) -> None:
    store = await open_store(spec, layout)
    await (await store.user(user)).mailbox("INBOX")
    await store.fs.close()


def test_inv3_readers_never_see_partial(mail_env: tuple[str, str]) -> None:
    """A reader polling while a writer saves large messages and flags: every state it
    sees is a prefix-consistent state, every body whole."""
    spec, layout = mail_env

    async def main() -> None:
        w = await open_store(spec, layout)
        r = await open_store(spec, layout)
        try:
            wbox = await (await w.user("kim")).mailbox("INBOX")
            rbox = await (await r.user("kim")).mailbox("INBOX")
            done = asyncio.Event()

            async def writer() -> None:
                for i in range(15):
                    await wbox.save(message(i, "big", size=200_000 if i % 5 == 0 else 3000))
                    await wbox.store([i + 1], "+", ["\\Seen"])
                done.set()

            async def reader() -> int:
                seen = 0
                last = 0
                while not done.is_set() or seen < 15:
                    await rbox.refresh()
                    assert rbox.state.next_uid >= last
                    last = rbox.state.next_uid
                    for m in list(rbox.state)[seen:]:
                        check_message(await rbox.read_message(m))
                        seen += 1
                    await asyncio.sleep(0.01)
                return seen

            _, seen = await asyncio.gather(writer(), reader())
            assert seen == 15
        finally:
            await w.fs.close()
            await r.fs.close()

    run(main())


# --- invariant 4: crashes, corruption, force-resync ------------------------------------------

_CRASH_CHILD = r"""
import asyncio, sys
sys.path[:0] = [{tests!r}]
from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs.chain import open_fs
from mailsamples import message

async def main():
    store = MailStore(await open_fs({spec!r}),
                      StorageSettings(layout={layout!r}, log_limit=4000))
    box = await (await store.user("lee")).mailbox("INBOX")
    print("ready", flush=True)
    i = 0
    while True:
        uid = await box.save(message(i, "crash", size=(i % 4) * 20000))
        print("saved", uid, flush=True)
        if i % 4 == 3:
            await box.store([uid], "+", ["\\Seen"])
        i += 1

asyncio.run(main())
"""

CRASH_TRIALS = 20


@pytest.mark.slow
def test_inv4_crash_then_resync(mail_env: tuple[str, str], caplog: Any) -> None:
    spec, layout = mail_env
    rnd = random.Random(4)
    acked: set[int] = set()
    for _ in range(CRASH_TRIALS):
        proc = subprocess.Popen(_child_cmd(_CRASH_CHILD, spec, layout), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + rnd.uniform(0.0, 0.6)
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        os.set_blocking(proc.stdout.fileno(), True)
        # Only whole lines count: the kill may cut the last one short.
        for line in proc.stdout.read().split("\n")[:-1]:
            if line.startswith("saved "):
                acked.add(int(line.split()[1]))
        proc.stdout.close()

    async def check() -> None:
        store = await open_store(spec, layout, log_limit=4000)
        box = await (await store.user("lee")).mailbox("INBOX")
        for uid in acked:
            check_message(await box.read_message(box.state.messages[uid]))
        report = await force_resync(box, grace=0)
        # Every object is now in the index, and every index entry has its object.
        again = await force_resync(box, grace=0)
        assert not again.relinked and not again.expunged_missing, again
        for m in box.state:
            check_message(await box.read_message(m))
        assert acked <= set(box.state.uids)
        assert len(box.state.uids) >= len(acked)
        _ = report
        await store.fs.close()

    run(check())


def _count_errors(caplog: Any, needle: str) -> int:
    return sum(needle in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_corruption_deleted_message_object(mail_env: tuple[str, str], caplog: Any) -> None:
    spec, layout = mail_env

    async def main() -> None:
        store = await open_store(spec, layout)
        try:
            box = await (await store.user("mia")).mailbox("INBOX")
            for i in range(4):
                await box.save(message(i))
            victim = box.state.messages[2]
            path, _ = box._where(victim)
            if layout == "mdbox":
                # Each save packed its own storage object here.
                pass
            await store.fs.delete(path)
            fresh = await open_store(spec, layout)
            box2 = await (await fresh.user("mia")).mailbox("INBOX")
            with pytest.raises(MessageExpunged):
                await box2.read_message(box2.state.messages[2])
            assert 2 not in box2.state.messages
            assert _count_errors(caplog, "is missing") == 1
            report = await force_resync(box2, grace=0)
            assert not report.relinked and not report.expunged_missing
            assert box2.state.uids == [1, 3, 4]
            await fresh.fs.close()
        finally:
            await store.fs.close()

    run(main())


def test_corruption_deleted_snapshot(mail_env: tuple[str, str], caplog: Any) -> None:
    spec, layout = mail_env

    async def main() -> None:
        store = await open_store(spec, layout, log_limit=2500)
        try:
            box = await (await store.user("ned")).mailbox("INBOX")
            for i in range(12):
                await box.save(message(i))
            await box.store([3], "+", ["\\Flagged"])
            snaps, _ = await box.log.list_objects()
            await store.fs.delete(box.log.snap_path(snaps[-1]))
            fresh = await open_store(spec, layout, log_limit=2500)
            box2 = await (await fresh.user("ned")).mailbox("INBOX")
            assert [(m.uid, m.guid, m.flags) for m in box2.state] == \
                [(m.uid, m.guid, m.flags) for m in box.state]
            # Detected once, and repaired on the way: the snapshot is back.
            assert sum("missing; writing them" in r.getMessage()
                       for r in caplog.records if r.levelno >= logging.WARNING) == 1
            snaps2, _ = await box2.log.list_objects()
            assert snaps2[-1] == snaps[-1]
            await force_resync(box2, grace=0)
            # Every snapshot deleted: rebuilt from the objects (and what logs remain).
            for k in snaps2:
                await fresh.fs.delete(box2.log.snap_path(k))
            third = await open_store(spec, layout, log_limit=2500)
            box3 = await (await third.user("ned")).mailbox("INBOX")
            assert sorted(m.guid for m in box3.state) == sorted(m.guid for m in box.state)
            for m in box3.state:
                check_message(await box3.read_message(m))
            await third.fs.close()
            await fresh.fs.close()
        finally:
            await store.fs.close()

    run(main())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_corruption_truncated_log(tmp_path: Path, layout: str, caplog: Any) -> None:
    spec = f"posix:{tmp_path / 'fs'}"

    async def main() -> None:
        store = await open_store(spec, layout)
        box = await (await store.user("olga")).mailbox("INBOX")
        for i in range(6):
            await box.save(message(i))
        await store.fs.close()
        log_file = tmp_path / "fs" / box.log.log_path(box.log.k)
        size = log_file.stat().st_size
        with open(log_file, "r+b") as f:
            f.truncate(size - 40)  # the last frame is now torn
        fresh = await open_store(spec, layout)
        box2 = await (await fresh.user("olga")).mailbox("INBOX")
        assert box2.state.exists == 5
        assert sum("incomplete frame" in r.getMessage() for r in caplog.records) == 1
        # Later appends land after the torn bytes; the reader skips them, once, loudly,
        # and repairs at once: the message whose record was torn off is linked again.
        await box2.save(message(10))
        assert _count_errors(caplog, "not valid frames") == 1
        assert box2.state.exists == 7
        third = await open_store(spec, layout)
        box3 = await (await third.user("olga")).mailbox("INBOX")
        assert box3.state.exists == 7
        assert _count_errors(caplog, "not valid frames") == 1
        for m in box3.state:
            check_message(await box3.read_message(m))
        again = await force_resync(box3, grace=0)
        assert not again.repaired
        await third.fs.close()
        await fresh.fs.close()

    run(main())


def test_purge_mdbox(mail_spec: str) -> None:
    async def main() -> None:
        store = await open_store(mail_spec, "mdbox")
        try:
            res = await deliver(store, message(1), [("pat", "INBOX"), ("quinn", "INBOX")])
            assert res == [1, 1]
            pat = await (await store.user("pat")).mailbox("INBOX")
            quinn = await (await store.user("quinn")).mailbox("INBOX")
            await pat.save_many([])  # no-op
            from cloudcote.core.mail.storage import SaveRequest

            await pat.save_many([SaveRequest(message(2)), SaveRequest(message(3))])
            # One object holds both; expunge one of them: purge rewrites the object.
            await pat.expunge([2])
            stats = await purge(store, ["pat", "quinn"])
            assert stats["storage_rewritten"] == 1 and stats["storage_deleted"] == 0
            assert await pat.read_message(pat.state.messages[3]) == message(3)
            # The shared message dies only when both have expunged it.
            await pat.expunge([1])
            assert (await purge(store, ["pat", "quinn"]))["storage_deleted"] == 0
            await quinn.expunge([1])
            assert (await purge(store, ["pat", "quinn"]))["storage_deleted"] == 1
            objs = [p async for p in store.fs.iter("storage/")]
            assert len(objs) == 1
            report = await force_resync(pat, grace=0)
            assert not report.relinked and not report.expunged_missing
        finally:
            await store.fs.close()

    run(main())


# --- invariant 5: bytes exact, with and without compression ---------------------------------


@pytest.mark.parametrize("chain", ["posix", "compress:zstd:posix", "cache:size=4MB:posix"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inv5_bytes_exact(tmp_path: Path, chain: str, layout: str) -> None:
    spec = f"{chain}:{tmp_path / 'fs'}"
    samples = [
        message(1),
        b"Subject: no final newline\r\n\r\nbody without CRLF",
        b"Subject: 8bit \xc3\xa9\xff\r\n\r\n\x00\x01binary\xfe\r\n",
        b"",
        b"\r\n",
        os.urandom(300_000).replace(b"\r", b"").replace(b"\n", b""),
    ]

    async def main() -> None:
        store = await open_store(spec, layout)
        try:
            box = await (await store.user("ray")).mailbox("INBOX")
            for raw in samples:
                uid = await box.save(raw)
                got = await box.read_message(box.state.messages[uid])
                assert got == raw
                assert box.state.messages[uid].size == len(raw)
            # Bare LF becomes CRLF when saved; then it is exact.
            uid = await box.save(b"Subject: lf\n\nline\n")
            assert await box.read_message(box.state.messages[uid]) == \
                b"Subject: lf\r\n\r\nline\r\n"
        finally:
            await store.fs.close()

    run(main())


def test_search_through_the_store(store_env: tuple[str, str],
                                  uname: Callable[[str], str]) -> None:
    """SEARCH on stored messages: header keys from the cache, body keys from the bytes."""
    from cloudcote.core.mail.search import parse_search
    from cloudcote.core.mail.storage import search_mailbox

    spec, layout = store_env

    async def main() -> None:
        store = await open_store(spec, layout)
        try:
            box = await (await store.user(uname("sam"))).mailbox("INBOX")
            for i in range(5):
                await box.save(message(i, "tag"), ["\\Seen"] if i < 2 else [])
            await box.save(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nK\xc3\xa4se und Brot\r\n")
            reads = 0
            real = box.read_message

            async def counting(msg: Any, *a: Any) -> bytes:
                nonlocal reads
                reads += 1
                return await real(msg, *a)

            box.read_message = counting  # type: ignore[method-assign]
            assert await search_mailbox(box, parse_search(["UNSEEN"])) == [3, 4, 5, 6]
            assert await search_mailbox(box, parse_search(["SUBJECT", b"message 3"])) == [4]
            assert await search_mailbox(box, parse_search(["SUBJECT", b"GR\xc3\x9cSSE"])) == [6]
            assert reads == 0  # flags and headers: no message read
            assert await search_mailbox(box, parse_search(["BODY", b"k\xc3\xa4se"])) == [6]
            assert await search_mailbox(box, parse_search(["NOT", "BODY", b"line"])) == [6]
            assert reads > 0
        finally:
            await store.close()

    run(main())


def test_save_many_recent_search_and_delivery(store_env: tuple[str, str],
                                             uname: Callable[[str], str]) -> None:
    """The rest of the API contract on every backend: save_many all or nothing, flags and
    internal dates kept, one \\Recent claim wins each UID across stores, SEARCH and
    delivery through the API."""
    import datetime as dt

    from cloudcote.core.mail.search import parse_search

    spec, layout = store_env

    async def main() -> None:
        store = await open_store(spec, layout, max_message_size=1000)
        other = await open_store(spec, layout, max_message_size=1000)
        try:
            um = await store.user(uname("rita"), QuotaLimits(messages=3))
            box = await um.mailbox("INBOX")
            assert isinstance(um, api.User) and isinstance(box, api.Mailbox)
            assert box.settings.max_message_size == um.settings.max_message_size == 1000
            # Too large, or over quota: none of the batch is saved.
            with pytest.raises(MessageTooLarge):
                await box.save_many([api.SaveRequest(message(0)),
                                     api.SaveRequest(b"X" * 2000)])
            with pytest.raises(QuotaExceeded):
                await box.save_many([api.SaveRequest(message(i)) for i in range(4)])
            assert (box.state.exists, box.state.next_uid) == (0, 1)
            assert await box.save_many([]) == []
            when = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
            uids = await box.save_many([
                api.SaveRequest(message(1), ["\\seen", "\\Recent", "$k"], when),
                api.SaveRequest(message(2))])
            assert uids == [1, 2]
            first = box.state.messages[1]
            assert first.flags == frozenset({"\\Seen", "$k"})
            assert api.internal_datetime(first) == when
            assert api.internal_datetime(first).utcoffset() == dt.timedelta(hours=2)
            # \Recent: the first claim wins, in whichever store it is made.
            box2 = await (await other.user(uname("rita"))).mailbox("INBOX")
            await box2.refresh()
            assert list(await box2.claim_recent(3)) == [1, 2]
            assert list(await box.claim_recent(3)) == []
            uid = await box.save(message(3))
            assert list(await box.claim_recent(uid + 1)) == [3]
            await box2.refresh()
            assert list(await box2.claim_recent(uid + 1)) == []
            # SEARCH through the API.
            assert await box.search(parse_search(["RECENT"]), recent=frozenset({3})) == [3]
            assert await box.search(parse_search(["KEYWORD", "$k"])) == [1]
            assert await box2.search(parse_search(["SUBJECT", b"message 2"]),
                                     list(box2.state)[1:]) == [1]
            # Delivery through the store: per mailbox the UID or the error.
            res = await store.deliver_to(message(4), [box])
            assert isinstance(res[0], QuotaExceeded)
            um.quota_limits = QuotaLimits()
            res = await store.deliver_to(message(4), [box, await um.mailbox("Sent")])
            assert res == [4, 1]
            assert await box.read_message(box.state.messages[4]) == message(4)
        finally:
            await store.close()
            await other.close()

    run(main())


def test_open_store_registry(tmp_path: Path) -> None:
    """``open_store``: memory roots of their own or by name; a libfs chain otherwise, the
    store owning it; COPY between backends saves the messages again."""
    from cloudcote.core.mail import registry

    assert registry.backend_of("memory") == registry.backend_of("memory:x") == \
        registry.BACKENDS["memory"]
    assert registry.backend_of("posix:/srv/mail") == registry.LIBFS

    async def main() -> None:
        a, b = await api.open_store("memory"), await api.open_store("memory:")
        c = await api.open_store(f"memory:{tmp_path}")
        d = await api.open_store(f"memory:{tmp_path}")
        libfs = await api.open_store(f"posix:{tmp_path / 'fs'}", settings())
        try:
            src = await (await a.user("u")).mailbox("INBOX")
            await src.save(message(0), ["\\Flagged"])
            assert (await (await b.user("u")).mailbox("INBOX")).state.exists == 0
            await (await (await c.user("u")).mailbox("INBOX")).save(message(1))
            shared = await (await d.user("u")).mailbox("INBOX")
            assert shared.state.exists == 1
            dest = await (await libfs.user("u")).mailbox("INBOX")
            assert await src.copy([1], dest) == [(1, 1)]
            assert dest.state.messages[1].flags == frozenset({"\\Flagged"})
            assert await dest.read_message(dest.state.messages[1]) == message(0)
            assert await dest.copy([1], shared) == [(1, 2)]
            assert await shared.read_message(shared.state.messages[2]) == message(0)
        finally:
            for s in (a, b, c, d, libfs):
                await s.close()

    run(main())
