"""\\Recent (RFC 3501 2.3.2) without locks: exactly one session sees a message as recent.

The mailbox's log holds ``["r", upto]`` records: each claims the UIDs below ``upto`` that
no earlier record claimed (``MailboxState.recent_from`` is where the unclaimed ones
start).  Records apply in log order in every process, so the first claim wins and any
other gets an empty range, with no lock and no counter.
"""

from __future__ import annotations

from typing import Any, Protocol

from .index import MailboxState


class _Log(Protocol):
    async def commit(self, records: list[Any]) -> list[Any]: ...


class LoggedMailbox(Protocol):
    """A mailbox whose changes are records of a log (every backend's are)."""

    @property
    def state(self) -> MailboxState: ...

    @property
    def log(self) -> _Log: ...


async def claim_recent(box: LoggedMailbox, upto: int) -> range:
    """Claim the messages of ``box`` below UID ``upto`` that no session has seen as recent
    yet (one log record; none when there are none); returns the UIDs this caller won."""
    st = box.state
    if st.recent_from >= min(upto, st.next_uid):
        return range(0)
    (won,) = await box.log.commit([["r", upto]])
    return range(int(won[0]), int(won[1]))
