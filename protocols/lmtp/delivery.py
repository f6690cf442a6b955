"""LMTP delivery policy, apart from the protocol (as aiosmtpd's ``handle_RCPT`` and
``handle_DATA``): who a recipient is, the size limit, the quota, the storing of the message
and the reply each recipient gets.  The session (session.py) parses commands and calls
:class:`DeliveryHandler`.

Each RCPT is checked at once: the user is looked up in the passdb (``user_lookup``), the
user's mail opened and, when taking one more message (of MAIL's SIZE=, if given) would go
over the quota, refused with 552.  The message is stored once for all accepted recipients
of a store (``Store.deliver_to``; on mdbox one object holds it for all of them) and every
accepted recipient gets its own reply, in RCPT order (RFC 2033 4.2).  A 250 is written
only for a copy that ``deliver_to`` reported durable by its UID: a reply promises the mail
is kept.  A 451 is written only for a copy that is not stored (or when the store cannot
even be read to tell): the store settles a write whose outcome was uncertain before
``deliver_to`` returns, so the MTA's retry makes no duplicate.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudcote.core.mail.errors import (
    InvalidMailboxName,
    MailboxNotFound,
    MailError,
    MessageTooLarge,
    QuotaExceeded,
)

from .settings import LmtpSettings

if TYPE_CHECKING:
    from cloudcote.core.mail.api import Mailbox, Store, User

    from ..session import ServerContext
    from .session import Address, LmtpSession, Transaction

log = logging.getLogger("cloudcote.lmtp")

#: Longest Message-ID put into a log line.
MAX_LOGGED_MSGID = 200
_MSGID_RE = re.compile(rb"^message-id:[ \t]*([^\r\n]*)", re.I | re.M)
_CTL = re.compile(r"[\x00-\x1f\x7f]")


def split_detail(local: str, delimiters: str) -> tuple[str, str | None]:
    """``user+detail`` -> (``user``, ``detail``): the first of the ``delimiters`` characters
    starts the detail (Dovecot's recipient_delimiter); a leading one does not count."""
    for i, ch in enumerate(local):
        if i and ch in delimiters:
            return local[:i], local[i + 1:]
    return local, None


def message_id(body: bytes) -> str:
    """The Message-ID of a message for log lines, or ``unspecified``."""
    end = body.find(b"\r\n\r\n")
    head = body if end < 0 else body[:end + 2]
    m = _MSGID_RE.search(head)
    if m is None or not m.group(1).strip():
        return "unspecified"
    text = m.group(1).strip().decode("utf-8", "replace")
    return _CTL.sub("?", text)[:MAX_LOGGED_MSGID]


@dataclass
class Recipient:
    """One accepted RCPT: its address, the user, the store and mailbox its copy goes to."""

    address: Address
    user: str
    store: Store
    box: Mailbox


class DeliveryHandler:
    """The site policy of one LMTP listener's sessions."""

    def __init__(self, ctx: ServerContext, settings: LmtpSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        #: Message size limit: ``[lmtp] max_message_size``, else ``[mail]``'s.
        self.size_limit = settings.max_message_size or ctx.storage_settings.max_message_size

    async def handle_RCPT(self, session: LmtpSession, txn: Transaction,
                          addr: Address) -> str:
        """RFC 2033 4.2 / RFC 5321 4.1.1.3: the user is looked up and the mail opened now,
        so unknown users and spent quotas are refused before the data is sent.  The reply;
        an accepted recipient is added to ``txn.recipients``."""
        sid, peer = session.conn.session_id, session.conn.peer
        local, detail = split_detail(addr.local, self.settings.recipient_delimiter)
        user = local + ("@" + addr.domain if addr.domain is not None else "")
        try:
            entry = await self.ctx.passdb.user_lookup(user)
        except Exception as exc:  # noqa: BLE001 - any failure of the passdb is temporary
            log.error("%s %s: user lookup of %s failed: %s", sid, peer, user, exc)
            return f"451 4.3.0 <{addr.text}> Temporary user lookup failure"
        if entry is None:
            log.info("%s %s: rcpt <%s>: user %s doesn't exist", sid, peer, addr.text, user)
            return f"550 5.1.1 <{addr.text}> User doesn't exist: {addr.text}"
        name = getattr(entry, "user", None) or user
        try:
            store = await self.ctx.store_for(entry)
            mail = await self.ctx.user_mail(entry)
            box = await self._target_box(mail, detail)
            # Core's rule: refused only when one more message of this size (0 when MAIL
            # gave none; DATA checks the real size again) would go over a limit.
            await mail.check_quota(txn.size or 0, 1)
        except QuotaExceeded as exc:
            log.info("%s %s: user %s: rcpt refused: %s", sid, peer, name, exc)
            return f"552 5.2.2 <{addr.text}> Quota exceeded (mailbox for user is full)"
        except Exception as exc:  # noqa: BLE001 - storage failures are temporary here
            log.error("%s %s: user %s: opening the mail failed: %s", sid, peer, name, exc)
            return f"451 4.3.0 <{addr.text}> Temporary internal error"
        txn.recipients.append(Recipient(addr, name, store, box))
        return f"250 2.1.5 <{addr.text}> OK"

    async def _target_box(self, mail: User, detail: str | None) -> Mailbox:
        """INBOX, or the detail's mailbox when save_to_detail_mailbox and it exists."""
        if detail and self.settings.save_to_detail_mailbox:
            try:
                return await mail.mailbox(detail)
            except (MailboxNotFound, InvalidMailboxName):
                pass
        return await mail.mailbox("INBOX")

    def trace_headers(self, session: LmtpSession, txn: Transaction, txn_id: str) -> bytes:
        """What Dovecot's LMTP prepends: Return-Path, and with a single recipient
        Delivered-To and ``for <rcpt>`` in Received; with several recipients neither (the
        copy must not reveal the other, maybe Bcc, recipients), so every recipient's copy
        is the same bytes and mdbox stores it once."""
        lines = [f"Return-Path: <{txn.sender.text}>"]
        single = txn.recipients[0].address.text if len(txn.recipients) == 1 else None
        if single is not None:
            lines.append(f"Delivered-To: {single}")
        if self.settings.add_received_header:
            ip = session.conn.peer.rpartition(":")[0]
            source = f"{session.lhlo_name} ([{ip}])" if ip else f"{session.lhlo_name}"
            when = email.utils.format_datetime(email.utils.localtime())
            lines.append(f"Received: from {source}\r\n\tby {self.ctx.hostname} with LMTP "
                         f"id {txn_id}\r\n\t(envelope-from <{txn.sender.text}>)")
            if single is not None:
                lines.append(f"\tfor <{single}>; {when}")
            else:
                lines[-1] += f"; {when}"
        return "".join(line + "\r\n" for line in lines).encode("utf-8")

    async def handle_DATA(self, session: LmtpSession, txn: Transaction,
                          body: bytes) -> list[str]:
        """Store once for every recipient, then one reply per recipient in RCPT order;
        each 250 only for a copy ``deliver_to`` reported durable."""
        txn_id = secrets.token_urlsafe(12)
        raw = self.trace_headers(session, txn, txn_id) + body
        msgid = message_id(body)
        # One copy per distinct mailbox: a recipient named twice gets the mail once.
        boxes: list[Mailbox] = []
        stores: list[Store] = []
        index: dict[int, int] = {}
        for rcpt in txn.recipients:
            if id(rcpt.box) not in index:
                index[id(rcpt.box)] = len(boxes)
                boxes.append(rcpt.box)
                stores.append(rcpt.store)
        results = await self._deliver(session, raw, msgid, stores, boxes)
        return [self._result_reply(session, rcpt, results[index[id(rcpt.box)]], msgid,
                                   txn_id) for rcpt in txn.recipients]

    async def _deliver(self, session: LmtpSession, raw: bytes, msgid: str,
                       stores: Sequence[Store], boxes: Sequence[Mailbox],
                       ) -> list[int | Exception]:
        """``deliver_to`` on each store with its mailboxes (usually one store for all);
        per mailbox the UID or the error."""
        groups: dict[int, list[int]] = {}
        for i, store in enumerate(stores):
            groups.setdefault(id(store), []).append(i)
        results: list[int | Exception] = [RuntimeError("not delivered")] * len(boxes)

        async def one(members: list[int]) -> None:
            try:
                got = await stores[members[0]].deliver_to(raw, [boxes[i] for i in members])
            except Exception as exc:  # noqa: BLE001 - nothing was promised; the MTA retries
                log.error("%s %s: msgid=%s: delivery failed: %s", session.conn.session_id,
                          session.conn.peer, msgid, exc)
                got = [exc] * len(members)
            for i, result in zip(members, got, strict=True):
                results[i] = result

        await asyncio.gather(*(one(members) for members in groups.values()))
        return results

    def _result_reply(self, session: LmtpSession, rcpt: Recipient, result: int | Exception,
                      msgid: str, txn_id: str) -> str:
        addr = rcpt.address.text
        where = (session.conn.session_id, txn_id, rcpt.user, msgid, rcpt.box.name)
        if isinstance(result, int) and not isinstance(result, bool) and result > 0:
            log.info("%s %s %s: msgid=%s: saved mail to %s (uid %d)", *where, result)
            return f"250 2.0.0 <{addr}> {txn_id} Saved as UID {result}"
        if isinstance(result, QuotaExceeded):
            log.info("%s %s %s: msgid=%s: save to %s refused: %s", *where, result)
            return f"552 5.2.2 <{addr}> Quota exceeded (mailbox for user is full)"
        if isinstance(result, MessageTooLarge):
            log.info("%s %s %s: msgid=%s: save to %s refused: %s", *where, result)
            return f"552 5.3.4 <{addr}> Message too large"
        kind = "storage error" if isinstance(result, MailError) else "internal error"
        log.error("%s %s %s: msgid=%s: save to %s failed (%s): %s", *where, kind, result)
        return f"451 4.3.0 <{addr}> Temporary internal error, try again later"
