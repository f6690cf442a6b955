"""Bounds of an IMAP session; every one is configurable in the ``[imap_limits]`` section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImapLimits:
    #: Longest command line (without literals), bytes.
    max_line: int = 64 * 1024
    #: Largest APPEND literal (a message), bytes.
    max_append_literal: int = 50 * 1024 * 1024
    #: Largest literal anywhere else (a search string, a password), bytes.
    max_literal: int = 64 * 1024
    #: Deepest parenthesized list a command may nest.
    max_nesting: int = 16
    #: Invalid commands tolerated before the server says BYE.
    max_bad_commands: int = 10
    #: Seconds of client silence before the autologout (RFC 3501 5.4: at least 30 min).
    idle_timeout: float = 30 * 60
