"""SEARCH (RFC 3501 6.4.4) with ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and
CONTEXT=SEARCH (RFC 5267), and CANCELUPDATE (RFC 5267 4.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudcote.core.mail import search as searchmod

from ..parser import Command, ImapParseError, as_string
from ..responses import ReturnOptions, esearch_line, result_modseq, saved_of
from ..search_args import expand_saved, return_options
from ..selected import SearchContext
from .registry import SELECTED, command

if TYPE_CHECKING:
    from ..session import ImapSession


@command("SEARCH", SELECTED, uid=True)
async def cmd_search(s: ImapSession, cmd: Command, by_uid: bool) -> None:
    """SEARCH with ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and CONTEXT=SEARCH
    (RFC 5267); under IMAP4rev2 the answer is always ESEARCH (RFC 9051 6.4.4)."""
    sel = s.sel
    assert sel is not None
    ret, args = return_options(list(cmd.args))
    if ret is None and s.rev2:
        ret = ReturnOptions(items={"ALL"})
    charset = "UTF-8"
    if len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "CHARSET":
        charset = as_string(args[1], "charset").decode("ascii", "replace")
        args = args[2:]
    args = expand_saved(args, s.saved_uids())
    if ret is not None and ret.save:
        sel.saved = []  # a SEARCH that fails leaves $ empty (RFC 5182 2.1)
    key, found = await s.matching(args, charset)
    numbers = [m.uid if by_uid else seq for seq, m in found]
    modseq = result_modseq(found, ret) if searchmod.uses_modseq(key) else None
    if modseq is not None:
        s.enable_condstore()
    if ret is None:
        line = "* SEARCH" + "".join(f" {n}" for n in numbers)
        if modseq is not None and numbers:
            line += f" (MODSEQ {modseq})"
        s.emit(line + "\r\n")
    else:
        text = esearch_line(cmd.tag, by_uid, numbers, ret, ordered=False, modseq=modseq)
        if text is not None:
            s.emit(text + "\r\n")
        if ret.save:
            sel.saved = saved_of(ret, [m.uid for _, m in found], ordered=False)
        if ret.update:
            s.keep_context(cmd.tag, SearchContext(
                key, by_uid, None, [m.uid for _, m in found], s.mailbox_version()))
    await s.after_command(cmd)
    s.ok(cmd)


@command("CANCELUPDATE", SELECTED)
async def cmd_cancelupdate(s: ImapSession, cmd: Command) -> None:
    """RFC 5267 4.3: stop updating the searches with these tags."""
    assert s.sel is not None
    if not cmd.args:
        raise ImapParseError("CANCELUPDATE needs tags")
    for tok in cmd.args:
        s.sel.contexts.pop(as_string(tok, "tag").decode("ascii", "replace"), None)
    s.ok(cmd)

