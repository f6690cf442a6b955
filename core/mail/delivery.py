"""Delivery of one message to several mailboxes (LMTP): ``deliver`` by (user, mailbox) on
any backend, and the libfs backend's ``deliver_to``, which stores the message once for
all its mailboxes with mdbox."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import objects
from .entries import cache_entry_of, stored_idate
from .errors import MessageTooLarge
from .index import new_guid
from .layout import write_mdbox

if TYPE_CHECKING:
    from .api import Mailbox as AnyMailbox
    from .api import Store
    from .mailbox import Mailbox


async def deliver(store: Store, raw: bytes,
                  targets: Sequence[tuple[str, str]]) -> list[int | Exception]:
    """Deliver one message to several (user, mailbox) targets of one store; see
    :func:`deliver_to`.  Returns per target the UID or the error."""
    results: list[int | Exception] = []
    boxes: list[AnyMailbox] = []
    for user, name in targets:
        try:
            um = await store.user(user)
            boxes.append(await um.mailbox(name))
            results.append(0)
        except Exception as exc:  # noqa: BLE001 - reported per recipient
            results.append(exc)
    done = iter(await store.deliver_to(raw, boxes))
    return [r if isinstance(r, Exception) else next(done) for r in results]


async def deliver_to(raw: bytes, boxes: Sequence[Mailbox]) -> list[int | Exception]:
    """Deliver one message into several opened mailboxes (LMTP), each checked against its
    user's size limit and quota first.  With mdbox the message is stored once for all the
    mailboxes of one store, even across users.  Returns per mailbox the UID or the error;
    a UID means that copy is durable, an error that it is not in the mailbox (a log
    commit that failed uncertainly is settled by :meth:`Mailbox.commit` and ``save``), or
    that the store could not even be read to tell."""
    raw = objects.normalize_crlf(raw)
    results: list[int | Exception] = [RuntimeError("not delivered")] * len(boxes)
    live: list[tuple[int, Mailbox]] = []
    for i, box in enumerate(boxes):
        try:
            if len(raw) > box.mail_store.settings.max_message_size:
                raise MessageTooLarge(f"message of {len(raw)} bytes is above the limit")
            await box.user.check_quota(len(raw), 1)
            live.append((i, box))
        except Exception as exc:  # noqa: BLE001 - reported per recipient
            results[i] = exc
    by_store: dict[int, list[tuple[int, Mailbox]]] = {}
    for i, box in live:
        by_store.setdefault(id(box.mail_store), []).append((i, box))

    async def save(i: int, box: Mailbox) -> None:
        try:
            results[i] = await box.save(raw)
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    async def link(i: int, box: Mailbox, guid: str, loc: str, idate: int, tz: int,
                   entry: dict[str, Any]) -> None:
        try:
            (uid,) = await box.commit([["a", guid, loc, len(raw), idate, tz, [], entry]])
            results[i] = int(uid)
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    async def one_store(group: list[tuple[int, Mailbox]]) -> None:
        store = group[0][1].mail_store
        if store.settings.layout != "mdbox":
            await asyncio.gather(*(save(i, b) for i, b in group))
            return
        guid = new_guid()
        idate, tz = stored_idate(None)
        meta = objects.StoredMeta(guid, group[0][1].guid, idate, tz, len(raw))
        try:
            (loc,) = await write_mdbox(store.fs, [(b.user.user, b.guid) for _, b in group],
                                       [(raw, meta)])
        except Exception as exc:  # noqa: BLE001
            for i, _ in group:
                results[i] = exc
            return
        entry = cache_entry_of(raw)
        await asyncio.gather(*(link(i, b, guid, loc, idate, tz, entry) for i, b in group))

    await asyncio.gather(*(one_store(g) for g in by_store.values()))
    return results
