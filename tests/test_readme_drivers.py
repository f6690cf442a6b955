"""The server on each remote driver configured exactly as the README's driver table shows
(no prefix; the default or named keyspace, tables or bucket), as a new user tries it: an
MTA delivers over LMTP, the user logs in over IMAP and reads the message.

The rest of the suite also runs these forms (``conftest.README_TARGETS``) through the
libfs conformance and mail-storage tests; this is the whole path through the protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudcote.libfs import open_fs

from .conftest import README_TARGETS, driver_spec
from .imap_support import PASSWORD, ImapServer, start_server, stop_server


@pytest.fixture(params=README_TARGETS)
def readme_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImapServer]:
    srv = start_server(driver_spec(request.param, request, tmp_path))
    try:
        yield srv
    finally:
        stop_server(srv)


def test_lmtp_delivery_then_imap_login_reads_it(readme_server: ImapServer) -> None:
    srv = readme_server
    # A user of its own: the README form's namespace is shared with every other run.
    user = f"bob{uuid.uuid4().hex[:10]}@example.com"
    body = f"Hello from the README's own settings {uuid.uuid4().hex}.\r\n"
    msg = (f"From: alice@example.org\r\nTo: {user}\r\nSubject: first mail\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n{body}").encode()
    client = smtplib.LMTP(srv.host, srv.lmtp_port, timeout=60)
    try:
        assert client.ehlo("mta.example.org")[0] == 250
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt(user)[0] == 250
        code, text = client.data(msg)
        assert code == 250, text  # 451 4.3.0 when the store refuses the user's first write
    finally:
        client.quit()

    imap = srv.connect()
    try:
        typ, data = imap.login(user, PASSWORD)
        assert typ == "OK", data  # NO [UNAVAILABLE] when the store refuses it
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK" and data == [b"1"], data
        typ, data = imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        fetched = data[0]
        assert isinstance(fetched, tuple)
        raw = fetched[1]
        head, _, rest = raw.partition(b"\r\nReceived: ")
        assert head == b"Return-Path: <alice@example.org>\r\nDelivered-To: " + user.encode()
        assert rest.endswith(msg)  # after the trace header LMTP adds
        # A second login (a fresh session, the folders created at the first) sees it too.
        typ, data = imap.logout()
        assert typ == "BYE"
        again = srv.connect()
        again.login(user, PASSWORD)
        typ, data = again.status("INBOX", "(MESSAGES)")
        assert typ == "OK" and b"MESSAGES 1" in data[0], data
        again.logout()
    finally:
        with contextlib.suppress(OSError):  # already closed after a LOGOUT
            imap.shutdown()


@pytest.mark.parametrize("target", ["cassandra"])
def test_cassandra_listing_partitions_with_and_without_prefix(
    target: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The ``listing`` rows a prefixed chain writes are what they always were (a table
    written before reads the same); without a prefix, the top level is partition ``/``."""
    prefixed = driver_spec(target, request, tmp_path)
    prefix = prefixed.rpartition("prefix=")[2]
    bare = driver_spec("cassandra-readme", request, tmp_path)
    tag = f"t{uuid.uuid4().hex[:12]}"

    def names(fs: Any, d: str) -> list[str]:
        while not hasattr(fs, "session"):  # below the default retry stage: the driver
            fs = fs.parent
        rows = fs.session.execute(f"SELECT name FROM {fs.keyspace}.listing WHERE dir = %s",
                                  (d,))
        return sorted(r["name"] for r in rows)

    async def main() -> None:
        async with await open_fs(prefixed) as fs:
            await fs.write("a/b", b"1")
            await fs.write("top", b"2")
            assert names(fs, prefix) == ["a/", "top"]
            assert names(fs, f"{prefix}/a") == ["b"]
            assert sorted([p async for p in fs.iter()]) == ["a/b", "top"]
        async with await open_fs(bare) as fs:
            await fs.write(f"{tag}/b", b"1")
            await fs.write(tag, b"2")
            assert {f"{tag}/", tag} <= set(names(fs, "/"))
            assert names(fs, tag) == ["b"]
            assert sorted([p async for p in fs.iter(tag)]) == [tag, f"{tag}/b"]

    asyncio.run(main())
