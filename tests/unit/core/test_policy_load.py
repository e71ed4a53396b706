"""Loader: every refusal names file and line in one sentence; valid files become frozen policies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_policy_base import VALID, line_of, variant

from tessera.core.errors import PolicyError
from tessera.core.policy import PolicyFileError, load_policy, parse_policy
from tessera.core.types import Tier

# (case id, replacements, text on the line the error must point at, fragment of the sentence)
REFUSALS: list[tuple[str, tuple[tuple[str, str], ...], str, str]] = [
    (
        "number as text",
        (("epsilon_per_job: 0.5", 'epsilon_per_job: "one"'),),
        "epsilon_per_job",
        '"epsilon_per_job" must be a number (got the text "one")',
    ),
    (
        "number as a bare word",
        (("epsilon_per_job: 0.5", "epsilon_per_job: one"),),
        "epsilon_per_job",
        '"epsilon_per_job" must be a number (got the text "one")',
    ),
    (
        "decimal count",
        (("min_cohort_size: 20", "min_cohort_size: 2.5"),),
        "min_cohort_size",
        "a whole number",
    ),
    (
        "yes as a count",
        (("min_cohort_size: 20", "min_cohort_size: yes"),),
        "min_cohort_size",
        "yes/no value true",
    ),
    ("number as id", (("policy_id: test-v1", "policy_id: 2024"),), "policy_id", "put it in quotes"),
    ("list expected", (("  - beta\n  - gamma", " beta"),), "allowed_partners", "must be a list"),
    (
        "misspelt key",
        (("epsilon_per_period:", "epsilon_per_peroid:"),),
        "epsilon_per_peroid",
        '"epsilon_per_peroid" is not a known key under "privacy"; did you mean "epsilon_per_period"?',
    ),
    (
        "key at the wrong level",
        (("retention_days: 30", "retention_days: 30\ndelta: 2.0e-6"),),
        "delta: 2.0e-6",
        'it belongs under "privacy"',
    ),
    (
        "misspelt field key",
        (("region: {tier: non_sensitive", "region: {teir: non_sensitive"),),
        "region:",
        'did you mean "tier"?',
    ),
    (
        "tier not a choice",
        (("region: {tier: non_sensitive", "region: {tier: public"),),
        "region:",
        '"tier" of field "region" in dataset "customers" must be one of core_sensitive',
    ),
    ("type not a choice", (("type: category}", "type: text}"),), "region:", "must be one of string, int"),
    (
        "missing key",
        (
            (
                "monthly_spend: {tier: general_sensitive, type: float}",
                "monthly_spend: {tier: general_sensitive}",
            ),
        ),
        "monthly_spend",
        'field "monthly_spend" of dataset "customers" is missing the required key "type"',
    ),
    ("missing version", (("version: 1\n", ""),), "policy_id", 'add the line "version: 1"'),
    ("wrong version", (("version: 1", "version: 2"),), "version", '"version" must be 1'),
    ("epsilon zero", (("epsilon_per_job: 0.5", "epsilon_per_job: 0"),), "epsilon_per_job", "greater than 0"),
    (
        "epsilon negative",
        (("epsilon_per_period: 4.0", "epsilon_per_period: -1"),),
        "epsilon_per_period",
        "(got -1)",
    ),
    (
        "epsilon infinite",
        (("epsilon_per_period: 4.0", "epsilon_per_period: .inf"),),
        "epsilon_per_period",
        "than 0",
    ),
    (
        "delta zero",
        (("delta: 1.0e-6", "delta: 0.0"),),
        "delta",
        '"delta" must be greater than 0 and at most 0.001',
    ),
    ("delta too big", (("delta: 1.0e-6", "delta: 1e-2"),), "delta", "(got 0.01)"),
    (
        "period zero",
        (("period_days: 30", "period_days: 0"),),
        "period_days",
        '"period_days" must be at least 1',
    ),
    ("two participants", (("min_participants: 3", "min_participants: 2"),), "min_participants", "at least 3"),
    (
        "negative retention",
        (("retention_days: 30", "retention_days: -5"),),
        "retention_days",
        "cannot be negative",
    ),
    ("cohort zero", (("min_cohort_size: 20", "min_cohort_size: 0"),), "min_cohort_size", "at least 1"),
    (
        "job above period",
        (("epsilon_per_job: 0.5", "epsilon_per_job: 5"),),
        "epsilon_per_job",
        '"epsilon_per_job" (5) is larger than "epsilon_per_period" (4)',
    ),
    (
        "unknown analysis",
        (("  - sum\n", "  - summ\n"),),
        "  - summ",
        '"summ" is not a known analysis; did you mean',
    ),
    (
        "overlap without core field",
        (
            ("customer_id: {tier: core_sensitive", "customer_id: {tier: general_sensitive"),
            ("email: {tier: core_sensitive, type: string}", "spend2: {tier: general_sensitive, type: float}"),
        ),
        "  - overlap",
        "no field is core_sensitive",
    ),
    (
        "dataset without fields",
        (("allowed_analyses:", "  empty:\n    fields: {}\nallowed_analyses:"),),
        "  empty:",
        'dataset "empty" has no fields',
    ),
    (
        "no datasets",
        ((VALID[VALID.index("datasets:") : VALID.index("allowed_analyses:")], "datasets: {}\n"),),
        "datasets:",
        '"datasets" lists no dataset',
    ),
    ("wildcard and names", (("  - gamma", '  - "*"'),), "allowed_partners", '["*"] alone'),
    (
        "too few partners for the quorum",
        (("  - beta\n  - gamma\n", "  - beta\n"),),
        "allowed_partners",
        "no job could ever run",
    ),
    ("purpose with spaces", (("  - research", "  - market research"),), "market research", "one word"),
    ("empty partner", (("partner: alpha", 'partner: ""'),), "partner:", '"partner" must be one word'),
    (
        "duplicate key",
        (("min_participants: 3", "min_participants: 3\nmin_participants: 5"),),
        "min_participants: 5",
        'the key "min_participants" appears twice here (first on line',
    ),
    (
        "duplicate field",
        (("      region:", "      email: {tier: non_sensitive, type: string}\n      region:"),),
        "email: {tier: non_sensitive",
        'the key "email" appears twice',
    ),
    ("dataset name not text", (("  customers:", "  2024:"),), "  2024:", 'the name "2024" must be text'),
    ("tab indentation", (("  - beta", "\t- beta"),), "- beta", "indented with a tab"),
    ("bad indentation", (("  period_days: 30", "    period_days: 30"),), "period_days", "colon where YAML"),
    ("key without colon", (("policy_id: test-v1", "policy_id test-v1"),), "policy_id", "without a colon"),
    ("unclosed quote", (("description: policy", "description: 'policy"),), "description", "never closed"),
    ("unclosed bracket", (("type: float}", "type: float"),), "monthly_spend", "not closed properly"),
]


@pytest.mark.parametrize(
    ("replacements", "marker", "fragment"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_refusal_names_file_line_and_fix(
    tmp_path: Path, replacements: tuple[tuple[str, str], ...], marker: str, fragment: str
) -> None:
    text = variant(*replacements)
    path = tmp_path / "bank.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = info.value.message
    assert message.startswith(f"{path}, line {line_of(text, marker)}: "), message
    assert fragment in message
    assert info.value.code == "policy.invalid"
    assert "\n" not in message and message.endswith((".", "?"))


def test_spec_example_sentence_exactly(tmp_path: Path) -> None:
    text = variant(("epsilon_per_job: 0.5", 'epsilon_per_job: "one"'))
    path = tmp_path / "bank.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    line = line_of(text, "epsilon_per_job")
    assert info.value.message.startswith(
        f'{path}, line {line}: "epsilon_per_job" must be a number (got the text "one")'
    )


def test_misspelt_key_is_not_also_reported_missing() -> None:
    with pytest.raises(PolicyFileError) as info:
        parse_policy(variant(("epsilon_per_period:", "epsilon_per_peroid:")), source="p.yaml")
    assert len(info.value.problems) == 1


def test_all_problems_are_attached() -> None:
    text = variant(
        ("min_participants: 3", "min_participants: 2"), ("retention_days: 30", "retention_days: -1")
    )
    with pytest.raises(PolicyFileError) as info:
        parse_policy(text, source="p.yaml")
    assert [p.line for p in info.value.problems] == [
        line_of(text, "min_participants"),
        line_of(text, "retention"),
    ]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "the file is empty"),
        (b"# only a comment\n", "the file is empty"),
        (b"- a\n- b\n", 'must be a group of "key: value" lines'),
        (b"just words\n", 'must be a group of "key: value" lines'),
        (b"version: 1\n---\nversion: 1\n", "second YAML document"),
        (b"version: \xff\xfe\n", "not UTF-8"),
    ],
)
def test_whole_file_refusals(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(content)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.message.startswith(str(path))
    assert fragment in info.value.message


def test_missing_file_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"p\.yaml: the file does not exist"):
        load_policy(tmp_path / "p.yaml")


def test_scientific_notation_is_a_number() -> None:
    loaded = parse_policy(variant(("delta: 1.0e-6", "delta: 1e-7")))
    assert loaded.privacy.delta == pytest.approx(1e-7)


def test_policy_is_frozen_with_tuples_and_tiers(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID, encoding="utf-8")
    loaded = load_policy(path)
    assert loaded.source == str(path)
    assert isinstance(loaded.allowed_analyses, tuple) and isinstance(loaded.datasets, tuple)
    assert loaded.allowed_analyses == ("count", "inventory", "overlap", "sum")
    assert loaded.dataset("customers").field("email") is not None
    assert loaded.tier_of("customers", "email") is Tier.CORE_SENSITIVE
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.min_participants = 2  # type: ignore[misc]
