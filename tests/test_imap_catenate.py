"""CATENATE (RFC 4469) with IMAP URLs (RFC 5092).

The URL grammar on its own (protocols/imap/catenate.parse_url), then APPEND ... CATENATE
through the real server with imaplib on every IMAP backend: text parts, whole messages,
sections and partials, relative and absolute URLs, URLs that name nothing (NO [BADURL url],
nothing saved), MULTIAPPEND with CATENATE (all or none) and the size limit (TOOBIG).
"""

from __future__ import annotations

import imaplib
from collections.abc import Iterator
from urllib.parse import quote as pct

import pytest

from cloudcote.protocols.imap.catenate import (
    BadUrl,
    ImapUrl,
    encode_mailbox,
    parse_section,
    parse_url,
    url_resp_text,
)
from cloudcote.protocols.imap.limits import ImapLimits

from .imap_support import IMAP_BACKENDS, ImapServer, server_fixture
from .test_imap import (
    MP_HEADER,
    MP_TEXT,
    MULTIPART,
    Clients,
    Reply,
    append,
    bad,
    clients_of,
    fetch_one,
    fetches,
    lit,
    message,
    no,
    ok,
    quote,
    read_response,
    select,
    status_of,
    uid_code,
)

# -- the URL grammar --------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("/INBOX;UIDVALIDITY=7/;UID=3", ImapUrl("INBOX", 7, 3)),
    ("/inbox/;UID=3", ImapUrl("INBOX", None, 3)),
    ("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME",
     ImapUrl("Drafts", 385759045, 20, (1,), "MIME")),
    ("/Drafts;UIDVALIDITY=1/;UID=20/;Section=2", ImapUrl("Drafts", 1, 20, (2,))),
    ("/a/b%20c;UIDVALIDITY=1/;UID=2/;SECTION=TEXT/;PARTIAL=10.20",
     ImapUrl("a/b c", 1, 2, (), "TEXT", (), (10, 20))),
    ("/x;UIDVALIDITY=1/;UID=2/;PARTIAL=5", ImapUrl("x", 1, 2, partial=(5, None))),
    ("/Entw%C3%BCrfe;UIDVALIDITY=1/;UID=2", ImapUrl("Entwürfe", 1, 2)),
    ("/INBOX;UIDVALIDITY=1/;UID=2/;SECTION=HEADER.FIELDS%20(From%20%22To%22)",
     ImapUrl("INBOX", 1, 2, (), "HEADER.FIELDS", ("FROM", "TO"))),
    ("/INBOX;UIDVALIDITY=1/;UID=2/;SECTION=3.1.HEADER.FIELDS.NOT%20(X)",
     ImapUrl("INBOX", 1, 2, (3, 1), "HEADER.FIELDS.NOT", ("X",))),
    ("Sent;UIDVALIDITY=1/;UID=2", ImapUrl("Sent", 1, 2)),
    (";UID=4/;SECTION=HEADER", ImapUrl("Sel ected", None, 4, (), "HEADER")),
    ("imap://joe@mail.example.org/INBOX;UIDVALIDITY=1/;UID=2", ImapUrl("INBOX", 1, 2)),
    ("imap://joe;AUTH=*@mail.example.org:143/INBOX/;UID=2", ImapUrl("INBOX", None, 2)),
    ("IMAP://joe@[::1]:1143/INBOX/;UID=2", ImapUrl("INBOX", None, 2)),
    ("//joe@host/INBOX/;UID=2", ImapUrl("INBOX", None, 2)),
])
def test_parse_url(url: str, expected: ImapUrl) -> None:
    assert parse_url(url, "joe", selected="Sel ected") == expected


