"""SORT and THREAD algorithms (RFC 5256, RFC 5957, THREAD=REFS): core/mail/sort.py."""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudcote.core.mail.sort import (
    SortMessage,
    ThreadMessage,
    ThreadNode,
    base_subject,
    base_subject_info,
    format_threads,
    parse_msgids,
    parse_sort_criteria,
    sent_date,
    sent_date_micros,
    sort_messages,
    thread_message,
    thread_messages,
)

UTC = datetime.UTC
T0 = datetime.datetime(2026, 1, 1, tzinfo=UTC)


# --- base subject (RFC 5256 2.1) ----------------------------------------------------------------

BASE_SUBJECTS = [
    # (subject, base subject, reply or forward)
    ("hello", "hello", False),
    ("Re: hello", "hello", True),
    ("RE: hello", "hello", True),
    ("re:hello", "hello", True),
    ("Fw: hello", "hello", True),
    ("FWD: hello", "hello", True),
    ("Re: Re: Fwd: hello", "hello", True),
    ("Re : hello", "hello", True),                    # *WSP before ":"
    ("Re [2]: hello", "hello", True),                 # subj-blob inside subj-refwd
    ("Re[2]:hello", "hello", True),
    ("[list] Re: hello", "hello", True),              # *subj-blob before subj-refwd
    ("[a][b] Re: hello", "hello", True),
    ("Re: [list] Re: x (fwd)", "x", True),
    ("hello (fwd)", "hello", True),                   # subj-trailer
    ("hello (FWD) (fwd)  ", "hello", True),
    ("hello(fwd)", "hello", True),
    ("(fwd) hello", "(fwd) hello", False),            # only a trailer counts
    ("[fwd: hello]", "hello", True),                  # subj-fwd
    ("[Fwd: Re: hello]", "hello", True),
    ("[fwd: [fwd: hello] (fwd)]", "hello", True),
    ("[fwd: hello] (fwd)", "hello", True),
    ("Re: [fwd: hello]", "hello", True),
    ("[list] [fwd: hello]", "hello", True),
    ("[fwd: hello", "[fwd: hello", False),           # no subj-fwd-trl, no subj-blob
    ("[list] hello", "hello", False),                 # subj-blob removed: subj-base remains
    ("[PATCH 1/2] fix it", "fix it", False),
    ("[a] [b] hello", "hello", False),
    ("[a] [b]", "[b]", False),                        # the last blob is the subj-base
    ("[blob]", "[blob]", False),
    ("Re: [blob]", "[blob]", True),
    ("Re:", "", True),
    ("Re: ", "", True),
    ("", "", False),
    ("   ", "", False),
    ("  hello   world  ", "hello world", False),      # blanks collapse and trim
    ("hello\t\r\n world", "hello world", False),
    ("Rex: hello", "Rex: hello", False),              # "re" must be followed by ":"
    ("Re hello", "Re hello", False),
    ("Fwdx: hello", "Fwdx: hello", False),
    ("Antwort: hello", "Antwort: hello", False),      # only re/fw/fwd are leaders
    ("hello re:", "hello re:", False),
    ("=?UTF-8?Q?Re=3A_caf=C3=A9?=", "café", True),    # encoded words decoded first
    ("Re: =?ISO-8859-1?Q?na=EFve?= (fwd)", "naïve", True),
    ("=?utf-8?b?W2xpc3RdIGJsb2I=?=", "blob", False),  # "[list] blob"
    # More of RFC 5256 2.1's grammar, step by step.
    ("Fw [x] : hello", "hello", True),                # "fw" *WSP [subj-blob] ":"
    ("fwd[2]: hello", "hello", True),
    ("[a]Re: hello", "hello", True),                  # subj-blob's *WSP may be empty
    ("[a] re [b]: [c] hello", "hello", True),         # (3), then (4)
    ("re: re:re: hello", "hello", True),              # (3) repeated
    ("Re: [a] [b]", "[b]", True),                     # (4) only while a subj-base remains
    ("Re: [fwd: x] y", "y", True),                    # "[fwd: x]" is a subj-blob
    ("Re: hello (fwd) [x]", "hello (fwd) [x]", True),  # a trailer only at the end
    ("Re: (fwd)", "", True),                          # (2) then (3)
    ("[fwd:hello]", "hello", True),                   # (6)
    ("[fwd: ]", "", True),                            # (6) then (2)
    ("Re: [fwd: [list] Re: hello] (fwd)", "hello", True),
    ("[ünï] hello", "hello", False),                  # UTF-8 text inside a subj-blob
]


