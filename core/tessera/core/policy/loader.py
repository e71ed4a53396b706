"""Load a policy file: YAML -> shape check (pydantic) -> rules -> immutable ``Policy``.

Every refusal is a ``PolicyError`` (``PolicyFileError`` with all problems attached) whose message
names the file and line and says in one sentence what is wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tessera.core.policy._checks import check_document
from tessera.core.policy._messages import problems_from
from tessera.core.policy._problems import PolicyFileError, Problem, Severity
from tessera.core.policy._schema import PolicyDoc
from tessera.core.policy._yamlio import YamlProblems, read_document
from tessera.core.policy.model import DatasetPolicy, FieldPolicy, OverlapRules, Policy, PrivacyLimits
from tessera.core.types import Tier

# Policy files are a few kilobytes; refuse anything absurd before parsing it.
MAX_POLICY_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class Analysis:
    """The outcome of reading a policy: the policy (``None`` if any error) and every problem."""

    source: str
    policy: Policy | None
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)


def _by_line(problems: list[Problem]) -> tuple[Problem, ...]:
    return tuple(sorted(problems, key=lambda p: (p.line or 0, p.severity != Severity.ERROR)))


def _build(doc: PolicyDoc, source: str) -> Policy:
    datasets = tuple(
        DatasetPolicy(
            name=name,
            description=body.description,
            customer_key=body.customer_key,
            fields=tuple(
                FieldPolicy(name=fname, tier=Tier(spec.tier), type=spec.type, pii_override=spec.pii_override)
                for fname, spec in body.fields.items()
            ),
        )
        for name, body in sorted(doc.datasets.items())
    )
    return Policy(
        version=doc.version,
        policy_id=doc.policy_id,
        description=doc.description,
        partner=doc.partner,
        datasets=datasets,
        allowed_analyses=tuple(sorted(set(doc.allowed_analyses))),
        allowed_purposes=tuple(sorted(set(doc.allowed_purposes))),
        privacy=PrivacyLimits(
            epsilon_per_job=float(doc.privacy.epsilon_per_job),
            epsilon_per_period=float(doc.privacy.epsilon_per_period),
            period_days=doc.privacy.period_days,
            delta=float(doc.privacy.delta),
        ),
        min_cohort_size=doc.min_cohort_size,
        min_participants=doc.min_participants,
        allowed_partners=tuple(sorted(set(doc.allowed_partners))),
        retention_days=doc.retention_days,
        collusion_tolerance=doc.collusion_tolerance,
        overlap=None
        if doc.overlap is None
        else OverlapRules(
            partners=tuple(sorted((k, tuple(sorted(set(v)))) for k, v in doc.overlap.partners.items())),
            max_jobs_per_period=doc.overlap.max_jobs_per_period,
        ),
        source=source,
    )


def analyse_text(text: str, *, source: str) -> Analysis:
    """Read policy ``text`` (named ``source`` in messages) and collect every error and warning."""
    try:
        data, lines = read_document(text)
    except YamlProblems as exc:
        return Analysis(source, None, _by_line(exc.problems))
    if not isinstance(data, dict):
        problem = Problem(
            Severity.ERROR,
            'the file must be a group of "key: value" lines (like policies/default.yaml), '
            "not a single value or list.",
            lines.get(()),
        )
        return Analysis(source, None, (problem,))
    try:
        doc = PolicyDoc.model_validate(data)
    except ValidationError as exc:
        return Analysis(source, None, _by_line(problems_from(exc, lines)))
    problems = check_document(doc, lines)
    ok = not any(p.severity is Severity.ERROR for p in problems)
    return Analysis(source, _build(doc, source) if ok else None, _by_line(problems))


def analyse_file(path: Path) -> Analysis:
    """Like ``analyse_text`` for a file; a missing, unreadable or non-UTF-8 file is one error."""
    source = str(path)

    def fail(message: str) -> Analysis:
        return Analysis(source, None, (Problem(Severity.ERROR, message),))

    try:
        if not path.is_file():
            return fail("the file does not exist (or is a folder); check the path.")
        raw = path.read_bytes()
    except OSError:
        return fail("the file cannot be read; check that it exists and that you may read it.")
    if len(raw) > MAX_POLICY_BYTES:
        return fail("the file is larger than 1 MB, which no policy needs; check that it is the right file.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return fail("the file is not UTF-8 text; save it as UTF-8.")
    return analyse_text(text, source=source)


def _policy_or_raise(analysis: Analysis) -> Policy:
    if analysis.policy is not None:
        return analysis.policy
    errors = analysis.errors
    raise PolicyFileError(errors[0].render(analysis.source), source=analysis.source, problems=errors)


def load_policy(path: Path) -> Policy:
    """Load and validate the policy at ``path``; raise ``PolicyError`` naming file, line and fix."""
    return _policy_or_raise(analyse_file(Path(path)))


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Validate policy YAML given as text (tests, embedded defaults); same rules as ``load_policy``."""
    return _policy_or_raise(analyse_text(text, source=source))