@pytest.mark.parametrize("url", [
    "", "INBOX", "/INBOX", "/INBOX;UIDVALIDITY=1", "/INBOX;UIDVALIDITY=1/", "/;UID=1",
    "/INBOX/;UID=0", "/INBOX/;UID=x", "/INBOX;UIDVALIDITY=0/;UID=1", "/INBOX/;UID=1/",
    "/INBOX/;UID=1/;SECTION=", "/INBOX/;UID=1/;SECTION=BOGUS", "/INBOX/;UID=1/;SECTION=MIME",
    "/INBOX/;UID=1/;SECTION=1.", "/INBOX/;UID=1/;SECTION=0", "/INBOX/;UID=1/;SECTION=HEADER%20(X)",
    "/INBOX/;UID=1/;SECTION=HEADER.FIELDS", "/INBOX/;UID=1/;SECTION=HEADER.FIELDS%20()",
    "/INBOX/;UID=1/;SECTION=HEADER.FIELDS%20(X", "/INBOX/;UID=1/;PARTIAL=1.0",
    "/INBOX/;UID=1/;PARTIAL=x", "/INBOX/;UID=1?SUBJECT%20x", "/INBOX/;UID=1#frag",
    "/INBOX/;UID=1/;URLAUTH=anonymous:internal:0123456789abcdef0123456789abcdef",
    "/IN BOX/;UID=1", "/IN%ZZBOX/;UID=1", "/%FF/;UID=1", "/INBOX/;UID=1\r\n",
    "http://joe@host/INBOX/;UID=1", "imap:/INBOX/;UID=1", "imap://host/INBOX/;UID=1",
    "imap://ann@host/INBOX/;UID=1", "imap://joe@/INBOX/;UID=1", "imap://joe@host",
    "imap://joe@host:x/INBOX/;UID=1", "imap://joe;FOO=1@host/INBOX/;UID=1",
    ";UID=1",  # nothing selected
])
def test_parse_url_refuses(url: str) -> None:
    with pytest.raises(BadUrl):
        parse_url(url, "joe")


def test_parse_url_hosts() -> None:
    url = "imap://joe@Mail.Example.org/INBOX/;UID=2"
    assert parse_url(url, "joe", hosts=("mail.example.org",)).uid == 2
    with pytest.raises(BadUrl):
        parse_url(url, "joe", hosts=("other.example.org",))
    # A relative URL is on this server whatever its names.
    assert parse_url("/INBOX/;UID=2", "joe", hosts=("other.example.org",)).uid == 2


def test_section_and_helpers() -> None:
    assert parse_section(b"1.2.3") == ((1, 2, 3), None, ())
    assert parse_section(b"header.fields (a b)") == ((), "HEADER.FIELDS", ("A", "B"))
    assert encode_mailbox("a/b c&d;ü") == "a/b%20c&d%3B%C3%BC"
    assert parse_url("/" + encode_mailbox("a/b c&d;ü") + "/;UID=1", "x").mailbox == "a/b c&d;ü"
    assert url_resp_text("/a]b\x00ü") == "/a%5Db%00%C3%BC"


# -- the server -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def cat_server(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(request, tmp_path_factory.mktemp("imapcat"))


#: A server whose messages may have at most LIMIT octets.
LIMIT = 8000


