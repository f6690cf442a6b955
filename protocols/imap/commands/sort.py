"""SORT (RFC 5256, RFC 5957) with ESORT and CONTEXT=SORT (RFC 5267), and THREAD
(RFC 5256: ORDEREDSUBJECT, REFERENCES, REFS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudcote.core.mail import sort as sortmod

from .. import sorting
from ..parser import Command, ImapParseError, as_atom, as_list, as_string
from ..responses import esearch_line, saved_of
from ..search_args import expand_saved, return_options
from ..selected import SearchContext
from .registry import SELECTED, command

if TYPE_CHECKING:
    from ..session import ImapSession


def _renumber(node: sortmod.ThreadNode, to: Callable[[int], int]) -> sortmod.ThreadNode:
    """A thread tree with its sequence numbers mapped (UID THREAD)."""
    return sortmod.ThreadNode(None if node.seq is None else to(node.seq),
                              [_renumber(c, to) for c in node.children])


@command("SORT", SELECTED, uid=True)
async def cmd_sort(s: ImapSession, cmd: Command, by_uid: bool) -> None:
    """RFC 5256 SORT (with RFC 5957 DISPLAYFROM/DISPLAYTO), RFC 5267 ESORT
    (``SORT RETURN (...)``) with CONTEXT=SORT, and SAVE (RFC 5182)."""
    sel = s.sel
    assert sel is not None
    ret, args = return_options(list(cmd.args))
    if len(args) < 3:
        raise ImapParseError("SORT needs sort criteria, a charset and search criteria")
    try:
        keys = sortmod.parse_sort_criteria(
            [as_atom(t, "sort key") for t in as_list(args[0], "sort criteria")])
    except ValueError as exc:
        raise ImapParseError(str(exc)) from None
    charset = as_string(args[1], "charset").decode("ascii", "replace")
    criteria = expand_saved(list(args[2:]), s.saved_uids())
    if ret is not None and ret.save:
        sel.saved = []
    key, found = await s.matching(criteria, charset)
    if ret is None and not by_uid:
        s.emit(await sorting.sort_line(sel.box, found, keys))
    else:
        order = await sorting.sort_order(sel.box, found, keys)
        uid_of = {seq: m.uid for seq, m in found}
        uids = [uid_of[n] for n in order]
        if ret is None:
            s.emit(("* SORT " + " ".join(map(str, uids)) if uids else "* SORT") + "\r\n")
        else:
            text = esearch_line(cmd.tag, by_uid, uids if by_uid else order, ret,
                                ordered=True)
            if text is not None:
                s.emit(text + "\r\n")
            if ret.save:
                sel.saved = saved_of(ret, uids, ordered=True)
            if ret.update:
                s.keep_context(cmd.tag, SearchContext(key, by_uid, keys, uids,
                                                      s.mailbox_version()))
    await s.after_command(cmd)
    s.ok(cmd)


@command("THREAD", SELECTED, uid=True)
async def cmd_thread(s: ImapSession, cmd: Command, by_uid: bool) -> None:
    """RFC 5256 THREAD: ORDEREDSUBJECT, REFERENCES, and REFS."""
    if len(cmd.args) < 3:
        raise ImapParseError("THREAD needs an algorithm, a charset and search criteria")
    algorithm = as_atom(cmd.args[0], "thread algorithm").upper()
    if algorithm not in ("ORDEREDSUBJECT", "REFERENCES", "REFS"):
        raise ImapParseError(f"unknown THREAD algorithm {algorithm[:30]}")
    charset = as_string(cmd.args[1], "charset").decode("ascii", "replace")
    _, found = await s.matching(list(cmd.args[2:]), charset)
    by_seq = {seq: m for seq, m in found}
    assert s.sel is not None
    threads = await sorting.threads(s.sel.box, found, algorithm)
    if by_uid:
        threads = [_renumber(t, lambda n: by_seq[n].uid) for t in threads]
    text = sortmod.format_threads(threads)
    s.emit("* THREAD" + (f" {text}" if text else "") + "\r\n")
    await s.after_command(cmd)
    s.ok(cmd)