@pytest.mark.parametrize(("subject", "base", "reply"), BASE_SUBJECTS)
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert base_subject_info(subject) == (base, reply)
    assert base_subject(subject) == base


def test_casemap_orders_as_dovecot() -> None:
    """i;unicode-casemap compares in titlecase: "[" and "_" come after the letters."""
    from cloudcote.core.mail.sort import casemap
    assert sorted(["_under", "abc", "[x] y", "Zed"], key=casemap) == [
        "abc", "Zed", "[x] y", "_under"]
    assert casemap("Straße") == casemap("STRASSE")


def test_base_subject_none() -> None:
    assert base_subject_info(None) == ("", False)


# --- SORT (RFC 5256 3, RFC 5957) ----------------------------------------------------------------

@dataclasses.dataclass
class Msg:
    seq: int
    size: int = 0
    internaldate: datetime.datetime = T0
    envelope: Sequence[object] = dataclasses.field(default_factory=lambda: [None] * 10)

    @property
    def uid(self) -> int:
        return self.seq + 100


def env(date: str | None = None, subject: str | None = None, frm: object = None,
        to: object = None, cc: object = None, in_reply_to: str | None = None,
        message_id: str | None = None) -> list[object]:
    return [date, subject, frm, frm, frm, to, cc, None, in_reply_to, message_id]


def addr(name: str | None, mailbox: str, host: str | None = "example.org") -> list[str | None]:
    return [name, None, mailbox, host]


def day(n: int, hour: int = 0) -> datetime.datetime:
    return T0 + datetime.timedelta(days=n, hours=hour)


MESSAGES: list[Msg] = [
    Msg(1, 300, day(3), env("Mon, 05 Jan 2026 10:00:00 +0200", "Re: Banana",
                            [addr("Zed", "alice")], [addr(None, "bob", "x.org")],
                            [addr(None, "Carl")])),
    Msg(2, 100, day(1), env("Mon, 05 Jan 2026 09:00:00 +0000", "apple",
                            [addr(None, "Carol")], [addr("ann", "zz")], [addr(None, "bert")])),
    Msg(3, 200, day(2), env(None, None, None, None, None)),
    Msg(4, 100, day(1), env("Mon, 05 Jan 2026 09:00:00 +0000", "[list] APPLE",
                            [addr(None, "carol")], [addr("Ann", "aa")], [addr(None, "bert")])),
    Msg(5, 250, day(0, 5), env("Sun, 04 Jan 2026 23:30:00 -0500", "=?utf-8?q?=C3=A9clair?=",
                               [addr("=?utf-8?q?=C3=89mile?=", "emile")],
                               [[None, None, "abc", None], addr("Dan", "dan"),
                                [None, None, None, None]],
                               None)),
]

SORT_CASES = [
    # (criteria, expected order)
    (["ARRIVAL"], [5, 2, 4, 3, 1]),
    (["REVERSE", "ARRIVAL"], [1, 3, 2, 4, 5]),      # ties stay in sequence order
    (["SIZE"], [2, 4, 3, 5, 1]),
    (["REVERSE", "SIZE"], [1, 5, 3, 2, 4]),
    # DATE in UTC: 1 = 08:00 Jan 5, 2 = 4 = 09:00 Jan 5, 5 = 04:30 Jan 5, 3 = internal Jan 3.
    (["DATE"], [3, 5, 1, 2, 4]),
    (["REVERSE", "DATE"], [2, 4, 1, 5, 3]),
    # SUBJECT by base subject, casefolded: "" < apple = APPLE < banana < éclair.
    (["SUBJECT"], [3, 2, 4, 1, 5]),
    (["SUBJECT", "REVERSE", "SIZE"], [3, 2, 4, 1, 5]),
    (["SUBJECT", "REVERSE", "ARRIVAL"], [3, 2, 4, 1, 5]),
    (["REVERSE", "SUBJECT", "SIZE"], [5, 1, 2, 4, 3]),
    # FROM by addr-mailbox, casefolded: "" < alice < carol = Carol < emile.
    (["FROM"], [3, 1, 2, 4, 5]),
    # TO: "" < aa < abc (a group: its name counts, as in Dovecot) < bob < zz.
    (["TO"], [3, 4, 5, 1, 2]),
    # CC: "" (3, 5) < bert (2, 4) < carl.
    (["CC"], [3, 5, 2, 4, 1]),
    (["CC", "REVERSE", "SIZE"], [5, 3, 2, 4, 1]),
    # DISPLAYFROM: "" < carol@example.org (both, addr-spec fallback) < zed < émile.
    (["DISPLAYFROM"], [3, 2, 4, 1, 5]),
    # DISPLAYTO: "" < abc (the group) < ann = Ann < bob@x.org.
    (["DISPLAYTO"], [3, 5, 2, 4, 1]),
    (["REVERSE", "DISPLAYTO", "REVERSE", "SUBJECT"], [1, 2, 4, 5, 3]),
    (["displayto", "reverse", "arrival"], [3, 5, 2, 4, 1]),
]


