"""The one bridge from cassandra-driver to asyncio.

cassandra-driver runs its own I/O thread (the libev reactor) and reports each response
through callbacks on that thread.  :func:`execute` attaches a callback and an errback that
hand the outcome to the event loop with ``loop.call_soon_threadsafe``: no thread per call,
no blocking wait.  One call fetches one page; the caller passes the returned paging state
back to get the next one, so a long scan holds one page in memory at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cassandra import OperationTimedOut
from cassandra.cluster import ResponseFuture, Session

T = TypeVar("T")

#: Seconds past the request timeout after which a reply is given up for lost.
GRACE = 5.0


class Page:
    """The rows of one response page and the paging state of the next (None: last)."""

    __slots__ = ("rows", "paging_state", "coordinator")

    def __init__(self, rows: list[Any], paging_state: bytes | None, coordinator: Any) -> None:
        self.rows = rows
        self.paging_state = paging_state
        self.coordinator = coordinator


def _deliver(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    # Runs on the event loop; the awaiting task may have been cancelled meanwhile.
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


async def execute(
    session: Session,
    query: Any,
    params: Sequence[Any] | None = None,
    *,
    timeout: float,
    paging_state: bytes | None = None,
) -> Page:
    """Run ``query`` (a prepared or simple statement) and return its first (or
    ``paging_state``'s) page.  Raises whatever the driver reports (``cassandra.*``
    exceptions); the caller maps them onto libfs errors."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Page] = loop.create_future()
    rf: ResponseFuture = session.execute_async(
        query, params, timeout=timeout, paging_state=paging_state)

    def on_rows(rows: Any) -> None:
        # An exception escaping a callback is swallowed by the driver's thread and would
        # leave the awaiting task hanging: hand it over instead.
        try:
            # ResultSet.paging_state reads this same attribute; there is no public getter
            # on the future itself.
            value: Any = Page(list(rows or ()), rf._paging_state, rf.coordinator_host)
            error = None
        except BaseException as exc:
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(_deliver, fut, value, error)
        except RuntimeError:  # the loop closed while the request was in flight
            pass

    def on_error(exc: BaseException) -> None:
        try:
            loop.call_soon_threadsafe(_deliver, fut, None, exc)
        except RuntimeError:
            pass

    rf.add_callbacks(on_rows, on_error)
    # The driver's own timer fails the request after ``timeout``; this guard only keeps a
    # lost callback from hanging the caller forever.
    try:
        async with asyncio.timeout(timeout + GRACE):
            return await fut
    except TimeoutError:
        raise OperationTimedOut(f"no reply within {timeout + GRACE:.0f}s") from None


async def blocking(fn: Callable[[], T], *, timeout: float | None = None,
                   name: str = "cassandra") -> T:
    """Run one of the driver's blocking calls (connect, prepare, shutdown) in a daemon
    thread of its own.  Not the default executor: ``asyncio.run`` waits for that on exit,
    so a ``Cluster.shutdown`` that hangs (a known driver failure mode when a node stops
    answering) would hang the process.  After ``timeout`` the caller gets TimeoutError
    and the thread is abandoned."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        try:
            value: Any = fn()
            error = None
        except BaseException as exc:
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(_deliver, fut, value, error)
        except RuntimeError:
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    if timeout is None:
        return await fut
    async with asyncio.timeout(timeout):
        return await fut
