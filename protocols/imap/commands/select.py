"""Selecting a mailbox (RFC 3501 6.3.1-6.3.2, 6.4.1-6.4.2): SELECT and EXAMINE with
CONDSTORE and QRESYNC (RFC 7162), CHECK, CLOSE and UNSELECT (RFC 3691)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudcote.core.mail import search as searchmod
from cloudcote.core.mail.api import SEP

from ..fetch import flags_list
from ..parser import Command, ImapParseError, Token, as_atom, as_list, as_number
from ..responses import Bad, all_flags, seqset_text
from ..selected import Selected
from .registry import AUTHED, SELECTED, command

if TYPE_CHECKING:
    from ..session import ImapSession


@command("SELECT", AUTHED)
async def cmd_select(s: ImapSession, cmd: Command) -> None:
    await select_mailbox(s, cmd, readonly=False)


@command("EXAMINE", AUTHED)
async def cmd_examine(s: ImapSession, cmd: Command) -> None:
    await select_mailbox(s, cmd, readonly=True)


async def select_mailbox(s: ImapSession, cmd: Command, readonly: bool) -> None:
    if not cmd.args or len(cmd.args) > 2:
        raise ImapParseError(f"{cmd.name} needs a mailbox name")
    name = s.mailbox_name(cmd.args[0])
    qresync: list[Token] | None = None
    if len(cmd.args) == 2:
        params = as_list(cmd.args[1], "select parameters")
        i = 0
        while i < len(params):
            p = as_atom(params[i], "select parameter").upper()
            if p == "CONDSTORE":
                s.condstore = True
            elif p == "QRESYNC":
                if not s.qresync:
                    raise Bad("QRESYNC must be enabled first")
                if i + 1 >= len(params):
                    raise ImapParseError("QRESYNC needs parameters")
                qresync = as_list(params[i + 1], "QRESYNC parameters")
                i += 1
            else:
                raise ImapParseError(f"unknown select parameter {p[:30]}")
            i += 1
    if s.sel is not None:
        s.sel = None
        s.state = "authenticated"
        s.emit("* OK [CLOSED] Previous mailbox closed.\r\n")
    assert s.mail is not None
    box = await s.open_box(name)
    await box.refresh()
    st = box.state
    view = list(st.uids)
    sel = Selected(box=box, readonly=readonly, view=view, known_modseq=st.highest_modseq,
                   keywords=frozenset(st.keywords))
    sel.version = (st.highest_modseq, st.next_uid, st.exists)
    s.emit(f"* FLAGS ({' '.join(all_flags(sel.keywords))})\r\n")
    if readonly:
        s.emit("* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n")
    else:
        s.emit(f"* OK [PERMANENTFLAGS ({' '.join(all_flags(sel.keywords))} \\*)] "
               "Flags permitted.\r\n")
    s.emit(f"* {len(view)} EXISTS\r\n")
    if not s.rev2:
        sel.recent = await s.recent_of(box, view, readonly=readonly)
    if s.rev2:
        # RFC 9051 6.3.2: no RECENT nor UNSEEN; the mailbox's name as the server has it.
        s.emit(b'* LIST () "' + SEP.encode() + b'" ' + s.wire_name(box.name)
               + b"\r\n")
    else:
        s.emit(f"* {len(sel.recent)} RECENT\r\n")
        first_unseen = next((i for i, uid in enumerate(view, 1)
                             if uid in st.messages
                             and "\\Seen" not in st.messages[uid].flags), None)
        if first_unseen is not None:
            s.emit(f"* OK [UNSEEN {first_unseen}] First unseen.\r\n")
    s.emit(f"* OK [UIDVALIDITY {st.uidvalidity}] UIDs valid\r\n"
           f"* OK [UIDNEXT {st.next_uid}] Predicted next UID\r\n")
    s.emit(f"* OK [HIGHESTMODSEQ {st.highest_modseq}] Highest\r\n")
    s.sel = sel
    s.state = "selected"
    if qresync is not None:
        await qresync_select(s, qresync)
    s.ok(cmd, "Select completed" if not readonly else "Examine completed",
         "READ-ONLY" if readonly else "READ-WRITE")


async def qresync_select(s: ImapSession, params: list[Token]) -> None:
    """RFC 7162 3.2.5: what changed since the client's known MODSEQ."""
    assert s.sel is not None
    st = s.sel.box.state
    if len(params) < 2:
        raise ImapParseError("QRESYNC needs UIDVALIDITY and MODSEQ")
    uidvalidity = as_number(params[0], "UIDVALIDITY")
    modseq = as_number(params[1], "MODSEQ", 2**63 - 1)
    # known-uids name UIDs the client has, expunged ones included: not the view.
    known = [(1, st.next_uid - 1)]
    if len(params) >= 3 and isinstance(params[2], str):
        try:
            known = searchmod.parse_sequence_set(params[2]).resolve(st.next_uid - 1)
        except searchmod.SearchError:
            raise ImapParseError("invalid known-uids") from None
    if uidvalidity != st.uidvalidity:
        return
    vanished = [u for u in st.expunged_since(modseq)
                if any(lo <= u <= hi for lo, hi in known)]
    if vanished:
        s.emit(f"* VANISHED (EARLIER) {seqset_text(vanished)}\r\n")
    for seq, uid in enumerate(s.sel.view, 1):
        m = st.messages[uid]
        if m.modseq > modseq and any(lo <= uid <= hi for lo, hi in known):
            s.emit(f"* {seq} FETCH (UID {uid} FLAGS "
                   f"{flags_list(m.flags).decode()} MODSEQ ({m.modseq}))\r\n")


@command("CHECK", SELECTED)
async def cmd_check(s: ImapSession, cmd: Command) -> None:
    await s.refresh(force=True)
    await s.after_command(cmd)
    s.ok(cmd)


@command("CLOSE", SELECTED)
async def cmd_close(s: ImapSession, cmd: Command) -> None:
    assert s.sel is not None
    if not s.sel.readonly:
        gone = await s.sel.box.expunge(None)
        s.deleted += len(gone)
    s.sel = None
    s.state = "authenticated"
    s.ok(cmd)


@command("UNSELECT", SELECTED)
async def cmd_unselect(s: ImapSession, cmd: Command) -> None:
    s.sel = None
    s.state = "authenticated"
    s.ok(cmd)

