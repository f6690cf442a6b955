"""Purge: garbage of interrupted saves, dead log generations, orphaned cache chunks and the
objects of deleted mailboxes is deleted, nothing a reader or a save in flight needs is.

The crash test saves through a ``randomfail`` stage (writes and appends fail before or
after the store did them, deletes fail), then purges with no grace on a clean chain and
checks every object under the user's prefix (and mdbox ``storage/``) against what the
indexes reference, and every acknowledged save byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cloudcote.config import ConfigError, load_config
from cloudcote.core.mail.errors import MailError
from cloudcote.core.mail.index import MailboxState
from cloudcote.core.mail.layout import object_path, write_sdbox
from cloudcote.core.mail.objects import StoredMeta, new_object_id
from cloudcote.core.mail.resync import BackgroundPurge, PurgeBudget, purge, purge_user
from cloudcote.core.mail.storage import MailStore, SaveRequest, StorageSettings
from cloudcote.core.mail.txlog import KEEP_GENERATIONS, TransactionLog
from cloudcote.libfs.api import FsError
from cloudcote.libfs.chain import open_fs
from cloudcote.server import Server

from .conftest import driver_spec
from .mailsamples import message

USER = "gc@example.com"


def settings(layout: str = "sdbox", **kw: Any) -> StorageSettings:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("quota_refresh", 0.0)
    return StorageSettings(layout=layout, autocreate={}, **kw)


async def open_store(spec: str, layout: str = "sdbox", **kw: Any) -> MailStore:
    return MailStore(await open_fs(spec), settings(layout, **kw), owns_fs=True)


async def garbage(spec: str, layout: str) -> list[str]:
    """Every object of USER (and mdbox storage) that no index, snapshot or list names,
    seen by a fresh process."""
    store = await open_store(spec, layout)
    try:
        um = await store.user(USER)
        boxes = [await um.mailbox_by_guid(g) for g in um.list_state.by_guid]
        for box in boxes:
            await box.refresh()
        names = [n async for n in store.fs.iter(um.prefix + "/")]
        wanted: set[str] = set()
        storage: set[str] = set()
        logs = [um.list_log.base] + [b.log.base for b in boxes]
        for base in logs:
            snaps, gens = await TransactionLog(store.fs, base, bytes).list_objects()
            for k in {*snaps, *gens}:
                if k <= snaps[-1] - KEEP_GENERATIONS:
                    continue  # a dead generation
                if k in gens:
                    wanted.add(f"{base}/log.{k:08d}")
                if k in snaps:
                    wanted.add(f"{base}/snap.{k:08d}")
                    if base != um.list_log.base:
                        st = MailboxState.decode_snapshot(
                            await store.fs.read(f"{base}/snap.{k:08d}"))
                        wanted.update(st.cache_where.values())
        for box in boxes:
            wanted.update(box.state.cache_where.values())
            for msg in box.state:
                path, _ = object_path(box.base, msg.loc)
                (storage if path.startswith("storage/") else wanted).add(path)
        left = [n for n in names if n not in wanted]
        if layout == "mdbox":
            left += [p async for p in store.fs.iter("storage/") if p not in storage]
        return sorted(left)
    finally:
        await store.close()


async def crashy_saves(spec: str, layout: str, n: int) -> dict[tuple[str, int], bytes]:
    """Saves (and flag changes, a mailbox created and deleted) through a chain whose writes
    and appends fail at random, before or after the store did them; the acknowledged
    saves by (mailbox, UID)."""
    chain = f"randomfail:write=0.12,append=0.12,delete=0.5,after=0.5,seed=7:{spec}"
    acked: dict[tuple[str, int], bytes] = {}
    store = await open_store(chain, layout, log_limit=4096, orphan_grace=0.0)
    try:
        for _ in range(50):
            try:
                um = await store.user(USER)
                box = await um.mailbox("INBOX")
                break
            except (MailError, FsError):
                await store.close()
                store = await open_store(chain, layout, log_limit=4096, orphan_grace=0.0)
        else:
            raise AssertionError("could not open the mailbox through randomfail")
        for i in range(n):
            raw = message(i, "gc", size=200)
            try:
                if i % 3 == 0:
                    uids = await box.save_many([SaveRequest(raw), SaveRequest(raw + b"x")])
                    acked[("INBOX", uids[0])] = raw
                    acked[("INBOX", uids[1])] = raw + b"x"
                    uid = uids[0]
                else:
                    (uid,) = await box.save_many([SaveRequest(raw)])
                    acked[("INBOX", uid)] = raw
                if i % 4 == 0:
                    await box.store([uid], "+", ["\\Seen"])
            except (MailError, FsError):
                pass  # not acknowledged: it may or may not have left objects behind
        for _ in range(5):
            try:
                await um.create_mailbox("Tmp")
                tmp = await um.mailbox("Tmp")
                await tmp.save_many([SaveRequest(message(999))])
                await um.delete_mailbox("Tmp")
            except (MailError, FsError):
                continue
            break
    finally:
        await store.close()
    return acked


@pytest.mark.parametrize("layout", ["sdbox", "mdbox"])
@pytest.mark.parametrize("target", ["posix", "seaweedfs"])
def test_crashed_saves_leave_no_garbage_after_purge(
        target: str, layout: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    spec = driver_spec(target, request, tmp_path)

    async def main() -> None:
        acked = await crashy_saves(spec, layout, 60)
        assert len(acked) > 20
        assert await garbage(spec, layout), "the crashes left no garbage to collect"
        store = await open_store(spec, layout, orphan_grace=0.0)
        try:
            stats = await purge(store, [USER])
            assert any(stats.values())
        finally:
            await store.close()
        assert await garbage(spec, layout) == []
        # Nothing acknowledged was lost.
        fresh = await open_store(spec, layout)
        try:
            box = await (await fresh.user(USER)).mailbox("INBOX")
            for (_, uid), raw in acked.items():
                assert uid in box.state.messages, uid
                assert await box.read_message(box.state.messages[uid]) == raw
        finally:
            await fresh.close()

    asyncio.run(main())


SAVER = r"""
import asyncio, sys
from cloudcote.core.mail.storage import MailStore, SaveRequest, StorageSettings
from cloudcote.libfs.chain import open_fs
from cloudcote.server import Server

