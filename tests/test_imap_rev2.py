"""SEARCHRES (RFC 5182), CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267), IMAP4rev2 (RFC 9051)
and UNAUTHENTICATE (RFC 8437), through the real server with raw commands over imaplib's
connection, on every IMAP backend."""

from __future__ import annotations

import imaplib
from collections.abc import Iterator

import pytest

from .imap_support import IMAP_BACKENDS, PASSWORD, ImapServer, server_fixture
from .test_imap import (
    Clients,
    Reply,
    bad,
    clients_of,
    fetches,
    fill,
    list_of,
    lit,
    message,
    no,
    ok,
    select,
    status_of,
)


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def rev2_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(request, tmp_path_factory.mktemp("imaprev2"))


@pytest.fixture
def imap(rev2_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(rev2_server)


def esearch(reply: Reply) -> list[str]:
    """The ESEARCH lines of a reply, without the ``* ESEARCH `` prefix."""
    return [x.decode() for x in reply.untagged("ESEARCH")]


def uids_of(reply: Reply) -> list[int]:
    return sorted(int(f["UID"]) for _, f in fetches(reply))


def seqs_of(reply: Reply) -> list[int]:
    return sorted(s for s, _ in fetches(reply))


def mailbox_with(m: imaplib.IMAP4, n: int) -> list[int]:
    uids = fill(m, "INBOX", n)
    select(m)
    return uids


# -- SEARCHRES -------------------------------------------------------------------------------


def test_searchres_saves_and_reuses(imap: Clients) -> None:
    m = imap.login()
    caps = ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    assert b"SEARCHRES" in caps
    mailbox_with(m, 6)
    ok(m, "STORE 2,4,5 +FLAGS (\\Flagged)")
    # SAVE alone answers nothing but the tagged OK.
    r = ok(m, "SEARCH RETURN (SAVE) FLAGGED")
    assert r.untagged("ESEARCH") == [] and r.untagged("SEARCH") == []
    assert seqs_of(ok(m, "FETCH $ (FLAGS)")) == [2, 4, 5]
    assert uids_of(ok(m, "UID FETCH $ (FLAGS)")) == [2, 4, 5]
    ok(m, "STORE $ +FLAGS.SILENT (\\Seen)")
    r = ok(m, "SEARCH RETURN (ALL) SEEN")
    assert esearch(r) == [f'(TAG "{r.tag.decode()}") ALL 2,4:5']
    # $ inside search criteria, bare and after UID, and inside OR.
    r = ok(m, "SEARCH $ NOT 4")
    assert r.untagged("SEARCH") == [b"2 5"]
    r = ok(m, "UID SEARCH OR UID $ 1")
    assert r.untagged("SEARCH") == [b"1 2 4 5"]
    # COPY of $; then with SAVE and other options the ESEARCH still comes.
    ok(m, "CREATE Saved")
    ok(m, "COPY $ Saved")
    assert status_of(ok(m, "STATUS Saved (MESSAGES)"))["MESSAGES"] == 3
    r = ok(m, "SEARCH RETURN (SAVE COUNT) UNFLAGGED")
    assert [line.split(") ", 1)[1] for line in esearch(r)] == ["COUNT 3"]
    assert seqs_of(ok(m, "FETCH $ (UID)")) == [1, 3, 6]


def test_searchres_min_max(imap: Clients) -> None:
    m = imap.login()
    mailbox_with(m, 5)
    ok(m, "SEARCH RETURN (SAVE MIN) 2:4")
    assert seqs_of(ok(m, "FETCH $ (UID)")) == [2]
    r = ok(m, "SEARCH RETURN (SAVE MIN MAX) 2:4")
    assert [line.split(") ", 1)[1] for line in esearch(r)] == ["MIN 2 MAX 4"]
    assert seqs_of(ok(m, "FETCH $ (UID)")) == [2, 4]
    ok(m, "SEARCH RETURN (MAX SAVE) 2:4")
    assert seqs_of(ok(m, "FETCH $ (UID)")) == [4]
    # SORT saves its result too; the saved set is a set (no order).
    ok(m, "SORT RETURN (SAVE) (REVERSE ARRIVAL) UTF-8 1:3")
    assert seqs_of(ok(m, "FETCH $ (UID)")) == [1, 2, 3]


def test_searchres_emptied_by_failure_select_and_expunge(imap: Clients) -> None:
    m = imap.login()
    mailbox_with(m, 4)
    ok(m, "SEARCH RETURN (SAVE) 1:3")
    # A failing SEARCH with SAVE leaves $ empty: FETCH $ is OK and returns nothing.
    no(m, "SEARCH RETURN (SAVE) CHARSET X-UNKNOWN SUBJECT x", "BADCHARSET")
    assert fetches(ok(m, "FETCH $ (UID)")) == []
    assert ok(m, "SEARCH $").untagged("SEARCH") == [b""]
    # An expunged message leaves $; the others keep their (new) sequence numbers.
    ok(m, "SEARCH RETURN (SAVE) 2:3")
    ok(m, "STORE 2 +FLAGS.SILENT (\\Deleted)")
    ok(m, "EXPUNGE")
    assert uids_of(ok(m, "FETCH $ (UID)")) == [3]
    assert seqs_of(ok(m, "FETCH $ (UID)")) == [2]
    # SELECT starts with an empty $.
    ok(m, "SEARCH RETURN (SAVE) ALL")
    select(m)
    assert fetches(ok(m, "FETCH $ (UID)")) == []


# -- CONTEXT=SEARCH / CONTEXT=SORT ---------------------------------------------------------------


def test_partial_results(imap: Clients) -> None:
    m = imap.login()
    caps = ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    assert b"CONTEXT=SEARCH" in caps and b"CONTEXT=SORT" in caps
    for subject in ("delta", "alpha", "echo", "charlie", "bravo"):
        ok(m, b"APPEND INBOX " + lit(message(subject)))
    select(m)
    r = ok(m, "SEARCH RETURN (PARTIAL 2:3) ALL")
    assert esearch(r)[0].endswith(" PARTIAL (2:3 2:3)")
    r = ok(m, "UID SEARCH RETURN (PARTIAL 4:10 COUNT) ALL")
    assert esearch(r)[0].split(") ", 1)[1] == "UID COUNT 5 PARTIAL (4:10 4:5)"
    r = ok(m, "SEARCH RETURN (PARTIAL 7:9) ALL")
    assert esearch(r)[0].endswith(" PARTIAL (7:9 NIL)")
    # In SORT, the positions are those of the sorted result.
    r = ok(m, "SORT RETURN (PARTIAL 1:3) (SUBJECT) UTF-8 ALL")
    assert esearch(r)[0].endswith(" PARTIAL (1:3 2,5,4)")
    r = ok(m, "SORT RETURN (PARTIAL 1:4 MIN) (REVERSE SUBJECT) UTF-8 ALL")
    assert esearch(r)[0].split(") ", 1)[1] == "MIN 3 PARTIAL (1:4 3,1,4:5)"
    bad(m, "SEARCH RETURN (PARTIAL 1:2 ALL) ALL")
    bad(m, "SEARCH RETURN (PARTIAL 0:2) ALL")
    bad(m, "SEARCH RETURN (PARTIAL x) ALL")


def _updates(reply: Reply, tag: bytes) -> list[str]:
    out = []
    for line in esearch(reply):
        head, _, rest = line.partition(") ")
        if head == f'(TAG "{tag.decode()}"':
            out.append(rest)
    return out


def test_search_updates(imap: Clients) -> None:
    m = imap.login()
    other = imap.login(imap.user_of(m))
    mailbox_with(m, 4)
    ok(m, "STORE 1 +FLAGS.SILENT (\\Seen)")
    first = ok(m, "SEARCH RETURN (UPDATE ALL) UNSEEN")
    assert _updates(first, first.tag) == ["ALL 2:4"]
    # UPDATE alone: an ESEARCH with the tag only.
    r = ok(m, "SEARCH RETURN (UPDATE) DRAFT")
    assert esearch(r) == [f'(TAG "{r.tag.decode()}")']
    ok(m, f'CANCELUPDATE "{r.tag.decode()}"')
    second = ok(m, "UID SEARCH RETURN (COUNT UPDATE CONTEXT) FLAGGED")
    assert _updates(second, second.tag) == ["UID COUNT 0"]
    # Another session: a new message, \Seen on 2, \Flagged on 3.
    select(other)
    ok(other, b"APPEND INBOX " + lit(message("new one")))
    ok(other, "STORE 2 +FLAGS.SILENT (\\Seen)")
    ok(other, "STORE 3 +FLAGS.SILENT (\\Flagged)")
    r = ok(m, "NOOP")
    assert _updates(r, first.tag) == ["REMOVEFROM (0 2)", "ADDTO (0 5)"]
    assert _updates(r, second.tag) == ["UID ADDTO (0 3)"]
    # The session's own STORE reports at once.
    r = ok(m, "STORE 4 +FLAGS.SILENT (\\Seen)")
    assert _updates(r, first.tag) == ["REMOVEFROM (0 4)"]
    # An expunged message leaves the result with its number before the EXPUNGE.
    ok(other, "STORE 3 +FLAGS.SILENT (\\Deleted)")
    ok(other, "EXPUNGE")
    r = ok(m, "NOOP")
    assert r.untagged("EXPUNGE") == [b"3"]
    assert _updates(r, first.tag) == ["REMOVEFROM (0 3)"]
    assert _updates(r, second.tag) == ["UID REMOVEFROM (0 3)"]
    # CANCELUPDATE ends the updates of one search.
    ok(m, f'CANCELUPDATE "{first.tag.decode()}"')
    ok(other, b"APPEND INBOX " + lit(message("another")))
    ok(other, "STORE 1 +FLAGS.SILENT (\\Flagged)")
    r = ok(m, "NOOP")
    assert _updates(r, first.tag) == []
    assert _updates(r, second.tag) == ["UID ADDTO (0 1)"]
    assert _updates(r, first.tag) == []
    # SELECT ends them all.
    select(m)
    ok(other, "STORE 2 +FLAGS.SILENT (\\Flagged)")
    r = ok(m, "NOOP")
    assert r.untagged("ESEARCH") == []


def test_sort_updates_with_positions(imap: Clients) -> None:
    m = imap.login()
    other = imap.login(imap.user_of(m))
    for subject in ("bravo", "delta", "foxtrot"):
        ok(m, b"APPEND INBOX " + lit(message(subject)))
    select(m)
    srt = ok(m, "UID SORT RETURN (ALL UPDATE) (SUBJECT) UTF-8 UNDELETED")
    assert _updates(srt, srt.tag) == ["UID ALL 1:3"]
    select(other)
    ok(other, b"APPEND INBOX " + lit(message("alpha")))
    ok(other, b"APPEND INBOX " + lit(message("echo")))
    ok(other, "UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    r = ok(m, "NOOP")
    # delta (position 2) leaves; alpha goes first, echo between bravo and foxtrot.
    assert _updates(r, srt.tag) == ["UID REMOVEFROM (2 2)", "UID ADDTO (1 4 3 5)"]


def test_too_many_contexts(imap: Clients) -> None:
    m = imap.login()
    mailbox_with(m, 1)
    for _ in range(16):
        r = ok(m, "SEARCH RETURN (COUNT UPDATE) ALL")
        assert "NOUPDATE" not in " ".join(r.codes())
    r = ok(m, "SEARCH RETURN (COUNT UPDATE) ALL")
    assert any(c.startswith("NOUPDATE ") for c in r.codes())


# -- IMAP4rev2 --------------------------------------------------------------------------------


def test_rev2_enable_and_select(imap: Clients) -> None:
    m = imap.login()
    assert b"IMAP4rev2" in ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    fill(m, "INBOX", 3)
    r = ok(m, "ENABLE IMAP4rev2")
    assert r.untagged("ENABLED") == [b"IMAP4rev2"]
    r = select(m)
    assert r.untagged("RECENT") == []
    assert not any(c.startswith("UNSEEN") for c in r.codes())
    assert list_of(r) == {"INBOX": []}
    assert b"3" in [x.strip() for x in r.untagged("EXISTS")]
    # SEARCH answers ESEARCH.
    r = ok(m, "SEARCH 2:3")
    assert r.untagged("SEARCH") == [] and esearch(r)[0].endswith(" ALL 2:3")
    r = ok(m, "UID SEARCH ALL")
    assert esearch(r)[0].split(") ", 1)[1] == "UID ALL 1:3"
    # New mail: EXISTS, no RECENT, no \Recent.
    other = imap.login(imap.user_of(m))
    ok(other, b"APPEND INBOX " + lit(message("new")))
    r = ok(m, "NOOP")
    assert r.untagged("EXISTS") == [b"4"] and r.untagged("RECENT") == []
    got = dict(fetches(ok(m, "FETCH 4 (FLAGS)")))
    assert "\\Recent" not in got[4]["FLAGS"]
    r = ok(m, "SEARCH RECENT")
    assert esearch(r) == [f'(TAG "{r.tag.decode()}")']


def test_rev2_utf8_mailbox_names(imap: Clients) -> None:
    m = imap.login()
    rev1 = imap.login(imap.user_of(m))
    ok(m, "ENABLE IMAP4rev2")
    name = "Entwürfe/Übersicht"
    ok(m, f'CREATE "{name}"'.encode())
    r = ok(m, 'LIST "" "Entw*"')
    assert set(list_of(r)) == {"Entwürfe", name}
    r = ok(m, f'STATUS "{name}" (MESSAGES)'.encode())
    assert r.untagged("STATUS")[0].startswith(f'"{name}"'.encode())
    # The same mailboxes, to an IMAP4rev1 client, in modified UTF-7.
    r = ok(rev1, 'LIST "" "Entw*"')
    assert set(list_of(r)) == {"Entw&APw-rfe", "Entw&APw-rfe/&ANw-bersicht"}
    ok(rev1, 'SELECT "Entw&APw-rfe/&ANw-bersicht"')
    r = ok(m, f'SELECT "{name}"'.encode())
    assert list_of(r) == {name: []}
    # Modified UTF-7 is not decoded under IMAP4rev2: that name is another mailbox.
    no(m, 'SELECT "Entw&APw-rfe"', "NONEXISTENT")


def test_status_deleted(imap: Clients) -> None:
    m = imap.login()
    mailbox_with(m, 4)
    ok(m, "STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    r = ok(m, "STATUS INBOX (MESSAGES DELETED)")
    assert status_of(r) == {"MESSAGES": 4, "DELETED": 2}


def test_unauthenticate(imap: Clients) -> None:
    m = imap.login()
    assert b"UNAUTHENTICATE" in ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    mailbox_with(m, 2)
    ok(m, "ENABLE IMAP4rev2")
    ok(m, "UNAUTHENTICATE")
    bad(m, "SELECT INBOX")
    caps = ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    assert b"AUTH=PLAIN" in caps
    # A new login, as another user, starts from scratch (no IMAP4rev2 any more).
    user = imap.user()
    ok(m, f"LOGIN {user} {PASSWORD}")
    r = select(m)
    assert r.untagged("EXISTS") == [b"0"] and r.untagged("RECENT") == [b"0"]
    bad(imap.connect(), "UNAUTHENTICATE")


def test_searchres_expands_in_sequence_sets_only() -> None:
    from cloudcote.protocols.imap.search_args import expand_saved as _expand_saved
    assert _expand_saved(["$", "SEEN"], [1, 2, 3]) == [["UID", "1:3"], "SEEN"]
    assert _expand_saved(["UID", "$"], [5]) == [["UID", "5"]]
    assert _expand_saved(["KEYWORD", "$", "$"], []) == ["KEYWORD", "$", ["NOT", "ALL"]]
    assert _expand_saved(["OR", ["$"], "BODY", "$"], [2]) == [
        "OR", [["UID", "2"]], "BODY", "$"]
