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
from typing import Any, NamedTuple, Protocol

from .mime import decode_rfc2047

__all__ = [
    "SORT_KEYS",
    "THREAD_ALGORITHMS",
    "SortMessage",
    "ThreadInfo",
    "ThreadMessage",
    "ThreadNode",
    "base_subject",
    "base_subject_info",
    "envelope_key",
    "format_threads",
    "order_by",
    "parse_msgids",
    "parse_sort_criteria",
    "sent_date",
    "sent_date_micros",
    "sort_messages",
    "thread_info",
    "thread_infos",
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
    if "[" not in text and ":" not in text and "(" not in text:
        # No subj-blob, subj-refwd or "(fwd)" possible: only blanks to trim.
        return text.strip(" "), False
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
    """The first address of an ENVELOPE address list; a group's start marker (RFC 3501
    7.4.2: NIL host, the group name as mailbox) counts as an address named after the
    group, as Dovecot and imaptest have it."""
    if not isinstance(value, list):
        return None
    for addr in value:
        if isinstance(addr, list) and len(addr) >= 4 and (addr[3] is not None
                                                          or addr[2] is not None):
            return addr
    return None


def casemap(text: str) -> str:
    """The comparison form of RFC 5051 i;unicode-casemap: case folded, then in titlecase
    (for the letters of the scripts mail uses, upper case), so that ``[`` and ``_`` sort
    after the letters as they do in Dovecot."""
    return text.casefold().upper()


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _opt_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _addr_mailbox(value: object) -> str:
    """RFC 5256 3: the addr-mailbox (local part) of the first address; empty if none."""
    addr = _first_address(value)
    return casemap(_text(addr[2])) if addr else ""


def _display(value: object) -> str:
    """RFC 5957: the display name of the first address, or else its addr-spec."""
    addr = _first_address(value)
    if addr is None:
        return ""
    name = _WHITESPACE.sub(" ", decode_rfc2047(_text(addr[0]))).strip(" ")
    if name:
        return casemap(name)
    mailbox, host = _text(addr[2]), _text(addr[3])
    return casemap(f"{mailbox}@{host}" if host else mailbox)


# The usual form of a Date header (RFC 5322 3.3 without obsolete parts or comments).
_PLAIN_DATE = re.compile(r"(?:[A-Za-z]{3}, )?(\d{1,2}) ([A-Za-z]{3}) ([1-9]\d{3}) "
                         r"(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", re.ASCII)
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}


def _plain_date(date_header: str) -> datetime.datetime | None:
    """The time of a Date header of the usual form, exactly as ``email.utils`` reads it;
    None if the header is not of that form or names no valid time."""
    m = _PLAIN_DATE.fullmatch(date_header)
    if m is None:
        return None
    month = _MONTHS.get(m.group(2).lower())
    if month is None:
        return None
    offset = int(m.group(8)) * 3600 + int(m.group(9)) * 60
    try:
        zone = datetime.timezone(datetime.timedelta(
            seconds=-offset if m.group(7) == "-" else offset))
        parsed = datetime.datetime(int(m.group(3)), month, int(m.group(1)), int(m.group(4)),
                                   int(m.group(5)), int(m.group(6)), tzinfo=zone)
        return parsed.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        return None


def _header_date(date_header: str | None) -> datetime.datetime | None:
    """The Date header's time in UTC, or None when missing or unparseable."""
    if not date_header:
        return None
    plain = _plain_date(date_header)
    if plain is not None:
        return plain
    try:
        parsed = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    try:
        return parsed.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        return None


def sent_date(date_header: str | None, internaldate: datetime.datetime) -> datetime.datetime:
    """RFC 5256 3 DATE: the Date header's time adjusted to UTC; the internal date when the
    header is missing or cannot be parsed. A date without zone (or -0000) counts as UTC."""
    parsed = _header_date(date_header)
    return _aware(internaldate) if parsed is None else parsed


_MICROSECOND = datetime.timedelta(microseconds=1)


def _micros(value: datetime.datetime) -> int:
    """An aware time as whole microseconds since 1970 (orders exactly as the datetimes)."""
    return (value - _EPOCH) // _MICROSECOND


def sent_date_micros(date_header: str | None, internaldate: int) -> int:
    """``sent_date`` as microseconds since 1970; ``internaldate`` in seconds since 1970."""
    parsed = _header_date(date_header)
    return internaldate * 1_000_000 if parsed is None else _micros(parsed)


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
    "SUBJECT": lambda m: casemap(base_subject(_text(_env(m, 1)))),
    "TO": lambda m: _addr_mailbox(_env(m, 5)),
    "DISPLAYFROM": lambda m: _display(_env(m, 2)),
    "DISPLAYTO": lambda m: _display(_env(m, 5)),
}


