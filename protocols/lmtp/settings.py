"""``[lmtp]`` settings (besides ``listen``): how deliveries are addressed and bounded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LmtpSettings:
    #: ``user+detail@domain``: the characters that start a detail ("" turns details off).
    recipient_delimiter: str = "+"
    #: Deliver ``user+detail`` into the mailbox ``detail`` when it exists (Dovecot's
    #: lmtp_save_to_detail_mailbox); otherwise, and by default, into INBOX.
    save_to_detail_mailbox: bool = False
    #: Add a ``Received:`` header naming this server (Dovecot's lmtp_add_received_header).
    add_received_header: bool = True
    #: RCPT TO commands accepted per transaction (RFC 5321 4.5.3.1.8: at least 100).
    max_recipients: int = 100
    #: Message size limit in bytes; 0 follows ``[mail] max_message_size``.
    max_message_size: int = 0
    #: Seconds a client may stay silent (RFC 5321 4.5.3.2: 5 minutes per command).
    idle_timeout: float = 300.0
    #: Invalid commands tolerated before the server answers 421 and hangs up.
    max_bad_commands: int = 20
