"""The arguments SEARCH and SORT share: ``RETURN (...)`` (RFC 4731, RFC 5182, RFC 5267) and
the saved result ``$`` (RFC 5182) in search criteria.  No I/O."""

from __future__ import annotations

import re

from .parser import ImapParseError, Token, as_atom, as_list
from .responses import ReturnOptions, seqset_text


def return_options(args: list[Token]) -> tuple[ReturnOptions | None, list[Token]]:
    """``RETURN (...)`` at the head of SEARCH or SORT arguments: MIN MAX ALL COUNT (RFC 4731,
    RFC 5267), SAVE (RFC 5182), CONTEXT, UPDATE and ``PARTIAL lo:hi`` (RFC 5267); None
    without RETURN.  With no result option but SAVE, UPDATE or CONTEXT, ALL is meant
    (``RETURN ()`` too), except that SAVE alone returns nothing."""
    if not (len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "RETURN"):
        return None, args
    opts = ReturnOptions()
    toks = as_list(args[1], "RETURN options")
    context_only = False
    i = 0
    while i < len(toks):
        r = as_atom(toks[i], "return option").upper()
        if r in ("MIN", "MAX", "ALL", "COUNT"):
            opts.items.add(r)
        elif r == "SAVE":
            opts.save = True
        elif r == "UPDATE":
            opts.update = True
            context_only = True
        elif r == "CONTEXT":
            context_only = True  # a hint that updates or partial results may follow
        elif r == "PARTIAL" and i + 1 < len(toks) and opts.partial is None:
            i += 1
            m = re.fullmatch(r"([1-9]\d{0,9}):([1-9]\d{0,9})", as_atom(toks[i], "partial range"))
            if m is None:
                raise ImapParseError("PARTIAL needs a range lo:hi")
            lo, hi = sorted((int(m.group(1)), int(m.group(2))))
            opts.partial = (lo, hi)
        else:
            raise ImapParseError(f"unknown RETURN option {r[:20]}")
        i += 1
    if opts.partial is not None and "ALL" in opts.items:
        raise ImapParseError("PARTIAL and ALL exclude each other")
    if not toks:
        opts.items.add("ALL")
    opts.tag_only = context_only and not opts.items and opts.partial is None
    return opts, args[2:]


SEARCH_ARG_KEYS = frozenset((
    "BCC", "BEFORE", "BODY", "CC", "FROM", "KEYWORD", "LARGER", "ON", "SENTBEFORE", "SENTON",
    "SENTSINCE", "SINCE", "SMALLER", "SUBJECT", "TEXT", "TO", "UNKEYWORD", "OLDER",
    "YOUNGER", "HEADER", "MODSEQ", "CHARSET"))


def expand_saved(args: list[Token], saved: list[int]) -> list[Token]:
    """Search criteria with ``$`` (RFC 5182) replaced by the UIDs of the saved result:
    ``$`` and ``UID $`` become ``UID <set>`` (``NOT ALL`` when the result is empty)."""
    out: list[Token] = []
    for tok in args:
        if isinstance(tok, list):
            out.append(expand_saved(tok, saved))
            continue
        prev = out[-1] if out else None
        if tok != "$" or (isinstance(prev, str) and prev.upper() in SEARCH_ARG_KEYS):
            out.append(tok)
            continue
        if isinstance(prev, str) and prev.upper() == "UID":
            out.pop()
        out.append(["UID", seqset_text(saved)] if saved else ["NOT", "ALL"])
    return out

