"""Logging in and out (RFC 3501 6.2): STARTTLS, LOGIN, AUTHENTICATE with SASL-IR
(RFC 4959), UNAUTHENTICATE (RFC 8437), and ENABLE (RFC 5161)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cloudcote.core.mail.api import MailError, StorageUnavailable

from ... import sasl
from ..parser import Command, ImapParseError, as_atom, as_string
from ..responses import Bad, No
from .registry import AUTHED, NOT_AUTHED, command

if TYPE_CHECKING:
    from cloudcote.core.mail import api

    from ..session import ImapSession

log = logging.getLogger("cloudcote.imap")


@command("STARTTLS", NOT_AUTHED)
async def cmd_starttls(s: ImapSession, cmd: Command) -> None:
    if s.ctx.ssl_context is None or s.conn.tls:
        raise Bad("STARTTLS not available")
    s.ok(cmd, "Begin TLS negotiation now")
    await s.flush()
    s.bytes_in += await s.conn.start_tls(s.ctx.ssl_context)


@command("LOGIN", NOT_AUTHED)
async def cmd_login(s: ImapSession, cmd: Command) -> None:
    if len(cmd.args) != 2:
        raise ImapParseError("LOGIN needs a user name and a password")
    user = as_string(cmd.args[0], "user").decode("utf-8", "replace")
    password = as_string(cmd.args[1], "password").decode("utf-8", "replace")
    if not s.plaintext_allowed:
        raise No("Plaintext authentication disallowed on non-secure (SSL/TLS) "
                 "connections.", "PRIVACYREQUIRED")
    await finish_auth(s, cmd, user, password)


@command("AUTHENTICATE", NOT_AUTHED)
async def cmd_authenticate(s: ImapSession, cmd: Command) -> None:
    """RFC 3501 6.2.2 with SASL-IR (RFC 4959): the mechanisms of protocols/sasl.py."""
    if not cmd.args or len(cmd.args) > 2:
        raise ImapParseError("AUTHENTICATE needs a mechanism")
    mech = as_atom(cmd.args[0], "mechanism").upper()
    if mech not in sasl.MECHANISMS:
        raise No("Unsupported authentication mechanism.")
    if not s.plaintext_allowed:
        raise No("Plaintext authentication disallowed on non-secure (SSL/TLS) "
                 "connections.", "PRIVACYREQUIRED")
    initial = (as_string(cmd.args[1], "initial response").decode("ascii", "replace")
               if len(cmd.args) > 1 else None)
    try:
        creds = await sasl.authenticate(mech, initial, lambda c: sasl_step(s, c))
    except sasl.Cancelled:
        raise Bad("Authentication aborted by client") from None
    except sasl.BadResponse:
        raise Bad("Invalid base64 data in SASL response") from None
    except sasl.InvalidCredentials:
        raise No("Invalid credentials.", "AUTHENTICATIONFAILED") from None
    await finish_auth(s, cmd, creds.authcid, creds.password)


async def sasl_step(s: ImapSession, challenge: str) -> str:
    """Send a challenge (``+ base64``) and read the client's answer line."""
    s.emit(f"+ {challenge}\r\n")
    await s.flush()
    return (await s.read_line()).decode("ascii", "replace")


async def finish_auth(s: ImapSession, cmd: Command, user: str, password: str) -> None:
    ok = await s.check_password(user, password)
    if ok is None:
        raise No("Temporary authentication failure.", "UNAVAILABLE")
    if not ok:
        raise No("Authentication failed.", "AUTHENTICATIONFAILED")
    try:
        s.mail = await open_user_mail(s)
    except MailError as exc:
        log.error("%s user=%s: cannot open mail: %s", s.conn.session_id, s.user, exc)
        s.user = None
        raise No("Mail storage is temporarily unavailable.", "UNAVAILABLE") from None
    s.state = "authenticated"
    s.ok(cmd, "Logged in", f"CAPABILITY {s.capabilities()}")


async def open_user_mail(s: ImapSession) -> api.User:
    assert s.user is not None
    if s.user_entry is not None:
        return await s.ctx.user_mail(s.user_entry)
    if s.ctx.mail is None:
        raise StorageUnavailable("no mail storage configured")
    return await s.ctx.mail.user(s.user)


@command("ENABLE", AUTHED)
async def cmd_enable(s: ImapSession, cmd: Command) -> None:
    """RFC 5161."""
    if not cmd.args:
        raise ImapParseError("ENABLE needs capability names")
    enabled = []
    for tok in cmd.args:
        name = as_atom(tok, "capability").upper()
        if name == "CONDSTORE" and not s.condstore:
            s.condstore = True
            enabled.append(name)
        elif name == "QRESYNC" and not s.qresync:
            s.qresync = True
            if not s.condstore:
                s.condstore = True
            enabled.append(name)
        elif name == "IMAP4REV2" and not s.rev2:
            s.rev2 = True
            if s.sel is not None:
                s.sel.recent.clear()
            enabled.append("IMAP4rev2")
    s.emit("* ENABLED" + "".join(" " + e for e in enabled) + "\r\n")
    s.ok(cmd)


@command("UNAUTHENTICATE", AUTHED)
async def cmd_unauthenticate(s: ImapSession, cmd: Command) -> None:
    """RFC 8437: back to the not-authenticated state, as on a new connection (TLS
    stays)."""
    log.info("%s %s: user %s unauthenticated", s.conn.session_id, s.conn.peer,
             s.user)
    s.log_logout()
    s.user = None
    s.user_entry = None
    s.mail = None
    s.sel = None
    s.condstore = s.qresync = s.rev2 = False
    s.state = "not-authenticated"
    s.ok(cmd)

