"""The selected mailbox as one session's client knows it (RFC 3501 7).

:class:`Selected` is the view: the UIDs in the order that gives the sequence numbers the
client knows, its \\Recent messages, the MODSEQ up to which it heard of flag changes, the
saved result ``$`` and the searches kept up to date.  :class:`MailboxView` brings other
sessions' changes into it at the points RFC 3501 7 allows (EXPUNGE or VANISHED, EXISTS,
RECENT, FLAGS, FETCH; never an EXPUNGE during FETCH, STORE or SEARCH) and resolves
sequence sets against it.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloudcote.core.mail import search as searchmod
from cloudcote.core.mail.api import MailboxNotFound

from ..session import Disconnect
from . import sorting
from .fetch import flags_list
from .parser import Command, ImapParseError, Token, as_atom
from .responses import Bad, No, all_flags, seqset_text
from .wire import ImapWire

if TYPE_CHECKING:
    from cloudcote.core.mail import api

#: Searches one session keeps up to date (RFC 5267 UPDATE); NOUPDATE beyond.
MAX_CONTEXTS = 16


@dataclass
class Selected:
    box: api.Mailbox
    readonly: bool
    #: UIDs in sequence-number order, as this session's client knows them.
    view: list[int]
    recent: set[int] = field(default_factory=set)
    #: MODSEQ up to which flag changes were reported.
    known_modseq: int = 0
    #: UID -> MODSEQ this session already reported for it (its own STOREs).
    reported: dict[int, int] = field(default_factory=dict)
    keywords: frozenset[str] = frozenset()
    version: tuple[int, int, int] = (0, 0, 0)
    #: The saved search result ``$`` (RFC 5182), as UIDs.
    saved: list[int] = field(default_factory=list)
    #: Searches the client asked to keep up to date (RFC 5267 UPDATE), by tag.
    contexts: dict[str, SearchContext] = field(default_factory=dict)


@dataclass
class SearchContext:
    """A SEARCH or SORT with ``RETURN (UPDATE)``: what it found (UIDs, in result order)
    and what it needs to be run again when the mailbox changes."""

    key: searchmod.SearchKey
    by_uid: bool
    sort_keys: list[tuple[str, bool]] | None
    found: list[int]
    version: tuple[int, int, int]


class MailboxView(ImapWire):
    """The part of a session that keeps its selected mailbox's view up to date."""

    sel: Selected | None
    condstore: bool
    qresync: bool
    rev2: bool

    async def recent_of(self, box: api.Mailbox, uids: list[int],
                        readonly: bool | None = None) -> set[int]:
        """Which of ``uids`` are \\Recent to this session (RFC 3501 2.3.2): a read-write
        session claims the messages no session has claimed yet (one log record, so that
        exactly one session sees each as recent); a read-only one (EXAMINE) sees them
        without claiming."""
        if readonly is None:
            readonly = self.sel.readonly if self.sel is not None else True
        st = box.state
        if readonly:
            return {u for u in uids if u >= st.recent_from}
        won = await box.claim_recent(max(uids) + 1) if uids else range(0)
        mine = self.sel.recent if self.sel is not None and self.sel.box is box else set()
        return {u for u in uids if u in won or u in mine}

    async def refresh(self, force: bool = False) -> None:
        if self.sel is None:
            return
        box = self.sel.box
        if force or box.needs_refresh():
            try:
                await box.refresh()
            except MailboxNotFound:
                self.emit("* BYE Selected mailbox was deleted, have to disconnect.\r\n")
                await self.flush()
                raise Disconnect() from None

    async def sync(self, allow_expunge: bool) -> None:
        """Untagged EXPUNGE/VANISHED, EXISTS, RECENT, FLAGS and FETCH for changes the
        client has not heard of."""
        sel = self.sel
        assert sel is not None
        st = sel.box.state
        version = (st.highest_modseq, st.next_uid, st.exists)
        if version == sel.version:
            if sel.contexts:
                await self._update_contexts()
            return
        view = sel.view
        if allow_expunge:
            gone = [uid for uid in view if uid not in st.messages]
            if gone:
                self._context_expunges(gone)
                if self.qresync:
                    self.emit(f"* VANISHED {seqset_text(gone)}\r\n")
                    goneset = set(gone)
                    view[:] = [u for u in view if u not in goneset]
                else:
                    for uid in reversed(gone):
                        i = bisect.bisect_left(view, uid)
                        self.emit(f"* {i + 1} EXPUNGE\r\n")
                        del view[i]
                for uid in gone:
                    sel.recent.discard(uid)
                    sel.reported.pop(uid, None)
        last = view[-1] if view else 0
        start = bisect.bisect_right(st.uids, last)
        new = st.uids[start:]
        self.announce_keywords()
        if st.highest_modseq > sel.known_modseq:
            for seq, uid in enumerate(view, 1):
                m = st.messages.get(uid)
                if m is None or m.modseq <= sel.known_modseq:
                    continue
                if sel.reported.get(uid) == m.modseq:
                    continue
                self.emit(self._flag_update(seq, m))
            sel.known_modseq = st.highest_modseq
            sel.reported.clear()
        if new:
            view.extend(new)
            self.emit(f"* {len(view)} EXISTS\r\n")
            if not self.rev2:  # IMAP4rev2 has no \Recent (RFC 9051 E.4)
                sel.recent.update(await self.recent_of(sel.box, new, readonly=sel.readonly))
                self.emit(f"* {len(sel.recent)} RECENT\r\n")
        if allow_expunge or len(view) == st.exists:
            sel.version = version
        await self._update_contexts()
        await self.maybe_flush()

    def announce_keywords(self) -> None:
        """FLAGS and PERMANENTFLAGS when the mailbox has a keyword the client has not
        heard of, before any FETCH shows it (RFC 3501 7.2.6)."""
        sel = self.sel
        assert sel is not None
        st = sel.box.state
        if frozenset(st.keywords) == sel.keywords:
            return
        sel.keywords = frozenset(st.keywords)
        self.emit(f"* FLAGS ({' '.join(all_flags(sel.keywords))})\r\n")
        if not sel.readonly:
            self.emit(f"* OK [PERMANENTFLAGS ({' '.join(all_flags(sel.keywords))}"
                      " \\*)] Flags permitted.\r\n")

    def _flag_update(self, seq: int, m: api.Message) -> str:
        assert self.sel is not None
        parts = []
        if self.condstore:  # RFC 7162 3.1.4: UID and MODSEQ once CONDSTORE is on
            parts.append(f"UID {m.uid}")
        parts.append("FLAGS " + flags_list(m.flags, m.uid in self.sel.recent).decode())
        if self.condstore:
            parts.append(f"MODSEQ ({m.modseq})")
        return f"* {seq} FETCH ({' '.join(parts)})\r\n"

    def seq_set(self, text: str) -> list[int]:
        """Sequence numbers of a sequence set, as UIDs of the view (RFC 3501 6.4.8); ``$``
        is the saved search result (RFC 5182)."""
        assert self.sel is not None
        if text == "$":
            return self.saved_uids()
        view = self.sel.view
        try:
            sset = searchmod.parse_sequence_set(text)
        except searchmod.SearchError:
            raise ImapParseError("invalid message sequence set") from None
        if not view:
            raise No("No messages.")
        out: list[int] = []
        for lo, hi in sset.resolve(len(view)):
            if hi > len(view):
                raise Bad("Invalid messageset: message sequence number out of range")
            out.extend(view[lo - 1:hi])
        return sorted(set(out))

    def uid_set(self, text: str, allow_all: bool = True) -> list[int]:
        """UIDs of the view that a UID set names (missing UIDs are ignored); ``$`` is the
        saved search result (RFC 5182)."""
        assert self.sel is not None
        if text == "$":
            return self.saved_uids()
        view = self.sel.view
        try:
            sset = searchmod.parse_sequence_set(text)
        except searchmod.SearchError:
            raise ImapParseError("invalid UID set") from None
        largest = view[-1] if view else 0
        out: list[int] = []
        for lo, hi in sset.resolve(largest) if view or not allow_all else []:
            i = bisect.bisect_left(view, lo)
            j = bisect.bisect_right(view, hi)
            out.extend(view[i:j])
        if not view and allow_all:
            return []
        return sorted(set(out))

    def msg_set(self, cmd: Command, tok: Token) -> list[int]:
        text = as_atom(tok, "sequence set")
        if cmd.name.startswith("UID "):
            return self.uid_set(text)
        return self.seq_set(text)

    def saved_uids(self) -> list[int]:
        """``$``: the saved result's messages that are still in the view."""
        assert self.sel is not None
        view = self.sel.view
        out = []
        for uid in self.sel.saved:
            i = bisect.bisect_left(view, uid)
            if i < len(view) and view[i] == uid:
                out.append(uid)
        return out

    def mailbox_version(self) -> tuple[int, int, int]:
        assert self.sel is not None
        st = self.sel.box.state
        return (st.highest_modseq, st.next_uid, st.exists)

    def keep_context(self, tag: str, ctx: SearchContext) -> None:
        """RFC 5267 4.2: a search kept up to date; NOUPDATE past the limit."""
        assert self.sel is not None
        contexts = self.sel.contexts
        if tag not in contexts and len(contexts) >= MAX_CONTEXTS:
            self.emit(f'* NO [NOUPDATE "{tag}"] Too many search contexts.\r\n')
            return
        contexts[tag] = ctx

    def _context_expunges(self, gone: list[int]) -> None:
        """REMOVEFROM for expunged messages of the searches kept up to date, numbered as
        the client knows them before the EXPUNGE responses (RFC 5267 4.3)."""
        sel = self.sel
        assert sel is not None
        goneset = set(gone)
        for tag, ctx in sel.contexts.items():
            if not goneset.intersection(ctx.found):
                continue
            old = list(ctx.found)
            ctx.found = [u for u in old if u not in goneset]
            self._emit_context_changes(tag, ctx, old, ctx.found)

    async def _update_contexts(self) -> None:
        """ADDTO and REMOVEFROM (RFC 5267 4.3) for the searches kept up to date, after
        any command and whenever the mailbox changes.  A message expunged but not yet
        reported keeps its place until its EXPUNGE (see ``_context_expunges``)."""
        sel = self.sel
        assert sel is not None
        if not sel.contexts:
            return
        version = self.mailbox_version()
        st = sel.box.state
        present = [(seq, st.messages[uid]) for seq, uid in enumerate(sel.view, 1)
                   if uid in st.messages]
        recent = frozenset(sel.recent)
        for tag, ctx in list(sel.contexts.items()):
            if ctx.version == version:
                continue
            ctx.version = version
            hits = await sel.box.search(ctx.key, [m for _, m in present], recent)
            found = [present[i - 1] for i in hits]
            if ctx.sort_keys is not None:
                by_seq = {seq: m.uid for seq, m in found}
                new = [by_seq[seq] for seq in
                       await sorting.sort_order(sel.box, found, ctx.sort_keys)]
            else:
                new = [m.uid for _, m in found]
            pending = [u for u in ctx.found if u not in st.messages]
            old = [u for u in ctx.found if u in st.messages]
            self._emit_context_changes(tag, ctx, old, new)
            ctx.found = new + pending

    def _emit_context_changes(self, tag: str, ctx: SearchContext, old: list[int],
                              new: list[int]) -> None:
        """REMOVEFROM the messages that left, from the end, then ADDTO those that came, in
        result order; a SEARCH result gives position 0 (RFC 5267 4.3), a SORT result the
        message's place at that moment."""
        assert self.sel is not None
        view = self.sel.view
        new_set = set(new)
        old_set = set(old)

        def number(uid: int) -> int:
            return uid if ctx.by_uid else bisect.bisect_left(view, uid) + 1

        prefix = f'* ESEARCH (TAG "{tag}"){" UID" if ctx.by_uid else ""}'
        removed = [(i + 1, u) for i, u in enumerate(old) if u not in new_set]
        added = [(i + 1, u) for i, u in enumerate(new) if u not in old_set]
        if ctx.sort_keys is None:
            if removed:
                nums = sorted(number(u) for _, u in removed)
                self.emit(f"{prefix} REMOVEFROM (0 {seqset_text(nums)})\r\n")
            if added:
                nums = sorted(number(u) for _, u in added)
                self.emit(f"{prefix} ADDTO (0 {seqset_text(nums)})\r\n")
            return
        if removed:
            pairs = " ".join(f"{pos} {number(u)}" for pos, u in reversed(removed))
            self.emit(f"{prefix} REMOVEFROM ({pairs})\r\n")
        if added:
            pairs = " ".join(f"{pos} {number(u)}" for pos, u in added)
            self.emit(f"{prefix} ADDTO ({pairs})\r\n")

    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 3.1): with a mailbox selected, the
        client hears its HIGHESTMODSEQ at once."""
        if self.condstore:
            return
        self.condstore = True
        if self.sel is not None:
            self.emit(f"* OK [HIGHESTMODSEQ {self.sel.box.state.highest_modseq}] "
                      "Highest\r\n")

    async def matching(self, args: list[Token], charset: str,
                       ) -> tuple[searchmod.SearchKey, list[tuple[int, api.Message]]]:
        """The search key of ``args`` and the (seq, message) pairs matching it."""
        assert self.sel is not None
        if not args:
            raise ImapParseError("SEARCH needs criteria")
        try:
            key = searchmod.parse_search(args, charset)  # type: ignore[arg-type]
        except searchmod.BadCharset:
            raise No("Unsupported charset.", "BADCHARSET (US-ASCII UTF-8)") from None
        except searchmod.SearchError as exc:
            raise ImapParseError(str(exc)) from None
        await self.refresh()
        box = self.sel.box
        st = box.state
        view, messages = self.sel.view, st.messages
        if all(map(messages.__contains__, view)):
            # No expunge pending for this session (the usual case): built in C, not per
            # message in Python (SORT and THREAD of ALL spend most of their time here).
            present = list(zip(itertools.count(1), map(messages.__getitem__, view)))
        else:
            present = [(seq, messages[uid]) for seq, uid in enumerate(view, 1)
                       if uid in messages]
        if isinstance(key, searchmod.All):  # SORT and THREAD over ALL, mostly
            return key, present
        if isinstance(key, searchmod.SequenceNumbers) and len(present) == len(view):
            # A bare sequence set over a view with every message present: slices of it,
            # no evaluation per message.
            picked: list[tuple[int, api.Message]] = []
            for lo, hi in key.seqset.resolve(len(present)):
                picked += present[lo - 1:hi]
            return key, picked
        msgs = [m for _, m in present]
        hits = await box.search(key, msgs, frozenset(self.sel.recent))
        return key, [present[i - 1] for i in hits]

