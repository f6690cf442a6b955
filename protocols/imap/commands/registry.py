"""The table of IMAP commands: each command module registers its handlers here with the
session states they are allowed in (as Dovecot's ``imap-commands.c`` does for its
``cmd-*.c``); the session dispatches from :data:`COMMANDS`."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..parser import Command
    from ..session import ImapSession

NOT_AUTHED = ("not-authenticated",)
AUTHED = ("authenticated", "selected")
SELECTED = ("selected",)
ANY = ("not-authenticated", "authenticated", "selected")

Handler = Callable[["ImapSession", "Command"], Awaitable[None]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Handler
    #: The session states the command is valid in (RFC 3501 6).
    states: tuple[str, ...]


#: Command name (``UID FETCH`` included) -> its handler and states.
COMMANDS: dict[str, CommandSpec] = {}


def command(name: str, states: tuple[str, ...], uid: bool = False,
            ) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """Register ``handler(session, cmd)`` for ``name`` in ``states``; with ``uid``, the
    handler takes ``by_uid`` and serves ``UID <name>`` too (RFC 3501 6.4.8)."""

    def register(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        names = [name, "UID " + name] if uid else [name]
        for n in names:
            if n in COMMANDS:
                raise ValueError(f"IMAP command {n} registered twice")
            handler: Any = functools.partial(fn, by_uid=n != name) if uid else fn
            COMMANDS[n] = CommandSpec(n, handler, states)
        return fn

    return register