async def main(spec, layout):
    store = MailStore(await open_fs(spec), StorageSettings(layout=layout, autocreate={},
                                                           log_limit=4096))
    box = await (await store.user(sys.argv[3])).mailbox("INBOX")
    i = 0
    while True:
        i += 1
        raw = (b"Subject: %d\r\n\r\n" % i) + b"body line\r\n" * (i % 50)
        (uid,) = await box.save_many([SaveRequest(raw)])
        if i % 5 == 0:
            await box.store([uid], "+", ["\\Seen"])
        sys.stdout.write(f"{uid} {i}\n")
        sys.stdout.flush()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def killed_saves(spec: str, layout: str, rounds: int) -> dict[int, bytes]:
    """Processes saving in a loop, each killed with SIGKILL at a random moment; the saves
    they reported acknowledged, by UID."""
    acked: dict[int, bytes] = {}
    rng = random.Random(11)
    for _ in range(rounds):
        with subprocess.Popen([sys.executable, "-c", SAVER, spec, layout, USER],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as child:
            assert child.stdout is not None
            first = child.stdout.readline()  # saving has begun
            time.sleep(rng.uniform(0.1, 0.4))
            child.send_signal(signal.SIGKILL)
            out = first + child.stdout.read()
        for line in out.decode().splitlines():
            if line.count(" ") == 1 and line.endswith(tuple("0123456789")):
                uid, i = map(int, line.split())
                acked[uid] = (b"Subject: %d\r\n\r\n" % i) + b"body line\r\n" * (i % 50)
    return acked


@pytest.mark.parametrize("layout", ["sdbox", "mdbox"])
def test_sigkilled_saves_leave_no_garbage_after_purge(layout: str, tmp_path: Path) -> None:
    spec = f"posix:{tmp_path / 'fs'}"
    acked = killed_saves(spec, layout, 3)
    assert len(acked) > 10

    async def main() -> None:
        store = await open_store(spec, layout, orphan_grace=0.0)
        try:
            await purge(store, [USER])
        finally:
            await store.close()
        assert await garbage(spec, layout) == []
        fresh = await open_store(spec, layout)
        try:
            box = await (await fresh.user(USER)).mailbox("INBOX")
            for uid, raw in acked.items():
                assert await box.read_message(box.state.messages[uid]) == raw
        finally:
            await fresh.close()

    asyncio.run(main())


def test_purge_spares_what_is_younger_than_the_grace(tmp_path: Path) -> None:
    """With the default grace, a save in flight (its object written, its log record not
    yet) keeps its object through a purge; with no grace the same purge takes it, which is
    what the grace is for."""
    spec = f"posix:{tmp_path / 'fs'}"

    async def main() -> None:
        slow = await open_store(f"latency:append=1.5s:{spec}", log_limit=4096)
        store = await open_store(spec)
        try:
            await (await store.user(USER)).mailbox("INBOX")
            box = await (await slow.user(USER)).mailbox("INBOX")
            base = box.base
            # Planted garbage that is young: an unreferenced cache chunk and message.
            await store.fs.write(f"{base}/cache/{uuid.uuid4().hex}", b"junk")
            await write_sdbox(store.fs, base, b"orphan\r\n", StoredMeta("g", box.guid, 0, 0, 8))
            before = sorted([n async for n in store.fs.iter(f"{base}/")])
            saving = asyncio.ensure_future(box.save_many([SaveRequest(message(1))]))
            while len([n async for n in store.fs.iter(f"{base}/msg/")]) < 2:
                await asyncio.sleep(0.01)
            stats = await purge(store, [USER])  # default grace, 3600 s
            assert stats["messages_deleted"] == stats["chunks_deleted"] == 0
            after = sorted([n async for n in store.fs.iter(f"{base}/")])
            assert set(before) <= set(after)
            (uid,) = await saving
            assert await box.read_message(box.state.messages[uid]) == message(1)

            # The same in flight with no grace: the save's object goes, and the save
            # acknowledges a message that cannot be read.
            saving = asyncio.ensure_future(box.save_many([SaveRequest(message(2))]))
            while len([n async for n in store.fs.iter(f"{base}/msg/")]) < 3:
                await asyncio.sleep(0.01)
            stats = await purge(store, [USER], grace=0)
            assert stats["messages_deleted"] == 2 and stats["chunks_deleted"] == 1
            (uid,) = await saving
            with pytest.raises(MailError):
                await box.read_message(box.state.messages[uid])
        finally:
            await slow.close()
            await store.close()

    asyncio.run(main())


def test_purge_takes_old_orphans_by_mtime_and_dead_generations(tmp_path: Path) -> None:
    spec = f"posix:{tmp_path / 'fs'}"

    async def main() -> None:
        store = await open_store(spec, log_limit=2048)
        try:
            box = await (await store.user(USER)).mailbox("INBOX")
            for i in range(40):
                await box.save_many([SaveRequest(message(i, size=100))])
            snaps, _ = await box.log.list_objects()
            assert snaps[-1] > KEEP_GENERATIONS + 1
            # A dead generation (rotation leaves them to purge) and old orphans.
            dead = f"{box.log.base}/log.{1:08d}"
            if not await store.fs.exists(dead):
                await store.fs.write(dead, b"x")
            chunk = f"{box.base}/cache/{uuid.uuid4().hex}"
            await store.fs.write(chunk, b"junk")
            old = await write_sdbox(store.fs, box.base, b"old\r\n",
                                    StoredMeta("g", box.guid, 0, 0, 5))
            old_path = object_path(box.base, old)[0]
            # Named as of two hours ago, but written now: the mtime keeps it.
            young_id = new_object_id(os.path.getmtime(tmp_path / "fs" / old_path) - 7200)
            young = f"{box.base}/msg/{young_id}"
            await store.fs.write(young, b"young")
            gone_box = f"{box.user.prefix}/mbox/{uuid.uuid4().hex}/msg/{new_object_id()}"
            await store.fs.write(gone_box, b"left behind")
            for path in (chunk, old_path, gone_box):
                os.utime(tmp_path / "fs" / path, (1, os.path.getmtime(tmp_path / "fs" / path)
                                                  - 7200))
            # The oid of `old` says "now": age it by its name too.
            aged = f"{box.base}/msg/{new_object_id(0)}"
            os.rename(tmp_path / "fs" / old_path, tmp_path / "fs" / aged)
            stats = await purge(store, [USER])
            assert stats["generations_deleted"] >= 1
            assert stats["chunks_deleted"] == 1 and stats["messages_deleted"] == 1
            assert stats["orphans_deleted"] == 1
            for path in (dead, chunk, aged, gone_box):
                assert not await store.fs.exists(path), path
            assert await store.fs.exists(young)
            for msg in box.state:
                assert (await box.read_message(msg)).startswith(b"From: ")
        finally:
            await store.close()

    asyncio.run(main())


def test_rotation_keeps_generations_and_purge_deletes_the_dead(tmp_path: Path) -> None:
    """Rotation deletes nothing (no requests for clean-up on the commit path); purge
    deletes the generations older than KEEP_GENERATIONS behind the newest snapshot, and a
    fresh reader still sees every message."""
    spec = f"posix:{tmp_path / 'fs'}"

    async def main() -> None:
        store = await open_store(spec, log_limit=2048)
        try:
            box = await (await store.user(USER)).mailbox("INBOX")
            for i in range(40):
                await box.save(message(i, size=100))
            snaps, logs = await box.log.list_objects()
            assert snaps[-1] > KEEP_GENERATIONS + 2, snaps
            assert snaps == list(range(1, snaps[-1] + 1)), snaps
            assert logs == list(range(1, logs[-1] + 1)), logs
            stats = await purge(store, [USER], grace=3600.0)
            assert stats["generations_deleted"] >= snaps[-1] - KEEP_GENERATIONS
            snaps, logs = await box.log.list_objects()
            assert snaps[0] == snaps[-1] - KEEP_GENERATIONS + 1, snaps
            assert logs[0] == snaps[0], (snaps, logs)
            await box.save(message(40, size=100))
        finally:
            await store.close()
        fresh = await open_store(spec)
        try:
            fbox = await (await fresh.user(USER)).mailbox("INBOX")
            assert fbox.state.exists == 41
        finally:
            await fresh.close()

    asyncio.run(main())


def test_purge_budget_resumes_and_background_purge(tmp_path: Path) -> None:
    spec = f"posix:{tmp_path / 'fs'}"

    async def main() -> None:
        store = await open_store(spec, orphan_grace=0.0)
        try:
            um = await store.user(USER)
            for name in ("A", "B", "C"):
                await um.create_mailbox(name)
                box = await um.mailbox(name)
                for i in range(3):
                    await write_sdbox(store.fs, box.base, b"x\r\n",
                                      StoredMeta(f"g{i}", box.guid, 0, 0, 3))
            # A budget of a few requests: it stops, and resumes where it stopped.
            res = await purge_user(store, USER, budget=PurgeBudget(12))
            assert res.cursor is not None and res.stats["messages_deleted"] < 9
            total = res.stats["messages_deleted"]
            for _ in range(20):
                res = await purge_user(store, USER, budget=PurgeBudget(12), resume=res.cursor)
                total += res.stats["messages_deleted"]
                if res.cursor is None:
                    break
            assert res.cursor is None and total == 9
            # The background purge does the users this process has open, in runs.
            box = await um.mailbox("A")
            await write_sdbox(store.fs, box.base, b"x\r\n", StoredMeta("g", box.guid, 0, 0, 3))
            bg = BackgroundPurge(store, interval=0.05, budget=1000)
            bg.start()
            for _ in range(200):
                if bg.runs:
                    break
                await asyncio.sleep(0.02)
            await bg.close()
            assert bg.runs >= 1
            assert [n async for n in store.fs.iter(f"{box.base}/msg/")] == []
        finally:
            await store.close()

    asyncio.run(main())


def test_purge_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[storage]\npurge_interval = 600\npurge_budget = 50\n")
    got = load_config(cfg)
    assert got.storage.purge_interval == 600 and got.storage.purge_budget == 50
    cfg.write_text("")
    default = load_config(cfg)
    assert default.storage.purge_interval == 86400 and default.storage.purge_budget == 1000
    for bad in ("purge_interval = -1", "purge_interval = 5", "purge_budget = 0"):
        cfg.write_text(f"[storage]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_config(cfg)


@pytest.mark.parametrize("interval", [600, 0])
def test_server_runs_the_background_purge(interval: int, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"data_dir = {str(tmp_path / 'data')!r}\n[storage]\n"
                   f"purge_interval = {interval}\n"
                   "[imap]\nlisten = []\n[pop3]\nlisten = []\n[lmtp]\nlisten = []\n")

    async def main() -> None:
        server = Server(load_config(cfg))
        await server.start()
        try:
            if interval:
                assert server.purger is not None and server.purger.interval == interval
                assert server.purger._task is not None and not server.purger._task.done()
            else:
                assert server.purger is None
        finally:
            await server.stop()
        if interval:
            assert server.purger is not None and server.purger._task is None

    asyncio.run(main())
