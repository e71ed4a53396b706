"""Range and consistency rules of a structurally valid policy: errors (refused) and warnings (legal,
but worth a compliance officer's second look)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from tessera.core.policy._messages import closest, line_for
from tessera.core.policy._problems import KeyPath, Problem, Severity, quoted, subject
from tessera.core.policy._schema import KNOWN_ANALYSES, SCHEMA_VERSION, PolicyDoc

MAX_DELTA = 1e-3
WARN_EPSILON_PER_JOB = 1.0
WARN_EPSILON_PER_PERIOD = 10.0
WARN_DELTA = 1e-5
WARN_MIN_COHORT = 10
ABSOLUTE_MIN_PARTICIPANTS = 3

# Name parts that suggest a field holds personal data (checked on the parts of snake/camel names).
_PII_PARTS = frozenset(
    {
        "email", "mail", "phone", "mobile", "msisdn", "telephone", "tel", "name", "firstname",
        "lastname", "surname", "fullname", "address", "street", "postcode", "zip", "ssn", "passport",
        "iban", "dob", "birthdate", "imei", "ip",
    }
)  # fmt: skip
_PII_PHRASES = (
    "national_id",
    "nationalid",
    "date_of_birth",
    "birth_date",
    "device_id",
    "tax_id",
    "social_security",
)
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_pii(field_name: str) -> bool:
    """True when a field's *name* suggests personal data (email, phone, name, address, IDs…)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", field_name).lower()
    parts = {part for part in re.split(r"[^a-z]+", snake) if part}
    return bool(parts & _PII_PARTS) or any(phrase in snake for phrase in _PII_PHRASES)


