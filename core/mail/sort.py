"""SORT and THREAD: the algorithms of RFC 5256, RFC 5957 (DISPLAYFROM/DISPLAYTO) and
THREAD=REFS (draft-ietf-morg-inthread, as Dovecot implements it).

Protocol-free and pure: the inputs are the cached ENVELOPE, size, internal date and the
References header of each message; nothing here reads a message body. ``parse_sort_criteria``
raises ``ValueError`` (the session answers BAD); ``format_threads`` writes the body of an
IMAP THREAD response.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from .search import decode_rfc2047

__all__ = [
    "SORT_KEYS",
    "THREAD_ALGORITHMS",
    "SortMessage",
    "ThreadMessage",
    "ThreadNode",
    "base_subject",
    "base_subject_info",
    "format_threads",
    "parse_msgids",
    "parse_sort_criteria",
    "sent_date",
    "sort_messages",
    "thread_message",
    "thread_messages",
]

SORT_KEYS = frozenset({
    "ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO",
})
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES", "REFS")

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


# --- base subject (RFC 5256 2.1) ----------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\r\n]+")
# subj-blob = "[" *BLOBCHAR "]" *WSP ; after step 1 the only WSP left is one space.
_BLOB = r"\[[^\[\]]*\] *"
# subj-leader = (*subj-blob subj-refwd) / WSP ; subj-refwd = ("re" / ("fw" ["d"])) *WSP
# [subj-blob] ":". Group 1 is set when a subj-refwd was matched.
_LEADER = re.compile(rf"((?:{_BLOB})*(?:re|fwd?) *(?:{_BLOB})?:)| ", re.IGNORECASE)
_BLOB_PREFIX = re.compile(_BLOB)


def base_subject_info(subject: str | None) -> tuple[str, bool]:
    """The base subject of RFC 5256 2.1 and whether the message is a reply or forward (the
    extraction removed a subj-refwd, a "(fwd)" subj-trailer or a subj-fwd-hdr/subj-fwd-trl,
    as THREAD=ORDEREDSUBJECT/REFERENCES need)."""
    # (1) encoded-words to text, blanks and continuations to single spaces.
    text = _WHITESPACE.sub(" ", decode_rfc2047(subject or ""))
    reply = False
    while True:
        # (2) remove subj-trailers: "(fwd)" and WSP.
        while True:
            if text.endswith(" "):
                text = text[:-1]
            elif text[-5:].lower() == "(fwd)":
                text = text[:-5]
                reply = True
            else:
                break
        # (3)-(5) remove subj-leaders, then one subj-blob if a subj-base remains, repeatedly.
        while True:
            changed = False
            while (m := _LEADER.match(text)) and m.end():
                reply = reply or m.group(1) is not None
                text = text[m.end():]
                changed = True
            m = _BLOB_PREFIX.match(text)
            if m and text[m.end():]:
                text = text[m.end():]
                changed = True
            if not changed:
                break
        # (6) "[fwd:" subject "]": unwrap and start over at (2).
        if len(text) >= 6 and text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


def base_subject(subject: str | None) -> str:
    """The base subject of RFC 5256 2.1."""
    return base_subject_info(subject)[0]


# --- SORT (RFC 5256 3, RFC 5957) ----------------------------------------------------------------

class SortMessage(Protocol):
    """What SORT needs of a message: all of it is in the index and the cache."""

    @property
    def seq(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def internaldate(self) -> datetime.datetime: ...
    @property
    def envelope(self) -> Sequence[object]:
        """The IMAP ENVELOPE as cached: [date, subject, from, sender, reply-to, to, cc, bcc,
        in-reply-to, message-id]; addresses are lists of [name, adl, mailbox, host] or None."""
        ...


def parse_sort_criteria(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """The sort-criteria of RFC 5256 3 (tokens without the parentheses) as (key, reverse)
    pairs. Raises ValueError with a reason for a client."""
    out: list[tuple[str, bool]] = []
    reverse = False
    for token in tokens:
        word = token.upper()
        if word == "REVERSE":
            if reverse:
                raise ValueError("REVERSE must be followed by a sort key, not REVERSE")
            reverse = True
        elif word in SORT_KEYS:
            out.append((word, reverse))
            reverse = False
        else:
            raise ValueError(f"unknown sort key {token!r}")
    if reverse:
        raise ValueError("REVERSE must be followed by a sort key")
    if not out:
        raise ValueError("empty sort criteria")
    return out


def _env(msg: SortMessage, index: int) -> object:
    env = msg.envelope
    return env[index] if env is not None and len(env) > index else None


def _first_address(value: object) -> list[object] | None:
    """The first real address of an ENVELOPE address list (group markers skipped)."""
    if not isinstance(value, list):
        return None
    for addr in value:
        if isinstance(addr, list) and len(addr) >= 4 and addr[3] is not None:
            return addr
    return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _opt_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _addr_mailbox(value: object) -> str:
    """RFC 5256 3: the addr-mailbox (local part) of the first address; empty if none."""
    addr = _first_address(value)
    return _text(addr[2]).casefold() if addr else ""


def _display(value: object) -> str:
    """RFC 5957: the display name of the first address, or else its addr-spec."""
    addr = _first_address(value)
    if addr is None:
        return ""
    name = _WHITESPACE.sub(" ", decode_rfc2047(_text(addr[0]))).strip(" ")
    if name:
        return name.casefold()
    mailbox, host = _text(addr[2]), _text(addr[3])
    return (f"{mailbox}@{host}" if host else mailbox).casefold()


def sent_date(date_header: str | None, internaldate: datetime.datetime) -> datetime.datetime:
    """RFC 5256 3 DATE: the Date header's time adjusted to UTC; the internal date when the
    header is missing or cannot be parsed. A date without zone (or -0000) counts as UTC."""
    if date_header:
        try:
            parsed = email.utils.parsedate_to_datetime(date_header)
        except (TypeError, ValueError, IndexError, OverflowError):
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.UTC)
            try:
                return parsed.astimezone(datetime.UTC)
            except (ValueError, OverflowError):
                pass
    return _aware(internaldate)


def _aware(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)


_KEY_FUNCS: dict[str, Callable[[SortMessage], Any]] = {
    "ARRIVAL": lambda m: _aware(m.internaldate),
    "CC": lambda m: _addr_mailbox(_env(m, 6)),
    "DATE": lambda m: sent_date(_opt_text(_env(m, 0)), m.internaldate),
    "FROM": lambda m: _addr_mailbox(_env(m, 2)),
    "SIZE": lambda m: m.size,
    "SUBJECT": lambda m: base_subject(_text(_env(m, 1))).casefold(),
    "TO": lambda m: _addr_mailbox(_env(m, 5)),
    "DISPLAYFROM": lambda m: _display(_env(m, 2)),
    "DISPLAYTO": lambda m: _display(_env(m, 5)),
}


def sort_messages(messages: Iterable[SortMessage], keys: Sequence[tuple[str, bool]]) -> list[int]:
    """Sequence numbers of ``messages`` in the order of ``keys`` ((key, reverse) pairs from
    ``parse_sort_criteria``); strings compare with i;unicode-casemap (casefolded), exact
    ties go by sequence number (RFC 5256 3)."""
    items = sorted(messages, key=lambda m: m.seq)
    # Stable sorts from the last key to the first: Python's sort keeps equal items in order
    # even with reverse=True, so ties fall through to the next key and finally to the seq.
    for name, reverse in reversed(keys):
        func = _KEY_FUNCS[name]
        values: dict[int, Any] = {id(m): func(m) for m in items}
        items.sort(key=lambda m: values[id(m)], reverse=reverse)
    return [m.seq for m in items]


# --- THREAD (RFC 5256 4, 5.2) -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ThreadMessage:
    """What THREAD needs of a message. ``message_id`` and ``references`` are msg-ids without
    angle brackets; ``subject`` is the Subject as in the ENVELOPE; ``date`` the sent date
    (``sent_date``)."""

    seq: int
    message_id: str | None
    references: tuple[str, ...]
    subject: str
    date: datetime.datetime


@dataclasses.dataclass
class ThreadNode:
    """A node of a thread tree; ``seq`` is None for a dummy (a message not in the mailbox
    that ties its children together)."""

    seq: int | None
    children: list[ThreadNode] = dataclasses.field(default_factory=list)


_MSGID = re.compile(r"<([^<>]*)>")


def parse_msgids(value: str | None) -> list[str]:
    """The msg-ids of a References/In-Reply-To/Message-ID value, without brackets and
    blanks; empty ids are dropped."""
    if not value:
        return []
    ids = [_WHITESPACE.sub("", m) for m in _MSGID.findall(value)]
    return [i for i in ids if i]


def thread_message(msg: SortMessage, references_header: str | None) -> ThreadMessage:
    """The ThreadMessage of a message from its cached ENVELOPE and References header: the
    References ids, or else the first id of In-Reply-To (RFC 5256 5.2 step 1.B)."""
    env_id = parse_msgids(_text(_env(msg, 9)))
    refs = parse_msgids(references_header) or parse_msgids(_text(_env(msg, 8)))[:1]
    return ThreadMessage(
        seq=msg.seq,
        message_id=env_id[0] if env_id else None,
        references=tuple(refs),
        subject=_text(_env(msg, 1)),
        date=sent_date(_opt_text(_env(msg, 0)), msg.internaldate),
    )


class _Container:
    __slots__ = ("msg", "parent", "children", "subject", "reply")

    def __init__(self, msg: ThreadMessage | None = None) -> None:
        self.msg = msg
        self.parent: _Container | None = None
        self.children: list[_Container] = []
        self.subject = ""
        self.reply = False
        if msg is not None:
            base, self.reply = base_subject_info(msg.subject)
            self.subject = base.casefold()

    def is_ancestor_of(self, other: _Container) -> bool:
        node: _Container | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def unlink(self) -> None:
        if self.parent is not None:
            self.parent.children.remove(self)
            self.parent = None

    def link(self, child: _Container) -> None:
        child.unlink()
        child.parent = self
        self.children.append(child)


def _msg_key(msg: ThreadMessage) -> tuple[datetime.datetime, int]:
    return _aware(msg.date), msg.seq


def thread_messages(messages: Iterable[ThreadMessage], algorithm: str) -> list[ThreadNode]:
    """THREAD (RFC 5256 4): ``algorithm`` is ORDEREDSUBJECT, REFERENCES or REFS."""
    algo = algorithm.upper()
    msgs = sorted(messages, key=lambda m: m.seq)
    if algo == "ORDEREDSUBJECT":
        return _ordered_subject(msgs)
    if algo == "REFERENCES":
        return _references(msgs, merge_subjects=True)
    if algo == "REFS":
        return _references(msgs, merge_subjects=False)
    raise ValueError(f"unknown threading algorithm {algorithm!r}")


def _ordered_subject(msgs: list[ThreadMessage]) -> list[ThreadNode]:
    """RFC 5256 4 ORDEREDSUBJECT: messages grouped by base subject, each group a thread whose
    first message (by sent date) is the parent of the others; threads by their first
    message's sent date."""
    groups: dict[str, list[ThreadMessage]] = {}
    for msg in msgs:
        groups.setdefault(base_subject(msg.subject).casefold(), []).append(msg)
    threads: list[tuple[tuple[datetime.datetime, int], ThreadNode]] = []
    for group in groups.values():
        group.sort(key=_msg_key)
        root = ThreadNode(group[0].seq, [ThreadNode(m.seq) for m in group[1:]])
        threads.append((_msg_key(group[0]), root))
    threads.sort(key=lambda t: t[0])
    return [node for _, node in threads]


