"""NOTIFY (RFC 5465) through the real server: unsolicited responses that reach a client
between its commands and during IDLE, for the selected mailbox and for others, on every
IMAP backend."""

from __future__ import annotations

import imaplib
import re
import socket
from collections.abc import Iterator

import pytest

from cloudcote.core.mail.storage import StorageSettings

from .imap_support import IMAP_BACKENDS, ImapServer, server_fixture
from .test_imap import Clients, bad, clients_of, lit, message, no, ok, read_response, select


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def notify_server(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(request, tmp_path_factory.mktemp("imapnotify"),
                              settings=StorageSettings(poll_interval=0.3))


@pytest.fixture
def imap(notify_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(notify_server)


def unsolicited(m: imaplib.IMAP4, want: int, timeout: float = 15.0) -> list[bytes]:
    """The next ``want`` untagged lines the server sends of its own accord."""
    m.sock.settimeout(timeout)
    try:
        return [read_response(m) for _ in range(want)]
    finally:
        m.sock.settimeout(None)


def nothing_more(m: imaplib.IMAP4, wait: float = 1.0) -> None:
    m.sock.settimeout(wait)
    try:
        with pytest.raises((socket.timeout, TimeoutError)):
            line = m.readline()
            raise AssertionError(f"unexpected {line!r}")
    finally:
        m.sock.settimeout(None)


def test_notify_grammar_and_events(imap: Clients) -> None:
    m = imap.login()
    assert b"NOTIFY" in ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    # For the selected mailbox, MessageNew and MessageExpunge together; FlagChange needs
    # both.  Other mailboxes may ask for any of them alone.
    bad(m, "NOTIFY SET (SELECTED (MessageNew))")
    bad(m, "NOTIFY SET (SELECTED (FlagChange))")
    ok(m, "NOTIFY SET (PERSONAL (FlagChange))")
    bad(m, "NOTIFY SET (NOWHERE (MessageNew MessageExpunge))")
    bad(m, "NOTIFY SET (PERSONAL (MessageNew (UID) MessageExpunge))")
    bad(m, "NOTIFY SET")
    bad(m, "NOTIFY")
    r = no(m, "NOTIFY SET (PERSONAL (MailboxMetadataChange))", "BADEVENT")
    assert "MessageNew" in (r.code() or "")
    ok(m, "NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge)) "
          "(SUBTREE (INBOX Archive) (MessageNew MessageExpunge FlagChange)) "
          "(MAILBOXES Work NONE) (SUBSCRIBED (MailboxName))")
    ok(m, "NOTIFY NONE")


def test_notify_status_at_set(imap: Clients) -> None:
    m = imap.login()
    ok(m, "CREATE Work")
    ok(m, b"APPEND Work " + lit(message("one")))
    r = ok(m, "NOTIFY SET STATUS (PERSONAL (MessageNew MessageExpunge))")
    lines = r.untagged("STATUS")
    assert any(x.startswith(b"Work (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ") for x in lines), lines
    assert any(x.startswith(b"INBOX (MESSAGES 0 ") for x in lines), lines
    # What STATUS carries follows the events (as Dovecot sends it).
    r = ok(m, "NOTIFY SET STATUS (MAILBOXES Work (MessageExpunge))")
    assert r.untagged("STATUS") == [b"Work (MESSAGES 1)"]
    r = ok(m, "NOTIFY SET STATUS (MAILBOXES Work (FlagChange))")
    (line,) = r.untagged("STATUS")
    assert re.fullmatch(rb"Work \(UIDVALIDITY \d+ HIGHESTMODSEQ \d+ UNSEEN 1\)", line), line
    r = ok(m, "NOTIFY SET (MAILBOXES Work (MessageNew MessageExpunge FlagChange))")
    assert r.untagged("STATUS") == []


def test_notify_selected_and_other_mailboxes(imap: Clients) -> None:
    m = imap.login()
    other = imap.login(imap.user_of(m))
    ok(m, "CREATE Work")
    select(m)
    ok(m, "NOTIFY SET (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) "
          "MessageExpunge FlagChange)) (PERSONAL (MessageNew MessageExpunge MailboxName "
          "SubscriptionChange))")
    # New mail in the selected mailbox: EXISTS, RECENT, then the asked-for attributes.
    ok(other, b"APPEND INBOX " + lit(message("pushed")))
    got = unsolicited(m, 3)
    assert got[0] == b"* 1 EXISTS"
    assert got[1] == b"* 1 RECENT"
    assert got[2].startswith(b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] ")
    assert b"Subject: pushed" in got[2]
    # A flag change and an expunge in the selected mailbox.
    select(other)
    ok(other, "STORE 1 +FLAGS.SILENT (\\Flagged)")
    (flags,) = unsolicited(m, 1)
    assert flags.startswith(b"* 1 FETCH (FLAGS (") and b"\\Flagged" in flags
    ok(other, "STORE 1 +FLAGS.SILENT (\\Deleted)")
    unsolicited(m, 1)
    ok(other, "EXPUNGE")
    assert unsolicited(m, 1) == [b"* 1 EXPUNGE"]
    # Another mailbox: its STATUS.
    ok(other, b"APPEND Work " + lit(message("for work")))
    (status,) = unsolicited(m, 1)
    assert status.startswith(b"* STATUS Work (MESSAGES 1 UIDNEXT 2 ")
    # Mailbox names: created, renamed, deleted; subscriptions.
    ok(other, "CREATE Projects")
    assert unsolicited(m, 1) == [b'* LIST () "/" Projects']
    ok(other, "RENAME Projects Plans")
    assert unsolicited(m, 1) == [b'* LIST () "/" Plans ("OLDNAME" (Projects))']
    ok(other, "SUBSCRIBE Plans")
    assert unsolicited(m, 1) == [b'* LIST (\\Subscribed) "/" Plans']
    ok(other, "DELETE Plans")
    got = unsolicited(m, 1)
    assert got == [b'* LIST (\\NonExistent) "/" Plans']
    # The client's commands go on as usual in between.
    ok(m, "NOOP")
    ok(m, "NOTIFY NONE")
    ok(other, b"APPEND Work " + lit(message("quiet")))
    nothing_more(m)


def test_notify_during_idle(imap: Clients) -> None:
    m = imap.login()
    other = imap.login(imap.user_of(m))
    ok(m, "CREATE Lists")
    select(m)
    ok(m, "NOTIFY SET (MAILBOXES Lists (MessageNew MessageExpunge))")
    m.send(b"I1 IDLE\r\n")
    assert m.readline().startswith(b"+ ")
    ok(other, b"APPEND Lists " + lit(message("list mail")))
    (status,) = unsolicited(m, 1)
    assert status.startswith(b"* STATUS Lists (MESSAGES 1 UIDNEXT 2 ")
    # SELECTED is not named: the selected mailbox still reports during IDLE.
    ok(other, b"APPEND INBOX " + lit(message("inbox mail")))
    assert unsolicited(m, 2) == [b"* 1 EXISTS", b"* 1 RECENT"]
    m.send(b"DONE\r\n")
    assert read_response(m).startswith(b"I1 OK")
