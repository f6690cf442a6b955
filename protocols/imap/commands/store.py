"""STORE (RFC 3501 6.4.6) with UNCHANGEDSINCE (RFC 7162 3.1.3)."""

from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING

from ..fetch import flags_list
from ..parser import Command, ImapParseError, as_atom, as_list, as_number, parse_flags
from ..responses import No, seqset_text
from .registry import SELECTED, command

if TYPE_CHECKING:
    from ..session import ImapSession


@command("STORE", SELECTED, uid=True)
async def cmd_store(s: ImapSession, cmd: Command, by_uid: bool) -> None:
    assert s.sel is not None
    args = list(cmd.args)
    if len(args) < 3:
        raise ImapParseError("STORE needs a sequence set, an item and flags")
    unchangedsince: int | None = None
    if isinstance(args[1], list):
        mods = as_list(args.pop(1), "STORE modifiers")
        if (len(mods) != 2 or not isinstance(mods[0], str)
                or mods[0].upper() != "UNCHANGEDSINCE"):
            raise ImapParseError("unknown STORE modifier")
        unchangedsince = as_number(mods[1], "UNCHANGEDSINCE", 2**63 - 1)
        s.enable_condstore()
    if len(args) < 3:
        raise ImapParseError("STORE needs flags")
    item = as_atom(args[1], "STORE item").upper()
    m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", item)
    if m is None:
        raise ImapParseError(f"unknown STORE item {item[:30]}")
    mode = m.group(1) or "="
    silent = bool(m.group(2))
    flag_toks = args[2] if isinstance(args[2], list) and len(args) == 3 else args[2:]
    if not isinstance(flag_toks, list):
        raise ImapParseError("bad flag list")
    flags = parse_flags(flag_toks)
    if s.sel.readonly:
        raise No("Mailbox is read-only.", "READ-ONLY")
    uids = s.msg_set(cmd, args[0])
    box = s.sel.box
    result = await box.store(uids, mode, flags, unchangedsince) if uids else \
        {"changed": [], "failed": []}
    st = box.state
    s.announce_keywords()
    failed = set(result["failed"])
    view = s.sel.view
    for uid in uids:
        msg = st.messages.get(uid)
        if msg is None or uid in failed:
            continue
        seq = bisect.bisect_left(view, uid) + 1
        if not silent or (unchangedsince is not None and uid in result["changed"]):
            parts = []
            if by_uid or s.condstore:  # RFC 7162 3.1.4: UID and MODSEQ
                parts.append(f"UID {uid}")
            parts.append("FLAGS " + flags_list(msg.flags, uid in s.sel.recent).decode())
            if s.condstore:
                parts.append(f"MODSEQ ({msg.modseq})")
            s.emit(f"* {seq} FETCH ({' '.join(parts)})\r\n")
            s.sel.reported[uid] = msg.modseq
        elif silent:
            s.sel.reported[uid] = msg.modseq
    await s.after_command(cmd)
    if failed:
        nums = sorted(failed) if by_uid else sorted(
            bisect.bisect_left(view, u) + 1 for u in failed if u in set(view))
        s.ok(cmd, "Conditional store failed", f"MODIFIED {seqset_text(nums)}")
    else:
        s.ok(cmd)

