"""LIST and LSUB (RFC 3501 6.3.8-9) with LIST-EXTENDED (RFC 5258), CHILDREN (RFC 3348),
SPECIAL-USE (RFC 6154) and LIST-STATUS (RFC 5819)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloudcote.core.mail.api import SEP

from . import utf7
from .parser import ImapParseError, Token, as_atom, as_list, as_string
from .values import astring, utf8_astring

if TYPE_CHECKING:
    from cloudcote.core.mail import api

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                "SIZE", "DELETED")


def parse_status_items(arg: Token) -> list[str]:
    """A STATUS item list (STATUS, LIST RETURN (STATUS ...)): upper-cased, each known."""
    items = [as_atom(x, "status item").upper() for x in as_list(arg, "STATUS items")]
    if not items:
        raise ImapParseError("STATUS needs items")
    for item in items:
        if item not in STATUS_ITEMS:
            raise ImapParseError(f"unknown STATUS item {item[:30]}")
    return items


@dataclass
class ListOptions:
    lsub: bool = False
    patterns: list[str] = field(default_factory=list)
    reference: str = ""
    select_subscribed: bool = False
    select_special_use: bool = False
    recursive: bool = False
    return_subscribed: bool = False
    return_children: bool = True
    return_special_use: bool = True
    status_items: list[str] = field(default_factory=list)
    extended: bool = False
    #: Names in UTF-8 rather than modified UTF-7 (IMAP4rev2, RFC 9051 5.1).
    utf8: bool = False


def _decode(raw: bytes, utf8: bool) -> str:
    """A reference or pattern; one that is not valid modified UTF-7 is taken as it is (it
    then matches no mailbox name, as in Dovecot) rather than refused."""
    try:
        return raw.decode("utf-8") if utf8 else utf7.decode(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return raw.decode("utf-8", "replace")


def parse_list_command(args: list[Token], lsub: bool, utf8: bool = False) -> ListOptions:
    opts = ListOptions(lsub=lsub, utf8=utf8)
    args = list(args)
    if not lsub and args and isinstance(args[0], list):
        opts.extended = True
        for t in as_list(args.pop(0), "selection options"):
            word = as_atom(t, "selection option").upper()
            if word == "SUBSCRIBED":
                opts.select_subscribed = True
            elif word == "SPECIAL-USE":
                opts.select_special_use = True
            elif word == "RECURSIVEMATCH":
                opts.recursive = True
            elif word == "REMOTE":
                pass
            else:
                raise ImapParseError(f"unknown LIST selection option {word[:30]}")
        if opts.recursive and not (opts.select_subscribed or opts.select_special_use):
            raise ImapParseError("RECURSIVEMATCH needs another selection option")
    if len(args) < 2:
        raise ImapParseError(f"{'LSUB' if lsub else 'LIST'} needs a reference and a pattern")
    opts.reference = _decode(as_string(args[0], "reference"), utf8)
    pat = args[1]
    if isinstance(pat, list) and not lsub:
        opts.extended = True
        opts.patterns = [_decode(as_string(p, "pattern"), utf8) for p in pat]
        if not opts.patterns:
            raise ImapParseError("empty pattern list")
    else:
        opts.patterns = [_decode(as_string(pat, "pattern"), utf8)]
    rest = args[2:]
    if rest:
        if lsub or len(rest) != 2 or not isinstance(rest[0], str) \
                or rest[0].upper() != "RETURN":
            raise ImapParseError("unexpected LIST arguments")
        opts.extended = True
        items = as_list(rest[1], "RETURN options")
        i = 0
        while i < len(items):
            word = as_atom(items[i], "return option").upper()
            if word == "SUBSCRIBED":
                opts.return_subscribed = True
            elif word == "CHILDREN":
                opts.return_children = True
            elif word == "SPECIAL-USE":
                opts.return_special_use = True
            elif word == "STATUS":
                if i + 1 >= len(items):
                    raise ImapParseError("STATUS needs items")
                opts.status_items = parse_status_items(items[i + 1])
                i += 1
            else:
                raise ImapParseError(f"unknown LIST return option {word[:30]}")
            i += 1
    if opts.select_subscribed:
        opts.return_subscribed = True
    return opts


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches anything, ``%`` anything but the hierarchy separator; a leading INBOX
    matches in any case."""
    out = []
    head = pattern[:5]
    if head.upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in (SEP, "*", "%")):
        out.append("INBOX")
        pattern = pattern[5:]
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(SEP)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _canon_inbox(name: str) -> str:
    head, sep, rest = name.partition(SEP)
    return ("INBOX" + sep + rest) if head.upper() == "INBOX" else name


