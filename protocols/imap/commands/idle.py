"""IDLE (RFC 2177): changes as they happen, until DONE."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from cloudcote.core.mail.api import MailError

from ...session import IdleTimeout, Shutdown
from ..parser import Command
from .notify import notify_changes, notify_wait
from .registry import AUTHED, command

if TYPE_CHECKING:
    from ..session import ImapSession

log = logging.getLogger("cloudcote.imap")


@command("IDLE", AUTHED)
async def cmd_idle(s: ImapSession, cmd: Command) -> None:
    """RFC 2177: changes as they happen, until DONE."""
    s.emit("+ idling\r\n")
    await s.flush()
    read = asyncio.ensure_future(s.read_raw_line())
    stop = asyncio.ensure_future(s.ctx.shutdown.wait())
    deadline = time.monotonic() + s.limits.idle_timeout
    try:
        while True:
            waits: set[asyncio.Future[Any]] = {read, stop}
            change: asyncio.Future[Any] | None = None
            if s.notify is not None:
                change = asyncio.ensure_future(notify_wait(s))
            elif s.sel is not None:
                change = asyncio.ensure_future(s.sel.box.wait_for_change(60.0))
            if change is not None:
                waits.add(change)
            left = deadline - time.monotonic()
            done, _ = await asyncio.wait(waits, timeout=max(left, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if change is not None and change not in done:
                change.cancel()
            if stop in done:
                raise Shutdown()  # the session loop says BYE
            if not done:
                raise IdleTimeout("idle timeout in IDLE")
            if change is not None and change in done:
                try:
                    change.result()
                    if s.notify is not None:
                        await notify_changes(s)
                    if s.sel is not None:
                        await s.sync(allow_expunge=True)
                except MailError as exc:
                    log.warning("%s user=%s: IDLE refresh failed: %s",
                                s.conn.session_id, s.user, exc)
                await s.flush()
            if read in done:
                line = read.result().rstrip(b"\r\n")
                if line.upper() == b"DONE":
                    await s.after_command(cmd)
                    s.ok(cmd, "Idle completed")
                else:
                    await s.bad(cmd.tag, "Expected DONE")
                return
    finally:
        stop.cancel()
        if not read.done():
            read.cancel()
