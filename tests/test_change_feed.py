"""Change feeds (libfs ``Fs.change_feed``) on real stores, and through core: a mailbox
hears another process's save long before its poll interval.

Two Fs instances opened on the same store stand for two processes.  Waits are generous
bounds on a functional outcome (the change is heard at all), never timing measurements.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs import REPLACE, ForwardingFs, Fs, open_fs
from cloudcote.libfs.api import ChangeFeed, feed_directory

from .conftest import driver_spec, service

FEED_TARGETS = ["posix", "postgresql"]
NO_FEED_TARGETS = ["seaweedfs", "moto", "cassandra", "mysql"]
#: Bound on "promptly": far above the milliseconds a feed takes, far below a poll.
HEAR_WITHIN = 10.0


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


class Heard:
    """A subscriber callback that records paths and lets a test wait for one."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._event = asyncio.Event()

    def __call__(self, path: str) -> None:
        self.paths.append(path)
        self._event.set()

    async def wait_for(self, path: str) -> None:
        while path not in self.paths:
            self._event.clear()
            await asyncio.wait_for(self._event.wait(), HEAR_WITHIN)


async def two_instances(spec: str) -> tuple[Fs, Fs]:
    return await open_fs(spec), await open_fs(spec)


def inotify_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            continue
    return count


# --- libfs -----------------------------------------------------------------------------


def test_feed_directory() -> None:
    assert feed_directory("a/b/") == "a/b"
    assert feed_directory("a/b/log.") == "a/b"
    assert feed_directory("top") == ""


@pytest.mark.parametrize("target", FEED_TARGETS)
def test_feed_hears_other_instance(target: str, request: pytest.FixtureRequest,
                                   tmp_path: Path) -> None:
    """A subscriber on one Fs hears appends, creates, replaces and deletes made through
    another Fs on the same store; after close it hears nothing more; other directories and
    prefixes are not announced to it."""
    spec = driver_spec(target, request, tmp_path)

    async def body() -> None:
        fs_a, fs_b = await two_instances(spec)
        try:
            feed = fs_a.change_feed()
            assert isinstance(feed, ChangeFeed)
            assert fs_a.change_feed() is feed  # one per instance
            heard, other, late = Heard(), Heard(), Heard()
            sub = await feed.subscribe("u/box/index/", heard)
            assert sub is not None
            only_logs = await feed.subscribe("u/box/index/log.", other)
            assert only_logs is not None
            assert feed.subscriptions == 2
            await fs_b.append("u/box/index/log.00000001", b"frame one")
            await heard.wait_for("u/box/index/log.00000001")
            await other.wait_for("u/box/index/log.00000001")
            await fs_b.append("u/box/index/log.00000001", b"frame two")
            await fs_b.write("u/box/index/snap.00000002", b"snapshot")
            await heard.wait_for("u/box/index/snap.00000002")
            await fs_b.write("u/box/index/snap.00000002", b"again", REPLACE)
            await fs_b.delete("u/box/index/snap.00000002")
            # Objects of other directories are not this subscription's business.
            await fs_b.write("u/box/msg/m1", b"message")
            await fs_b.write("u/box/index/sub/deeper", b"x")
            assert all(p.startswith("u/box/index/") and "/" not in p[len("u/box/index/"):]
                       for p in heard.paths), heard.paths
            assert all(p.startswith("u/box/index/log.") for p in other.paths), other.paths

            # After close: a later change is heard by a live subscriber of the same
            # directory, and not by the closed one.
            sub.close()
            sub.close()  # idempotent
            assert feed.subscriptions == 1
            before = list(heard.paths)
            late_sub = await feed.subscribe("u/box/index/", late)
            assert late_sub is not None
            await fs_b.append("u/box/index/log.00000003", b"after close")
            await late.wait_for("u/box/index/log.00000003")
            assert heard.paths == before
            only_logs.close()
            late_sub.close()
            assert feed.subscriptions == 0
            if target == "posix":
                assert feed.watches == 0  # type: ignore[attr-defined]
        finally:
            await fs_a.close()
            await fs_b.close()

    run(body)


