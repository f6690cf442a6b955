"""IMAP extensions: WITHIN (RFC 5032: SEARCH OLDER / YOUNGER) and MULTIAPPEND (RFC 3502).

The search keys are tested on their own (parser, evaluator, what they read) and through the
real server with imaplib; MULTIAPPEND only through the server, on every IMAP backend, with
LITERAL+ and synchronizing literals, checking that a failing message leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
from collections.abc import Iterator

import pytest

from cloudcote.core.mail.search import (
    And,
    Needs,
    Not,
    Older,
    SearchSyntaxError,
    Younger,
    key_needs,
    parse_search,
    search,
    search_uids,
)
from cloudcote.core.mail.storage import StorageSettings
from cloudcote.protocols.imap.limits import ImapLimits

from .imap_support import IMAP_BACKENDS, ImapServer, server_fixture
from .test_imap import (
    QUOTA_BYTES,
    QUOTA_MESSAGES,
    Clients,
    Reply,
    bad,
    clients_of,
    fetches,
    lit,
    message,
    no,
    ok,
    read_response,
    select,
    status_of,
    uid_code,
)
from .test_search import CountingView, Msg, tok

# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def ext_server(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(request, tmp_path_factory.mktemp("imapext"))


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def ext_quota_server(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    settings = StorageSettings(quota_bytes=QUOTA_BYTES, quota_messages=QUOTA_MESSAGES,
                               poll_interval=0.3, quota_refresh=0.0)
    yield from server_fixture(request, tmp_path_factory.mktemp("imapextq"), settings=settings)


#: A server whose command may carry at most LIMIT_TOTAL octets of literals.
LIMIT_MESSAGE = 8000
LIMIT_TOTAL = LIMIT_MESSAGE + 1000


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def ext_limits_server(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    limits = ImapLimits(max_append_literal=LIMIT_MESSAGE, max_line=1000)
    yield from server_fixture(request, tmp_path_factory.mktemp("imapextl"), limits=limits)


@pytest.fixture
def imap(ext_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(ext_server)


@pytest.fixture
def quota_imap(ext_quota_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(ext_quota_server)


@pytest.fixture
def limits_imap(ext_limits_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(ext_limits_server)


def imap_date(when: dt.datetime) -> str:
    return when.strftime("%d-%b-%Y %H:%M:%S %z")


def messages_in(m: imaplib.IMAP4, box: str = "INBOX") -> int:
    return status_of(ok(m, f"STATUS {box} (MESSAGES)"))["MESSAGES"]


def searched(reply: Reply) -> list[int]:
    (line,) = reply.untagged("SEARCH")
    return [int(n) for n in line.split()]


# -- WITHIN: parser and evaluator ----------------------------------------------------------


@pytest.mark.parametrize(("program", "expected"), [
    ("OLDER 3600", Older(3600)),
    ("younger 1", Younger(1)),
    ("OLDER 4294967295", Older(4294967295)),
    ("YOUNGER 60 NOT OLDER 30", And((Younger(60), Not(Older(30))))),
])
def test_parse_within(program: str, expected: object) -> None:
    key = parse_search(tok(program))
    assert key == expected
    assert hash(key) == hash(expected)
    assert key_needs(key) is Needs.INDEX


@pytest.mark.parametrize("program", [
    "OLDER", "YOUNGER", "OLDER 0", "YOUNGER 0", "OLDER -5", "OLDER 1.5", "YOUNGER abc",
    'OLDER "10"', "OLDER (10)", "YOUNGER 4294967296",
])
def test_parse_within_errors(program: str) -> None:
    with pytest.raises(SearchSyntaxError):
        parse_search(tok(program))


def _within_view() -> CountingView:
    now = dt.datetime.now(dt.UTC)
    ages = [10, 2 * 3600, 3 * 86400, 30]
    return CountingView(
        Msg(uid=10 + i, raw=message(f"m{i}"), internaldate=now - dt.timedelta(seconds=age))
        for i, age in enumerate(ages))


@pytest.mark.parametrize(("program", "expected"), [
    ("YOUNGER 3600", [1, 4]),
    ("OLDER 3600", [2, 3]),
    ("OLDER 86400", [3]),
    ("YOUNGER 86400 OLDER 20", [2, 4]),
    ("NOT YOUNGER 5000", [2, 3]),
    ("OR OLDER 200000 YOUNGER 20", [1, 3]),
    ("YOUNGER 1000000", [1, 2, 3, 4]),
])
def test_within_evaluation_reads_only_the_index(program: str, expected: list[int]) -> None:
    view = _within_view()
    assert asyncio.run(search(parse_search(tok(program)), view)) == expected
    assert asyncio.run(search_uids(parse_search(tok(program)), view)) == [
        9 + n for n in expected]
    assert view.header_reads == [] and view.body_reads == []


def test_within_is_relative_to_the_search_time() -> None:
    """An internal date in the future is younger than any interval, older than none; the
    boundary counts for both (Dovecot's reading of RFC 5032)."""
    now = dt.datetime.now(dt.UTC)
    view = CountingView([
        Msg(uid=1, raw=b"a\r\n\r\n", internaldate=now + dt.timedelta(days=1)),
        Msg(uid=2, raw=b"b\r\n\r\n", internaldate=now - dt.timedelta(seconds=500)),
    ])
    assert asyncio.run(search(Younger(1), view)) == [1]
    assert asyncio.run(search(Older(1), view)) == [2]
    assert asyncio.run(search(Older(400), view)) == [2]
    assert asyncio.run(search(Younger(600), view)) == [1, 2]


# -- WITHIN over IMAP -------------------------------------------------------------------------


def test_capabilities(imap: Clients) -> None:
    m = imap.connect()
    assert "WITHIN" not in m.capabilities and "MULTIAPPEND" not in m.capabilities
    m = imap.login()
    (line,) = ok(m, "CAPABILITY").untagged("CAPABILITY")
    caps = line.decode().split()
    assert "WITHIN" in caps and "MULTIAPPEND" in caps


def test_search_older_younger(imap: Clients) -> None:
    m = imap.login()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for age in (3 * 86400, 7200, 0):
        when = imap_date(now - dt.timedelta(seconds=age))
        ok(m, f'APPEND INBOX "{when}" '.encode() + lit(message(f"age {age}")))
    select(m)
    assert searched(ok(m, "SEARCH YOUNGER 3600")) == [3]
    assert searched(ok(m, "SEARCH OLDER 3600")) == [1, 2]
    assert searched(ok(m, "SEARCH OLDER 3600 YOUNGER 86400")) == [2]
    assert searched(ok(m, "UID SEARCH OR OLDER 100000 YOUNGER 60")) == [1, 3]
    assert searched(ok(m, "SEARCH NOT YOUNGER 999999999")) == []
    r = ok(m, "UID SEARCH RETURN (COUNT MIN) OLDER 60")
    assert r.untagged("ESEARCH") and b"COUNT 2" in r.untagged("ESEARCH")[0]
    # imaplib's own SEARCH.
    assert m.select("INBOX")[0] == "OK"
    typ, data = m.search(None, "YOUNGER", "86400")
    assert typ == "OK" and data == [b"2 3"]
    for program in ("OLDER 0", "YOUNGER", "OLDER x", 'YOUNGER "60"', "OLDER 99999999999"):
        bad(m, "SEARCH " + program)


# -- MULTIAPPEND -----------------------------------------------------------------------------


def _internaldate(item: bytes) -> dt.datetime:
    return dt.datetime.strptime(item.decode().strip(), "%d-%b-%Y %H:%M:%S %z")


def test_multiappend(imap: Clients) -> None:
    m = imap.login()
    msgs = [message(f"multi {i}", f"body {i}\r\n") for i in range(3)]
    r = ok(m, b'APPEND INBOX (\\Seen) "05-Mar-2024 10:20:30 +0200" ' + lit(msgs[0])
           + b" " + lit(msgs[1])
           + b' (\\Flagged $Work) ' + lit(msgs[2]))
    uidvalidity, uids = uid_code(r, "APPENDUID")
    assert uids == "1:3"
    # A single APPEND still answers one UID; a second MULTIAPPEND's UIDs are contiguous.
    r = ok(m, b"APPEND INBOX " + lit(message("single")))
    assert uid_code(r, "APPENDUID") == [uidvalidity, "4"]
    more = [message(f"more {i}") for i in range(3)]
    r = ok(m, b"APPEND INBOX " + b" ".join(lit(d) for d in more))
    assert uid_code(r, "APPENDUID") == [uidvalidity, "5:7"]
    select(m)
    got = dict(fetches(ok(m, "UID FETCH 1:7 (FLAGS INTERNALDATE BODY.PEEK[])")))
    assert [got[s]["BODY[]"] for s in range(1, 8)] == [*msgs, message("single"), *more]
    assert set(got[1]["FLAGS"]) == {"\\Seen", "\\Recent"}
    assert set(got[2]["FLAGS"]) == {"\\Recent"}
    assert set(got[3]["FLAGS"]) == {"\\Flagged", "$Work", "\\Recent"}
    assert _internaldate(got[1]["INTERNALDATE"]) == dt.datetime(2024, 3, 5, 8, 20, 30,
                                                                 tzinfo=dt.UTC)
    now = dt.datetime.now(dt.UTC)
    for s in (2, 3, 5):
        assert abs((_internaldate(got[s]["INTERNALDATE"]) - now).total_seconds()) < 120
    # While selected, the APPEND's reply announces the new messages.
    r = ok(m, b"APPEND INBOX " + lit(message("x")) + b" " + lit(message("y")))
    assert uid_code(r, "APPENDUID") == [uidvalidity, "8:9"]
    assert b"9" in [x.strip() for x in r.untagged("EXISTS")]


def test_multiappend_short_one_line_messages(imap: Clients) -> None:
    """Messages without a line end, one right after the other: literals, not dates."""
    m = imap.login()
    r = ok(m, b"APPEND INBOX " + lit(b"abc") + b" " + lit(b"20-Jan-2024 10:00:00 +0000")
           + b" " + lit(b"def"))
    assert uid_code(r, "APPENDUID")[1] == "1:3"
    select(m)
    got = dict(fetches(ok(m, "FETCH 1:3 BODY.PEEK[]")))
    assert [got[s]["BODY[]"] for s in (1, 2, 3)] == [b"abc", b"20-Jan-2024 10:00:00 +0000",
                                                     b"def"]


def test_multiappend_synchronizing_literals(imap: Clients) -> None:
    """The 2nd and 3rd messages as synchronizing literals: the server asks for each."""
    m = imap.login()
    msgs = [message(f"sync {i}", f"synchronized body {i}\r\n") for i in range(3)]
    m.send(b"S1 APPEND INBOX " + lit(msgs[0]) + b" (\\Draft) {%d}\r\n" % len(msgs[1]))
    assert read_response(m).startswith(b"+")
    m.send(msgs[1] + b' "01-Feb-2023 00:00:01 +0000" {%d}\r\n' % len(msgs[2]))
    assert read_response(m).startswith(b"+")
    m.send(msgs[2] + b"\r\n")
    line = read_response(m)
    while not line.startswith(b"S1 "):
        line = read_response(m)
    assert line.startswith(b"S1 OK [APPENDUID "), line
    assert line.split()[4] == b"1:3]"
    select(m)
    got = dict(fetches(ok(m, "FETCH 1:3 (FLAGS INTERNALDATE BODY.PEEK[])")))
    assert [got[s]["BODY[]"] for s in (1, 2, 3)] == msgs
    assert set(got[2]["FLAGS"]) - {"\\Recent"} == {"\\Draft"}
    assert _internaldate(got[3]["INTERNALDATE"]) == dt.datetime(2023, 2, 1, 0, 0, 1,
                                                                tzinfo=dt.UTC)
    # imaplib's own APPEND (one message, synchronizing) keeps working next to it.
    typ, resp = m.append("INBOX", "", None, message("imaplib"))
    assert typ == "OK" and b"APPENDUID" in resp[0] and resp[0].split()[2] == b"4]"


def test_multiappend_all_or_none(imap: Clients) -> None:
    m = imap.login()
    ok(m, b"APPEND INBOX " + lit(message("before")))
    good = [lit(message(f"ok {i}")) for i in range(2)]
    # A bad date, a bad flag, a missing literal: BAD, nothing appended.
    bad(m, b"APPEND INBOX " + good[0] + b" " + good[1]
        + b' "31-Foo-2024 10:00:00 +0000" ' + lit(message("bad date")))
    bad(m, b"APPEND INBOX " + good[0] + b" " + good[1]
        + b' "30-Feb-2024 10:00:00 +0000" ' + lit(message("no such day")))
    bad(m, b"APPEND INBOX " + good[0] + b" (\\Bogus) " + good[1])
    bad(m, b"APPEND INBOX " + good[0] + b" " + good[1] + b" (\\Seen)")
    bad(m, b"APPEND INBOX " + good[0] + b" (\\Seen) (\\Draft) " + good[1])
    # An empty message among them: NO, nothing appended.
    no(m, b"APPEND INBOX " + good[0] + b" " + lit(b"") + b" " + good[1])
    # No such mailbox: TRYCREATE, whatever the number of messages.
    no(m, b"APPEND nosuch " + good[0] + b" " + good[1], "TRYCREATE")
    assert messages_in(m) == 1
    # A bad date in the 3rd message, sent with synchronizing literals.
    m.send(b"S2 APPEND INBOX {%d}\r\n" % len(message("a")))
    assert read_response(m).startswith(b"+")
    m.send(message("a") + b" {%d}\r\n" % len(message("b")))
    assert read_response(m).startswith(b"+")
    m.send(message("b") + b' "99-Jan-2024 10:00:00 +0000" ' + lit(message("c")) + b"\r\n")
    assert read_response(m).startswith(b"S2 BAD")
    assert messages_in(m) == 1
    r = ok(m, b"APPEND INBOX " + good[0] + b" " + good[1])
    assert uid_code(r, "APPENDUID")[1] == "2:3"


def test_multiappend_over_quota_appends_nothing(quota_imap: Clients) -> None:
    m = quota_imap.login()
    small = [lit(message(f"small {i}")) for i in range(2)]
    # The 3rd message is over the byte quota.
    no(m, b"APPEND INBOX " + small[0] + b" " + small[1] + b" "
       + lit(message("huge", "y" * QUOTA_BYTES)), "OVERQUOTA")
    assert messages_in(m) == 0
    # Three more messages than the message quota leaves room for.
    ok(m, b"APPEND INBOX " + small[0] + b" " + small[1])
    no(m, b"APPEND INBOX " + b" ".join(lit(message(f"x {i}")) for i in range(3)), "OVERQUOTA")
    assert messages_in(m) == 2
    r = ok(m, b"APPEND INBOX " + b" ".join(lit(message(f"y {i}")) for i in range(2)))
    assert uid_code(r, "APPENDUID")[1] == "3:4"
    assert messages_in(m) == QUOTA_MESSAGES


def test_multiappend_literal_total_is_limited(limits_imap: Clients) -> None:
    """Each message within the size limit, the command's total above it: NO [TOOBIG]."""
    m = limits_imap.login()
    part = message("part", "z" * (LIMIT_TOTAL // 2) + "\r\n")
    assert len(part) < LIMIT_MESSAGE and 2 * len(part) > LIMIT_TOTAL
    no(m, b"APPEND INBOX " + lit(part) + b" " + lit(part), "TOOBIG")
    # The session goes on, nothing was appended; one such message alone is fine.
    assert messages_in(m) == 0
    r = ok(m, b"APPEND INBOX " + lit(part))
    assert uid_code(r, "APPENDUID")[1] == "1"
    # Synchronizing: the server refuses the second literal instead of asking for it.
    m.send(b"S3 APPEND INBOX {%d}\r\n" % len(part))
    assert read_response(m).startswith(b"+")
    m.send(part + b" {%d}\r\n" % len(part))
    assert read_response(m).startswith(b"S3 NO [TOOBIG]")
    assert messages_in(m) == 1


# -- SORT, ESORT, THREAD (RFC 5256, 5267, 5957) ----------------------------------------------

def _mail(subject: str, frm: str, date: str, msgid: str, refs: str = "",
          body: str = "text\r\n") -> bytes:
    extra = f"References: {refs}\r\n" if refs else ""
    return (f"From: {frm}\r\nTo: Bob <bob@example.org>\r\nSubject: {subject}\r\n"
            f"Date: {date}\r\nMessage-ID: <{msgid}>\r\n{extra}\r\n{body}").encode()


THREAD_MAIL = [
    _mail("Plans", "Carol <carol@example.com>", "Mon, 01 Jan 2024 10:00:00 +0000", "a@x"),
    _mail("Re: Plans", "Alice <alice@example.com>", "Mon, 01 Jan 2024 11:00:00 +0000",
          "b@x", "<a@x>"),
    _mail("Lunch", "bob@example.com", "Sun, 31 Dec 2023 09:00:00 +0000", "c@x"),
    _mail("Re: Re: Plans", "Dave <dave@example.com>", "Mon, 01 Jan 2024 12:00:00 +0000",
          "d@x", "<a@x> <b@x>"),
    _mail("Fwd: Lunch", "Erin <erin@example.com>", "Tue, 02 Jan 2024 08:00:00 +0000", "e@x"),
]


def _filled(imap: Clients) -> imaplib.IMAP4:
    m = imap.login()
    for raw in THREAD_MAIL:
        ok(m, b"APPEND INBOX " + lit(raw))
    select(m)
    return m


def _numbers(reply: Reply, word: str) -> list[int]:
    (rest,) = reply.untagged(word)
    return [int(x) for x in rest.split()]


def test_sort_keys(imap: Clients) -> None:
    m = _filled(imap)
    assert _numbers(ok(m, "SORT (SUBJECT) UTF-8 ALL"), "SORT") == [3, 5, 1, 2, 4]
    assert _numbers(ok(m, "SORT (DATE) UTF-8 ALL"), "SORT") == [3, 1, 2, 4, 5]
    assert _numbers(ok(m, "SORT (REVERSE DATE) UTF-8 ALL"), "SORT") == [5, 4, 2, 1, 3]
    assert _numbers(ok(m, "SORT (FROM) UTF-8 ALL"), "SORT") == [2, 3, 1, 4, 5]
    assert _numbers(ok(m, "SORT (DISPLAYFROM) UTF-8 ALL"), "SORT") == [2, 3, 1, 4, 5]
    assert _numbers(ok(m, "SORT (ARRIVAL) UTF-8 ALL"), "SORT") == [1, 2, 3, 4, 5]
    # Search criteria narrow the set; UID SORT answers UIDs.
    assert _numbers(ok(m, "SORT (SUBJECT DATE) UTF-8 SUBJECT plans"), "SORT") == [1, 2, 4]
    # Exact ties stay in mailbox order, REVERSE or not (RFC 5256 3).
    assert _numbers(ok(m, "UID SORT (REVERSE SUBJECT) UTF-8 ALL"), "SORT") == [1, 2, 4, 3, 5]
    bad(m, "SORT (NOSUCHKEY) UTF-8 ALL")
    bad(m, "SORT (SUBJECT REVERSE) UTF-8 ALL")
    bad(m, "SORT SUBJECT")


def test_sort_of_a_sequence_set(imap: Clients) -> None:
    """A bare sequence set (taken as slices of the view): reversed and overlapping ranges,
    ``*``, numbers past the end, as SEARCH evaluates them."""
    m = _filled(imap)
    assert _numbers(ok(m, "SORT (DATE) UTF-8 4:2,*,3,9"), "SORT") == [3, 2, 4, 5]
    assert _numbers(ok(m, "SORT (ARRIVAL) UTF-8 2:*"), "SORT") == [2, 3, 4, 5]
    assert _numbers(ok(m, "SEARCH 5:4,1,1:1"), "SEARCH") == [1, 4, 5]
    assert _numbers(ok(m, "UID SORT (REVERSE DATE) UTF-8 *:4"), "SORT") == [5, 4]


def test_esort(imap: Clients) -> None:
    m = _filled(imap)
    r = ok(m, "SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
    (line,) = r.untagged("ESEARCH")
    assert line.endswith(b"MIN 3 MAX 5 ALL 3,1:2,4:5 COUNT 5")
    r = ok(m, "UID SORT RETURN (COUNT) (DATE) UTF-8 SUBJECT lunch")
    (line,) = r.untagged("ESEARCH")
    assert line.endswith(b"UID COUNT 2")


def test_thread(imap: Clients) -> None:
    m = _filled(imap)
    (refs,) = ok(m, "THREAD REFERENCES UTF-8 ALL").untagged("THREAD")
    assert refs == b"(3 5)(1 2 4)"
    (ordered,) = ok(m, "THREAD ORDEREDSUBJECT UTF-8 ALL").untagged("THREAD")
    assert ordered == b"(3 5)(1 (2)(4))"
    (uid_refs,) = ok(m, "UID THREAD REFERENCES UTF-8 SUBJECT plans").untagged("THREAD")
    assert uid_refs == b"(1 2 4)"
    bad(m, "THREAD NOSUCH UTF-8 ALL")
    # Once sequence numbers and UIDs differ, each form answers in its own numbers.
    ok(m, "STORE 3 +FLAGS (\\Deleted)")
    ok(m, "EXPUNGE")
    assert ok(m, "THREAD REFERENCES UTF-8 ALL").untagged("THREAD") == [b"(1 2 3)(4)"]
    assert ok(m, "UID THREAD REFERENCES UTF-8 ALL").untagged("THREAD") == [b"(1 2 4)(5)"]
    assert _numbers(ok(m, "SORT (DATE) UTF-8 ALL"), "SORT") == [1, 2, 3, 4]
    assert _numbers(ok(m, "UID SORT (DATE) UTF-8 ALL"), "SORT") == [1, 2, 4, 5]
    caps = ok(m, "CAPABILITY").untagged("CAPABILITY")[0].split()
    for cap in (b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=REFERENCES",
                b"THREAD=ORDEREDSUBJECT", b"THREAD=REFS"):
        assert cap in caps
