"""``lint_policy``: every error of a policy file plus warnings that are legal but worth a second look.

Warnings: ε per job above 1, ε per period above 10, δ above 1e-5, min cohort below 10, any partner
(``*``) allowed, a non-core field whose name suggests PII without ``pii_override``, duplicates in a
list, an empty list of analyses, and ``pii_override`` on a field where it has no effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tessera.core.policy._problems import Problem
from tessera.core.policy.loader import analyse_file


@dataclass(frozen=True, slots=True)
class LintReport:
    """What ``lint_policy`` found in one file. ``policy_hash`` is empty when the file has errors."""

    source: str
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    policy_hash: str = ""

    @property
    def ok(self) -> bool:
        """True when the file can be used (warnings do not make it unusable)."""
        return not self.errors

    def lines(self) -> tuple[str, ...]:
        """Each problem as one rendered sentence ``file, line N: ...``, errors first."""
        return tuple(p.render(self.source) for p in (*self.errors, *self.warnings))

    def to_dict(self) -> dict[str, object]:
        def item(p: Problem) -> dict[str, object]:
            return {"line": p.line, "message": p.message}

        return {
            "file": self.source,
            "ok": self.ok,
            "policy_hash": self.policy_hash,
            "errors": [item(p) for p in self.errors],
            "warnings": [item(p) for p in self.warnings],
        }


def lint_policy(path: Path) -> LintReport:
    """Check the policy file at ``path``; never raises for a bad file (errors are in the report)."""
    analysis = analyse_file(Path(path))
    return LintReport(
        source=analysis.source,
        errors=analysis.errors,
        warnings=analysis.warnings,
        policy_hash=analysis.policy.policy_hash if analysis.policy is not None else "",
    )