def number(value: float) -> str:
    """A number as a person wrote it: 5 rather than 5.0, 1e-06 stays as Python prints it."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


class _Collector:
    def __init__(self, lines: Mapping[KeyPath, int]) -> None:
        self.lines = lines
        self.problems: list[Problem] = []

    def error(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(Severity.ERROR, message, line_for(path, self.lines), path))

    def warn(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(Severity.WARNING, message, line_for(path, self.lines), path))


def _check_names(doc: PolicyDoc, out: _Collector) -> None:
    if doc.version != SCHEMA_VERSION:
        out.error(
            ("version",), f'"version" must be 1 (got {doc.version}); this program reads version 1 policies.'
        )
    for key in ("policy_id", "partner"):
        if not _WORD.match(getattr(doc, key)):
            out.error(
                (key,),
                f"{quoted(key)} must be one word of letters, digits, '_', '-' or '.' "
                "(it is empty or has spaces).",
            )
    for key in ("allowed_purposes", "allowed_partners"):
        for index, word in enumerate(getattr(doc, key)):
            wildcard = key == "allowed_partners" and word == "*"
            if not wildcard and not _WORD.match(word):
                out.error((key, index), f"{subject((key, index))} must be one word without spaces.")


def _check_privacy(doc: PolicyDoc, out: _Collector) -> None:
    p = doc.privacy
    for key in ("epsilon_per_job", "epsilon_per_period"):
        value = getattr(p, key)
        if not math.isfinite(value) or value <= 0:
            out.error(
                ("privacy", key),
                f"{quoted(key)} must be a number greater than 0 (got {number(value)}); "
                "a small value such as 0.5 is typical.",
            )
    if not math.isfinite(p.delta) or not 0 < p.delta <= MAX_DELTA:
        out.error(
            ("privacy", "delta"),
            f'"delta" must be greater than 0 and at most 0.001 (got {number(p.delta)}); '
            "0.000001 (1e-6) is typical.",
        )
    if p.period_days < 1:
        out.error(("privacy", "period_days"), f'"period_days" must be at least 1 (got {p.period_days}).')
    if math.isfinite(p.epsilon_per_job) and p.epsilon_per_job > p.epsilon_per_period > 0:
        out.error(
            ("privacy", "epsilon_per_job"),
            f'"epsilon_per_job" ({number(p.epsilon_per_job)}) is larger than "epsilon_per_period" '
            f"({number(p.epsilon_per_period)}), so one job could spend more than the whole period allows; "
            "lower it or raise the period budget.",
        )
    if p.epsilon_per_job > WARN_EPSILON_PER_JOB:
        out.warn(
            ("privacy", "epsilon_per_job"),
            f'"epsilon_per_job" is {number(p.epsilon_per_job)}; above 1 is weak privacy.',
        )
    if p.epsilon_per_period > WARN_EPSILON_PER_PERIOD:
        out.warn(
            ("privacy", "epsilon_per_period"),
            f'"epsilon_per_period" is {number(p.epsilon_per_period)}; above 10 per period is weak privacy.',
        )
    if WARN_DELTA < p.delta <= MAX_DELTA:
        out.warn(
            ("privacy", "delta"), f'"delta" is {number(p.delta)}; above 0.00001 (1e-5) is unusually loose.'
        )


def _check_counts(doc: PolicyDoc, out: _Collector) -> None:
    if doc.min_cohort_size < 1:
        out.error(("min_cohort_size",), f'"min_cohort_size" must be at least 1 (got {doc.min_cohort_size}).')
    elif doc.min_cohort_size < WARN_MIN_COHORT:
        out.warn(
            ("min_cohort_size",),
            f'"min_cohort_size" is {doc.min_cohort_size}; '
            "groups smaller than 10 customers are easy to single out.",
        )
    if doc.min_participants < ABSOLUTE_MIN_PARTICIPANTS:
        out.error(
            ("min_participants",),
            f'"min_participants" must be at least 3 (got {doc.min_participants}): with two partners, '
            "each could work out the other's numbers from the total.",
        )
    if doc.collusion_tolerance < 0:
        out.error(
            ("collusion_tolerance",),
            f'"collusion_tolerance" cannot be negative (got {doc.collusion_tolerance}).',
        )
    elif ABSOLUTE_MIN_PARTICIPANTS <= doc.min_participants <= doc.collusion_tolerance:
        out.error(
            ("collusion_tolerance",),
            f'"collusion_tolerance" is {doc.collusion_tolerance} but "min_participants" is '
            f"{doc.min_participants}: the colluding nodes could make up a whole quorum, so no round "
            "could ever be safe; lower it or raise min_participants.",
        )
    if doc.retention_days < 0:
        out.error(("retention_days",), f'"retention_days" cannot be negative (got {doc.retention_days}).')


def _check_lists(doc: PolicyDoc, out: _Collector) -> None:
    has_core = any(f.tier == "core_sensitive" for d in doc.datasets.values() for f in d.fields.values())
    for index, name in enumerate(doc.allowed_analyses):
        path: KeyPath = ("allowed_analyses", index)
        if name not in KNOWN_ANALYSES:
            guess = closest(name, KNOWN_ANALYSES)
            hint = f'did you mean "{guess}"?' if guess else f"known analyses are {', '.join(KNOWN_ANALYSES)}."
            out.error(path, f"{quoted(name)} is not a known analysis; {hint}")
        elif name == "overlap" and not has_core:
            out.error(
                path,
                '"overlap" is allowed but no field is core_sensitive, so there is nothing to match on; '
                "classify the identifier fields or remove overlap.",
            )
    if not doc.allowed_analyses:
        out.warn(("allowed_analyses",), '"allowed_analyses" is empty, so every job will be refused.')
    partners = doc.allowed_partners
    if "*" in partners and len(partners) > 1:
        out.error(
            ("allowed_partners",),
            '"allowed_partners" must be either ["*"] alone or a list of names, not both.',
        )
    elif "*" in partners:
        out.warn(
            ("allowed_partners",), '"allowed_partners" is "*": any enrolled partner may take part in jobs.'
        )
    else:
        others = {p for p in partners if p != doc.partner}
        if len(others) + 1 < doc.min_participants:
            out.error(
                ("allowed_partners",),
                f'"allowed_partners" names {len(others)} other partner(s) but "min_participants" is '
                f"{doc.min_participants}, so no job could ever run; allow more partners.",
            )
    for key in ("allowed_analyses", "allowed_purposes", "allowed_partners"):
        seen: set[str] = set()
        for index, word in enumerate(getattr(doc, key)):
            if word in seen:
                out.warn((key, index), f"{quoted(word)} is listed twice in {quoted(key)}.")
            seen.add(word)


def _check_datasets(doc: PolicyDoc, out: _Collector) -> None:
    if not doc.datasets:
        out.error(("datasets",), '"datasets" lists no dataset; classify at least one dataset and its fields.')
    for dataset, body in doc.datasets.items():
        if not dataset.strip():
            out.error(("datasets", dataset), "a dataset has an empty name; give it a name.")
        if not body.fields:
            out.error(
                ("datasets", dataset),
                f"dataset {quoted(dataset)} has no fields; list each of its fields with a tier and a type.",
            )
        _check_customer_key(dataset, body.customer_key, tuple(body.fields), out)
        for name, spec in body.fields.items():
            path: KeyPath = ("datasets", dataset, "fields", name)
            if not name.strip():
                out.error(path, f"a field of dataset {quoted(dataset)} has an empty name; give it a name.")
            elif spec.tier != "core_sensitive" and not spec.pii_override and looks_like_pii(name):
                out.warn(
                    path,
                    f"{subject(path)} looks like personal data but is {spec.tier}; make it core_sensitive, "
                    'or set "pii_override: true" if that is a deliberate decision.',
                )
            elif spec.tier == "core_sensitive" and spec.pii_override:
                out.warn(
                    (*path, "pii_override"),
                    f"{subject(path)} is core_sensitive, so pii_override has no effect.",
                )


def _check_customer_key(dataset: str, key: str | None, fields: tuple[str, ...], out: _Collector) -> None:
    if key is None or key in fields:
        return
    guess = closest(key, fields)
    hint = f'did you mean "{guess}"?' if guess else "name the field that identifies the customer of each row."
    out.error(
        ("datasets", dataset, "customer_key"),
        f'"customer_key" of dataset {quoted(dataset)} names {quoted(key)}, which is not one of its fields; '
        + hint,
    )


OVERLAP_IDENTIFIERS = ("email", "phone", "national_id")


def _check_overlap(doc: PolicyDoc, out: _Collector) -> None:
    rules = doc.overlap
    if rules is None:
        if "overlap" in doc.allowed_analyses:
            out.warn(
                ("allowed_analyses",),
                '"overlap" is allowed but there is no "overlap:" section saying with which partners and on '
                "which identifiers, so every overlap job will be refused.",
            )
        return
    if "overlap" not in doc.allowed_analyses:
        out.warn(("overlap",), 'there is an "overlap:" section but "overlap" is not in "allowed_analyses".')
    if rules.max_jobs_per_period < 0:
        out.error(
            ("overlap", "max_jobs_per_period"),
            f'"max_jobs_per_period" cannot be negative (got {rules.max_jobs_per_period}).',
        )
    elif rules.max_jobs_per_period == 0:
        out.warn(
            ("overlap", "max_jobs_per_period"), '"max_jobs_per_period" is 0, so every overlap job is refused.'
        )
    fields = {
        name for d in doc.datasets.values() for name, f in d.fields.items() if f.tier == "core_sensitive"
    }
    for partner, kinds in rules.partners.items():
        if partner != "*" and "*" not in doc.allowed_partners and partner not in doc.allowed_partners:
            out.warn(
                ("overlap", "partners", partner),
                f'partner "{partner}" is not in "allowed_partners", so it will never be matched with.',
            )
        for index, kind in enumerate(kinds):
            path: KeyPath = ("overlap", "partners", partner, index)
            if kind not in OVERLAP_IDENTIFIERS:
                out.error(
                    path,
                    f"{quoted(kind)} is not an identifier overlap can match on; use "
                    f"{', '.join(OVERLAP_IDENTIFIERS)}.",
                )
            elif kind not in fields:
                out.warn(
                    path,
                    f"{quoted(kind)} is not a core_sensitive field of any dataset, so there is nothing "
                    "to match on.",
                )


def check_document(doc: PolicyDoc, lines: Mapping[KeyPath, int]) -> list[Problem]:
    """Every range, contradiction and second-look problem of ``doc``, errors and warnings mixed."""
    out = _Collector(lines)
    _check_names(doc, out)
    _check_privacy(doc, out)
    _check_counts(doc, out)
    _check_lists(doc, out)
    _check_overlap(doc, out)
    _check_datasets(doc, out)
    return out.problems
