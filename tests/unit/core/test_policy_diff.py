"""diff_policies: each change as one sentence, judged looser, stricter or neutral."""

from __future__ import annotations

import pytest
from test_policy_base import policy

from tessera.core.policy import Direction, diff_policies

_OLD = policy()


def _messages(*change: tuple[str, str]) -> list[tuple[Direction, str]]:
    result = diff_policies(_OLD, policy(*change))
    return [(c.direction, c.message) for c in result.changes]


def test_identical_policies_have_no_changes() -> None:
    result = diff_policies(_OLD, policy())
    assert result.changes == () and result.old_hash == result.new_hash


@pytest.mark.parametrize(
    ("change", "direction", "sentence"),
    [
        (
            ("epsilon_per_job: 0.5", "epsilon_per_job: 1.0"),
            Direction.LOOSER,
            "epsilon per job raised from 0.5 to 1.0",
        ),
        (
            ("epsilon_per_job: 0.5", "epsilon_per_job: 0.25"),
            Direction.STRICTER,
            "epsilon per job lowered from 0.5",
        ),
        (("epsilon_per_period: 4.0", "epsilon_per_period: 6"), Direction.LOOSER, "epsilon per period raised"),
        (
            ("period_days: 30", "period_days: 7"),
            Direction.LOOSER,
            "period length in days lowered from 30 to 7",
        ),
        (("period_days: 30", "period_days: 90"), Direction.STRICTER, "period length in days raised"),
        (("delta: 1.0e-6", "delta: 1.0e-7"), Direction.STRICTER, "delta lowered"),
        (
            ("min_cohort_size: 20", "min_cohort_size: 50"),
            Direction.STRICTER,
            "min_cohort_size raised from 20 to 50",
        ),
        (("min_cohort_size: 20", "min_cohort_size: 10"), Direction.LOOSER, "min_cohort_size lowered"),
        (("retention_days: 30", "retention_days: 365"), Direction.LOOSER, "retention_days raised"),
        (("  - sum\n", "  - sum\n  - kmeans\n"), Direction.LOOSER, "analysis kmeans now allowed"),
        (("  - sum\n", ""), Direction.STRICTER, "analysis sum no longer allowed"),
        (("  - research\n", "  - research\n  - fraud\n"), Direction.LOOSER, "purpose fraud now allowed"),
        (("  - gamma\n", "  - gamma\n  - delta\n"), Direction.LOOSER, "partner delta now allowed"),
        (("  - beta\n  - gamma\n", '  - "*"\n'), Direction.LOOSER, "any partner now allowed"),
        (
            ("email: {tier: core_sensitive", "email: {tier: general_sensitive"),
            Direction.LOOSER,
            "field email moved from core_sensitive to general_sensitive",
        ),
        (
            ("region: {tier: non_sensitive", "region: {tier: general_sensitive"),
            Direction.STRICTER,
            "field region moved from non_sensitive to general_sensitive",
        ),
        (
            ("type: category}", "type: category, pii_override: true}"),
            Direction.LOOSER,
            "pii_override of field region",
        ),
        (("type: category}", "type: string}"), Direction.NEUTRAL, "type of field region changed"),
        (
            ("      region:", "      churned: {tier: general_sensitive, type: bool}\n      region:"),
            Direction.LOOSER,
            "field churned of dataset customers now classified",
        ),
        (
            ("      region: {tier: non_sensitive, type: category}\n", ""),
            Direction.STRICTER,
            "field region of dataset",
        ),
        (
            ("policy_id: test-v1", "policy_id: test-v2"),
            Direction.NEUTRAL,
            "policy_id changed from test-v1 to test-v2",
        ),
        (("description: policy", "description: the policy"), Direction.NEUTRAL, "description changed"),
    ],
)
def test_single_change_is_classified(change: tuple[str, str], direction: Direction, sentence: str) -> None:
    changes = _messages(change)
    assert len(changes) == 1, changes
    got_direction, message = changes[0]
    assert got_direction is direction
    assert message.startswith(sentence) and message.endswith(f": {direction.value}")


def test_spec_sentences_exactly() -> None:
    new = policy(
        ("epsilon_per_job: 0.5", "epsilon_per_job: 1.0"),
        ("email: {tier: core_sensitive", "email: {tier: general_sensitive"),
        ("  - sum\n", "  - sum\n  - kmeans\n"),
        ("min_cohort_size: 20", "min_cohort_size: 25"),
    )
    result = diff_policies(_OLD, new)
    assert [c.message for c in result.looser] == [
        "epsilon per job raised from 0.5 to 1.0: looser",
        "analysis kmeans now allowed: looser",
        "field email moved from core_sensitive to general_sensitive: looser",
    ]
    assert [c.message for c in result.stricter] == ["min_cohort_size raised from 20 to 25: stricter"]
    assert result.neutral == ()
    assert result.to_dict()["changes"][0] == {  # type: ignore[index]
        "direction": "looser",
        "key": "privacy.epsilon_per_job",
        "message": "epsilon per job raised from 0.5 to 1.0: looser",
    }


def test_removing_the_wildcard_is_stricter() -> None:
    wide = policy(("  - beta\n  - gamma\n", '  - "*"\n'))
    result = diff_policies(wide, _OLD)
    assert [(c.direction, c.message) for c in result.changes] == [
        (Direction.STRICTER, "any partner no longer allowed, only those listed: stricter")
    ]


def test_dataset_added_and_removed() -> None:
    more = policy(
        (
            "allowed_analyses:",
            "  orders:\n    fields:\n      amount: {tier: general_sensitive, type: float}\nallowed_analyses:",
        )
    )
    assert [c.message for c in diff_policies(_OLD, more).changes] == ["dataset orders now classified: looser"]
    assert [c.message for c in diff_policies(more, _OLD).changes] == [
        "dataset orders no longer classified: stricter"
    ]


def test_more_participants_required_is_stricter() -> None:
    new = policy(("min_participants: 3", "min_participants: 4"), ("  - gamma\n", "  - gamma\n  - delta\n"))
    assert [(c.direction, c.message) for c in diff_policies(_OLD, new).changes] == [
        (Direction.STRICTER, "min_participants raised from 3 to 4: stricter"),
        (Direction.LOOSER, "partner delta now allowed: looser"),
    ]