@pytest.mark.parametrize("target", NO_FEED_TARGETS)
def test_no_feed(target: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Stores without a change signal report no feed: their callers poll."""
    assert_no_feed(driver_spec(target, request, tmp_path))


def assert_no_feed(spec: str) -> None:
    async def body() -> None:
        fs = await open_fs(spec)
        try:
            assert fs.change_feed() is None
        finally:
            await fs.close()

    run(body)


def test_wrappers_pass_the_feed_through(tmp_path: Path) -> None:
    spec = f"metrics:latency:1ms:retry:attempts=3:compress:zstd:posix:{tmp_path / 'fs'}"

    async def body() -> None:
        fs = await open_fs(spec)
        try:
            feed = fs.change_feed()
            assert feed is not None
            inner = fs
            while isinstance(inner, ForwardingFs):
                inner = inner.parent
            assert feed is inner.change_feed()  # the driver's own feed
        finally:
            await fs.close()

    run(body)


@pytest.mark.remote
def test_pg_notify_off_means_no_feed(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    assert_no_feed(driver_spec("postgresql", request, tmp_path) + ",notify=no")


@pytest.mark.remote
def test_pg_feed_connects_again(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The listening connection is killed: the feed connects again, tells its subscribers
    (they may have missed changes), and hears later changes."""
    import asyncpg

    spec = driver_spec("postgresql", request, tmp_path)

    async def body() -> None:
        fs_a, fs_b = await two_instances(spec)
        try:
            feed = fs_a.change_feed()
            assert feed is not None
            heard = Heard()
            sub = await feed.subscribe("x/", heard)
            assert sub is not None
            pid = feed._conn.get_server_pid()  # type: ignore[attr-defined]
            admin = await asyncpg.connect(service("CLOUDCOTE_PG_DSN"))
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            await heard.wait_for("x/")
            await fs_b.append("x/log.00000001", b"after the reconnect")
            await heard.wait_for("x/log.00000001")
            assert feed.connections == 2  # type: ignore[attr-defined]
        finally:
            await fs_a.close()
            await fs_b.close()

    run(body)


def test_posix_one_inotify_instance_for_many_directories(tmp_path: Path) -> None:
    """500 subscribed directories: one inotify instance, one watch each, all released on
    close; an append in any of them is heard."""

    async def body() -> None:
        fs_a, fs_b = await two_instances(f"posix:{tmp_path / 'fs'}")
        try:
            before = inotify_fds()
            feed = fs_a.change_feed()
            assert feed is not None
            heard = Heard()
            subs = [await feed.subscribe(f"users/u{i}/index/", heard) for i in range(500)]
            assert all(s is not None for s in subs)
            assert inotify_fds() - before == 1
            assert feed.instances == 1  # type: ignore[attr-defined]
            assert feed.watches == 500  # type: ignore[attr-defined]
            await fs_b.append("users/u377/index/log.00000001", b"x")
            await heard.wait_for("users/u377/index/log.00000001")
            assert set(heard.paths) == {"users/u377/index/log.00000001"}  # maybe repeated
            for s in subs:
                assert s is not None
                s.close()
            assert feed.watches == 0  # type: ignore[attr-defined]
        finally:
            await fs_a.close()
            await fs_b.close()
        assert inotify_fds() == before

    run(body)


# --- through core ----------------------------------------------------------------------

SLOW_POLL = StorageSettings(poll_interval=60)


def message(i: int) -> bytes:
    return (f"From: a@example.org\r\nTo: b@example.org\r\nSubject: feed {i}\r\n\r\n"
            f"body {i}\r\n").encode()


async def two_stores(spec: str) -> tuple[MailStore, MailStore]:
    fs_a, fs_b = await two_instances(spec)
    return MailStore(fs_a, SLOW_POLL), MailStore(fs_b, SLOW_POLL)


async def close_stores(*stores: MailStore) -> None:
    for store in stores:
        await store.close()
        await store.fs.close()


@pytest.mark.parametrize("target", FEED_TARGETS)
def test_waiting_sessions_hear_another_process(target: str, request: pytest.FixtureRequest,
                                               tmp_path: Path) -> None:
    """With poll_interval=60, sessions waiting 30 s on one store return True after a save
    through the other: only the feed can tell them (a poll would come after their wait).
    Twenty waiters, one subscription; the list's changes are heard the same way."""
    spec = driver_spec(target, request, tmp_path)

    async def body() -> None:
        a, b = await two_stores(spec)
        try:
            um_a, um_b = await a.user("ann"), await b.user("ann")
            box_a, box_b = await um_a.mailbox("INBOX"), await um_b.mailbox("INBOX")
            assert box_b.watched and box_b.poll_interval == 60
            feed = b.feed
            assert feed is not None
            subscribed = feed.subscriptions
            refreshes = 0
            plain_refresh = box_b.refresh

            async def counted() -> bool:
                nonlocal refreshes
                refreshes += 1
                return await plain_refresh()

            box_b.refresh = counted  # type: ignore[method-assign]
            waiters = [asyncio.create_task(box_b.wait_for_change(30)) for _ in range(20)]
            await asyncio.sleep(0.1)
            assert feed.subscriptions == subscribed  # waiting adds no subscription
            uid = await box_a.save(message(1))
            results = await asyncio.wait_for(asyncio.gather(*waiters), 29)
            assert results == [True] * 20
            assert uid in box_b.state.messages
            assert 1 <= refreshes < 20  # one refresh serves the waiters (maybe a repeat)

            # The mailbox list: a create through the other store is heard too.
            listen = asyncio.create_task(um_b.wait_for_list_change(30))
            await asyncio.sleep(0.1)
            await um_a.create_mailbox("Projects")
            assert await asyncio.wait_for(listen, 29)
            assert "Projects" in {e.name for e in um_b.list_mailboxes()}
        finally:
            await close_stores(a, b)

    run(body)


@pytest.mark.remote
def test_no_feed_keeps_polling(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Without a feed (MySQL) a waiting session still hears another process's save, by the
    per-mailbox poll."""
    spec = driver_spec("mysql", request, tmp_path)

    async def body() -> None:
        fs_a, fs_b = await two_instances(spec)
        settings = StorageSettings(poll_interval=0.2)
        a, b = MailStore(fs_a, settings), MailStore(fs_b, settings)
        try:
            box_a = await (await a.user("bob")).mailbox("INBOX")
            box_b = await (await b.user("bob")).mailbox("INBOX")
            assert b.feed is None and not box_b.watched and box_b.poll_interval == 0.2
            waiter = asyncio.create_task(box_b.wait_for_change(30))
            await asyncio.sleep(0.1)
            await box_a.save(message(1))
            assert await asyncio.wait_for(waiter, 29)
        finally:
            await close_stores(a, b)

    run(body)


def test_mailboxes_let_go_of_their_watches(tmp_path: Path) -> None:
    """Deleted, dropped (garbage) and closed mailboxes end their subscriptions."""

    async def body() -> None:
        store = MailStore(await open_fs(f"posix:{tmp_path / 'fs'}"), SLOW_POLL)
        try:
            feed = store.feed
            assert feed is not None
            um = await store.user("cy")
            base = feed.subscriptions  # the list
            await um.create_mailbox("Gone")
            await um.mailbox("Gone")
            assert feed.subscriptions == base + 1
            await um.delete_mailbox("Gone")
            assert feed.subscriptions == base
            await um.create_mailbox("Dropped")
            box = await um.mailbox("Dropped")
            assert box.watched
            del um._mailboxes[box.guid]
            del box
            gc.collect()
            await asyncio.sleep(0)  # the finalizer closes it in the event loop
            assert feed.subscriptions == base
            await um.mailbox("INBOX")
            assert feed.subscriptions == base + 1
        finally:
            await store.close()
            assert feed.subscriptions == 0
            assert feed.watches == 0  # type: ignore[attr-defined]
            await store.fs.close()

    run(body)


def test_many_mailboxes_one_inotify_instance(tmp_path: Path) -> None:
    """500 opened mailboxes: one inotify instance for the store, a watch each; a save to
    any of them through another store wakes its waiter."""

    async def body() -> None:
        spec = f"posix:path={tmp_path / 'fs'},fsync=never"
        before = inotify_fds()
        a, b = await two_stores(spec)
        try:
            um_a, um_b = await a.user("dee"), await b.user("dee")
            names = [f"box{i:03d}" for i in range(500)]
            recs = [um_b._create_record(n, []) for n in names]
            await um_b.list_log.commit(recs)
            boxes = [await um_b.mailbox(n) for n in names]
            assert all(box.watched for box in boxes)
            feed = b.feed
            assert feed is not None
            assert feed.instances == 1  # type: ignore[attr-defined]
            assert feed.watches >= 500  # type: ignore[attr-defined]
            assert inotify_fds() - before <= 2  # one per store opened here (a: list only)
            await um_a.refresh_list()
            waiter = asyncio.create_task(boxes[417].wait_for_change(30))
            await asyncio.sleep(0.1)
            await (await um_a.mailbox("box417")).save(message(417))
            assert await asyncio.wait_for(waiter, 29)
        finally:
            await close_stores(a, b)
        assert inotify_fds() == before

    run(body)