@pytest.mark.parametrize(("criteria", "expected"), SORT_CASES)
def test_sort(criteria: list[str], expected: list[int]) -> None:
    messages: list[SortMessage] = list(reversed(MESSAGES))
    assert sort_messages(messages, parse_sort_criteria(criteria)) == expected


def test_sort_empty_mailbox() -> None:
    assert sort_messages([], [("DATE", False)]) == []


def test_sort_date_falls_back_to_internal_date() -> None:
    bad = Msg(1, internaldate=day(5), envelope=env("not a date"))
    none = Msg(2, internaldate=day(4), envelope=env(None))
    good = Msg(3, internaldate=day(9), envelope=env("Fri, 02 Jan 2026 00:00:00 +0000"))
    assert sort_messages([bad, none, good], [("DATE", False)]) == [3, 2, 1]
    assert sent_date("Fri, 02 Jan 2026 01:00:00 +0100", day(9)) == day(1)
    assert sent_date("Fri, 02 Jan 2026 01:00:00 -0000", day(9)) == day(1, 1)


@pytest.mark.parametrize(("tokens", "expected"), [
    (["DATE"], [("DATE", False)]),
    (["reverse", "date", "Subject"], [("DATE", True), ("SUBJECT", False)]),
    (["REVERSE", "DISPLAYFROM", "REVERSE", "DISPLAYTO", "CC", "TO", "FROM", "SIZE", "ARRIVAL"],
     [("DISPLAYFROM", True), ("DISPLAYTO", True), ("CC", False), ("TO", False),
      ("FROM", False), ("SIZE", False), ("ARRIVAL", False)]),
])
def test_parse_sort_criteria(tokens: list[str], expected: list[tuple[str, bool]]) -> None:
    assert parse_sort_criteria(tokens) == expected


