"""EXPUNGE (RFC 3501 6.4.3) and UID EXPUNGE (RFC 4315)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..parser import Command, ImapParseError, as_atom
from ..responses import No
from .registry import SELECTED, command

if TYPE_CHECKING:
    from ..session import ImapSession


@command("EXPUNGE", SELECTED)
async def cmd_expunge(s: ImapSession, cmd: Command) -> None:
    await expunge_uids(s, cmd, None)


@command("UID EXPUNGE", SELECTED)
async def cmd_uid_expunge(s: ImapSession, cmd: Command) -> None:
    if len(cmd.args) != 1:
        raise ImapParseError("UID EXPUNGE needs a UID set")
    await expunge_uids(s, cmd, s.uid_set(as_atom(cmd.args[0], "UID set")))


async def expunge_uids(s: ImapSession, cmd: Command, uids: list[int] | None) -> None:
    assert s.sel is not None
    if s.sel.readonly:
        raise No("Mailbox is read-only.", "READ-ONLY")
    box = s.sel.box
    await box.refresh()
    if uids is None:
        victims = [m.uid for m in box.state if "\\Deleted" in m.flags]
    else:
        victims = [u for u in uids if u in box.state.messages
                   and "\\Deleted" in box.state.messages[u].flags]
    gone = await box.expunge(victims) if victims else []
    s.deleted += len(gone)
    await s.sync(allow_expunge=True)
    code = f"HIGHESTMODSEQ {box.state.highest_modseq}" if s.condstore else None
    s.ok(cmd, "Expunge completed", code)

