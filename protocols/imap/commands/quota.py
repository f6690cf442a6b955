"""QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA, and SETQUOTA (refused: the administrator
sets quotas)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..parser import Command, ImapParseError, as_string
from ..responses import No
from .registry import AUTHED, command

if TYPE_CHECKING:
    from ..session import ImapSession


@command("GETQUOTAROOT", AUTHED)
async def cmd_getquotaroot(s: ImapSession, cmd: Command) -> None:
    """RFC 9208: one quota root, "", for all of a user's mailboxes."""
    if len(cmd.args) != 1:
        raise ImapParseError("GETQUOTAROOT needs a mailbox name")
    name = s.canon(s.mailbox_name(cmd.args[0]))
    await s.open_box(name)
    assert s.mail is not None
    limits = s.mail.quota_limits
    enc = s.wire_name(name).decode("utf-8")
    if not limits.bytes and not limits.messages:
        s.emit(f"* QUOTAROOT {enc}\r\n")
    else:
        s.emit(f'* QUOTAROOT {enc} ""\r\n')
        await quota_line(s)
    s.ok(cmd)


@command("GETQUOTA", AUTHED)
async def cmd_getquota(s: ImapSession, cmd: Command) -> None:
    if len(cmd.args) != 1:
        raise ImapParseError("GETQUOTA needs a quota root")
    root = as_string(cmd.args[0], "quota root")
    assert s.mail is not None
    limits = s.mail.quota_limits
    if root != b"" or (not limits.bytes and not limits.messages):
        raise No("No such quota root.", "NONEXISTENT")
    await quota_line(s)
    s.ok(cmd)


@command("SETQUOTA", AUTHED)
async def cmd_setquota(s: ImapSession, cmd: Command) -> None:
    raise No("Quota is set by the administrator.", "NOPERM")


async def quota_line(s: ImapSession) -> None:
    assert s.mail is not None
    usage = await s.mail.quota_usage()
    limits = s.mail.quota_limits
    res = []
    if limits.bytes:
        res.append(f"STORAGE {usage.bytes // 1024} {limits.bytes // 1024}")
    if limits.messages:
        res.append(f"MESSAGE {usage.messages} {limits.messages}")
    s.emit(f'* QUOTA "" ({" ".join(res)})\r\n')
