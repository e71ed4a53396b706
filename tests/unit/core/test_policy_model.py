"""Policy hash, summary, tier look-up (default deny) and dataset schema."""

from __future__ import annotations

import random

import pytest
import yaml
from test_policy_base import VALID, policy, variant

from tessera.core.errors import PolicyViolation
from tessera.core.policy import parse_policy
from tessera.core.types import DatasetSchema, FieldSchema, PolicySummary, Tier


def _shuffled(data: object, rng: random.Random) -> object:
    if isinstance(data, dict):
        items = list(data.items())
        rng.shuffle(items)
        return {key: _shuffled(value, rng) for key, value in items}
    if isinstance(data, list):
        values = [_shuffled(value, rng) for value in data]
        rng.shuffle(values)
        return values
    return data


def test_hash_is_sha256_hex() -> None:
    digest = policy().policy_hash
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_hash_ignores_comments_whitespace_and_source() -> None:
    bare = "\n".join(line for line in VALID.splitlines() if not line.startswith("#"))
    commented = VALID.replace("min_participants: 3", "min_participants: 3   # never fewer\n\n# trailing")
    a = parse_policy(VALID, source="a.yaml")
    assert parse_policy(bare, source="b.yaml").policy_hash == a.policy_hash
    assert parse_policy(commented).policy_hash == a.policy_hash


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_hash_ignores_key_and_list_order(seed: int) -> None:
    original = yaml.safe_load(VALID)
    reordered = yaml.safe_dump(_shuffled(original, random.Random(seed)), sort_keys=False)
    assert parse_policy(reordered).policy_hash == parse_policy(VALID).policy_hash


def test_hash_ignores_spelling_of_equal_values() -> None:
    same = variant(
        ("epsilon_per_period: 4.0", "epsilon_per_period: 4"),
        ("delta: 1.0e-6", "delta: 0.000001"),
        ("type: category}", "type: category, pii_override: false}"),
    )
    assert parse_policy(same).policy_hash == parse_policy(VALID).policy_hash


@pytest.mark.parametrize(
    "change",
    [
        ("epsilon_per_job: 0.5", "epsilon_per_job: 0.6"),
        ("region: {tier: non_sensitive", "region: {tier: general_sensitive"),
        ("  - sum\n", "  - mean\n"),
        ("type: category}", "type: category, pii_override: true}"),
        ("retention_days: 30", "retention_days: 31"),
        ("description: policy used", "description: a policy used"),
    ],
)
def test_hash_changes_with_meaning(change: tuple[str, str]) -> None:
    assert parse_policy(variant(change)).policy_hash != parse_policy(VALID).policy_hash


def test_summary_mirrors_the_policy() -> None:
    loaded = policy()
    assert loaded.summary() == PolicySummary(
        policy_id="test-v1",
        policy_hash=loaded.policy_hash,
        allowed_analyses=("count", "inventory", "overlap", "sum"),
        allowed_purposes=("marketing_analytics", "research"),
        epsilon_per_job=0.5,
        epsilon_per_period=4.0,
        period="30d",
        delta=1e-6,
        min_cohort_size=20,
        min_participants=3,
        allowed_partners=("beta", "gamma"),
        retention_days=30,
        collusion_tolerance=0,  # the default when the file does not set it
    )


def test_tier_of_known_fields() -> None:
    loaded = policy()
    assert loaded.tier_of("customers", "customer_id") is Tier.CORE_SENSITIVE
    assert loaded.tier_of("customers", "monthly_spend") is Tier.GENERAL_SENSITIVE
    assert loaded.tier_of("customers", "region") is Tier.NON_SENSITIVE


def test_unclassified_field_is_denied_naming_field_and_file() -> None:
    with pytest.raises(PolicyViolation) as info:
        policy().tier_of("customers", "loyalty_points")
    assert info.value.code == "policy.unclassified_field"
    assert '"loyalty_points"' in info.value.message
    assert "policies/test.yaml" in info.value.message


def test_unknown_dataset_is_denied() -> None:
    with pytest.raises(PolicyViolation) as info:
        policy().tier_of("transactions", "amount")
    assert info.value.code == "policy.unknown_dataset"
    with pytest.raises(PolicyViolation):
        policy().schema("transactions")


def test_schema_lists_fields_in_file_order() -> None:
    assert policy().schema("customers") == DatasetSchema(
        name="customers",
        fields=(
            FieldSchema("customer_id", "string", Tier.CORE_SENSITIVE),
            FieldSchema("email", "string", Tier.CORE_SENSITIVE),
            FieldSchema("region", "category", Tier.NON_SENSITIVE),
            FieldSchema("monthly_spend", "float", Tier.GENERAL_SENSITIVE),
        ),
    )
