"""Listing renderers of large mailboxes give byte for byte what the generic ones give:
the one-pass ENVELOPE and the block rendering of index-only FETCH items."""

from __future__ import annotations

from cloudcote.core.mail.index import Message
from cloudcote.protocols.imap.fetch import render_meta, render_meta_block
from cloudcote.protocols.imap.values import serialize, serialize_envelope


def test_envelope_fast_path_matches_generic_form() -> None:
    addr = [["Bob", None, "bob", "example.org"]]
    envs = [
        ["Tue, 1 Dec 2026 10:00:00 +0000", "plain", addr, addr, addr, [], None, None, None,
         "<1@x>"],
        ["d", 'a "quoted" \\ word', addr, None, None, None, None, None, None, None],
        ["d", "caf\u00e9", None, None, None, None, None, None, None, None],
        ["d", "line\r\nbreak", None, None, None, None, None, None, None, None],
        ["d", "", [["a", None, "b", "c"], [None, "route", None, None]], None, None, None,
         None, None, None, None],
    ]
    for env in envs:
        assert serialize_envelope(env) == serialize(env)


def test_meta_block_matches_one_by_one() -> None:
    flagsets = [frozenset(), frozenset({"\\Seen"}), frozenset({"$Work", "\\Flagged"})]
    msgs = [Message(uid, f"{uid:032x}", f"l{uid}", 100 + uid, 1_700_000_000, 0,
                    flagsets[uid % 3], 5 + uid) for uid in range(3, 40, 2)]
    jobs = list(enumerate(msgs, 1))
    recent = {7, 9}
    for items in (["FLAGS"], ["UID", "FLAGS"], ["UID", "FLAGS", "MODSEQ"],
                  ["RFC822.SIZE", "UID", "FLAGS", "INTERNALDATE"]):
        block = render_meta_block(jobs, items, recent=recent)
        assert block == b"".join(render_meta(m, items, seq=seq, recent=m.uid in recent)
                                 for seq, m in jobs)
    assert b"* 3 FETCH (UID 7 FLAGS (\\Seen \\Recent))\r\n" in render_meta_block(
        jobs, ["UID", "FLAGS"], recent=recent)
