"""FETCH (RFC 3501 6.4.5) with CHANGEDSINCE and VANISHED (RFC 7162); the message data
itself is rendered by the protocol's fetch module, read ahead with ``Prefetch``."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from cloudcote.core.mail import search as searchmod
from cloudcote.core.mail.api import MessageExpunged
from cloudcote.core.mail.prefetch import Prefetch

from ..fetch import (
    UnknownCte,
    parse_fetch_items,
    render,
    render_meta,
    render_meta_block,
    response_items,
)
from ..parser import Command, ImapParseError, as_atom, as_list, as_number
from ..responses import Bad, No, seqset_text
from .registry import SELECTED, command

if TYPE_CHECKING:
    from cloudcote.core.mail import api

    from ..session import ImapSession

#: Messages rendered per block when a FETCH asks for index items only.
META_BLOCK = 256


@command("FETCH", SELECTED, uid=True)
async def cmd_fetch(s: ImapSession, cmd: Command, by_uid: bool) -> None:
    assert s.sel is not None
    if len(cmd.args) not in (2, 3):
        raise ImapParseError("FETCH needs a sequence set and items")
    req = parse_fetch_items(cmd.args[1])
    changedsince: int | None = None
    vanished = False
    if len(cmd.args) == 3:
        mods = as_list(cmd.args[2], "FETCH modifiers")
        i = 0
        while i < len(mods):
            mod = as_atom(mods[i], "FETCH modifier").upper()
            if mod == "CHANGEDSINCE" and i + 1 < len(mods):
                changedsince = as_number(mods[i + 1], "CHANGEDSINCE", 2**63 - 1)
                i += 2
            elif mod == "VANISHED" and by_uid and s.qresync:
                vanished = True
                i += 1
            else:
                raise ImapParseError(f"unknown FETCH modifier {mod[:20]}")
        if vanished and changedsince is None:
            raise ImapParseError("VANISHED needs CHANGEDSINCE")
        s.enable_condstore()
    if "MODSEQ" in req.items:
        s.enable_condstore()
    await s.refresh()
    try:
        uids = s.msg_set(cmd, cmd.args[0])
    except No:
        uids = []
        if not by_uid:
            raise Bad("Invalid messageset: no messages") from None
    box = s.sel.box
    st = box.state
    if vanished and changedsince is not None:
        gone = [u for u in st.expunged_since(changedsince)
                if u <= (s.sel.view[-1] if s.sel.view else 0)]
        text = as_atom(cmd.args[0], "UID set")
        if text == "$":
            ranges = [(u, u) for u in s.saved_uids()]
        else:
            sset = searchmod.parse_sequence_set(text)
            ranges = sset.resolve(s.sel.view[-1] if s.sel.view else 0)
        gone = [u for u in gone if any(lo <= u <= hi for lo, hi in ranges)]
        if gone:
            s.emit(f"* VANISHED (EARLIER) {seqset_text(gone)}\r\n")
    set_seen = req.sets_seen and not s.sel.readonly
    # RFC 7162 3.1.4: a FETCH that sets \Seen reports UID and MODSEQ under CONDSTORE.
    with_modseq = s.condstore and (changedsince is not None or "MODSEQ" in req.items
                                   or set_seen)
    with_uid = by_uid or (s.condstore and set_seen)
    if changedsince is not None:
        uids = [u for u in uids if u in st.messages and st.messages[u].modseq > changedsince]
    if set_seen:
        unseen = [u for u in uids if u in st.messages and
                  "\\Seen" not in st.messages[u].flags]
        if unseen:
            await box.store(unseen, "+", ["\\Seen"])
            st = box.state
    s.announce_keywords()
    missing = False
    view = s.sel.view
    jobs: list[tuple[int, api.Message]] = []
    for uid in uids:
        m = st.messages.get(uid)
        if m is None:
            missing = True
            continue
        seq = bisect.bisect_left(view, uid) + 1
        jobs.append((seq, m))
    recent = s.sel.recent
    # RFC 3501 6.4.5: FLAGS go out with the data only where this FETCH set \Seen.
    newly_seen = set(unseen) if set_seen else set()
    needs_io = req.needs_cache or req.needs_message or bool(req.bodies)

    async def one(seq: int, m: api.Message) -> bytes | None:
        try:
            return await render(box, m, req, seq=seq, recent=m.uid in recent,
                                with_uid=with_uid, with_modseq=with_modseq,
                                flags=m.flags if m.uid in newly_seen else None)
        except MessageExpunged:
            return None
        except UnknownCte as exc:
            raise No(str(exc), "UNKNOWN-CTE") from None

    if not needs_io:
        # Index items only: rendered without awaiting anything per message.
        plain = response_items(req, with_uid=with_uid, with_modseq=with_modseq, flags=False)
        with_flags = response_items(req, with_uid=with_uid, with_modseq=with_modseq,
                                    flags=True)
        if newly_seen:
            for seq, m in jobs:
                items = with_flags if m.uid in newly_seen else plain
                s.emit(render_meta(m, items, seq=seq, recent=m.uid in recent))
                await s.maybe_flush()
        else:
            for start in range(0, len(jobs), META_BLOCK):
                s.emit(render_meta_block(jobs[start:start + META_BLOCK], plain,
                                         recent=recent))
                await s.maybe_flush()
    elif not (req.needs_message or req.bodies):
        # Cached fields only: read the cache chunks ahead (a chunk holds many messages'
        # entries), and render each message once its chunk is in.
        runs: list[tuple[str | None, list[tuple[int, api.Message]]]] = []
        for job in jobs:
            name = box.cache_chunk_name(job[1])
            if runs and runs[-1][0] == name:
                runs[-1][1].append(job)
            else:
                runs.append((name, [job]))

        async def load(run: tuple[str | None, list[tuple[int, api.Message]]]) -> None:
            if run[0] is not None:
                await box.cache_chunk(run[0])

        async with Prefetch(runs, load,
                            count=box.settings.prefetch_count) as chunks:
            async for loaded in chunks:
                loaded.result()
                for seq, m in loaded.job[1]:
                    data = await one(seq, m)
                    if data is None:
                        missing = True
                        continue
                    s.emit(data)
                    await s.maybe_flush()
    else:
        settings = box.settings
        async with Prefetch(jobs, lambda job: one(*job), count=settings.prefetch_count,
                            max_bytes=settings.prefetch_bytes,
                            size=lambda job: job[1].size) as ahead:
            async for done in ahead:
                data = done.result()
                if data is None:
                    missing = True
                    continue
                s.emit(data)
                s.fetched += 1 if req.bodies or req.needs_message else 0
                await s.maybe_flush()
    if set_seen:
        for _, m in jobs:
            cur = st.messages.get(m.uid)
            if cur is not None:
                s.sel.reported[m.uid] = cur.modseq
    await s.after_command(cmd)
    if missing:
        raise No("Some of the requested messages no longer exist.", "EXPUNGEISSUED")
    s.ok(cmd)

