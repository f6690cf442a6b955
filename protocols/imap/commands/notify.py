"""NOTIFY (RFC 5465): the command, and the changes it reports of the mailbox list, the
watched mailboxes and the selected one, while the session waits for a command or IDLEs."""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloudcote.core.mail.api import SEP, MailboxNotFound, MailError, MessageExpunged

from .. import notify as notifymod
from ..fetch import FetchRequest, UnknownCte, render
from ..parser import Command
from ..responses import No
from .registry import AUTHED, command

if TYPE_CHECKING:
    from cloudcote.core.mail import api

    from ..session import ImapSession

log = logging.getLogger("cloudcote.imap")


@dataclass
class Notified:
    """What a NOTIFY client was last told: the list (GUID -> name), the subscriptions, and
    the status of each watched mailbox that is not selected."""

    names: dict[str, str]
    subscriptions: set[str]
    status: dict[str, tuple[int, ...]] = field(default_factory=dict)


@command("NOTIFY", AUTHED)
async def cmd_notify(s: ImapSession, cmd: Command) -> None:
    try:
        spec = notifymod.parse_notify(list(cmd.args), s.mailbox_name)
    except notifymod.BadEvent:
        raise No("Unsupported event.",
                 f"BADEVENT ({' '.join(notifymod.SUPPORTED_EVENTS)})") from None
    s.notify = spec
    s.notified = None
    if spec is not None:
        assert s.mail is not None
        await s.mail.refresh_list()
        s.notified = Notified(
            {e.guid: e.name for e in s.mail.list_mailboxes()},
            set(s.mail.subscriptions()))
        for name, events in notify_watched(s):
            box = await s.open_box(name)
            s.notified.status[box.guid] = box_status(box)
            if spec.status:
                notify_status_line(s, box, events)
    await s.after_command(cmd)
    s.ok(cmd)


def notify_watched(s: ImapSession) -> list[tuple[str, frozenset[str]]]:
    """The mailboxes (not the selected one) NOTIFY watches, with their events."""
    assert s.mail is not None and s.notify is not None
    subscribed = s.mail.subscriptions()
    selected = s.sel.box.name if s.sel is not None else None
    out = []
    for entry in s.mail.list_mailboxes():
        if entry.name == selected:
            continue
        events = s.notify.events_for(entry.name, subscribed)
        if events & {"MessageNew", "MessageExpunge", "FlagChange"}:
            out.append((entry.name, events))
            if len(out) >= notifymod.MAX_WATCHED:
                break
    return out


def box_status(box: api.Mailbox) -> tuple[int, ...]:
    st = box.state
    return (st.uidvalidity, st.exists, st.next_uid, st.unseen, st.highest_modseq)


def notify_status_line(s: ImapSession, box: api.Mailbox, events: frozenset[str]) -> None:
    """RFC 5465 5.1-5.3: STATUS of a watched mailbox that changed."""
    st = box.state
    values = {"MESSAGES": st.exists, "UIDNEXT": st.next_uid,
              "UIDVALIDITY": st.uidvalidity, "UNSEEN": st.unseen,
              "HIGHESTMODSEQ": st.highest_modseq}
    items = notifymod.status_items(events, s.condstore)
    if not items:
        return
    body = " ".join(f"{k} {values[k]}" for k in items)
    s.emit(b"* STATUS " + s.wire_name(box.name) + f" ({body})\r\n".encode())