def envelope_key(name: str, envelope: Sequence[object] | None, internaldate: int) -> Any:
    """The value SORT compares for key ``name`` (any but ARRIVAL and SIZE) of a message with
    this cached ENVELOPE and internal date (seconds since 1970); the values of one key order
    exactly as ``sort_messages`` orders them (DATE as microseconds since 1970)."""
    env: Sequence[object] = envelope if envelope is not None else ()

    def field(index: int) -> object:
        return env[index] if len(env) > index else None

    if name == "DATE":
        return sent_date_micros(_opt_text(field(0)), internaldate)
    if name == "SUBJECT":
        return casemap(base_subject(_text(field(1))))
    if name == "FROM":
        return _addr_mailbox(field(2))
    if name == "TO":
        return _addr_mailbox(field(5))
    if name == "CC":
        return _addr_mailbox(field(6))
    if name == "DISPLAYFROM":
        return _display(field(2))
    if name == "DISPLAYTO":
        return _display(field(5))
    raise ValueError(f"no envelope key {name!r}")


def order_by(seqs: Sequence[int], columns: Sequence[tuple[Sequence[Any], bool]]) -> list[int]:
    """``seqs`` (ascending) in the order of ``columns``: per sort key, the values of the
    messages (in the order of ``seqs``) and whether the key is reversed.  The same order as
    ``sort_messages``: stable sorts from the last key to the first, ties by sequence."""
    order = list(range(len(seqs)))
    for values, reverse in reversed(columns):
        order.sort(key=values.__getitem__, reverse=reverse)
    return [seqs[i] for i in order]


def sort_messages(messages: Iterable[SortMessage], keys: Sequence[tuple[str, bool]]) -> list[int]:
    """Sequence numbers of ``messages`` in the order of ``keys`` ((key, reverse) pairs from
    ``parse_sort_criteria``); strings compare with i;unicode-casemap (``casemap``), exact
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


@dataclasses.dataclass(slots=True)
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


class ThreadInfo(NamedTuple):
    """What THREAD needs of a message, derived once: ``subject`` is the casefolded base
    subject, ``reply`` whether its extraction removed a reply or forward marker
    (``base_subject_info``), ``date`` the sent date as microseconds since 1970
    (``sent_date_micros``)."""

    seq: int
    message_id: str | None
    references: tuple[str, ...]
    subject: str
    reply: bool
    date: int


def thread_info(msg: ThreadMessage) -> ThreadInfo:
    """The ThreadInfo of a ThreadMessage."""
    base, reply = base_subject_info(msg.subject)
    return ThreadInfo(msg.seq, msg.message_id, msg.references, base.casefold(), reply,
                      _micros(_aware(msg.date)))


class _Container:
    __slots__ = ("seq", "key", "parent", "children", "subject", "reply")

    def __init__(self, info: ThreadInfo | None = None) -> None:
        self.parent: _Container | None = None
        self.children: list[_Container] = []
        self.seq: int | None = None
        #: (sent date, seq) of a message; of a dummy, its first child's (step 6).
        self.key: tuple[int, int] = (0, 0)
        self.subject = ""
        self.reply = False
        if info is not None:
            self.fill(info)

    def fill(self, info: ThreadInfo) -> None:
        self.seq = info.seq
        self.key = (info.date, info.seq)
        self.subject = info.subject
        self.reply = info.reply

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


def thread_messages(messages: Iterable[ThreadMessage], algorithm: str) -> list[ThreadNode]:
    """THREAD (RFC 5256 4): ``algorithm`` is ORDEREDSUBJECT, REFERENCES or REFS."""
    return thread_infos([thread_info(m) for m in messages], algorithm)


def thread_infos(infos: Iterable[ThreadInfo], algorithm: str) -> list[ThreadNode]:
    """``thread_messages`` of messages already derived (``thread_info``)."""
    algo = algorithm.upper()
    msgs = sorted(infos, key=lambda m: m.seq)
    if algo == "ORDEREDSUBJECT":
        return _ordered_subject(msgs)
    if algo == "REFERENCES":
        return _references(msgs, merge_subjects=True)
    if algo == "REFS":
        return _references(msgs, merge_subjects=False)
    raise ValueError(f"unknown threading algorithm {algorithm!r}")


def _ordered_subject(msgs: list[ThreadInfo]) -> list[ThreadNode]:
    """RFC 5256 4 ORDEREDSUBJECT: messages grouped by base subject, each group a thread whose
    first message (by sent date) is the parent of the others; threads by their first
    message's sent date."""
    groups: dict[str, list[ThreadInfo]] = {}
    for msg in msgs:
        groups.setdefault(msg.subject, []).append(msg)
    threads: list[tuple[tuple[int, int], ThreadNode]] = []
    for group in groups.values():
        group.sort(key=_info_key)
        root = ThreadNode(group[0].seq, [ThreadNode(m.seq) for m in group[1:]])
        threads.append((_info_key(group[0]), root))
    threads.sort(key=lambda t: t[0])
    return [node for _, node in threads]


