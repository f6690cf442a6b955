"""Failed-login penalty after Dovecot's auth_penalty: each failure from a client makes the
answer to its next failure slower.

https://doc.dovecot.org/2.3/configuration_manual/authentication/auth_penalty/

Failures are counted per client address (IPv6 per /48 network, as Dovecot does, so that one
host cannot spread its guesses over its many addresses), in memory, for an hour after the
last failure.  The delay before a failure is answered is ``failure_delay`` doubled for each
earlier failure, at most ``failure_delay_max``: 2, 4, 8, 15, 15 ... seconds by default.  A
failure with a password already tried from that address adds nothing (a client retrying an
old password is not an attacker).  A successful login resets its address.
"""

from __future__ import annotations

import ipaddress
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

#: Defaults of ``[auth]`` failure_delay and failure_delay_max (Dovecot's 2 s and 15 s).
FAILURE_DELAY = 2.0
FAILURE_DELAY_MAX = 15.0
#: Seconds a client's failures are remembered after its last one.
PENALTY_EXPIRE = 3600.0
#: Client addresses remembered at most; the least recently failed are forgotten first.
MAX_CLIENTS = 100_000
#: IPv6 prefix length counted as one client.
IPV6_PREFIX = 48
#: Checksums of distinct wrong passwords remembered per client.
_CHECKSUMS = 8


@dataclass(frozen=True)
class _Failures:
    count: int
    checksums: tuple[int, ...]


def client_key(remote_ip: str | None) -> str:
    """The address a failure counts against: IPv4 as is (also when IPv4-mapped), IPv6 as
    its /48 network, ``local`` for a connection without an IP (a unix socket)."""
    if not remote_ip:
        return "local"
    try:
        ip = ipaddress.ip_address(remote_ip.partition("%")[0])
    except ValueError:
        return remote_ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class AuthPenalty:
    """Failed logins per client and the delay they earn; pure bookkeeping, no sleeping."""

    def __init__(self, failure_delay: float = FAILURE_DELAY,
                 failure_delay_max: float = FAILURE_DELAY_MAX, *,
                 max_clients: int = MAX_CLIENTS, expire: float = PENALTY_EXPIRE,
                 timer: Callable[[], float] = time.monotonic) -> None:
        if failure_delay < 0 or failure_delay_max < failure_delay:
            raise ValueError("expected 0 <= failure_delay <= failure_delay_max")
        self.failure_delay = failure_delay
        self.failure_delay_max = failure_delay_max
        self._clients: TTLCache[str, _Failures] = TTLCache(max_clients, expire, timer=timer)

    def __repr__(self) -> str:
        return (f"AuthPenalty(failure_delay={self.failure_delay}, "
                f"failure_delay_max={self.failure_delay_max})")

    def delay(self, failures: int) -> float:
        """Seconds to wait before answering the ``failures``-th failure."""
        if failures <= 0 or self.failure_delay <= 0:
            return 0.0
        return min(self.failure_delay * 2.0 ** min(failures - 1, 32), self.failure_delay_max)

    def failures(self, remote_ip: str | None) -> int:
        """Failures counted against this client now."""
        record = self._clients.get(client_key(remote_ip))
        return record.count if record is not None else 0

    def failed(self, remote_ip: str | None, password: str = "") -> float:
        """Count a failed login; return the seconds to wait before answering it."""
        key = client_key(remote_ip)
        record = self._clients.get(key) or _Failures(0, ())
        # Dovecot keeps a CRC32 too: enough to tell retries apart, too weak to reveal much.
        checksum = zlib.crc32(password.encode("utf-8", "surrogateescape"))
        if checksum not in record.checksums or record.count == 0:
            record = _Failures(record.count + 1, (record.checksums + (checksum,))[-_CHECKSUMS:])
        self._clients[key] = record  # storing again restarts the expiry
        return self.delay(record.count)

    def succeeded(self, remote_ip: str | None) -> None:
        """A successful login: the client starts afresh."""
        self._clients.pop(client_key(remote_ip), None)