def list_responses(mail: api.User, opts: ListOptions) -> Iterator[tuple[bytes, str | None]]:
    """``(line, name)`` per matching mailbox; ``name`` is set where a LIST-STATUS line may
    follow (an existing, selectable mailbox)."""
    verb = "LSUB" if opts.lsub else "LIST"
    if len(opts.patterns) == 1 and opts.patterns[0] == "" and not opts.extended:
        yield f'* {verb} (\\Noselect) "{SEP}" ""\r\n'.encode(), None
        return
    entries = {e.name: e for e in mail.list_mailboxes()}
    subscribed = mail.subscriptions()
    regexes = [pattern_regex(_canon_inbox(opts.reference + p)) for p in opts.patterns if p]
    if not regexes:
        return

    def matches(name: str) -> bool:
        return any(r.fullmatch(name) for r in regexes)

    # Every name that exists, is subscribed, or is the parent of one of those.
    names: set[str] = set(entries) | subscribed
    parents: set[str] = set()
    for n in list(names):
        parts = n.split(SEP)
        for i in range(1, len(parts)):
            parents.add(SEP.join(parts[:i]))
    universe = names | parents
    sub_parents = {SEP.join(n.split(SEP)[:i]) for n in subscribed
                   for i in range(1, len(n.split(SEP)))}

    def has_children(name: str) -> bool:
        return name in parents and any(e.startswith(name + SEP) for e in entries)

    for name in sorted(universe, key=lambda n: (n != "INBOX", n)):
        if not matches(name):
            continue
        entry = entries.get(name)
        attrs: list[str] = []
        childinfo = False
        if opts.lsub:
            if name not in subscribed:
                if name in sub_parents and any(
                        pattern_regex(_canon_inbox(opts.reference + p)).fullmatch(name)
                        for p in opts.patterns if "%" in p):
                    attrs.append("\\Noselect")
                else:
                    continue
            elif entry is None:
                attrs.append("\\Noselect")
        elif opts.select_subscribed or opts.select_special_use:
            qualifies = True
            if opts.select_subscribed and name not in subscribed:
                qualifies = False
            if opts.select_special_use and (entry is None or not entry.special_use):
                qualifies = False
            if not qualifies:
                # RFC 5258 3.5: a parent is reported for a subscribed child only where the
                # patterns do not return that child itself.
                if opts.recursive and opts.select_subscribed and name in sub_parents \
                        and any(not matches(n) for n in subscribed
                                if n.startswith(name + SEP)):
                    childinfo = True
                else:
                    continue
            if entry is None:
                attrs.append("\\NonExistent")
        else:
            if entry is None:
                if name not in parents:
                    continue  # subscribed but gone: only LSUB/SUBSCRIBED show it
                attrs.append("\\Noselect" if not opts.extended else "\\NonExistent")
        if not opts.lsub and opts.return_children and "\\NonExistent" not in attrs:
            attrs.append("\\HasChildren" if has_children(name) else "\\HasNoChildren")
        if opts.return_subscribed and name in subscribed and not opts.lsub:
            attrs.append("\\Subscribed")
        if entry is not None and (opts.return_special_use or opts.select_special_use):
            attrs.extend(entry.special_use)
        line = (f"* {verb} ({' '.join(attrs)}) \"{SEP}\" ".encode()
                + (utf8_astring(name) if opts.utf8 else astring(utf7.encode(name))))
        if childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        yield line + b"\r\n", (name if entry is not None and not opts.lsub
                               and not childinfo else None)
