"""Jittered exponential backoff: the one pause every retry loop in libfs and its drivers
takes between attempts."""

from __future__ import annotations

import asyncio
import random


def backoff_delay(attempt: int, base: float, cap: float, *, full: bool = False) -> float:
    """The pause before retry number ``attempt + 1``: ``base * 2**attempt`` capped at
    ``cap``, then jittered into ``[delay/2, delay]`` (or ``[0, delay]`` with ``full``) so
    that callers that failed together do not all come back together."""
    delay = min(cap, base * (2 ** attempt))
    return random.uniform(0.0 if full else delay / 2, delay)


async def backoff(attempt: int, base: float, cap: float, *, full: bool = False) -> None:
    """Sleep :func:`backoff_delay`."""
    await asyncio.sleep(backoff_delay(attempt, base, cap, full=full))
