"""PostgreSQL change feed: LISTEN on one channel, on one dedicated connection per feed.

Every statement of :mod:`cloudcote.backends.sql.driver` that changes what a path holds
ends in ``RETURNING pg_notify(<table>_changes, path)`` (see ``PgDialect``), so the server
announces each changed key to every listening process when the change commits, whichever
process or host made it.  The payload is the full key (with the driver's ``prefix``): a
feed hears the keys of its own prefix and ignores the others.

The listening connection is opened on the first subscription.  If it is lost the feed
connects again with backoff and then calls every subscriber (changes may have been
missed meanwhile); subscribers poll slowly in any case.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from cloudcote.libfs.api import (
    ChangeCallback,
    ChangeFeed,
    PrefixRouter,
    Subscription,
    check_prefix,
)
from cloudcote.libfs.backoff import backoff_delay

if TYPE_CHECKING:
    from .dialects import Dialect

log = logging.getLogger("cloudcote.backends.sql")


class PgChangeFeed(ChangeFeed):
    """LISTEN ``dialect.channel`` on a connection of its own; dispatch by prefix."""

    def __init__(self, dialect: Dialect, prefix: str) -> None:
        super().__init__()
        assert dialect.channel is not None
        self.dialect = dialect
        self.channel = dialect.channel
        #: The driver's key prefix with its ``/``, stripped from announced keys.
        self.key_prefix = f"{prefix}/" if prefix else ""
        self._conn: Any = None
        self._connecting: asyncio.Future[Any] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False
        self._warned = False
        #: Announcements received (all keys of the channel) and connections opened.
        self.events = 0
        self.connections = 0

    async def subscribe(self, prefix: str, callback: ChangeCallback) -> Subscription | None:
        """Listening starts with the first subscription; None (poll) while the server
        cannot be reached."""
        check_prefix(prefix)
        if self._closed:
            return None
        try:
            await self._listening()
        except Exception as exc:  # noqa: BLE001 - the caller polls instead
            if not self._warned:
                self._warned = True
                log.warning("%s: cannot listen for changes at %s (%s); polling instead",
                            self.dialect.stage, self.dialect.where(), exc)
            return None
        sub = Subscription(self, prefix, callback)
        self.router.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        # The connection stays: one per process, and the next subscriber needs it again.
        self.router.remove(sub)

    async def _listening(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None
                if not connecting.cancelled():
                    connecting.exception()  # retrieved: the awaiters have it

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(
            dsn=self.dialect.dsn, timeout=self.dialect.timeout,
            server_settings={"application_name": "cloudcote-listen"})
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        if self._closed:
            await conn.close()
            return
        conn.add_termination_listener(self._on_lost)
        self._conn = conn
        self.connections += 1

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.events += 1
        if payload.startswith(self.key_prefix):
            self.router.dispatch(payload[len(self.key_prefix):])

    def _on_lost(self, conn: Any) -> None:
        if conn is not self._conn or self._closed:
            return
        self._conn = None
        log.warning("%s: the connection listening for changes at %s was lost; "
                    "connecting again", self.dialect.stage, self.dialect.where())
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.ensure_future(self._connect_again())

    async def _connect_again(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                await self._listening()
            except Exception as exc:  # noqa: BLE001 - retried
                delay = backoff_delay(attempt, 0.2, 30.0)
                attempt += 1
                log.info("%s: listening at %s: %s; retrying in %.1fs", self.dialect.stage,
                         self.dialect.where(), exc, delay)
                await asyncio.sleep(delay)
                continue
            log.info("%s: listening for changes at %s again", self.dialect.stage,
                     self.dialect.where())
            self.router.dispatch_all()  # what happened meanwhile was not heard
            return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.router = PrefixRouter()
        if self._reconnect is not None:
            self._reconnect.cancel()
            await asyncio.gather(self._reconnect, return_exceptions=True)
        if self._connecting is not None:
            await asyncio.gather(self._connecting, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), self.dialect.timeout)
            except Exception:  # noqa: BLE001 - closing anyway
                conn.terminate()