@pytest.mark.parametrize(("tokens", "message"), [
    ([], "empty sort criteria"),
    (["REVERSE"], "REVERSE must be followed by a sort key"),
    (["REVERSE", "REVERSE", "DATE"], "not REVERSE"),
    (["DATE", "BODY"], "unknown sort key 'BODY'"),
    (["FROM", "REVERSE", "SEQ"], "unknown sort key 'SEQ'"),
])
def test_parse_sort_criteria_errors(tokens: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_sort_criteria(tokens)


# --- THREAD (RFC 5256 4) ------------------------------------------------------------------------

def tm(seq: int, msgid: str | None, refs: Sequence[str] = (), subject: str = "",
       minute: int | None = None) -> ThreadMessage:
    """A message sent ``minute`` minutes after T0 (default: its seq)."""
    when = T0 + datetime.timedelta(minutes=seq if minute is None else minute)
    return ThreadMessage(seq, msgid, tuple(refs), subject or f"subject {seq}", when)


# The example of RFC 5256 4: "(2)(3 6 (4 23)(44 7 96))".
RFC_EXAMPLE = [
    tm(2, "m2"),
    tm(3, "m3", subject="topic"),
    tm(4, "m4", ["m3", "m6"], "Re: topic"),
    tm(6, "m6", ["m3"], "Re: topic"),
    tm(7, "m7", ["m3", "m6", "m44"], "Re: topic"),
    tm(23, "m23", ["m3", "m6", "m4"], "Re: topic"),
    tm(44, "m44", ["m3", "m6"], "Re: topic"),
    tm(96, "m96", ["m3", "m6", "m44", "m7"], "Re: topic"),
]

THREAD_CASES = [
    # (name, messages, ORDEREDSUBJECT, REFERENCES, REFS)
    ("rfc-example", RFC_EXAMPLE,
     "(2)(3 (4)(6)(7)(23)(44)(96))", "(2)(3 6 (4 23)(44 7 96))", "(2)(3 6 (4 23)(44 7 96))"),
    ("single", [tm(1, "a")], "(1)", "(1)", "(1)"),
    ("chain", [tm(1, "a", subject="x"), tm(2, "b", ["a"], "Re: x"),
               tm(3, "c", ["a", "b"], "Re: x")],
     "(1 (2)(3))", "(1 2 3)", "(1 2 3)"),
    ("siblings", [tm(1, "a", subject="x"), tm(2, "b", ["a"], "Re: x"),
                  tm(3, "c", ["a"], "Re: x")],
     "(1 (2)(3))", "(1 (2)(3))", "(1 (2)(3))"),
    # A missing message in the middle of the chain: its dummy is pruned, children promoted.
    ("broken-chain", [tm(1, "a", subject="x"), tm(2, "c", ["a", "b"], "Re: x"),
                      tm(3, "d", ["a", "b"], "Re: x")],
     "(1 (2)(3))", "(1 (2)(3))", "(1 (2)(3))"),
    # References end at a message not in the mailbox: a dummy root with two children.
    ("missing-root", [tm(1, "c", ["a", "b"], "Re: x"), tm(2, "d", ["a", "b"], "Re: x")],
     "(1 2)", "((1)(2))", "((1)(2))"),
    # ... and with one child the dummy goes away.
    ("missing-root-one", [tm(1, "c", ["a", "b"], "Re: x")], "(1)", "(1)", "(1)"),
    # References header gone between them: only the subject joins them, REFS keeps them apart.
    ("subject-reply", [tm(1, "a", subject="hello"), tm(2, "b", [], "Re: hello")],
     "(1 2)", "(1 2)", "(1)(2)"),
    # The reply comes first: the non-reply still becomes the parent.
    ("subject-reply-first", [tm(1, "b", [], "Re: hello"), tm(2, "a", subject="hello")],
     "(1 2)", "(2 1)", "(1)(2)"),
    # Two originals with the same subject: a dummy parent holds both.
    ("subject-twins", [tm(1, "a", subject="hello"), tm(2, "b", subject="Hello")],
     "(1 2)", "((1)(2))", "(1)(2)"),
    # Two replies and no original: also a dummy.
    ("subject-two-replies", [tm(1, "a", subject="Re: hello"), tm(2, "b", subject="Fwd: hello")],
     "(1 2)", "((1)(2))", "(1)(2)"),
    # A thread whose root is a dummy takes in a root message with the same subject.
    ("subject-into-dummy", [tm(1, "c", ["x"], "Re: topic"), tm(2, "d", ["x"], "Re: topic"),
                            tm(3, "e", [], "topic")],
     "(1 (2)(3))", "((1)(2)(3))", "((1)(2))(3)"),
    # Two dummy roots with the same subject are merged into one.
    ("subject-two-dummies", [tm(1, "c", ["x"], "Re: t"), tm(2, "d", ["x"], "Re: t"),
                             tm(3, "e", ["y"], "Re: t"), tm(4, "f", ["y"], "Re: t")],
     "(1 (2)(3)(4))", "((1)(2)(3)(4))", "((1)(2))((3)(4))"),
    # An empty base subject never merges.
    ("empty-subject", [tm(1, "a", subject="Re:"), tm(2, "b", subject="Re: ")],
     "(1 2)", "(1)(2)", "(1)(2)"),
    # Own References that would make a loop (b says c is its parent, c says b): the link
    # guessed from b's References is broken all the same (imaptest's "thread" script).
    ("own-references-loop", [tm(1, "a", minute=120), tm(2, "b", ["a", "c"], minute=0),
                             tm(3, "c", ["b"], minute=60)],
     "(2)(3)(1)", "(3 2)(1)", "(3 2)(1)"),
    # Missing Message-IDs: each message is unique.
    ("no-message-ids", [tm(1, None, subject="x"), tm(2, None, subject="y"),
                        tm(3, "c", [], "z")],
     "(1)(2)(3)", "(1)(2)(3)", "(1)(2)(3)"),
    # Duplicate Message-IDs: the later message counts as unique; replies go to the first.
    ("duplicate-ids", [tm(1, "a", subject="x"), tm(2, "a", subject="y"),
                       tm(3, "c", ["a"], "Re: x"), tm(4, "d", ["a"], "Re: y")],
     "(1 3)(2 4)", "(1 (3)(4))(2)", "(2)(1 (3)(4))"),
    # A loop in the References of two messages: the first link wins, no cycle.
    ("loop-pair", [tm(1, "a", ["b"], "p"), tm(2, "b", ["a"], "q")],
     "(1)(2)", "(2 1)", "(2 1)"),
    # A loop inside one References header.
    ("loop-in-references", [tm(1, "c", ["a", "b", "a"], "p")], "(1)", "(1)", "(1)"),
    ("loop-three", [tm(1, "a", ["c"], "p"), tm(2, "b", ["a"], "q"), tm(3, "c", ["b"], "r")],
     "(1)(2)(3)", "(3 1 2)", "(3 1 2)"),
    # Messages referencing themselves.
    ("self-reference", [tm(1, "a", ["a"], "p"), tm(2, "b", ["a", "b"], "q")],
     "(1)(2)", "(1 2)", "(1 2)"),
    # A message's own References override the parent guessed from another message's.
    ("own-references-win", [tm(1, "m", ["a", "b", "c"], "p"), tm(2, "b", ["z"], "q")],
     "(1)(2)", "(2 1)", "(2 1)"),
    # Siblings and threads go by sent date, not sequence number; ties by sequence number.
    ("date-order", [tm(1, "a", subject="x", minute=5), tm(2, "b", ["a"], "Re: x", minute=9),
                    tm(3, "c", ["a"], "Re: x", minute=7), tm(4, "d", subject="y", minute=1),
                    tm(5, "e", ["a"], "Re: x", minute=7)],
     "(4)(1 (3)(5)(2))", "(4)(1 (3)(5)(2))", "(4)(1 (3)(5)(2))"),
    # REFS orders threads by their newest message; REFERENCES by their root's date.
    ("refs-newest", [tm(1, "a", subject="x"), tm(2, "b", subject="y"),
                     tm(3, "c", ["b"], "Re: y"), tm(4, "d", ["a"], "Re: x")],
     "(1 4)(2 3)", "(1 4)(2 3)", "(2 3)(1 4)"),
    # ORDEREDSUBJECT: group by base subject, threads by their first message's date.
    ("ordered-subject", [tm(1, "a", subject="hello", minute=2),
                         tm(2, "b", subject="Re: hello", minute=3),
                         tm(3, "c", subject="other", minute=6),
                         tm(4, "d", subject="Fwd: hello", minute=7),
                         tm(5, "e", subject="re: other", minute=1)],
     "(5 3)(1 (2)(4))", "(1 (2)(4))(3 5)", "(5)(1)(2)(3)(4)"),
]


@pytest.mark.parametrize(("name", "messages", "ordered", "references", "refs"), THREAD_CASES,
                         ids=[c[0] for c in THREAD_CASES])
def test_thread(name: str, messages: list[ThreadMessage], ordered: str, references: str,
                refs: str) -> None:
    assert format_threads(thread_messages(messages, "ORDEREDSUBJECT")) == ordered
    assert format_threads(thread_messages(messages, "REFERENCES")) == references
    assert format_threads(thread_messages(messages, "refs")) == refs
    # The input order does not matter.
    assert format_threads(thread_messages(list(reversed(messages)), "REFERENCES")) == references


def test_thread_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown threading algorithm 'X'"):
        thread_messages([], "X")


def test_thread_empty() -> None:
    assert thread_messages([], "REFERENCES") == []
    assert format_threads([]) == ""


N = ThreadNode


@pytest.mark.parametrize(("threads", "text"), [
    ([N(1)], "(1)"),
    ([N(1), N(2)], "(1)(2)"),
    ([N(1, [N(2)])], "(1 2)"),
    ([N(1, [N(2, [N(3)])])], "(1 2 3)"),
    ([N(1, [N(2), N(3)])], "(1 (2)(3))"),
    ([N(None, [N(3), N(5)])], "((3)(5))"),
    ([N(None, [N(3, [N(4)]), N(5)])], "((3 4)(5))"),
    ([N(3, [N(6, [N(4, [N(23)]), N(44, [N(7, [N(96)])])])])], "(3 6 (4 23)(44 7 96))"),
    ([N(1, [N(2, [N(3), N(4, [N(5), N(6)])])])], "(1 2 (3)(4 (5)(6)))"),
])
def test_format_threads(threads: list[ThreadNode], text: str) -> None:
    assert format_threads(threads) == text


def test_format_long_chain() -> None:
    root = node = N(1)
    for seq in range(2, 5001):
        child = N(seq)
        node.children.append(child)
        node = child
    assert format_threads([root]) == "(" + " ".join(map(str, range(1, 5001))) + ")"
    chain = [tm(1, "m1")] + [tm(i, f"m{i}", [f"m{i - 1}"]) for i in range(2, 3001)]
    assert format_threads(thread_messages(chain, "REFERENCES")) == (
        "(" + " ".join(map(str, range(1, 3001))) + ")")


@pytest.mark.parametrize(("value", "ids"), [
    (None, []),
    ("", []),
    ("<a@b>", ["a@b"]),
    ("  <a@b> <c@d>\r\n <e\r\n @f>", ["a@b", "c@d", "e@f"]),
    ("<> junk <x@y>", ["x@y"]),
])
def test_parse_msgids(value: str | None, ids: list[str]) -> None:
    assert parse_msgids(value) == ids


def test_thread_message_from_envelope() -> None:
    msg = Msg(7, internaldate=day(3), envelope=env(
        "Fri, 02 Jan 2026 00:00:00 +0000", "Re: x", in_reply_to="<p@h> <q@h>",
        message_id="<me@h>"))
    assert thread_message(msg, "<r@h> <s@h>") == ThreadMessage(
        7, "me@h", ("r@h", "s@h"), "Re: x", day(1))
    # No References: the first In-Reply-To id; no Date: the internal date.
    msg.envelope = env(None, None, in_reply_to="<p@h> <q@h>")
    assert thread_message(msg, None) == ThreadMessage(7, None, ("p@h",), "", day(3))


# --- properties on random reference graphs ------------------------------------------------------

IDS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
SUBJECTS = st.sampled_from(["x", "Re: x", "Fwd: x", "[fwd: x]", "y", "Re: y", "", "Re:"])


@st.composite
def corpora(draw: st.DrawFn) -> list[ThreadMessage]:
    n = draw(st.integers(0, 12))
    seqs = draw(st.permutations(range(1, n + 1)))
    return [
        ThreadMessage(seq, draw(st.none() | IDS), tuple(draw(st.lists(IDS, max_size=5))),
                      draw(SUBJECTS), T0 + datetime.timedelta(minutes=draw(st.integers(0, 4))))
        for seq in seqs
    ]


def _walk(threads: list[ThreadNode]) -> tuple[list[int], list[ThreadNode]]:
    seqs: list[int] = []
    nodes: list[ThreadNode] = []
    seen: set[int] = set()
    stack = list(threads)
    while stack:
        node = stack.pop()
        assert id(node) not in seen, "a node appears twice: cycle or shared subtree"
        seen.add(id(node))
        nodes.append(node)
        if node.seq is not None:
            seqs.append(node.seq)
        stack.extend(node.children)
    return seqs, nodes


@settings(max_examples=300, deadline=None)
@given(corpora(), st.sampled_from(["ORDEREDSUBJECT", "REFERENCES", "REFS"]))
def test_thread_properties(messages: list[ThreadMessage], algorithm: str) -> None:
    threads = thread_messages(messages, algorithm)
    seqs, nodes = _walk(threads)
    assert sorted(seqs) == sorted(m.seq for m in messages)
    for node in nodes:
        if node.seq is None:
            # A dummy only ever joins two or more threads (RFC 5256 4 step 4.C and 5.D).
            assert len(node.children) >= 2
            assert all(child.seq is not None for child in node.children)
    text = format_threads(threads)
    assert sorted(int(n) for n in re.findall(r"\d+", text)) == sorted(seqs)
    assert _is_thread_response(text)


def _is_thread_response(text: str) -> bool:
    """RFC 5256 4: thread-list = "(" (thread-members / thread-nested) ")";
    thread-members = nz-number *(SP nz-number) [SP thread-nested];
    thread-nested = 2*thread-list."""
    pos = 0

    def thread_list() -> bool:
        nonlocal pos
        if not text.startswith("(", pos):
            return False
        pos += 1
        if text.startswith("(", pos):
            if not nested():
                return False
        else:
            m = re.compile(r"[1-9]\d*(?: [1-9]\d*)*").match(text, pos)
            if not m:
                return False
            pos = m.end()
            if text.startswith(" ", pos):
                pos += 1
                if not nested():
                    return False
        if not text.startswith(")", pos):
            return False
        pos += 1
        return True

    def nested() -> bool:
        count = 0
        while text.startswith("(", pos):
            if not thread_list():
                return False
            count += 1
        return count >= 2

    while pos < len(text):
        if not thread_list():
            return False
    return True


SUBJECT_TEXT = st.text(alphabet=st.sampled_from(list("ReFwd:[]() \tx=?")), max_size=30)


@settings(max_examples=300, deadline=None)
@given(SUBJECT_TEXT)
def test_base_subject_properties(subject: str) -> None:
    base, reply = base_subject_info(subject)
    assert base == base.strip(" ") and "  " not in base and "\t" not in base
    assert not base.lower().endswith("(fwd)")
    if not reply:
        # Nothing but blanks and subj-blobs was removed.
        assert base in " ".join(subject.split())


ADDRESSES = st.none() | st.lists(
    st.lists(st.none() | st.sampled_from(["", "a", "B", "=?utf-8?q?=C3=A9?=", "c d"]),
             min_size=4, max_size=4), max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 100),
                          st.none() | st.sampled_from(["Mon, 05 Jan 2026 10:00:00 +0200", "junk",
                                                       "Tue, 31 Feb 2026 99:00:00 +9999"]),
                          st.none() | SUBJECT_TEXT, ADDRESSES, ADDRESSES), max_size=8),
       st.lists(st.tuples(st.sampled_from(sorted(["ARRIVAL", "CC", "DATE", "FROM", "SIZE",
                                                  "SUBJECT", "TO", "DISPLAYFROM",
                                                  "DISPLAYTO"])), st.booleans()),
                min_size=1, max_size=3))
