"""A writer stalled across more than the kept log generations never has a change
acknowledged that the log other processes follow does not hold (docs/storage.md, the
transaction log).

The stalled process is a second ``MailStore`` on the same chain whose appends to the
mailbox's index log wait at a gate (a paused process, in-process): the save is issued,
its append is held while another store saves enough to rotate the log more than
``KEEP_GENERATIONS`` times and purges (so the log the stalled append names is deleted),
then the append goes through.  Whatever the stalled save acknowledges must be what a fresh store
reads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cloudcote.core.mail import txlog
from cloudcote.core.mail.resync import purge
from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs.api import ForwardingFs
from cloudcote.libfs.chain import open_fs

from .conftest import driver_spec
from .mailsamples import message

TARGETS = ["posix", "seaweedfs", "cassandra", "postgresql"]


class GatedFs(ForwardingFs):
    """Holds appends to index logs while ``closed`` is set (the process is paused just
    before its append reaches the store)."""

    name = "gated"

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.open = asyncio.Event()
        self.open.set()
        self.held = asyncio.Event()

    def describe(self) -> str:
        return f"gated:{self.parent.describe()}"

    async def append(self, path: str, data: bytes) -> int:
        if "/index/log." in path and not self.open.is_set():
            self.held.set()
            await self.open.wait()
        return await self.parent.append(path, data)


def _settings(limit: int) -> StorageSettings:
    return StorageSettings(layout="sdbox", log_limit=limit, poll_interval=0.05,
                           orphan_grace=0.0, quota_refresh=0.0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("where", ["log-start", "mid-log"])
def test_stalled_writer_across_rotations(target: str, where: str,
                                         request: pytest.FixtureRequest,
                                         tmp_path: Path) -> None:
    """``log-start``: the stalled writer's view is the very start of a log (every frame
    closes its log); ``mid-log``: it is inside a log that other frames already hold."""
    spec = driver_spec(target, request, tmp_path)
    # A limit below one frame makes every frame close its log; a larger one leaves room
    # for a few frames per log.
    limit = 1 if where == "log-start" else 2500

    async def main() -> None:
        live = MailStore(await open_fs(spec), _settings(limit), owns_fs=True)
        gate = GatedFs(await open_fs(spec))
        stalled = MailStore(gate, _settings(limit), owns_fs=True)
        try:
            box = await (await live.user("sam")).mailbox("INBOX")
            for i in range(3):
                await box.save(message(i, "live"))
            sbox = await (await stalled.user("sam")).mailbox("INBOX")
            await sbox.refresh()
            k0, off0 = sbox.log.k, sbox.log.offset
            assert (off0 == 0) == (where == "log-start"), (k0, off0)

            gate.open.clear()
            pending = asyncio.create_task(sbox.save(message(100, "stalled")))
            await asyncio.wait_for(gate.held.wait(), 30)
            i = 3
            # Rotate until the stalled writer's log is dead, and purge it (rotation
            # deletes nothing; the grace keeps the stalled save's young message object).
            while box.log.k <= k0 + txlog.KEEP_GENERATIONS + 1:
                await box.save(message(i, "live"))
                i += 1
            await purge(live, ["sam"], grace=3600.0)
            snaps, logs = await box.log.list_objects()
            assert k0 not in logs and snaps[0] > k0, (k0, snaps, logs)
            gate.open.set()
            outcome: Any
            try:
                outcome = await asyncio.wait_for(pending, 60)
            except Exception as exc:  # noqa: BLE001 - an honest failure is allowed
                outcome = exc
            # More changes after the stalled one, from both sides.
            await box.save(message(i, "live"))
            if isinstance(outcome, int):
                await sbox.save(message(101, "stalled"))

            fresh = MailStore(await open_fs(spec), _settings(limit), owns_fs=True)
            try:
                fbox = await (await fresh.user("sam")).mailbox("INBOX")
                seen = {m.uid: bytes(await fbox.read_message(m)) for m in fbox.state}
            finally:
                await fresh.close()
            assert not isinstance(outcome, BaseException), \
                f"the stalled save failed: {outcome!r}"
            # Acknowledged means readable by everyone, under the UID it was given.
            assert outcome in seen, (outcome, sorted(seen))
            assert seen[outcome] == message(100, "stalled")
            assert sum(1 for v in seen.values() if b"stalled" in v) == 2
            assert sum(1 for v in seen.values() if b"live" in v) == i + 1
            # The stalled store agrees with the fresh reader.
            await sbox.refresh()
            assert sorted(m.uid for m in sbox.state) == sorted(seen)
        finally:
            gate.open.set()
            await stalled.close()
            await live.close()

    asyncio.run(main())
