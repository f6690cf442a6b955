"""Uncertain writes (issue 16, item 4): a store failure that may have happened after the
write took effect must neither lose an acknowledged message nor make the MTA send a
stored one again.

End to end: ``randomfail:0.05`` over each store with no ``retry`` stage named, as the
README writes chains (the driver's own settings are the suite's isolated ones, from
``conftest.driver_spec``), LMTP deliveries from several ``smtplib.LMTP`` clients at once;
then the messages stored (read back through the mail-storage API on the chain without
``randomfail``, by Message-ID) are exactly the 250-acknowledged ones, each once.  posix is
in the list as the case without a default ``retry`` stage: there the mail layer's own
resolution keeps the promise.

Unit level: the default ``retry`` stage of remote chains (where it goes, how to turn it
off), and the mail layer's resolution of a log append whose outcome is unknown.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cloudcote.core.mail.storage import MailStore, StorageSettings
from cloudcote.libfs import open_fs
from cloudcote.libfs.api import ForwardingFs, Fs, FsUnavailable

from .conftest import driver_spec
from .imap_support import run_client_threads, start_server, stop_server

#: posix first (no default retry stage: the mail layer alone), then every remote store.
E2E_STORES = ["posix", "seaweedfs", "cassandra", "postgresql", "mysql"]
DELIVERIES = 500
CLIENTS = 8
USERS = 4
DOMAIN = "example.com"
_MSGID = re.compile(rb"^message-id:[ \t]*<([^>]+)>", re.I | re.M)


def _message(msgid: str) -> bytes:
    return (f"From: sender@example.org\r\nTo: rcpt@{DOMAIN}\r\nSubject: {msgid}\r\n"
            f"Message-ID: <{msgid}>\r\n\r\nbody of {msgid}\r\n").encode()


def _deliver_all(host: str, port: int, users: list[str], run: str
                 ) -> tuple[set[tuple[str, str]], Counter[int]]:
    """Send DELIVERIES messages over CLIENTS connections; the (user, Message-ID) pairs
    answered 250, and a count of every final reply code (RCPT refusals included)."""
    acked: set[tuple[str, str]] = set()
    codes: Counter[int] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()
    todo = iter(range(DELIVERIES))

    def client_thread(n: int) -> None:
        try:
            client = smtplib.LMTP(host, port, timeout=120)
            assert client.ehlo("mta.test")[0] == 250
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    break
                msgid = f"{run}.{i}@test.cloudcote"
                # One recipient mostly; every tenth message two (one reply each).
                rcpts = [users[i % USERS]] + ([users[(i + 1) % USERS]] if i % 10 == 0 else [])
                code, text = client.mail("sender@example.org")
                assert code == 250, (code, text)
                accepted = []
                for user in rcpts:
                    code, _ = client.rcpt(user)
                    if code == 250:
                        accepted.append(user)
                    else:
                        with lock:
                            codes[code] += 1
                if not accepted:
                    client.rset()
                    continue
                replies = [client.data(_message(msgid))]
                while len(replies) < len(accepted):
                    replies.append(client.getreply())
                with lock:
                    for user, (code, _) in zip(accepted, replies, strict=True):
                        codes[code] += 1
                        if code == 250:
                            acked.add((user, msgid))
            client.quit()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    run_client_threads(client_thread, CLIENTS, errors)
    return acked, codes


async def _stored(spec: str, users: list[str]) -> Counter[tuple[str, str]]:
    """(user, Message-ID) of every message in the users' INBOXes, counted."""
    fs = await open_fs(spec)
    try:
        store = MailStore(fs, StorageSettings())
        out: Counter[tuple[str, str]] = Counter()
        for user in users:
            box = await (await store.user(user)).mailbox("INBOX")
            await box.refresh()
            for uid in box.state.uids:
                head = await box.header_block(box.state.messages[uid])
                m = _MSGID.search(head)
                assert m is not None, head
                out[(user, m.group(1).decode())] += 1
        return out
    finally:
        await fs.close()


