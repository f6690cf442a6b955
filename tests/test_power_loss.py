"""A simulated power loss on posix: what each ``fsync`` mode may lose (docs/storage.md,
"Durability on posix").

``os.fsync`` is replaced by a recorder: a file's fsync records its bytes (by inode), a
directory's fsync records which names it holds.  The "disk after a power loss" is then
rebuilt from that record alone: a name survives only if its directory was synced while it
held it, with the bytes its file had when it was last synced (so a name whose file was
never synced comes back empty).  Directories themselves are kept.  The mailbox opened on
that copy must hold every acknowledged save and expunge; with ``fsync=optimized`` only
flag changes after the last synced commit may be missing, with ``always`` nothing.
(A SIGKILL loses nothing in any mode: tests/test_mail_storage.py invariant 1 and
tests/test_lmtp_durability.py run on the default mode.)
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import pytest

from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs import open_fs
from cloudcote.libfs.api import FsInvalidSpec

from .mailsamples import message


class SyncRecorder:
    """Stands in for ``os.fsync``: remembers what each call made durable."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: directory path -> {name: inode} at its last fsync.
        self.dirs: dict[str, dict[str, int]] = {}
        #: inode -> the file's bytes at its last fsync.
        self.files: dict[int, bytes] = {}

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        with self.lock:
            if stat.S_ISDIR(st.st_mode):
                self.dirs[path] = {e.name: e.inode() for e in os.scandir(path)
                                   if e.is_file(follow_symlinks=False)}
            else:
                with open(f"/proc/self/fd/{fd}", "rb") as f:
                    self.files[st.st_ino] = f.read()

    def power_loss(self, root: Path, dest: Path) -> None:
        """Rebuild ``root`` into ``dest`` from what was synced only."""
        real = os.path.realpath(root)
        for dirpath, dirnames, _ in os.walk(real):
            dirnames[:] = [d for d in dirnames if d != ".cloudcote-tmp"]
            out = dest / os.path.relpath(dirpath, real)
            out.mkdir(parents=True, exist_ok=True)
            for name, ino in self.dirs.get(dirpath, {}).items():
                (out / name).write_bytes(self.files.get(ino, b""))


def settings() -> StorageSettings:
    # A small log limit, so that deferred flag frames close logs too.
    return StorageSettings(poll_interval=0.05, log_limit=1024)


@pytest.mark.parametrize("mode", ["optimized", "always"])
def test_power_loss_loses_only_deferred_flags(tmp_path: Path, mode: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = SyncRecorder()
    monkeypatch.setattr(os, "fsync", recorder)
    root = tmp_path / "fs"
    # The README form for the default mode: no setting at all.
    spec = f"posix:{root}" if mode == "optimized" else f"posix:path={root},fsync={mode}"

    async def work() -> dict[int, set[str]]:
        store = MailStore(await open_fs(spec), settings())
        box = await (await store.user("ivan")).mailbox("INBOX")
        uids = [await box.save(message(i, "pl")) for i in range(3)]
        for i in range(40):  # flag frames enough to close a few logs
            await box.store([uids[i % 3]], "+-"[i % 2], [f"$k{i % 5}"])
        await box.store([uids[0]], "+", ["\\Flagged"])
        uids.append(await box.save(message(3, "pl")))  # synced: covers the flags before
        await box.expunge([uids[1]])
        await box.store([uids[2]], "+", ["\\Seen"])  # deferred: may be lost
        assert box.log.k > 2, "the flag frames closed no log"
        flags = {m.uid: set(m.flags) for m in box.state}
        await store.fs.close()
        return flags

    acked = asyncio.run(work())
    monkeypatch.undo()
    after = tmp_path / "after"
    recorder.power_loss(root, after)

    async def check() -> dict[int, set[str]]:
        store = MailStore(await open_fs(f"posix:path={after},fsync=never"), settings())
        box = await (await store.user("ivan")).mailbox("INBOX")
        assert box.log.problems == []
        got = {m.uid: set(m.flags) for m in box.state}
        for m in box.state:
            assert await box.read_message(m) == message(m.uid - 1, "pl")
        await store.fs.close()
        return got

    got = asyncio.run(check())
    assert set(got) == {1, 3, 4}  # every acknowledged save and expunge
    assert got[1] == acked[1] and got[4] == acked[4]
    if mode == "always":
        assert got[3] == acked[3]
    else:
        # The \Seen after the last synced commit was lost; all before it survived.
        assert got[3] == acked[3] - {"\\Seen"}


@pytest.mark.parametrize(("setting", "on_append", "on_sync"),
                         [("", 0, 1), (",fsync=optimized", 0, 1), (",fsync=always", 1, 0),
                          (",fsync=never", 0, 0)])
def test_posix_fsync_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str,
                           on_append: int, on_sync: int) -> None:
    """Which calls fsync: an append (past a file's first record) and ``sync``, per mode;
    ``optimized`` is the default."""
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)

    async def main() -> tuple[int, int]:
        async with await open_fs(f"posix:path={tmp_path}{setting}") as fs:
            await fs.append("a/log", b"first")
            calls.clear()
            await fs.append("a/log", b"second")
            appended = len(calls)
            await fs.sync("a/log")
            return appended, len(calls) - appended

    assert asyncio.run(main()) == (on_append, on_sync)


def test_posix_fsync_setting_checked(tmp_path: Path) -> None:
    with pytest.raises(FsInvalidSpec, match="fsync"):
        asyncio.run(open_fs(f"posix:path={tmp_path},fsync=sometimes"))
