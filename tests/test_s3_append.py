"""The S3 driver's append to a log whose tail it knows: the segment PUT and the HEAD that
checks the log's generation go together (one round trip), and a segment that went to a
generation deleted meanwhile is never counted (docs/libfs.md, S3 append logs)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cloudcote.backends.s3.driver import S3Fs
from cloudcote.libfs.api import Fs
from cloudcote.libfs.chain import open_fs

from .conftest import driver_spec

TARGETS = ["seaweedfs", "moto"]


def _driver(fs: Fs) -> S3Fs:
    while not isinstance(fs, S3Fs):
        fs = fs.parent  # type: ignore[attr-defined]
    return fs


@pytest.mark.parametrize("target", TARGETS)
def test_known_log_append_is_one_round_trip(target: str, request: pytest.FixtureRequest,
                                            tmp_path: Path) -> None:
    spec = driver_spec(target, request, tmp_path)

    async def main() -> None:
        fs = await open_fs(spec)
        try:
            s3 = _driver(fs)
            await fs.append("box/log", b"head")
            await fs.append("box/log", b"one")
            real = s3._call
            in_flight = 0
            most = 0
            ops: list[str] = []

            async def counted(method: str, *args: Any, **kw: Any) -> Any:
                nonlocal in_flight, most
                ops.append(method)
                in_flight += 1
                most = max(most, in_flight)
                try:
                    await asyncio.sleep(0.05)  # both are sent before either is answered
                    return await real(method, *args, **kw)
                finally:
                    in_flight -= 1

            s3._call = counted  # type: ignore[method-assign]
            assert await fs.append("box/log", b"two") == 7
            s3._call = real  # type: ignore[method-assign]
            assert sorted(ops) == ["head_object", "put_object"], ops
            assert most == 2, ops
            assert await fs.read("box/log") == b"headonetwo"
        finally:
            await fs.close()

    asyncio.run(main())


@pytest.mark.parametrize("target", TARGETS)
def test_append_after_the_log_was_deleted_elsewhere(target: str,
                                                    request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    """Another process deletes the log and starts it again: this process's next append,
    sent to the generation it knew, lands in the new log, and nothing of it stays in the
    dead generation."""
    spec = driver_spec(target, request, tmp_path)

    async def main() -> None:
        fs = await open_fs(spec)
        other = await open_fs(spec)
        try:
            await fs.append("box/log", b"head")
            await fs.append("box/log", b"one")
            s3 = _driver(fs)
            old_gen = s3._logs["box/log"].gen
            await other.delete("box/log")
            await other.append("box/log", b"HEAD")
            assert await fs.append("box/log", b"two") == 4
            assert await fs.read("box/log") == b"HEADtwo"
            assert await other.read("box/log") == b"HEADtwo"
            dead = s3._seg_prefix("box/log", old_gen)
            page = await s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=dead)
            assert not page.get("Contents"), page.get("Contents")
        finally:
            await other.close()
            await fs.close()

    asyncio.run(main())
