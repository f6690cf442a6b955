"""The IMAP commands, one group per module (as Dovecot's ``src/imap/cmd-*.c``); each
registers its handlers in :data:`.registry.COMMANDS` with the states it is allowed in.
Importing this package loads them all."""

from __future__ import annotations

from . import (
    any,
    append,
    auth,
    copy,
    expunge,
    fetch,
    idle,
    mailboxes,
    notify,
    quota,
    search,
    select,
    sort,
    store,
)
from .registry import COMMANDS, CommandSpec, command

__all__ = [
    "COMMANDS", "CommandSpec", "any", "append", "auth", "command", "copy", "expunge",
    "fetch", "idle", "mailboxes", "notify", "quota", "search", "select", "sort", "store",
]