@pytest.mark.parametrize("backend", E2E_STORES)
def test_acknowledged_deliveries_are_exactly_the_stored_ones(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    plain = driver_spec(backend, request, tmp_path)
    run = uuid.uuid4().hex[:10]
    users = [f"uw{run}{n}@{DOMAIN}" for n in range(USERS)]
    srv = start_server(f"randomfail:0.05:{plain}")
    try:
        acked, codes = _deliver_all(srv.host, srv.lmtp_port, users, run)
        injected = _injected(srv.fs)
        top = srv.fs.name
    finally:
        stop_server(srv)
    stored = asyncio.run(_stored(plain, users))
    twice = sorted(k for k, n in stored.items() if n > 1)
    lost = sorted(acked - set(stored))
    refused_but_stored = sorted(set(stored) - acked)
    summary = (f"{backend}: replies {dict(codes)}, injected {injected}; "
               f"{len(acked)} acknowledged, {len(stored)} stored, "
               f"{len(refused_but_stored)} stored without a 250, {len(lost)} lost")
    print(summary)
    assert sum(injected.values()) > 0, summary  # the failures really happened
    assert not twice, f"{summary}; stored twice: {twice[:5]}"
    assert not refused_but_stored, f"{summary}: e.g. {refused_but_stored[:5]}"
    assert not lost, f"{summary}: e.g. {lost[:5]}"
    if backend != "posix":
        # The default retry stage, above randomfail: a failure that 8 attempts with
        # backoff do not get past is not to be expected at 5 %, so no MTA has to retry.
        assert top == "retry", summary
        assert set(codes) == {250}, summary


def _injected(fs: Any) -> Mapping[str, int]:
    stage = fs
    while stage is not None:
        if getattr(stage, "name", "") == "randomfail":
            return dict(stage.injected)
        stage = getattr(stage, "parent", None)
    raise AssertionError("no randomfail stage in the chain")


# --- the default retry stage ---------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    # README forms of the remote drivers: retry on top.
    ("s3:bucket=mail,endpoint=http://127.0.0.1:8333",
     ["retry", "s3"]),
    ("cassandra:127.0.0.1:9042,keyspace=mail", ["retry", "cassandra"]),
    ("postgresql:postgresql://u:p@db:5432/mail", ["retry", "postgresql"]),
    ("mysql:mysql://u:p@db:3306/mail", ["retry", "mysql"]),
    # Above every wrapper, randomfail's injected failures included.
    ("compress:zstd:randomfail:0.05:s3:bucket=mail", ["retry", "compress", "randomfail", "s3"]),
    # Where the chain names one, it stays where it is and no second one is added.
    ("compress:zstd:retry:attempts=3:s3:bucket=mail", ["compress", "retry", "s3"]),
    # attempts=0 turns it off.
    ("retry:attempts=0:randomfail:0.05:s3:bucket=mail", ["randomfail", "s3"]),
    ("retry:0:cassandra:127.0.0.1:9042", ["cassandra"]),
    # A local driver gets none.
    ("posix:/var/mail", ["posix"]),
    ("randomfail:0.05:posix:/var/mail", ["randomfail", "posix"]),
])
def test_remote_chains_get_the_retry_stage_by_default(spec: str, expected: list[str]) -> None:
    from cloudcote.libfs.chain import parse_chain, with_defaults

    assert [name for name, _ in with_defaults(parse_chain(spec))] == expected


def test_default_retry_in_a_table_chain_and_turned_off_when_opened(tmp_path: Path) -> None:
    from cloudcote.libfs.chain import REGISTRY, REMOTE_DRIVERS, WRAPPERS, parse_chain, with_defaults
    from cloudcote.libfs.posix import PosixFs

    # Every driver but the local one is remote: a new driver must say which it is.
    assert set(REGISTRY) - WRAPPERS - {"posix"} == REMOTE_DRIVERS

    table = [{"stage": "metrics"}, {"stage": "s3", "bucket": "mail"}]
    assert [n for n, _ in with_defaults(parse_chain(table))] == ["retry", "metrics", "s3"]

    async def main() -> None:
        async with await open_fs(f"retry:attempts=0:posix:{tmp_path}") as fs:
            assert isinstance(fs, PosixFs)

    asyncio.run(main())


