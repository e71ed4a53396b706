"""check_job: the node's veto, one stable code and one readable sentence per refusal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from test_policy_base import policy

from tessera.core.errors import PolicyViolation
from tessera.core.policy import check_job
from tessera.core.types import JobSpec

POLICY = policy()
EVERYONE = ("alpha", "beta", "gamma")


def _spec(**overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "analysis": "count",
        "dataset": "customers",
        "purpose": "research",
        "epsilon": 0.5,
        "delta": 1e-7,
    }
    values.update(overrides)
    return JobSpec(**values)


def _refusal(spec: JobSpec, participants: Sequence[str] = EVERYONE, node: str = "alpha") -> PolicyViolation:
    with pytest.raises(PolicyViolation) as info:
        check_job(POLICY, spec, node_name=node, participants=participants)
    return info.value


def test_allowed_job_passes() -> None:
    check_job(POLICY, _spec(), node_name="alpha", participants=EVERYONE)
    check_job(POLICY, _spec(epsilon=0.5, delta=1e-6), node_name="alpha", participants=EVERYONE)
    check_job(POLICY, _spec(delta=0.0), node_name="alpha", participants=list(EVERYONE))


@pytest.mark.parametrize(
    ("overrides", "code", "fragment"),
    [
        (
            {"analysis": "kmeans"},
            "policy.analysis_not_allowed",
            'analysis "kmeans" is not allowed on node alpha',
        ),
        ({"analysis": "no_such_thing"}, "policy.analysis_not_allowed", '"no_such_thing"'),
        ({"purpose": "fraud"}, "policy.purpose_not_allowed", 'purpose "fraud" is not allowed'),
        ({"purpose": ""}, "policy.purpose_not_allowed", "states no purpose"),
        ({"dataset": "orders"}, "policy.unknown_dataset", 'dataset "orders" is not classified'),
        ({"dataset": ""}, "policy.unknown_dataset", "names no dataset"),
        ({"epsilon": 0.0}, "policy.epsilon_required", "above 0"),
        (
            {"epsilon": 0.51},
            "policy.epsilon_per_job_exceeded",
            "epsilon 0.51 but node alpha allows at most 0.5",
        ),
        ({"delta": 1e-5}, "policy.delta_exceeded", "at most 1e-06"),
        ({"min_participants": 4}, "policy.too_few_participants", "at least 4"),
    ],
)
def test_job_refusals(overrides: dict[str, Any], code: str, fragment: str) -> None:
    refusal = _refusal(_spec(**overrides))
    assert refusal.code == code
    assert fragment in refusal.message
    assert refusal.message.endswith(".") and "\n" not in refusal.message


def test_too_few_participants() -> None:
    refusal = _refusal(_spec(), participants=("alpha", "beta"))
    assert refusal.code == "policy.too_few_participants"
    assert "2 participating node(s)" in refusal.message and "at least 3" in refusal.message


def test_repeated_participant_counts_once() -> None:
    refusal = _refusal(_spec(), participants=("alpha", "beta", "beta"))
    assert refusal.code == "policy.too_few_participants"


def test_partner_not_allowed() -> None:
    refusal = _refusal(_spec(), participants=("alpha", "beta", "mallory"))
    assert refusal.code == "policy.partner_not_allowed"
    assert '"mallory"' in refusal.message


def test_wildcard_allows_any_partner() -> None:
    open_policy = policy(("  - beta\n  - gamma\n", '  - "*"\n'))
    check_job(open_policy, _spec(), node_name="alpha", participants=("alpha", "x", "y"))


def test_wrong_node_is_refused() -> None:
    refusal = _refusal(_spec(), node="beta")
    assert refusal.code == "policy.partner_mismatch"


def test_inventory_needs_no_budget_nor_dataset() -> None:
    check_job(
        POLICY,
        _spec(analysis="inventory", dataset="", epsilon=0.0, delta=0.0),
        node_name="alpha",
        participants=EVERYONE,
    )


@pytest.mark.parametrize(
    ("overrides", "participants", "code"),
    [
        ({"purpose": "fraud"}, EVERYONE, "policy.purpose_not_allowed"),
        ({}, ("alpha", "beta"), "policy.too_few_participants"),
        ({}, ("alpha", "beta", "mallory"), "policy.partner_not_allowed"),
    ],
)
def test_inventory_still_obeys_purpose_and_participants(
    overrides: dict[str, Any], participants: tuple[str, ...], code: str
) -> None:
    spec = _spec(analysis="inventory", epsilon=0.0, **overrides)
    assert _refusal(spec, participants=participants).code == code


def test_inventory_must_be_allowed() -> None:
    closed = policy(("  - inventory\n", ""))
    with pytest.raises(PolicyViolation) as info:
        check_job(closed, _spec(analysis="inventory", epsilon=0.0), node_name="alpha", participants=EVERYONE)
    assert info.value.code == "policy.analysis_not_allowed"