def _info_key(msg: ThreadInfo) -> tuple[int, int]:
    return msg.date, msg.seq


def _references(msgs: list[ThreadInfo], merge_subjects: bool) -> list[ThreadNode]:
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
        msgid = msg.message_id
        own = by_id.get(msgid) if msgid else None
        if own is not None and own.seq is None:
            own.fill(msg)
        else:
            # 1.A: no Message-ID, or a duplicate of an earlier message's: a unique id.
            own = _Container(msg)
            containers.append(own)
            if msgid and msgid not in by_id:
                by_id[msgid] = own
        refs = msg.references
        if not refs:
            # 1.C without a parent.
            own.unlink()
            continue
        chain = [lookup(r) for r in refs if r != msgid]
        # 1.B: link each reference to the next unless already linked or a loop would form.
        for parent, child in itertools.pairwise(chain):
            if child.parent is None and not child.is_ancestor_of(parent):
                parent.link(child)
        # 1.C: the last reference is the parent; the message's own References win over
        # links guessed from other messages' References.
        last = chain[-1] if chain else None
        # A parent that would make a loop is not taken, and the link guessed earlier is
        # broken all the same (as Dovecot and imaptest have it).
        if last is None or own.is_ancestor_of(last):
            own.unlink()
        elif last is not own.parent:
            last.link(own)

    # Step 2: the root set. Step 3: the id table is no longer needed.
    roots = [c for c in containers if c.parent is None]
    # Step 4: prune dummies (children first).
    for node in reversed(_preorder(roots)):
        if not node.children:
            continue
        kept: list[_Container] = []
        for child in node.children:
            if child.seq is None:
                for grandchild in child.children:
                    grandchild.parent = node
                kept.extend(child.children)
            else:
                kept.append(child)
        node.children = kept
    pruned: list[_Container] = []
    for root in roots:
        if root.seq is None and len(root.children) == 1:
            child = root.children[0]
            child.parent = None
            pruned.append(child)
        elif root.seq is not None or root.children:
            pruned.append(root)
    roots = pruned

    if merge_subjects:
        roots = _merge_by_subject(roots)

    # Step 6: siblings by sent date, a dummy by its first child's; ties by seq.
    order = _preorder(roots)
    newest: dict[int, tuple[int, int]] = {}
    for node in reversed(order):
        children = node.children
        if children:
            if len(children) > 1:
                children.sort(key=_container_key)
            if node.seq is None:
                node.key = children[0].key
        if not merge_subjects:
            top = node.key
            for child in children:
                child_newest = newest[id(child)]
                if child_newest > top:
                    top = child_newest
            newest[id(node)] = top
    if merge_subjects:
        roots.sort(key=_container_key)
    else:
        roots.sort(key=lambda c: newest[id(c)])
    result = [_to_node(root) for root in roots]
    # No parent links left: the containers go with their last reference, without waiting
    # for the cycle collector.
    for node in itertools.chain(containers, order):
        node.parent = None
    return result


def _container_key(node: _Container) -> tuple[int, int]:
    return node.key


def _preorder(roots: list[_Container]) -> list[_Container]:
    out: list[_Container] = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        out.append(node)
        if node.children:
            stack.extend(reversed(node.children))
    return out


def _merge_by_subject(roots: list[_Container]) -> list[_Container]:
    """RFC 5256 4 REFERENCES step 5: root messages with the same base subject are gathered."""
    for root in roots:
        if root.seq is None:
            root.children.sort(key=lambda c: c.key if c.seq is not None else (0, 0))

    def subject_of(node: _Container) -> str:
        # 5.A: a dummy takes its first child's subject.
        return node.children[0].subject if node.seq is None else node.subject

    # 5.B, 5.C: one container per base subject, preferring dummies, then non-replies.
    table: dict[str, _Container] = {}
    for root in roots:
        subject = subject_of(root)
        if not subject:
            continue
        old = table.get(subject)
        if (old is None
                or (old.seq is not None and root.seq is None)
                or (old.seq is not None and old.reply and root.seq is not None
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
        if entry.seq is None and root.seq is None:
            for child in root.children:
                child.parent = entry
            entry.children.extend(root.children)
            root.children = []
        elif entry.seq is None or (root.reply and not entry.reply):
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
    top = ThreadNode(root.seq)
    stack = [(root, top)]
    while stack:
        container, node = stack.pop()
        for child in container.children:
            sub = ThreadNode(child.seq)
            node.children.append(sub)
            if child.children:
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
