"""lint_policy: errors as the loader sees them, warnings for legal but doubtful settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_policy_base import REPO, SHIPPED, VALID, line_of, variant

from tessera.core.analyses.clv_predict import DERIVED_FIELDS
from tessera.core.policy import LintReport, lint_policy, load_policy, looks_like_pii


def _lint(tmp_path: Path, text: str) -> LintReport:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return lint_policy(path)


def test_valid_policy_has_no_findings(tmp_path: Path) -> None:
    report = _lint(tmp_path, VALID)
    assert report.ok and report.errors == () and report.warnings == ()
    assert report.policy_hash == load_policy(tmp_path / "p.yaml").policy_hash


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policies_lint_clean(name: str) -> None:
    report = lint_policy(REPO / "policies" / f"{name}.yaml")
    assert report.errors == (), report.lines()
    assert report.warnings == (), report.lines()


def test_shipped_partner_policies_cover_the_demo_columns() -> None:
    common = {"customer_id", "name", "email", "phone", "region", "channel", "signup_date"}
    common |= {"tenure_months", "monthly_spend", "churned"}
    common |= {"rfm_segment", "cluster"}  # derived at home by `tessera node segments --store`
    common |= {"churn_risk"}  # scored at home by `tessera node score --store`
    extra = {"bank": {"national_id"}, "telco": {"plan"}, "retailer": {"loyalty_tier"}}
    derived = set(DERIVED_FIELDS)  # written at home by `tessera node clv --store`, never ingested
    for partner, own in extra.items():
        loaded = load_policy(REPO / "policies" / f"{partner}.yaml")
        assert loaded.partner == partner and loaded.min_participants == 3
        assert {f.name for f in loaded.schema("customers").fields} == common | own | derived
        assert {"inventory", "count", "sum", "mean", "histogram", "quantiles"} <= set(loaded.allowed_analyses)
        assert {"marketing_analytics", "research"} <= set(loaded.allowed_purposes)


@pytest.mark.parametrize(
    ("change", "marker", "fragment"),
    [
        (("epsilon_per_job: 0.5", "epsilon_per_job: 1.5"), "epsilon_per_job", "above 1 is weak privacy"),
        (("epsilon_per_period: 4.0", "epsilon_per_period: 12"), "epsilon_per_period", "above 10 per period"),
        (("delta: 1.0e-6", "delta: 1.0e-4"), "delta", "unusually loose"),
        (("min_cohort_size: 20", "min_cohort_size: 5"), "min_cohort_size", "easy to single out"),
        (("  - beta\n  - gamma", '  - "*"'), "allowed_partners", "any enrolled partner"),
        (("region: {tier: non_sensitive", "home_phone: {tier: non_sensitive"), "home_phone", "personal data"),
        (("  - sum\n", "  - sum\n  - count\n"), "  - count", "listed twice"),
        (
            (
                "email: {tier: core_sensitive, type: string}",
                "email: {tier: core_sensitive, type: string, pii_override: true}",
            ),
            "email:",
            "no effect",
        ),
    ],
)
def test_warnings_are_located(tmp_path: Path, change: tuple[str, str], marker: str, fragment: str) -> None:
    text = variant(change)
    report = _lint(tmp_path, text)
    assert report.ok and report.errors == ()
    assert len(report.warnings) == 1
    warning = report.warnings[0]
    # The last line holding the marker: a duplicate is reported where it repeats.
    expected_line = max(n for n, line in enumerate(text.splitlines(), start=1) if marker in line)
    assert warning.line == expected_line
    assert fragment in warning.message


def test_pii_override_silences_the_name_warning(tmp_path: Path) -> None:
    text = variant(
        (
            "region: {tier: non_sensitive, type: category}",
            "email_domain: {tier: non_sensitive, type: category, pii_override: true}",
        )
    )
    assert _lint(tmp_path, text).warnings == ()


def test_errors_are_all_reported_without_raising(tmp_path: Path) -> None:
    text = variant(("min_participants: 3", "min_participants: 1"), ("delta: 1.0e-6", "delta: 0.5"))
    report = _lint(tmp_path, text)
    assert not report.ok and report.policy_hash == ""
    assert [p.line for p in report.errors] == sorted(
        [line_of(text, "delta"), line_of(text, "min_participants")]
    )
    assert report.lines()[0].startswith(f"{tmp_path / 'p.yaml'}, line ")


def test_missing_file_is_an_error_not_an_exception(tmp_path: Path) -> None:
    report = lint_policy(tmp_path / "absent.yaml")
    assert not report.ok and "does not exist" in report.errors[0].message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("email", True),
        ("contactEmail", True),
        ("first_name", True),
        ("home_address", True),
        ("national_id", True),
        ("SSN", True),
        ("mobile_number", True),
        ("region", False),
        ("channel", False),
        ("monthly_spend", False),
        ("tenure_months", False),
        ("plan", False),
    ],
)
def test_pii_like_names(name: str, expected: bool) -> None:
    assert looks_like_pii(name) is expected


def test_overlap_rules_are_checked(tmp_path: Path) -> None:
    report = _lint(
        tmp_path,
        variant(
            ("    beta: [email]", "    beta: [phone, fingerprint]\n    delta: [email]"),
            ("  max_jobs_per_period: 2", "  max_jobs_per_period: -1"),
        ),
    )
    text = "\n".join(report.lines())
    assert '"phone" is not a core_sensitive field' in text
    assert '"fingerprint" is not an identifier overlap can match on' in text
    assert '"max_jobs_per_period" cannot be negative' in text
    assert 'partner "delta" is not in "allowed_partners"' in text


def test_overlap_allowed_without_rules_warns(tmp_path: Path) -> None:
    text = variant(("overlap:\n  partners:\n    beta: [email]\n  max_jobs_per_period: 2\n", ""))
    report = _lint(tmp_path, text)
    assert report.ok and any("every overlap job will be refused" in w for w in report.lines())


def test_overlap_rules_change_the_hash_and_are_loaded(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID)
    with_rules = load_policy(path)
    path.write_text(variant(("  max_jobs_per_period: 2", "  max_jobs_per_period: 3")))
    assert with_rules.overlap is not None and with_rules.overlap.identifiers_for("beta") == ("email",)
    assert with_rules.overlap.identifiers_for("gamma") == ()
    assert load_policy(path).policy_hash != with_rules.policy_hash


def test_overlap_changes_show_in_the_diff(tmp_path: Path) -> None:
    from tessera.core.policy import diff_policies

    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(VALID)
    new.write_text(
        variant(
            ("    beta: [email]", "    beta: [email, phone]"),
            ("  max_jobs_per_period: 2", "  max_jobs_per_period: 1"),
        )
    )
    changes = {c.message for c in diff_policies(load_policy(old), load_policy(new)).changes}
    assert "overlap with beta on phone now allowed: looser" in changes
    assert "overlap jobs per period lowered from 2 to 1: stricter" in changes