def _references(msgs: list[ThreadMessage], merge_subjects: bool) -> list[ThreadNode]:
    """RFC 5256 4 REFERENCES (steps 1-6); without step 5 and with threads ordered by their
    newest message for REFS."""
    by_id: dict[str, _Container] = {}
    containers: list[_Container] = []

    def lookup(msgid: str) -> _Container:
        found = by_id.get(msgid)
        if found is None:
            found = by_id[msgid] = _Container()
            containers.append(found)
        return found

    # Step 1: containers by Message-ID, links from References.
    for msg in msgs:
        own = by_id.get(msg.message_id) if msg.message_id else None
        if own is not None and own.msg is None:
            own.msg = msg
            base, own.reply = base_subject_info(msg.subject)
            own.subject = base.casefold()
        else:
            # 1.A: no Message-ID, or a duplicate of an earlier message's: a unique id.
            own = _Container(msg)
            containers.append(own)
            if msg.message_id and msg.message_id not in by_id:
                by_id[msg.message_id] = own
        refs = [r for r in msg.references if r != msg.message_id]
        chain = [lookup(r) for r in refs]
        # 1.B: link each reference to the next unless already linked or a loop would form.
        for parent, child in itertools.pairwise(chain):
            if child.parent is None and not child.is_ancestor_of(parent):
                parent.link(child)
        # 1.C: the last reference is the parent; the message's own References win over
        # links guessed from other messages' References.
        last = chain[-1] if chain else None
        if last is None:
            own.unlink()
        elif last is not own.parent and not own.is_ancestor_of(last):
            last.link(own)

    # Step 2: the root set. Step 3: the id table is no longer needed.
    roots = [c for c in containers if c.parent is None]
    # Step 4: prune dummies (children first).
    for node in reversed(_preorder(roots)):
        kept: list[_Container] = []
        for child in node.children:
            if child.msg is None:
                for grandchild in child.children:
                    grandchild.parent = node
                kept.extend(child.children)
            else:
                kept.append(child)
        node.children = kept
    pruned: list[_Container] = []
    for root in roots:
        if root.msg is None and len(root.children) == 1:
            child = root.children[0]
            child.parent = None
            pruned.append(child)
        elif root.msg is not None or root.children:
            pruned.append(root)
    roots = pruned

    if merge_subjects:
        roots = _merge_by_subject(roots)

    # Step 6: siblings by sent date, a dummy by its first child's; ties by seq.
    order = _preorder(roots)
    keys: dict[int, tuple[datetime.datetime, int]] = {}
    newest: dict[int, tuple[datetime.datetime, int]] = {}
    for node in reversed(order):
        node.children.sort(key=lambda c: keys[id(c)])
        if node.msg is not None:
            keys[id(node)] = _msg_key(node.msg)
        else:
            keys[id(node)] = keys[id(node.children[0])]
        newest[id(node)] = max([keys[id(node)], *(newest[id(c)] for c in node.children)])
    if merge_subjects:
        roots.sort(key=lambda c: keys[id(c)])
    else:
        roots.sort(key=lambda c: newest[id(c)])
    return [_to_node(root) for root in roots]


