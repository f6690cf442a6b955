"""``[pop3]`` settings (besides ``listen``), shared by the pop3s listeners."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Dovecot's default pop3_uidl_format: UID and UIDVALIDITY, 8 hex digits each, so that
#: clients moving from Dovecot keep their UIDLs (and do not download everything again).
DEFAULT_UIDL_FORMAT = "%08Xu%08Xv"
#: RFC 1939 7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
MAX_UIDL = 70
#: The longest expansion of each variable: 32-bit numbers (10 digits), GUID and MD5 (32).
_WIDEST = {"v": 10, "u": 10, "g": 32, "m": 32}
#: Literal text (no ``%``) and ``%[0][width][x|X]{v,u,g,m}`` or ``%%``.
UIDL_FORMAT_RE = re.compile(r"(?:[^%]|%%|%0?[0-9]{0,2}[xX]?[vugm])+")
UIDL_PART_RE = re.compile(r"([^%]|%%)|%0?([0-9]{0,2})[xX]?([vugm])")


@dataclass(frozen=True)
class Pop3Settings:
    #: How UIDL names a message, as Dovecot's pop3_uidl_format: ``%v`` UIDVALIDITY, ``%u``
    #: UID, ``%g`` the message GUID, ``%m`` the MD5 of the header block; printf-style
    #: width and ``x``/``X`` (hex) as in ``%08Xu``.
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
        longest = 0
        for literal, width, var in UIDL_PART_RE.findall(fmt):
            if literal:
                if literal != "%%" and not 0x21 <= ord(literal) <= 0x7E:
                    return "characters must be printable ASCII without spaces (RFC 1939)"
                longest += 1
            else:
                longest += max(int(width or 0), _WIDEST[var])
        if longest > MAX_UIDL:
            return f"can expand to {longest} characters; RFC 1939 allows {MAX_UIDL}"
        return None
