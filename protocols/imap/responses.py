"""IMAP response text: tagged NO and BAD as exceptions, response codes, the mapping of
mail errors to them, sequence sets, and the ESEARCH response (RFC 4731, RFC 5267)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cloudcote.core.mail.api import (
    InvalidMailboxName,
    MailboxExists,
    MailboxInUse,
    MailboxNotFound,
    MailError,
    Message,
    MessageExpunged,
    MessageTooLarge,
    QuotaExceeded,
    StorageUnavailable,
    ranges_of,
)

from .parser import SYSTEM_FLAGS

#: What never goes into a response line as is (client text echoed in BAD or NO).
CTL = re.compile(r"[\x00-\x1f\x7f]")


class No(Exception):
    """A command that fails: tagged NO with an optional response code."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class Bad(Exception):
    """A command that is not valid here: tagged BAD."""


def resp_code(code: str | None) -> str:
    return f"[{code}] " if code else ""


def mail_error(exc: MailError) -> No:
    """The tagged NO (text and response code) of a mail-storage error."""
    if isinstance(exc, MailboxNotFound):
        return No("Mailbox doesn't exist.", "NONEXISTENT")
    if isinstance(exc, MailboxExists):
        return No("Mailbox already exists.", "ALREADYEXISTS")
    if isinstance(exc, InvalidMailboxName):
        return No(f"Invalid mailbox name: {exc}.", "CANNOT")
    if isinstance(exc, MailboxInUse):
        return No(f"{exc}.", "CANNOT")
    if isinstance(exc, QuotaExceeded):
        return No("Quota exceeded.", "OVERQUOTA")
    if isinstance(exc, MessageTooLarge):
        return No(f"{exc}.", "TOOBIG")
    if isinstance(exc, MessageExpunged):
        return No("Some of the requested messages no longer exist.", "EXPUNGEISSUED")
    if isinstance(exc, StorageUnavailable):
        return No("Mail storage is temporarily unavailable, try again.", "UNAVAILABLE")
    return No("Internal error occurred. Refer to server log for more information.",
              "SERVERBUG")


def all_flags(keywords: frozenset[str]) -> list[str]:
    """The FLAGS of a mailbox: the system flags and its keywords."""
    return list(SYSTEM_FLAGS) + sorted(keywords)


def seqset_text(numbers: list[int]) -> str:
    """``1:3,5`` of a list of numbers."""
    return ",".join(f"{lo}" if lo == hi else f"{lo}:{hi}" for lo, hi in ranges_of(numbers))


def ordered_set_text(numbers: list[int]) -> str:
    """Numbers in a given order as a sequence set that keeps it: ascending runs of
    consecutive numbers become ``a:b`` (RFC 5267 ESORT, as Dovecot writes them)."""
    out: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(out)


@dataclass
class ReturnOptions:
    """``RETURN (...)`` of SEARCH and SORT (RFC 4731, RFC 5182, RFC 5267)."""

    items: set[str] = field(default_factory=set)  # MIN MAX ALL COUNT
    save: bool = False
    update: bool = False
    partial: tuple[int, int] | None = None
    #: UPDATE or CONTEXT with no result option: an ESEARCH with the tag alone.
    tag_only: bool = False


def esearch_line(tag: str, by_uid: bool, numbers: list[int], opts: ReturnOptions,
                 ordered: bool, modseq: int | None = None) -> str | None:
    """The ESEARCH response of SEARCH (``ordered`` False: ``numbers`` ascending) or SORT
    (``ordered``: numbers in sort order, MIN and MAX the first and the last); None when
    nothing was asked but SAVE."""
    if not opts.items and opts.partial is None and not opts.tag_only:
        return None

    def as_set(nums: list[int]) -> str:
        return ordered_set_text(nums) if ordered else seqset_text(nums)

    parts = [f'(TAG "{tag}")'] + (["UID"] if by_uid else [])
    if numbers:
        if "MIN" in opts.items:
            parts.append(f"MIN {numbers[0] if ordered else min(numbers)}")
        if "MAX" in opts.items:
            parts.append(f"MAX {numbers[-1] if ordered else max(numbers)}")
        if "ALL" in opts.items:
            parts.append(f"ALL {as_set(numbers)}")
    if "COUNT" in opts.items:
        parts.append(f"COUNT {len(numbers)}")
    if opts.partial is not None:
        lo, hi = opts.partial
        window = numbers[lo - 1:hi]
        parts.append(f"PARTIAL ({lo}:{hi} {as_set(window) if window else 'NIL'})")
    if modseq is not None and numbers:
        parts.append(f"MODSEQ {modseq}")
    return "* ESEARCH " + " ".join(parts)


def result_modseq(found: list[tuple[int, Message]], opts: ReturnOptions | None) -> int:
    """RFC 7162 3.1.5: the highest MODSEQ of the messages found, or of the one message
    returned when only MIN or only MAX was asked for."""
    if not found:
        return 0
    if opts is not None and opts.partial is None and opts.items and \
            opts.items <= {"MIN", "MAX"}:
        # RFC 4731 3.2: only the messages returned count.
        ends = ([found[0]] if "MIN" in opts.items else []) + \
            ([found[-1]] if "MAX" in opts.items else [])
        return max(m.modseq for _, m in ends)
    return max(m.modseq for _, m in found)


def saved_of(opts: ReturnOptions, uids: list[int], ordered: bool) -> list[int]:
    """What SAVE keeps (RFC 5182 2.1): the MIN and/or MAX message when only those were
    asked for, else every one found."""
    if not uids or opts.items - {"MIN", "MAX"} or opts.partial is not None \
            or not opts.items:
        return sorted(uids)
    first, last = (uids[0], uids[-1]) if ordered else (min(uids), max(uids))
    keep = set()
    if "MIN" in opts.items:
        keep.add(first)
    if "MAX" in opts.items:
        keep.add(last)
    return sorted(keep)