@pytest.fixture(scope="module", params=IMAP_BACKENDS)
def cat_limits_server(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    yield from server_fixture(request, tmp_path_factory.mktemp("imapcatl"),
                              limits=ImapLimits(max_append_literal=LIMIT, max_line=1000))


@pytest.fixture
def imap(cat_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(cat_server)


@pytest.fixture
def limits_imap(cat_limits_server: ImapServer) -> Iterator[Clients]:
    yield from clients_of(cat_limits_server)


def text(data: bytes | str) -> bytes:
    return b"TEXT " + lit(data)


def url(u: str) -> bytes:
    return b"URL " + quote(u).encode()


def catenate(*parts: bytes) -> bytes:
    return b"CATENATE (" + b" ".join(parts) + b")"


def messages_in(m: imaplib.IMAP4, box: str = "INBOX") -> int:
    return status_of(ok(m, f"STATUS {quote(box)} (MESSAGES)"))["MESSAGES"]


def body(m: imaplib.IMAP4, uid: int | str, box: str = "INBOX") -> bytes:
    """BODY[] of a message, read from another mailbox selection."""
    ok(m, f"EXAMINE {quote(box)}")
    data = fetch_one(m, f"UID FETCH {uid} BODY.PEEK[]")["BODY[]"]
    assert isinstance(data, bytes)
    return data


def setup_source(m: imaplib.IMAP4, box: str = "INBOX") -> tuple[str, int]:
    """MULTIPART appended to ``box``: ``(uidvalidity, uid)``."""
    if box != "INBOX":
        ok(m, f"CREATE {quote(box)}")
    r = ok(m, b"APPEND " + quote(box).encode() + b" " + lit(MULTIPART))
    uidvalidity, uid = uid_code(r, "APPENDUID")
    return uidvalidity, int(uid)


def appended(r: Reply) -> tuple[str, str]:
    """UIDVALIDITY and UID set of APPENDUID."""
    uidvalidity, uids = uid_code(r, "APPENDUID")
    return uidvalidity, uids


# -- APPEND ... CATENATE ----------------------------------------------------------------------


def test_text_only(imap: Clients) -> None:
    m = imap.login()
    assert "CATENATE" in m.capabilities or b"CATENATE" in ok(m, "CAPABILITY").untagged(
        "CAPABILITY")[0].split()
    head = b"From: a@example.com\r\nSubject: parts\r\n\r\n"
    r = ok(m, b"APPEND INBOX (\\Draft) " + catenate(text(head), text(b"one\r\n"),
                                                     text(b"two\r\n")))
    _, uid = appended(r)
    assert body(m, uid) == head + b"one\r\ntwo\r\n"
    assert "\\Draft" in fetch_one(m, f"UID FETCH {uid} FLAGS")["FLAGS"]
    # Lower-case keywords, a date-time, literal8.
    r = ok(m, b'APPEND INBOX "05-Mar-2024 10:20:30 +0200" catenate (text ~{3+}\r\nabc '
           b"text " + lit(b"def") + b")")
    _, uid = appended(r)
    assert body(m, uid) == b"abcdef"
    got = fetch_one(m, f"UID FETCH {uid} INTERNALDATE")["INTERNALDATE"]
    assert got == b" 5-Mar-2024 10:20:30 +0200"


def test_synchronizing_literals(imap: Clients) -> None:
    m = imap.login()
    uidvalidity, src = setup_source(m)
    first, second = b"Subject: sync\r\n\r\n", b"\r\n-- \r\nend\r\n"
    m.send(b"S1 APPEND INBOX CATENATE (TEXT {%d}\r\n" % len(first))
    assert read_response(m).startswith(b"+")
    m.send(first + b" URL " + f'"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}/;SECTION=1"'
           .encode() + b" TEXT {%d}\r\n" % len(second))
    assert read_response(m).startswith(b"+")
    m.send(second + b")\r\n")
    line = read_response(m)
    while not line.startswith(b"S1 "):
        line = read_response(m)
    assert line.startswith(b"S1 OK [APPENDUID "), line
    uid = int(line.split()[4].rstrip(b"]"))
    assert body(m, uid) == first + b"Hello w\xc3\xb6rld\r\nsecond line" + second


def test_whole_message_url(imap: Clients) -> None:
    m = imap.login()
    uidvalidity, src = setup_source(m)
    prefix = b"X-Archived: yes\r\n"
    r = ok(m, b"APPEND INBOX " + catenate(
        text(prefix), url(f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}")))
    got_validity, uid = appended(r)
    assert got_validity == uidvalidity and int(uid) == src + 1
    assert body(m, uid) == prefix + MULTIPART
    # A URL alone, as an atom, without UIDVALIDITY: a copy.
    r = ok(m, f"APPEND INBOX CATENATE (URL /INBOX/;UID={src})")
    assert body(m, appended(r)[1]) == MULTIPART
    # Reading the source does not set \Seen on it.
    assert "\\Seen" not in fetch_one(m, f"UID FETCH {src} FLAGS")["FLAGS"]


def test_sections_and_partials(imap: Clients) -> None:
    m = imap.login()
    uidvalidity, src = setup_source(m)
    base = f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}"
    cases = [
        # (URL tail, the FETCH item giving the same octets)
        ("/;SECTION=HEADER", "BODY.PEEK[HEADER]"),
        ("/;SECTION=TEXT", "BODY.PEEK[TEXT]"),
        ("/;SECTION=1", "BODY.PEEK[1]"),
        ("/;SECTION=1.MIME", "BODY.PEEK[1.MIME]"),
        ("/;SECTION=2", "BODY.PEEK[2]"),
        ("/;SECTION=3", "BODY.PEEK[3]"),
        ("/;SECTION=3.HEADER", "BODY.PEEK[3.HEADER]"),
        ("/;SECTION=3.TEXT", "BODY.PEEK[3.TEXT]"),
        ("/;SECTION=HEADER.FIELDS%20(Subject%20FROM)", "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]"),
        ("/;SECTION=HEADER.FIELDS.NOT%20(Subject)", "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)]"),
        ("/;PARTIAL=0.10", "BODY.PEEK[]<0.10>"),
        ("/;SECTION=1/;PARTIAL=2.5", "BODY.PEEK[1]<2.5>"),
        ("/;SECTION=TEXT/;PARTIAL=5000.10", "BODY.PEEK[TEXT]<5000.10>"),
    ]
    sep = b"\r\n--\r\n"
    r = ok(m, b"APPEND INBOX " + catenate(*(part for tail, _ in cases
                                            for part in (url(base + tail), text(sep)))))
    got = body(m, appended(r)[1])
    ok(m, "EXAMINE INBOX")
    want = b""
    for _, item in cases:
        fetched = fetch_one(m, f"UID FETCH {src} {item}")
        (value,) = (v for k, v in fetched.items() if k.startswith("BODY["))
        want += (value or b"") + sep
    assert got == want
    assert got.startswith(MP_HEADER + sep + MP_TEXT + sep + b"Hello w\xc3\xb6rld\r\n")
    # A partial without a length runs to the end.
    r = ok(m, b"APPEND INBOX " + catenate(url(base + f"/;PARTIAL={len(MP_HEADER)}")))
    assert body(m, appended(r)[1]) == MP_TEXT


def test_relative_urls(imap: Clients) -> None:
    m = imap.login()
    uidvalidity, src = setup_source(m, "Work")
    # Nothing selected: a URL starting with ";UID=" names no mailbox.
    no(m, b"APPEND INBOX " + catenate(url(f";UID={src}")), "BADURL")
    # Relative to the server: with and without the leading slash.
    r = ok(m, b"APPEND INBOX " + catenate(url(f"Work;UIDVALIDITY={uidvalidity}/;UID={src}"),
                                          url(f"/Work/;UID={src}/;SECTION=3")))
    assert body(m, appended(r)[1]) == MULTIPART + MULTIPART[MULTIPART.index(b"From: inner"):
                                                            MULTIPART.index(b"\r\n--XYZ--")]
    # Relative to the selected mailbox; the APPEND goes to another one and the selection
    # stays.
    select(m, "Work")
    r = ok(m, b"APPEND INBOX " + catenate(url(f";UID={src}/;SECTION=HEADER"),
                                          text(b"new body\r\n")))
    assert fetch_one(m, f"UID FETCH {src} UID")["UID"] == str(src)
    assert body(m, appended(r)[1]) == MP_HEADER + b"new body\r\n"
    select(m, "Work")
    r = ok(m, b"APPEND Work " + catenate(url(f";UID={src}/;PARTIAL=0.4")))
    assert body(m, appended(r)[1], "Work") == MULTIPART[:4]


def test_absolute_urls(imap: Clients) -> None:
    m = imap.login()
    user = imap.user_of(m)
    uidvalidity, src = setup_source(m)
    host = imap.srv.host
    for u in (f"imap://{user}@{host}/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}",
              f"imap://{user};AUTH=*@{host}:{imap.srv.port}/INBOX/;UID={src}",
              f"IMAP://{user}@mail.example.org/inbox/;UID={src}"):
        r = ok(m, b"APPEND INBOX " + catenate(url(u)))
        assert body(m, appended(r)[1]) == MULTIPART


def test_mailbox_names_in_urls(imap: Clients) -> None:
    m = imap.login()
    name = "Entwürfe & Notizen"
    wire = "Entw&APw-rfe &- Notizen"  # modified UTF-7
    ok(m, f"CREATE {quote(wire)}")
    r = ok(m, b"APPEND " + quote(wire).encode() + b" " + lit(message("umlaut")))
    uidvalidity, src = uid_code(r, "APPENDUID")
    for enc in (encode_mailbox(name), pct(wire, safe="&")):
        r = ok(m, b"APPEND INBOX " + catenate(url(f"/{enc};UIDVALIDITY={uidvalidity}/;UID={src}")))
        assert body(m, appended(r)[1]) == message("umlaut")
    select(m, wire)
    r = ok(m, b"APPEND INBOX " + catenate(url(f";UID={src}")))
    assert body(m, appended(r)[1]) == message("umlaut")


def test_bad_urls(imap: Clients) -> None:
    m = imap.login()
    user = imap.user_of(m)
    uidvalidity, src = setup_source(m)
    other = imap.login()
    other_validity, other_uid = setup_source(other, "Secret")
    other_user = imap.user_of(other)
    ok(m, "CREATE Empty")
    wrong = int(uidvalidity) + 1
    urls = [
        f"/INBOX;UIDVALIDITY={wrong}/;UID={src}",  # wrong UIDVALIDITY
        f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src + 5}",  # no such message
        f"/Empty/;UID={src}",
        f"/NoSuchBox;UIDVALIDITY={uidvalidity}/;UID={src}",
        f"/INBOX;UIDVALIDITY={uidvalidity}",  # no UID
        f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}/;SECTION=9",  # no such part
        f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}/;SECTION=1.2",
        f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}/;SECTION=1.HEADER",  # not a message
        f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}/;SECTION=BOGUS",
        f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}/;PARTIAL=1.0",
        # Another user's message, by its URL and by a name of ours.
        f"imap://{other_user}@{imap.srv.host}/Secret;UIDVALIDITY={other_validity}/;UID="
        f"{other_uid}",
        f"/Secret;UIDVALIDITY={other_validity}/;UID={other_uid}",
        f"imap://{imap.srv.host}/INBOX/;UID={src}",  # anonymous
        f"imap://{user}@{imap.srv.host}",
        f"http://{user}@{imap.srv.host}/INBOX/;UID={src}",
        "not a url", "/INBOX/;UID=1]x",
    ]
    before = messages_in(m)
    for u in urls:
        # Put after a good part and a text part: the first bad URL fails the APPEND.
        r = no(m, b"APPEND INBOX " + catenate(url(f"/INBOX/;UID={src}"), text(b"x\r\n"),
                                              url(u), url("also bad")), "BADURL")
        assert r.code() == "BADURL " + url_resp_text(u), r
    assert messages_in(m) == before
    # Expunged meanwhile.
    select(m)
    ok(m, f"UID STORE {src} +FLAGS.SILENT (\\Deleted)")
    ok(m, "EXPUNGE")
    no(m, b"APPEND INBOX " + catenate(url(f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}")),
       "BADURL")
    assert messages_in(m) == before - 1


def test_catenate_syntax_errors(imap: Clients) -> None:
    m = imap.login()
    for args in (b"CATENATE ()", b'CATENATE (TEXT "quoted")', b"CATENATE (TEXT)",
                 b"CATENATE (URL)", b"CATENATE (FOO " + lit(b"x") + b")",
                 b"CATENATE (URL (INBOX))", b"CATENATE (" + lit(b"x") + b")"):
        bad(m, b"APPEND INBOX " + args)
    assert messages_in(m) == 0


def test_multiappend_with_catenate(imap: Clients) -> None:
    m = imap.login()
    uidvalidity, src = setup_source(m)
    src_url = f"/INBOX;UIDVALIDITY={uidvalidity}/;UID={src}"
    plain = message("plain")
    r = ok(m, b"APPEND INBOX " + lit(plain)
           + b" (\\Seen) " + catenate(text(b"X-Copy: 1\r\n"), url(src_url))
           + b" " + catenate(url(src_url + "/;SECTION=HEADER"), text(b"short\r\n")))
    got_validity, uids = appended(r)
    assert got_validity == uidvalidity and uids == f"{src + 1}:{src + 3}"
    assert body(m, src + 1) == plain
    assert body(m, src + 2) == b"X-Copy: 1\r\n" + MULTIPART
    assert body(m, src + 3) == MP_HEADER + b"short\r\n"
    assert "\\Seen" in fetch_one(m, f"UID FETCH {src + 2} FLAGS")["FLAGS"]
    # One failing CATENATE fails them all.
    before = messages_in(m)
    no(m, b"APPEND INBOX " + lit(plain) + b" " + catenate(url(src_url)) + b" "
       + catenate(url(src_url + "/;SECTION=7")) + b" " + lit(plain), "BADURL")
    assert messages_in(m) == before
    r = ok(m, b"APPEND INBOX " + catenate(url(src_url)) + b" " + lit(plain))
    assert appended(r)[1] == f"{src + 4}:{src + 5}"


def test_too_big(limits_imap: Clients) -> None:
    m = limits_imap.login()
    src_data = message("big", "x" * 5000 + "\r\n")
    src = append(m, "INBOX", src_data)
    src_url = f"/INBOX/;UID={src}"
    no(m, b"APPEND INBOX " + catenate(url(src_url), url(src_url)), "TOOBIG")
    no(m, b"APPEND INBOX " + catenate(text(b"y" * 3500), url(src_url)), "TOOBIG")
    no(m, b"APPEND INBOX " + catenate(url(src_url), url(src_url + "/;SECTION=TEXT")), "TOOBIG")
    # A MULTIAPPEND: every message may be as large as the limit.
    r = no(m, b"APPEND INBOX " + catenate(url(src_url)) + b" "
           + catenate(url(src_url), url(src_url + "/;PARTIAL=0.3000")), "TOOBIG")
    assert r.code() == "TOOBIG"
    assert messages_in(m) == 1
    room = LIMIT - len(src_data)
    r = ok(m, b"APPEND INBOX " + catenate(url(src_url), url(src_url + f"/;PARTIAL=0.{room}"))
           + b" " + catenate(url(src_url)))
    _, uids = appended(r)
    first = int(uids.split(":")[0])
    assert body(m, first) == src_data + src_data[:room]
    assert len(body(m, first)) == LIMIT
    got = dict(fetches(ok(m, f"UID FETCH {uids} RFC822.SIZE")))
    assert sorted(int(f["RFC822.SIZE"]) for f in got.values()) == [len(src_data), LIMIT]
