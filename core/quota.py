"""Quota rules in Dovecot's form, ``*:storage=1G:messages=100000``, and the limits they set.

https://doc.dovecot.org/2.3/configuration_manual/quota/#quota-rules

The one reading of a rule for the configuration (``[mail] quota_rule``), the userdb
(``quota_rule`` fields) and mail storage; only the ``*`` (every mailbox) rule with
``storage`` (bytes, suffix B/K/M/G/T, binary multiples) and ``messages`` is understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A rule cloudcote accepts; keys and size suffixes in any case.
QUOTA_RULE_RE = re.compile(r"\*(:(storage=\d+(\.\d+)?[BKMGT]?|messages=\d+))+", re.I)
#: What an error message shows as an example.
QUOTA_RULE_EXAMPLE = "*:storage=1G:messages=100000"

_SIZE_SUFFIXES = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass
class QuotaLimits:
    """A user's limits; 0 means unlimited."""

    bytes: int = 0
    messages: int = 0


def is_quota_rule(rule: str) -> bool:
    """Whether ``parse_quota_rule`` accepts ``rule``."""
    return QUOTA_RULE_RE.fullmatch(rule) is not None


def parse_quota_rule(rule: str) -> QuotaLimits:
    """The limits of ``rule``; a key given twice counts as its last value.

    ``ValueError`` (naming the rule) if it is not of the form ``QUOTA_RULE_RE`` describes.
    """
    if not is_quota_rule(rule):
        raise ValueError(f"quota_rule {rule!r} is invalid: expected a rule like "
                         f"{QUOTA_RULE_EXAMPLE!r}")
    limits = QuotaLimits()
    for part in rule.split(":")[1:]:
        key, _, value = part.partition("=")
        if key.lower() == "storage":
            limits.bytes = parse_size(value)
        else:
            limits.messages = int(value)
    return limits


def parse_size(text: str) -> int:
    """Bytes of ``10``, ``1.5G``, ``512k`` (B/K/M/G/T are powers of 1024); ValueError if
    it is not a number."""
    text = text.strip().upper()
    mult = 1
    if text[-1:] in _SIZE_SUFFIXES:
        text, mult = text[:-1], _SIZE_SUFFIXES[text[-1]]
    return int(float(text) * mult)
