"""A small valid policy text shared by the policy tests, and checks that it (and helpers) behave."""

from __future__ import annotations

from pathlib import Path

from tessera.core.policy import Policy, parse_policy

VALID = """\
# A test policy; comments must not matter.
version: 1
policy_id: test-v1
description: policy used by the unit tests
partner: alpha
datasets:
  customers:
    fields:
      customer_id: {tier: core_sensitive, type: string}
      email: {tier: core_sensitive, type: string}
      region: {tier: non_sensitive, type: category}
      monthly_spend: {tier: general_sensitive, type: float}
allowed_analyses:
  - inventory
  - count
  - sum
  - overlap
allowed_purposes:
  - research
  - marketing_analytics
privacy:
  epsilon_per_job: 0.5
  epsilon_per_period: 4.0
  period_days: 30
  delta: 1.0e-6
min_cohort_size: 20
min_participants: 3
allowed_partners:
  - beta
  - gamma
overlap:
  partners:
    beta: [email]
  max_jobs_per_period: 2
retention_days: 30
"""

REPO = Path(__file__).resolve().parents[3]
SHIPPED = ("default", "bank", "telco", "retailer")


def variant(*replacements: tuple[str, str], base: str = VALID) -> str:
    """``base`` with each (old, new) replaced exactly once; fails loudly if ``old`` is absent."""
    text = base
    for old, new in replacements:
        assert text.count(old) == 1, f"test setup: {old!r} must occur once"
        text = text.replace(old, new)
    return text


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"test setup: {needle!r} not in text")


def policy(*replacements: tuple[str, str]) -> Policy:
    return parse_policy(variant(*replacements), source="policies/test.yaml")


def test_valid_text_loads() -> None:
    loaded = policy()
    assert loaded.partner == "alpha"
    assert loaded.allowed_partners == ("beta", "gamma")


def test_line_of_is_one_based() -> None:
    assert line_of(VALID, "version: 1") == 2
