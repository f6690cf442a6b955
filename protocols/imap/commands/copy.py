"""COPY (RFC 3501 6.4.7, COPYUID of RFC 4315) and MOVE (RFC 6851)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..parser import Command, ImapParseError
from ..responses import No, seqset_text
from .registry import SELECTED, command

if TYPE_CHECKING:
    from ..session import ImapSession


@command("COPY", SELECTED, uid=True)
async def cmd_copy(s: ImapSession, cmd: Command, by_uid: bool) -> None:
    await copy_messages(s, cmd, move=False)


@command("MOVE", SELECTED, uid=True)
async def cmd_move(s: ImapSession, cmd: Command, by_uid: bool) -> None:
    await copy_messages(s, cmd, move=True)


async def copy_messages(s: ImapSession, cmd: Command, move: bool) -> None:
    assert s.sel is not None
    if len(cmd.args) != 2:
        raise ImapParseError(f"{cmd.name} needs a sequence set and a mailbox name")
    uids = s.msg_set(cmd, cmd.args[0])
    name = s.mailbox_name(cmd.args[1])
    try:
        dest = await s.open_box(name)
    except No:
        raise No("Mailbox doesn't exist: " + s.text_name(s.canon(name)) + ".",
                 "TRYCREATE") from None
    if move and s.sel.readonly:
        raise No("Mailbox is read-only.", "READ-ONLY")
    box = s.sel.box
    if move:
        pairs = await box.move(uids, dest)
        s.deleted += len(pairs)
    else:
        pairs = await box.copy(uids, dest)
    code = None
    if pairs:
        code = (f"COPYUID {dest.state.uidvalidity} {seqset_text([src for src, _ in pairs])} "
                f"{seqset_text([d for _, d in pairs])}")
    if move:
        if code:
            s.emit(f"* OK [{code}] Moved UIDs.\r\n")
        await s.sync(allow_expunge=True)
        s.ok(cmd, "Move completed")
    else:
        await s.after_command(cmd)
        s.ok(cmd, "Copy completed", code)