async def notify_wait(s: ImapSession) -> None:
    """Until something NOTIFY watches may have changed: a change of the selected or a
    watched mailbox (at once in this process, else within the poll interval), or a poll
    interval for the mailbox list."""
    assert s.mail is not None
    poll = 60.0  # each waits on its change feed, or polls at its own interval
    boxes: list[api.Mailbox] = []
    if s.sel is not None:
        boxes.append(s.sel.box)
    for name, _ in notify_watched(s):
        try:
            boxes.append(await s.mail.mailbox(name))
        except MailboxNotFound:
            continue
    waits = [asyncio.ensure_future(b.wait_for_change(poll)) for b in boxes]
    waits.append(asyncio.ensure_future(s.mail.wait_for_list_change(poll)))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def notify_changes(s: ImapSession) -> None:
    """Untagged responses for what changed since the client last heard (RFC 5465 5):
    LIST for created, deleted and renamed mailboxes and for subscriptions, STATUS for
    the watched mailboxes, and the selected mailbox's EXISTS, EXPUNGE and FETCH."""
    spec, told = s.notify, s.notified
    if spec is None or told is None or s.mail is None:
        return
    mail = s.mail
    if spec.watches_list or spec.groups:
        await mail.refresh_list()
    subscribed = mail.subscriptions()
    names = {e.guid: e.name for e in mail.list_mailboxes()}
    selected = s.sel.box.name if s.sel is not None else None

    def events(name: str) -> frozenset[str]:
        if name == selected and spec.selected is not None:
            return spec.selected
        return spec.events_for(name, subscribed)

    sep = f' "{SEP}" '.encode()
    for guid, name in names.items():
        old = told.names.get(guid)
        if old == name or "MailboxName" not in events(name):
            continue
        if old is None:
            s.emit(b"* LIST ()" + sep + s.wire_name(name) + b"\r\n")
        else:
            s.emit(b"* LIST ()" + sep + s.wire_name(name) + b' ("OLDNAME" ('
                   + s.wire_name(old) + b"))\r\n")
    for guid, name in told.names.items():
        if guid not in names and "MailboxName" in events(name):
            s.emit(b"* LIST (\\NonExistent)" + sep + s.wire_name(name) + b"\r\n")
    for name in sorted(subscribed ^ told.subscriptions):
        if "SubscriptionChange" in events(name):
            attrs = b"(\\Subscribed)" if name in subscribed else b"()"
            s.emit(b"* LIST " + attrs + sep + s.wire_name(name) + b"\r\n")
    told.names, told.subscriptions = names, set(subscribed)
    for name, evs in notify_watched(s):
        try:
            box = await mail.mailbox(name)
        except MailboxNotFound:
            continue
        now = box_status(box)
        before = told.status.get(box.guid)
        told.status[box.guid] = now
        if before is None or before == now:
            continue
        # (uidvalidity, exists, next_uid, unseen, highest_modseq)
        new_mail = before[2] != now[2]
        expunged = now[1] < before[1] + (now[2] - before[2])
        wanted = set()
        if new_mail and "MessageNew" in evs:
            wanted.add("MessageNew")
        if expunged and "MessageExpunge" in evs:
            wanted.add("MessageExpunge")
        if not wanted and before[4] != now[4] and "FlagChange" in evs:
            wanted.add("FlagChange")
        if wanted or before[0] != now[0]:
            notify_status_line(s, box, frozenset(wanted) or evs)
    if s.sel is not None and spec.selected:
        before_view = len(s.sel.view)
        await s.sync(allow_expunge=not spec.delayed)
        new = s.sel.view[before_view:]
        if new and spec.fetch is not None and "MessageNew" in spec.selected:
            await notify_fetch(s, new, spec.fetch)


async def notify_fetch(s: ImapSession, uids: list[int], req: FetchRequest) -> None:
    """MessageNew's fetch attributes for new messages of the selected mailbox."""
    assert s.sel is not None
    box = s.sel.box
    st = box.state
    for uid in uids:
        m = st.messages.get(uid)
        if m is None:
            continue
        seq = bisect.bisect_left(s.sel.view, uid) + 1
        try:
            s.emit(await render(box, m, req, seq=seq, recent=uid in s.sel.recent,
                                with_uid=True, with_modseq=s.condstore))
        except (MessageExpunged, UnknownCte):
            continue
        await s.maybe_flush()


async def read_command_notifying(s: ImapSession) -> tuple[list[bytes], list[bytes]] | None:
    """The next command, while reporting NOTIFY's changes as they come, up to the
    moment its first line is read."""
    read = asyncio.ensure_future(s.read_lines())
    try:
        while True:
            wake = asyncio.ensure_future(notify_wait(s))
            done, _ = await asyncio.wait({read, wake},
                                         return_when=asyncio.FIRST_COMPLETED)
            if read in done:
                wake.cancel()
                await asyncio.gather(wake, return_exceptions=True)
                return read.result()
            if s.command_started or s.notify is None:
                continue
            try:
                await notify_changes(s)
            except MailError as exc:
                log.warning("%s user=%s: NOTIFY refresh failed: %s",
                            s.conn.session_id, s.user, exc)
            await s.flush()
    finally:
        if not read.done():
            read.cancel()
            await asyncio.gather(read, return_exceptions=True)

