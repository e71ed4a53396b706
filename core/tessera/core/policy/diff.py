"""``diff_policies``: what changed between two policies, each change judged looser, stricter or neutral.

"Looser" means the new policy lets more happen or releases more (more ε, more analyses, less
sensitive tiers, more partners, longer retention); "stricter" the opposite; "neutral" changes
neither (names, descriptions, field types).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tessera.core.policy.model import DatasetPolicy, Policy
from tessera.core.types import Tier


class Direction(enum.StrEnum):
    LOOSER = "looser"
    STRICTER = "stricter"
    NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class PolicyChange:
    direction: Direction
    key: str  # dotted place in the policy, e.g. "privacy.epsilon_per_job"
    message: str  # one sentence ending in ": looser" / ": stricter" / ": neutral"


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    old_hash: str
    new_hash: str
    changes: tuple[PolicyChange, ...]

    def of(self, direction: Direction) -> tuple[PolicyChange, ...]:
        return tuple(c for c in self.changes if c.direction is direction)

    @property
    def looser(self) -> tuple[PolicyChange, ...]:
        return self.of(Direction.LOOSER)

    @property
    def stricter(self) -> tuple[PolicyChange, ...]:
        return self.of(Direction.STRICTER)

    @property
    def neutral(self) -> tuple[PolicyChange, ...]:
        return self.of(Direction.NEUTRAL)

    def to_dict(self) -> dict[str, object]:
        return {
            "old_hash": self.old_hash,
            "new_hash": self.new_hash,
            "changes": [
                {"direction": c.direction.value, "key": c.key, "message": c.message} for c in self.changes
            ],
        }


# Lower rank = more protected; moving a field to a higher rank releases more.
_TIER_RANK = {Tier.CORE_SENSITIVE: 0, Tier.GENERAL_SENSITIVE: 1, Tier.NON_SENSITIVE: 2}


class _Changes:
    def __init__(self) -> None:
        self.items: list[PolicyChange] = []

    def add(self, direction: Direction, key: str, text: str) -> None:
        self.items.append(PolicyChange(direction, key, f"{text}: {direction.value}"))

    def number(self, key: str, label: str, old: float, new: float, *, higher_is_looser: bool) -> None:
        if old == new:
            return
        raised = new > old
        looser = raised == higher_is_looser
        verb = "raised" if raised else "lowered"
        self.add(
            Direction.LOOSER if looser else Direction.STRICTER, key, f"{label} {verb} from {old} to {new}"
        )

    def words(self, key: str, noun: str, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        for word in sorted(set(new) - set(old)):
            self.add(Direction.LOOSER, key, f"{noun} {word} now allowed")
        for word in sorted(set(old) - set(new)):
            self.add(Direction.STRICTER, key, f"{noun} {word} no longer allowed")


def _overlap(old: Policy, new: Policy, out: _Changes) -> None:
    """Identifiers per overlap partner (more is looser) and overlap jobs per period."""
    before = dict(old.overlap.partners) if old.overlap else {}
    after = dict(new.overlap.partners) if new.overlap else {}
    for partner in sorted(set(before) | set(after)):
        label = "any partner" if partner == "*" else partner
        out.words(
            f"overlap.partners.{partner}",
            f"overlap with {label} on",
            before.get(partner, ()),
            after.get(partner, ()),
        )
    out.number(
        "overlap.max_jobs_per_period",
        "overlap jobs per period",
        old.overlap.max_jobs_per_period if old.overlap else 0,
        new.overlap.max_jobs_per_period if new.overlap else 0,
        higher_is_looser=True,
    )


def _partners(old: Policy, new: Policy, out: _Changes) -> None:
    if old.any_partner and not new.any_partner:
        out.add(Direction.STRICTER, "allowed_partners", "any partner no longer allowed, only those listed")
        return
    if new.any_partner and not old.any_partner:
        out.add(Direction.LOOSER, "allowed_partners", "any partner now allowed")
        return
    out.words("allowed_partners", "partner", old.allowed_partners, new.allowed_partners)


def _dataset(old: DatasetPolicy, new: DatasetPolicy, out: _Changes) -> None:
    key = f"datasets.{new.name}"
    if old.description != new.description:
        out.add(Direction.NEUTRAL, key, f"description of dataset {new.name} changed")
    if old.customer_key != new.customer_key:
        # Naming a key lets DP jobs read a CSV dataset (bounded per customer); removing it stops them.
        out.add(
            Direction.STRICTER if new.customer_key is None else Direction.LOOSER,
            f"{key}.customer_key",
            f"customer key of dataset {new.name} changed from {old.customer_key or 'none'} "
            f"to {new.customer_key or 'none'}",
        )
    new_names = {f.name for f in new.fields}
    for f in old.fields:
        if f.name not in new_names:
            out.add(Direction.STRICTER, key, f"field {f.name} of dataset {new.name} no longer classified")
    for f in new.fields:
        before = old.field(f.name)
        if before is None:
            out.add(Direction.LOOSER, key, f"field {f.name} of dataset {new.name} now classified as {f.tier}")
            continue
        if before.tier != f.tier:
            looser = _TIER_RANK[f.tier] > _TIER_RANK[before.tier]
            out.add(
                Direction.LOOSER if looser else Direction.STRICTER,
                f"{key}.{f.name}",
                f"field {f.name} moved from {before.tier} to {f.tier}",
            )
        if before.type != f.type:
            out.add(
                Direction.NEUTRAL,
                f"{key}.{f.name}",
                f"type of field {f.name} changed from {before.type} to {f.type}",
            )
        if before.pii_override != f.pii_override:
            direction = Direction.LOOSER if f.pii_override else Direction.STRICTER
            state = "set" if f.pii_override else "removed"
            out.add(direction, f"{key}.{f.name}", f"pii_override of field {f.name} {state}")


def _datasets(old: Policy, new: Policy, out: _Changes) -> None:
    before = {d.name: d for d in old.datasets}
    after = {d.name: d for d in new.datasets}
    for name in sorted(before.keys() - after.keys()):
        out.add(Direction.STRICTER, f"datasets.{name}", f"dataset {name} no longer classified")
    for name in sorted(after.keys() - before.keys()):
        out.add(Direction.LOOSER, f"datasets.{name}", f"dataset {name} now classified")
    for name in sorted(after.keys() & before.keys()):
        _dataset(before[name], after[name], out)


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """Every difference between ``old`` and ``new``, in a stable order; empty when hashes match."""
    out = _Changes()
    for key in ("policy_id", "partner", "version"):
        if getattr(old, key) != getattr(new, key):
            out.add(Direction.NEUTRAL, key, f"{key} changed from {getattr(old, key)} to {getattr(new, key)}")
    if old.description != new.description:
        out.add(Direction.NEUTRAL, "description", "description changed")
    p, q = old.privacy, new.privacy
    out.number(
        "privacy.epsilon_per_job",
        "epsilon per job",
        p.epsilon_per_job,
        q.epsilon_per_job,
        higher_is_looser=True,
    )
    out.number(
        "privacy.epsilon_per_period",
        "epsilon per period",
        p.epsilon_per_period,
        q.epsilon_per_period,
        higher_is_looser=True,
    )
    # The same period budget spread over fewer days refills sooner.
    out.number(
        "privacy.period_days", "period length in days", p.period_days, q.period_days, higher_is_looser=False
    )
    out.number("privacy.delta", "delta", p.delta, q.delta, higher_is_looser=True)
    out.number(
        "min_cohort_size", "min_cohort_size", old.min_cohort_size, new.min_cohort_size, higher_is_looser=False
    )
    out.number(
        "min_participants",
        "min_participants",
        old.min_participants,
        new.min_participants,
        higher_is_looser=False,
    )
    out.number(
        "collusion_tolerance",
        "collusion_tolerance",
        old.collusion_tolerance,
        new.collusion_tolerance,
        higher_is_looser=False,
    )
    out.number(
        "retention_days", "retention_days", old.retention_days, new.retention_days, higher_is_looser=True
    )
    out.words("allowed_analyses", "analysis", old.allowed_analyses, new.allowed_analyses)
    out.words("allowed_purposes", "purpose", old.allowed_purposes, new.allowed_purposes)
    _partners(old, new, out)
    _overlap(old, new, out)
    _datasets(old, new, out)
    return PolicyDiff(old_hash=old.policy_hash, new_hash=new.policy_hash, changes=tuple(out.items))
