"""``[pop3]`` settings (besides ``listen``), shared by the pop3s listeners."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Dovecot's default pop3_uidl_format: UIDVALIDITY and UID, 8 hex digits each.
DEFAULT_UIDL_FORMAT = "%08Xv%08Xu"
#: Literal text (no ``%``) and ``%[0][width][x|X]{v,u,g,m}`` or ``%%``.
UIDL_FORMAT_RE = re.compile(r"(?:[^%]|%%|%0?[0-9]{0,2}[xX]?[vugm])+")


@dataclass(frozen=True)
class Pop3Settings:
    #: How UIDL names a message, as Dovecot's pop3_uidl_format: ``%v`` UIDVALIDITY, ``%u``
    #: UID, ``%g`` the message GUID, ``%m`` the MD5 of the header block; printf-style
    #: width and ``x``/``X`` (hex) as in ``%08Xv``.
    uidl_format: str = DEFAULT_UIDL_FORMAT
    #: Seconds a client may stay silent (RFC 1939 3: at least 10 minutes).
    idle_timeout: float = 600.0
    #: Invalid commands tolerated before the server hangs up.
    max_bad_commands: int = 20

    @staticmethod
    def check_uidl_format(fmt: str) -> str | None:
        """None if ``fmt`` is a usable uidl_format, else what is wrong with it."""
        if not fmt:
            return "empty"
        if not UIDL_FORMAT_RE.fullmatch(fmt):
            return "unknown % sequence"
        if not re.search(r"(?<!%)(?:%%)*%0?[0-9]{0,2}[xX]?[ugm]", fmt):
            return "names no message (%u, %g or %m)"
        return None