def test_retry_checks_a_write_whose_last_attempt_failed(tmp_path: Path) -> None:
    """Every create and append takes effect and then reports a failure, and there is no
    attempt left: the stage still finds each one (and reports a create or append that
    really did not happen as failed)."""

    async def main() -> None:
        spec = f"retry:attempts=1:randomfail:write=1,append=1,after=1:posix:{tmp_path}"
        async with await open_fs(spec) as fs:
            await fs.write("obj", b"data")
            assert await fs.append("log", b"rec 1\n") == 0
            assert await fs.append("log", b"rec 2\n") == 6
        async with await open_fs(f"posix:{tmp_path}") as plain:
            assert await plain.read("obj") == b"data"
            assert await plain.read("log") == b"rec 1\nrec 2\n"
        spec = f"retry:attempts=2:randomfail:write=1,append=1,after=0:posix:{tmp_path}"
        async with await open_fs(spec) as fs:
            with pytest.raises(FsUnavailable):
                await fs.write("obj2", b"data")
            with pytest.raises(FsUnavailable):
                await fs.append("log", b"rec 3\n")

    asyncio.run(main())


# --- the mail layer settles a commit that failed --------------------------------------------


class LogAppendFails(ForwardingFs):
    """The next ``fail`` appends to a mailbox's transaction log fail: ``after`` the store
    took them (else before); so do the next ``reads`` reads of a log."""

    name = "logappendfails"

    def __init__(self, parent: Fs) -> None:
        super().__init__(parent)
        self.fail = 0
        self.after = True
        self.reads = 0
        self.failed = 0

    async def append(self, path: str, data: bytes) -> int:
        if self.fail and "/mbox/" in path and "/index/log." in path:
            self.fail -= 1
            self.failed += 1
            if self.after:
                await self.parent.append(path, data)
            raise FsUnavailable("injected failure", path=path, op="append")
        return await self.parent.append(path, data)

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        if self.reads and "/index/log." in path:
            self.reads -= 1
            raise FsUnavailable("injected failure", path=path, op="read")
        return await self.parent.read_range(path, start, end)


async def _inbox(tmp_path: Path) -> tuple[LogAppendFails, Any]:
    fs = LogAppendFails(await open_fs(f"posix:path={tmp_path},fsync=never"))
    store = MailStore(fs, StorageSettings())
    box = await (await store.user("settle@example.com")).mailbox("INBOX")
    await box.save(_message("first@test"))
    return fs, box


async def _msgids(box: Any) -> list[str]:
    await box.refresh()
    out = []
    for uid in box.state.uids:
        m = _MSGID.search(await box.header_block(box.state.messages[uid]))
        assert m is not None
        out.append(m.group(1).decode())
    return out


@pytest.mark.parametrize("after", [True, False], ids=["after", "before"])
def test_a_failed_log_append_is_settled_not_reported(after: bool, tmp_path: Path) -> None:
    """Five concurrent saves go out as one frame whose append fails (after or before the
    store took it): each save gets its UID, and each message is there once."""

    async def main() -> None:
        fs, box = await _inbox(tmp_path)
        fs.fail, fs.after = 1, after
        uids = await asyncio.gather(*(box.save(_message(f"m{i}@test")) for i in range(5)))
        assert fs.failed == 1
        assert sorted(uids) == list(range(2, 7))
        assert sorted(await _msgids(box)) == ["first@test"] + [f"m{i}@test" for i in range(5)]
        await fs.close()

    asyncio.run(main())


def test_a_failed_commit_is_settled_once_the_log_reads_again(tmp_path: Path) -> None:
    """The store is down for a moment: the append fails and so do the next reads of the
    log; once it reads again the save is settled.  Down for good, nothing can tell whether
    the record landed: the save fails (the MTA will try again) rather than claim either."""
    from cloudcote.core.mail.errors import StorageUnavailable

    async def main() -> None:
        fs, box = await _inbox(tmp_path)
        fs.fail, fs.after, fs.reads = 1, True, 3
        assert await box.save(_message("later@test")) == 2
        assert fs.reads == 0
        fs.fail, fs.after, fs.reads = 100, False, 1000
        with pytest.raises(StorageUnavailable):
            await box.save(_message("lost@test"))
        fs.fail, fs.reads = 0, 0
        assert await _msgids(box) == ["first@test", "later@test"]
        await fs.close()

    asyncio.run(main())
