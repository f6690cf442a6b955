"""Mailbox commands (RFC 3501 6.3): CREATE (with RFC 6154 USE), DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE, LIST and LSUB (RFC 5258, RFC 5819), NAMESPACE (RFC 2342) and
STATUS."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from cloudcote.core.mail.api import SEP, InvalidMailboxName

from ..listing import ListOptions, list_responses, parse_list_command, parse_status_items
from ..parser import Command, ImapParseError, as_atom, as_list
from ..responses import No
from .registry import AUTHED, command

if TYPE_CHECKING:
    from ..session import ImapSession


@command("NAMESPACE", AUTHED)
async def cmd_namespace(s: ImapSession, cmd: Command) -> None:
    """RFC 2342: one personal namespace, no others."""
    s.emit(f'* NAMESPACE (("" "{SEP}")) NIL NIL\r\n')
    s.ok(cmd)


@command("CREATE", AUTHED)
async def cmd_create(s: ImapSession, cmd: Command) -> None:
    if not cmd.args or len(cmd.args) > 2:
        raise ImapParseError("CREATE needs a mailbox name")
    name = s.mailbox_name(cmd.args[0])
    if name.endswith(SEP):
        name = name.rstrip(SEP)  # RFC 3501 6.3.3: a trailing separator is a hint
    special: list[str] = []
    if len(cmd.args) == 2:  # RFC 6154 CREATE-SPECIAL-USE: (USE (\Sent ...))
        opts = as_list(cmd.args[1], "create parameters")
        if len(opts) != 2 or not isinstance(opts[0], str) or opts[0].upper() != "USE":
            raise ImapParseError("unknown CREATE parameter")
        special = [as_atom(t, "special-use") for t in as_list(opts[1], "USE list")]
    canon = s.canon(name)
    assert s.mail is not None
    if canon == "INBOX":
        raise No("Mailbox already exists.", "ALREADYEXISTS")
    try:
        await s.mail.create_mailbox(canon, special)
    except InvalidMailboxName as exc:
        if special and "special-use" in str(exc):
            raise No(f"{exc}.", "USEATTR") from None
        raise
    s.ok(cmd)


@command("DELETE", AUTHED)
async def cmd_delete(s: ImapSession, cmd: Command) -> None:
    if len(cmd.args) != 1:
        raise ImapParseError("DELETE needs a mailbox name")
    canon = s.canon(s.mailbox_name(cmd.args[0]))
    assert s.mail is not None
    if canon == "INBOX":
        raise No("INBOX can't be deleted.", "CANNOT")
    await s.mail.refresh_list()
    if s.sel is not None and s.sel.box.name == canon:
        s.sel = None
        s.state = "authenticated"
    await s.mail.delete_mailbox(canon)
    s.ok(cmd)


@command("RENAME", AUTHED)
async def cmd_rename(s: ImapSession, cmd: Command) -> None:
    if len(cmd.args) != 2:
        raise ImapParseError("RENAME needs two mailbox names")
    old = s.canon(s.mailbox_name(cmd.args[0]))
    new = s.canon(s.mailbox_name(cmd.args[1]))
    assert s.mail is not None
    await s.mail.refresh_list()
    if new == "INBOX":
        raise No("Mailbox already exists.", "ALREADYEXISTS")
    await s.mail.rename_mailbox(old, new)
    s.ok(cmd)


@command("SUBSCRIBE", AUTHED)
async def cmd_subscribe(s: ImapSession, cmd: Command) -> None:
    if len(cmd.args) != 1:
        raise ImapParseError("SUBSCRIBE needs a mailbox name")
    assert s.mail is not None
    await s.mail.subscribe(s.canon(s.mailbox_name(cmd.args[0])))
    s.ok(cmd)


@command("UNSUBSCRIBE", AUTHED)
async def cmd_unsubscribe(s: ImapSession, cmd: Command) -> None:
    if len(cmd.args) != 1:
        raise ImapParseError("UNSUBSCRIBE needs a mailbox name")
    assert s.mail is not None
    await s.mail.unsubscribe(s.canon(s.mailbox_name(cmd.args[0])))
    s.ok(cmd)


@command("LIST", AUTHED)
async def cmd_list(s: ImapSession, cmd: Command) -> None:
    opts = parse_list_command(cmd.args, lsub=False, utf8=s.rev2)
    await list_mailboxes(s, cmd, opts)


@command("LSUB", AUTHED)
async def cmd_lsub(s: ImapSession, cmd: Command) -> None:
    opts = parse_list_command(cmd.args, lsub=True, utf8=s.rev2)
    await list_mailboxes(s, cmd, opts)


async def list_mailboxes(s: ImapSession, cmd: Command, opts: ListOptions) -> None:
    assert s.mail is not None
    await s.mail.refresh_list()
    for line, name in list_responses(s.mail, opts):
        s.emit(line)
        if name is not None and opts.status_items:
            try:
                await status_line(s, name, opts.status_items)
            except No:
                pass
        await s.maybe_flush()
    await s.after_command(cmd)
    s.ok(cmd)


@command("STATUS", AUTHED)
async def cmd_status(s: ImapSession, cmd: Command) -> None:
    if len(cmd.args) != 2:
        raise ImapParseError("STATUS needs a mailbox name and a list of items")
    name = s.mailbox_name(cmd.args[0])
    items = parse_status_items(cmd.args[1])
    await status_line(s, s.canon(name), items)
    await s.after_command(cmd)
    s.ok(cmd)


async def status_line(s: ImapSession, name: str, items: list[str]) -> None:
    box = await s.open_box(name)
    if s.sel is None or s.sel.box is not box:
        await box.refresh()
    st = box.state
    values = {
        "MESSAGES": st.exists,
        "RECENT": len(s.sel.recent) if s.sel is not None and s.sel.box is box
        else len(st.uids) - bisect.bisect_left(st.uids, st.recent_from),
        "UIDNEXT": st.next_uid,
        "UIDVALIDITY": st.uidvalidity,
        "UNSEEN": st.unseen,
        "HIGHESTMODSEQ": st.highest_modseq,
        "SIZE": st.total_size,
    }
    if "DELETED" in items:  # RFC 9051 6.3.11
        values["DELETED"] = sum(1 for m in st if "\\Deleted" in m.flags)
    if "HIGHESTMODSEQ" in items:
        s.enable_condstore()
    body = " ".join(f"{i} {values[i]}" for i in items)
    s.emit(b"* STATUS " + s.wire_name(name) + f" ({body})\r\n".encode())

