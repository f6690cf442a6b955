"""Index snapshots: the columnar encoding (version 2) round-trips every field, and a
version 1 snapshot (one JSON list per message) still opens to the same state."""

from __future__ import annotations

import json
import zlib

from cloudcote.core.mail.index import CACHE_CHUNK_MIN, MailboxState


def _state() -> MailboxState:
    st = MailboxState("g" * 32, 1234)
    records = []
    for i in range(CACHE_CHUNK_MIN + 5):
        flags = [["\\Seen"], [], ["\\Flagged", "$Work"]][i % 3]
        records.append(["a", f"{i:032x}", f"loc{i}", 100 + i, 1_700_000_000 + i, 60, flags,
                        {"env": [None, f"subject {i}"]}])
    st.apply(records, (1, 0))
    st.take_cache_chunk("box")  # every entry so far into a chunk
    st.apply([["a", "f" * 32, "locf", 7, 1, 0, [], {"env": None}]], (1, 1))
    st.apply([["x", [[3, 4]]], ["f", [[1, 2]], "+", ["\\Answered"], None], ["r", 10]], (1, 2))
    st.purgeable.add("p" * 32)
    return st


def _v1(st: MailboxState) -> bytes:
    """A snapshot as version 1 wrote it."""
    doc = {
        "v": 1, "guid": st.guid, "uidvalidity": st.uidvalidity, "next_uid": st.next_uid,
        "hms": st.highest_modseq, "rf": st.recent_from,
        "msgs": [m.to_json() for m in st], "exp": st.expunged, "kw": sorted(st.keywords),
        "pg": sorted(st.purgeable), "loose": st.loose_cache, "chunks": st.cache_chunks,
        "where": {m.guid: st.cache_where[m.guid] for m in st if m.guid in st.cache_where},
    }
    return zlib.compress(json.dumps(doc).encode())


def _fields(st: MailboxState) -> dict[str, object]:
    out = dict(vars(st))
    out.pop("changes")
    # Snapshots keep the chunk of live messages only.
    out["cache_where"] = {m.guid: st.cache_where[m.guid] for m in st
                          if m.guid in st.cache_where}
    return out


def test_columnar_snapshot_round_trips() -> None:
    st = _state()
    blob = st.encode_snapshot()
    doc = json.loads(zlib.decompress(blob))
    assert doc["v"] == 2 and "msgs" not in doc and len(doc["uid"]) == st.exists
    # Seen, none, Flagged+$Work, and UIDs 1 and 2 with Answered added
    assert len(doc["flagsets"]) == 5
    back = MailboxState.decode_snapshot(blob)
    assert _fields(back) == _fields(st)
    assert back.cache_where and back.unseen == st.unseen and back.total_size == st.total_size


def test_version_1_snapshot_still_opens() -> None:
    st = _state()
    old = MailboxState.decode_snapshot(_v1(st))
    assert _fields(old) == _fields(st)
    assert _fields(MailboxState.decode_snapshot(old.encode_snapshot())) == _fields(st)
