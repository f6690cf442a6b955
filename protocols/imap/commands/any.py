"""Commands of any state (RFC 3501 6.1): CAPABILITY, NOOP, LOGOUT, and ID (RFC 2971)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..parser import Command, ImapParseError, as_string
from .registry import ANY, command

if TYPE_CHECKING:
    from ..session import ImapSession

log = logging.getLogger("cloudcote.imap")


@command("CAPABILITY", ANY)
async def cmd_capability(s: ImapSession, cmd: Command) -> None:
    s.emit(f"* CAPABILITY {s.capabilities()}\r\n")
    s.ok(cmd)


@command("NOOP", ANY)
async def cmd_noop(s: ImapSession, cmd: Command) -> None:
    await s.refresh(force=True)
    await s.after_command(cmd)
    s.ok(cmd)


@command("LOGOUT", ANY)
async def cmd_logout(s: ImapSession, cmd: Command) -> None:
    s.state = "logout"
    s.done = True
    s.emit(f"* BYE Logging out.\r\n{cmd.tag} OK Logout completed.\r\n")


@command("ID", ANY)
async def cmd_id(s: ImapSession, cmd: Command) -> None:
    """RFC 2971: the client says who it is (logged); the server answers likewise."""
    if len(cmd.args) != 1:
        raise ImapParseError("ID needs a list or NIL")
    arg = cmd.args[0]
    if isinstance(arg, list):
        if len(arg) > 60:
            raise ImapParseError("too many ID fields")
        pairs = [as_string(t, "ID field").decode("utf-8", "replace")[:100]
                 if not (isinstance(t, str) and t.upper() == "NIL") else "NIL"
                 for t in arg]
        log.info("%s %s: client ID %s", s.conn.session_id, s.conn.peer,
                 " ".join(pairs)[:300])
    elif not (isinstance(arg, str) and arg.upper() == "NIL"):
        raise ImapParseError("ID needs a list or NIL")
    s.emit('* ID ("name" "cloudcote" "vendor" "cloudcote")\r\n')
    s.ok(cmd)
