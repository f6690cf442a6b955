"""APPEND (RFC 3501 6.3.11) with MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from cloudcote.core.mail import mime
from cloudcote.core.mail.api import SaveRequest

from .. import catenate
from ..parser import Command, ImapParseError, Token, parse_date_time, parse_flags
from ..responses import No, seqset_text
from .registry import AUTHED, command

if TYPE_CHECKING:
    from ..session import ImapSession


@command("APPEND", AUTHED)
async def cmd_append(s: ImapSession, cmd: Command) -> None:
    """APPEND, with MULTIAPPEND (RFC 3502: every message is saved, or none is) and
    CATENATE (RFC 4469: a message put together from text and IMAP URLs)."""
    args = list(cmd.args)
    if len(args) < 2:
        raise ImapParseError("APPEND needs a mailbox name and a message")
    name = s.mailbox_name(args.pop(0))
    assert s.mail is not None and s.user is not None
    messages = append_messages(cmd, args)
    try:
        box = await s.open_box(name)
    except No:
        raise No("Mailbox doesn't exist: " + s.text_name(s.canon(name)) + ".",
                 "TRYCREATE") from None
    requests = []
    for flags, when, data in messages:
        if isinstance(data, list):
            try:
                data = await catenate.assemble(
                    s.mail, s.user, data, cmd,
                    selected=s.sel.box.name if s.sel is not None else None,
                    limit=s.limits.max_append_literal)
            except catenate.CatenateError as exc:
                raise No(str(exc), exc.code) from None
        # A binary part (RFC 3516 4.4) with NUL or bare CR/LF goes in as base64: the
        # store keeps CRLF lines, and BINARY[] still gives back its octets.
        requests.append(SaveRequest(mime.protect_binary(data), flags, when))
    if any(not r.raw for r in requests):
        raise No("Can't save an empty message.")
    # One save: a message over the quota or the size limit fails them all (RFC 3502 6).
    uids = await box.save_many(requests)
    await s.after_command(cmd)
    s.ok(cmd, "Append completed",
         f"APPENDUID {box.state.uidvalidity} {seqset_text(uids)}")


def append_messages(cmd: Command, args: list[Token],
                     ) -> list[tuple[list[str], dt.datetime | None, bytes | list[Token]]]:
    """The messages of APPEND's arguments after the mailbox name: each is
    ``[flag-list] [date-time] (literal / CATENATE (parts))`` (RFC 3502 6.3.11, RFC 4469
    5); a date-time is a quoted string (or a literal) followed by the message's literal
    or by CATENATE."""
    out: list[tuple[list[str], dt.datetime | None, bytes | list[Token]]] = []
    i = 0

    def catenate_at(j: int) -> bool:
        return j + 1 < len(args) and isinstance(args[j], str) \
            and str(args[j]).upper() == "CATENATE" and isinstance(args[j + 1], list)

    while i < len(args):
        flags: list[str] = []
        when: dt.datetime | None = None
        tok = args[i]
        if isinstance(tok, list):
            flags = parse_flags(tok)
            i += 1
        if i + 1 < len(args):
            tok = args[i]
            if isinstance(tok, bytes) and not cmd.is_literal(tok) \
                    and (cmd.is_literal(args[i + 1]) or catenate_at(i + 1)):
                when = parse_date_time(tok.decode("ascii", "replace"))
                i += 1
        if catenate_at(i):
            parts = args[i + 1]
            assert isinstance(parts, list)
            out.append((flags, when, parts))
            i += 2
            continue
        if i >= len(args):
            raise ImapParseError("APPEND needs the message as a literal")
        data = args[i]
        if not isinstance(data, bytes):
            raise ImapParseError("bad APPEND arguments")
        out.append((flags, when, data))
        i += 1
    return out