def test_sort_properties(rows: list[tuple[int, int, str | None, str | None, object, object]],
                         keys: list[tuple[str, bool]]) -> None:
    messages = [Msg(seq, size, day(d), env(date, subject, frm, to, frm))
                for seq, (d, size, date, subject, frm, to) in enumerate(rows, 1)]
    order = sort_messages(messages, keys)
    assert sorted(order) == list(range(1, len(rows) + 1))
    # Sorting again by the same keys is stable: the answer does not depend on input order.
    assert sort_messages(list(reversed(messages)), keys) == order


def _email_utils_date(value: str, fallback: datetime.datetime) -> datetime.datetime:
    """RFC 5256 DATE read by the standard library alone (what sent_date must equal)."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return fallback
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return fallback


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["", "Mon, ", "mon, ", "Xyz, ", "Mon "]),
       st.integers(0, 39), st.sampled_from(["Jan", "feb", "MAR", "Dec", "Foo", "June"]),
       st.integers(0, 9999), st.integers(0, 99), st.integers(0, 99), st.integers(0, 99),
       st.sampled_from(["+", "-"]), st.integers(0, 99), st.integers(0, 99),
       st.sampled_from(["", " (CET)", " GMT"]))
def test_sent_date_matches_email_utils(day_name: str, dd: int, month: str, year: int, hh: int,
                                       mi: int, ss: int, sign: str, zh: int, zm: int,
                                       tail: str) -> None:
    value = (f"{day_name}{dd:02d} {month} {year:04d} {hh:02d}:{mi:02d}:{ss:02d} "
             f"{sign}{zh:02d}{zm:02d}{tail}")
    fallback = day(9)
    expected = _email_utils_date(value, fallback)
    assert sent_date(value, fallback) == expected
    micros = sent_date_micros(value, int(fallback.timestamp()))
    assert micros == (expected - datetime.datetime(1970, 1, 1, tzinfo=UTC)) // datetime.timedelta(
        microseconds=1)
