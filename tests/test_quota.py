"""Quota rules: one reading for the configuration, the userdb and mail storage."""

from __future__ import annotations

import pytest

from cloudcote.core.auth import UserdbError, UserEntry, user_fields
from cloudcote.core.mail.values import QuotaLimits as ValuesQuotaLimits
from cloudcote.core.mail.values import parse_quota_rule as values_parse_quota_rule
from cloudcote.core.quota import QuotaLimits, is_quota_rule, parse_quota_rule, parse_size


@pytest.mark.parametrize("rule, limits", [
    ("*:storage=1G:messages=100000", QuotaLimits(1 << 30, 100000)),
    ("*:storage=1.5k", QuotaLimits(1536, 0)),
    ("*:STORAGE=2m:Messages=3", QuotaLimits(2 << 20, 3)),
    ("*:storage=10", QuotaLimits(10, 0)),
    ("*:storage=7B", QuotaLimits(7, 0)),
    ("*:storage=1T", QuotaLimits(1 << 40, 0)),
    ("*:messages=5", QuotaLimits(0, 5)),
    ("*:messages=5:messages=6", QuotaLimits(0, 6)),
])
def test_rules(rule: str, limits: QuotaLimits) -> None:
    assert is_quota_rule(rule)
    assert parse_quota_rule(rule) == limits


@pytest.mark.parametrize("rule", [
    "", "*", "lots", "storage=1G", "*:storage=1Q", "*:storage=", "*:storage=-1",
    "*:storage=1G:", "*: storage=1G", "*:bytes=5", "INBOX:storage=1G", "*:messages=1.5",
    "*:storage=1 G", "*:storage=1G:messages=10 ",
])
def test_bad_rules_are_refused_everywhere(rule: str) -> None:
    assert not is_quota_rule(rule)
    with pytest.raises(ValueError, match="quota_rule .* is invalid"):
        parse_quota_rule(rule)
    with pytest.raises(UserdbError, match="user 'u': quota_rule .* is invalid"):
        user_fields(UserEntry("u", "{PLAIN}x", extra={"quota_rule": rule or "x"}))


def test_sizes() -> None:
    assert parse_size("0") == 0
    assert parse_size(" 512k ") == 512 << 10
    assert parse_size("0.5G") == 1 << 29
    with pytest.raises(ValueError):
        parse_size("G")


def test_mail_values_use_the_same_rule() -> None:
    assert ValuesQuotaLimits is QuotaLimits and values_parse_quota_rule is parse_quota_rule