def _preorder(roots: list[_Container]) -> list[_Container]:
    out: list[_Container] = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def _merge_by_subject(roots: list[_Container]) -> list[_Container]:
    """RFC 5256 4 REFERENCES step 5: root messages with the same base subject are gathered."""
    for root in roots:
        if root.msg is None:
            root.children.sort(key=lambda c: _msg_key(c.msg) if c.msg else (_EPOCH, 0))

    def subject_of(node: _Container) -> str:
        # 5.A: a dummy takes its first child's subject.
        return node.children[0].subject if node.msg is None else node.subject

    # 5.B, 5.C: one container per base subject, preferring dummies, then non-replies.
    table: dict[str, _Container] = {}
    for root in roots:
        subject = subject_of(root)
        if not subject:
            continue
        old = table.get(subject)
        if (old is None
                or (old.msg is not None and root.msg is None)
                or (old.msg is not None and old.reply and root.msg is not None
                    and not root.reply)):
            table[subject] = root

    # 5.D: merge the other roots into the table's container.
    replaced: dict[int, _Container] = {}
    removed: set[int] = set()
    for root in roots:
        if root.parent is not None:
            continue  # already put under a new dummy together with an earlier root
        subject = subject_of(root)
        entry = table.get(subject) if subject else None
        if entry is None or entry is root:
            continue
        if entry.msg is None and root.msg is None:
            for child in root.children:
                child.parent = entry
            entry.children.extend(root.children)
            root.children = []
        elif entry.msg is None or (root.reply and not entry.reply):
            entry.link(root)
        else:
            dummy = _Container()
            # The dummy takes the table entry's place in the root set.
            replaced[id(entry)] = dummy
            table[subject] = dummy
            dummy.link(entry)
            dummy.link(root)
        removed.add(id(root))
    return [replaced.get(id(r), r) for r in roots if id(r) not in removed]


def _to_node(root: _Container) -> ThreadNode:
    top = ThreadNode(root.msg.seq if root.msg else None)
    stack = [(root, top)]
    while stack:
        container, node = stack.pop()
        for child in container.children:
            sub = ThreadNode(child.msg.seq if child.msg else None)
            node.children.append(sub)
            stack.append((child, sub))
    return top


def format_threads(threads: Sequence[ThreadNode]) -> str:
    """The threads in the form of RFC 5256 4's thread-list: a chain of single children is
    "(1 2 3)", two or more children are nested lists "(1 (2)(3))", a dummy parent has no
    number "((2)(3))"."""
    out: list[str] = []
    # Iterative, so that long reply chains cannot exhaust the recursion limit.
    stack: list[ThreadNode | str] = list(reversed(threads))
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        out.append("(")
        node = item
        first = True
        while True:
            if node.seq is not None:
                out.append(("" if first else " ") + str(node.seq))
                first = False
            if len(node.children) == 1:
                node = node.children[0]
                continue
            if node.children:
                if not first:
                    out.append(" ")
                stack.append(")")
                stack.extend(reversed(node.children))
            else:
                stack.append(")")
            break
    return "".join(out)
