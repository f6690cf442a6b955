"""Password verification shared by every passdb: the entry a passdb returns, the login
check (password, ``nologin``, ``allow_nets``) and a throwaway hash for unknown users.

extra fields: https://doc.dovecot.org/main/core/config/auth/passdb.html#extra-fields
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field

from .schemes import DEFAULT_SCHEME, hash_password, verify_password

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class UserEntry:
    """One user as a passdb returns it; ``extra`` holds the extra fields (``userdb_*`` too)."""

    user: str
    password: str = field(repr=False)  # the stored {SCHEME}value; kept out of logs
    uid: int | None = None
    gid: int | None = None
    home: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def parse_allow_nets(value: str) -> list[Network | str]:
    """Dovecot's ``allow_nets=net,net,...``; ``local`` matches a connection with no IP."""
    nets: list[Network | str] = []
    for item in value.split(","):
        item = item.strip()
        if item == "local":
            nets.append(item)
        elif item:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"allow_nets: {item!r} is not an IP address or network") \
                    from None
    return nets


def ip_allowed(allow_nets: str, remote_ip: str | None) -> bool:
    """Whether ``remote_ip`` (None: a local connection) is in ``allow_nets``."""
    nets = parse_allow_nets(allow_nets)
    if remote_ip is None:
        return "local" in nets
    try:
        ip = ipaddress.ip_address(remote_ip.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(not isinstance(net, str) and ip in net for net in nets)


def check_login(entry: UserEntry, password: str, remote_ip: str | None) -> UserEntry | None:
    """The entry if the password matches and the extra fields allow the login, else None."""
    if not verify_password(entry.password, password):
        return None
    if "nologin" in entry.extra:  # checked after the hash, so the answer takes as long
        return None
    if "allow_nets" in entry.extra and not ip_allowed(entry.extra["allow_nets"], remote_ip):
        return None
    return entry


_fallback_dummy: str | None = None


def dummy_hash() -> str:
    """A throwaway SHA512-CRYPT value, checked against for an unknown user so that the
    answer takes as long as for a known one."""
    global _fallback_dummy
    if _fallback_dummy is None:
        _fallback_dummy = hash_password(secrets.token_urlsafe(16), DEFAULT_SCHEME)
    return _fallback_dummy
