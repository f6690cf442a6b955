"""NOTIFY (RFC 5465): which mailboxes a client wants to hear about, and of what.

:func:`parse_notify` turns ``NOTIFY SET [STATUS] (filter events)...`` into a
:class:`NotifySpec` (no I/O); the session watches what it names and reports changes as
untagged responses whenever no command is running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cloudcote.core.mail.api import SEP

from .fetch import FetchRequest, parse_fetch_items
from .parser import ImapParseError, Token, as_atom, as_list, as_string

#: The events cloudcote reports (RFC 5465 5); the metadata and annotation ones it has not.
SUPPORTED_EVENTS = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName",
                    "SubscriptionChange")
_ALL_EVENTS = {e.upper(): e for e in SUPPORTED_EVENTS + (
    "AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange")}
#: Mailboxes one NOTIFY may name, and watch at once.
MAX_WATCHED = 200


class BadEvent(Exception):
    """An event cloudcote does not report: ``NO [BADEVENT (...)]``."""


@dataclass
class EventGroup:
    """A filter (``PERSONAL``, ``SUBTREE``, ...) and the events asked for it."""

    filter: str
    mailboxes: list[str] = field(default_factory=list)
    events: frozenset[str] = frozenset()

    def matches(self, name: str, subscribed: set[str]) -> bool:
        if self.filter == "PERSONAL":
            return True
        if self.filter == "INBOXES":
            return name == "INBOX"
        if self.filter == "SUBSCRIBED":
            return name in subscribed
        if self.filter == "MAILBOXES":
            return name in self.mailboxes
        if self.filter == "SUBTREE":
            return any(name == m or name.startswith(m + SEP) for m in self.mailboxes)
        return False


@dataclass
class NotifySpec:
    #: The events for the selected mailbox; None when SELECTED is not named (the selected
    #: mailbox then reports as without NOTIFY, after commands only).
    selected: frozenset[str] | None = None
    #: SELECTED-DELAYED: expunges wait for a command, as without NOTIFY.
    delayed: bool = False
    #: What MessageNew reports of each new message in the selected mailbox.
    fetch: FetchRequest | None = None
    groups: list[EventGroup] = field(default_factory=list)
    status: bool = False

    def events_for(self, name: str, subscribed: set[str]) -> frozenset[str]:
        """The events asked for mailbox ``name`` (not selected): the first group naming
        it decides."""
        for g in self.groups:
            if g.matches(name, subscribed):
                return g.events
        return frozenset()

    @property
    def watches_list(self) -> bool:
        return any(g.events & {"MailboxName", "SubscriptionChange"} for g in self.groups) \
            or bool(self.selected and self.selected & {"MailboxName", "SubscriptionChange"})


def parse_notify(args: list[Token], mailbox_name: Callable[[Token], str]) -> NotifySpec | None:
    """``NOTIFY NONE`` (None) or ``NOTIFY SET [STATUS] event-group...``; ``mailbox_name``
    decodes a mailbox argument as the session does."""
    if not args:
        raise ImapParseError("NOTIFY needs SET or NONE")
    verb = as_atom(args[0], "NOTIFY verb").upper()
    if verb == "NONE":
        if len(args) != 1:
            raise ImapParseError("NOTIFY NONE takes no arguments")
        return None
    if verb != "SET":
        raise ImapParseError("NOTIFY needs SET or NONE")
    spec = NotifySpec()
    rest = list(args[1:])
    if rest and isinstance(rest[0], str) and rest[0].upper() == "STATUS":
        spec.status = True
        rest.pop(0)
    if not rest:
        raise ImapParseError("NOTIFY SET needs event groups")
    seen_selected = False
    for group in rest:
        toks = as_list(group, "event group")
        if len(toks) < 2:
            raise ImapParseError("an event group is (filter events)")
        kind = as_atom(toks[0], "mailbox filter").upper()
        mailboxes: list[str] = []
        if kind in ("SUBTREE", "MAILBOXES"):
            if len(toks) != 3:
                raise ImapParseError(f"{kind} needs mailboxes and events")
            arg = toks[1]
            names = arg if isinstance(arg, list) else [arg]
            if not names:
                raise ImapParseError(f"{kind} needs mailboxes")
            mailboxes = [mailbox_name(n) for n in names]
            if len(mailboxes) > MAX_WATCHED:
                raise ImapParseError("too many mailboxes")
            ev_tok = toks[2]
        elif kind in ("SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED"):
            if len(toks) != 2:
                raise ImapParseError(f"{kind} takes events only")
            ev_tok = toks[1]
        else:
            raise ImapParseError(f"unknown mailbox filter {kind[:30]}")
        selected = kind in ("SELECTED", "SELECTED-DELAYED")
        events, fetch = _events(ev_tok, selected)
        if selected:
            if seen_selected:
                raise ImapParseError("SELECTED named twice")
            seen_selected = True
            spec.selected = events
            spec.delayed = kind == "SELECTED-DELAYED"
            spec.fetch = fetch
        else:
            spec.groups.append(EventGroup(kind, mailboxes, events))
    return spec


def _events(tok: Token, selected: bool) -> tuple[frozenset[str], FetchRequest | None]:
    if isinstance(tok, str) and tok.upper() == "NONE":
        return frozenset(), None
    toks = as_list(tok, "events")
    if not toks:
        raise ImapParseError("empty event list")
    events: set[str] = set()
    fetch: FetchRequest | None = None
    unknown: list[str] = []
    i = 0
    while i < len(toks):
        word = as_string(toks[i], "event").decode("ascii", "replace") \
            if not isinstance(toks[i], str) else str(toks[i])
        name = _ALL_EVENTS.get(word.upper())
        if name is None:
            raise ImapParseError(f"unknown event {word[:30]}")
        if name not in SUPPORTED_EVENTS:
            unknown.append(name)
        events.add(name)
        if name == "MessageNew" and i + 1 < len(toks) and isinstance(toks[i + 1], list):
            if not selected:
                raise ImapParseError("fetch attributes are for the selected mailbox only")
            fetch = parse_fetch_items(toks[i + 1])
            i += 1
        i += 1
    if unknown:
        raise BadEvent(" ".join(unknown))
    # RFC 5465 5: for the selected mailbox (whose sequence numbers the client keeps),
    # MessageNew and MessageExpunge go together, and FlagChange needs both.
    if selected and ("MessageNew" in events) != ("MessageExpunge" in events):
        raise ImapParseError("MessageNew and MessageExpunge must be asked for together")
    if selected and "FlagChange" in events and "MessageNew" not in events:
        raise ImapParseError("FlagChange needs MessageNew and MessageExpunge")
    return frozenset(events), fetch


def status_items(events: frozenset[str], condstore: bool) -> list[str]:
    """What a STATUS notification of a mailbox that is not selected carries (RFC 5465
    5.1-5.3, as Dovecot sends it): MESSAGES for new and expunged messages, UIDNEXT and
    UIDVALIDITY for new ones, UIDVALIDITY and HIGHESTMODSEQ for flag changes (and UNSEEN
    with them for a client that has not enabled CONDSTORE)."""
    items = []
    if events & {"MessageNew", "MessageExpunge"}:
        items.append("MESSAGES")
    if "MessageNew" in events:
        items += ["UIDNEXT", "UIDVALIDITY"]
    if "FlagChange" in events:
        if "UIDVALIDITY" not in items:
            items.append("UIDVALIDITY")
        items.append("HIGHESTMODSEQ")
        if not condstore:
            items.append("UNSEEN")
    return items
