"""The validated, immutable policy a node enforces (built only by the loader in ``loader.py``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from tessera.core.errors import PolicyViolation
from tessera.core.types import DatasetSchema, FieldSchema, PolicySummary, Tier


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """How one field is classified. ``pii_override`` lets a non-core field hold PII-looking values."""

    name: str
    tier: Tier
    type: str
    pii_override: bool = False


@dataclass(frozen=True, slots=True)
class DatasetPolicy:
    """A classified dataset. ``customer_key`` names the field whose value says which customer a row
    belongs to (the unit of privacy); ``None`` when the policy does not say."""

    name: str
    fields: tuple[FieldPolicy, ...]
    description: str = ""
    customer_key: str | None = None

    def field(self, name: str) -> FieldPolicy | None:
        return next((f for f in self.fields if f.name == name), None)


def _dataset_doc(dataset: DatasetPolicy) -> dict[str, object]:
    doc: dict[str, object] = {
        "description": dataset.description,
        "fields": {
            f.name: {"tier": f.tier.value, "type": f.type, "pii_override": f.pii_override}
            for f in dataset.fields
        },
    }
    # Only when set, so the hash of every policy written before this key existed is unchanged.
    if dataset.customer_key is not None:
        doc["customer_key"] = dataset.customer_key
    return doc


@dataclass(frozen=True, slots=True)
class PrivacyLimits:
    """Differential-privacy limits of one node: ε per job and per period (``period_days`` long), δ."""

    epsilon_per_job: float
    epsilon_per_period: float
    period_days: int
    delta: float


@dataclass(frozen=True, slots=True)
class OverlapRules:
    """What ``overlap`` may match on: per partner (or ``*``) the identifier kinds allowed, and how
    many overlap jobs may run per privacy period (repeated PSI on filtered sets leaks)."""

    partners: tuple[tuple[str, tuple[str, ...]], ...]
    max_jobs_per_period: int

    def identifiers_for(self, partner: str) -> tuple[str, ...]:
        rules = dict(self.partners)
        return rules.get(partner, rules.get("*", ()))


@dataclass(frozen=True, slots=True)
class Policy:
    """A node's policy. Lists are sorted tuples (order in the file carries no meaning).

    ``policy_hash`` is the SHA-256 (hex) of a canonical JSON of the content, so comments, key order
    and list order do not change it; ``source`` (the file) is kept for messages and not hashed.
    """

    policy_id: str
    partner: str
    datasets: tuple[DatasetPolicy, ...]
    allowed_analyses: tuple[str, ...]
    allowed_purposes: tuple[str, ...]
    privacy: PrivacyLimits
    min_cohort_size: int
    min_participants: int
    allowed_partners: tuple[str, ...]
    retention_days: int
    # How many other nodes may collude with the coordinator without breaking secure aggregation;
    # the node refuses rounds whose threshold or masking graph cannot bear it (secagg.security).
    collusion_tolerance: int = 0
    overlap: OverlapRules | None = None
    description: str = ""
    version: int = 1
    source: str = field(default="", compare=False)
    policy_hash: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy_hash", hashlib.sha256(self.canonical_json().encode()).hexdigest())

    def canonical_json(self) -> str:
        """The hashed form: sorted keys, sorted lists, floats as floats, no whitespace."""
        doc = {
            "version": self.version,
            "policy_id": self.policy_id,
            "description": self.description,
            "partner": self.partner,
            "datasets": {d.name: _dataset_doc(d) for d in self.datasets},
            "allowed_analyses": sorted(set(self.allowed_analyses)),
            "allowed_purposes": sorted(set(self.allowed_purposes)),
            "privacy": {
                "epsilon_per_job": float(self.privacy.epsilon_per_job),
                "epsilon_per_period": float(self.privacy.epsilon_per_period),
                "period_days": self.privacy.period_days,
                "delta": float(self.privacy.delta),
            },
            "min_cohort_size": self.min_cohort_size,
            "min_participants": self.min_participants,
            "allowed_partners": sorted(set(self.allowed_partners)),
            "retention_days": self.retention_days,
            "collusion_tolerance": self.collusion_tolerance,
        }
        if self.overlap is not None:  # only when set: older policies keep their hash
            doc["overlap"] = {
                "partners": {name: sorted(kinds) for name, kinds in self.overlap.partners},
                "max_jobs_per_period": self.overlap.max_jobs_per_period,
            }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @property
    def any_partner(self) -> bool:
        return "*" in self.allowed_partners

    def dataset(self, name: str) -> DatasetPolicy:
        """The dataset called ``name``; ``PolicyViolation`` (policy.unknown_dataset) if not classified."""
        for dataset in self.datasets:
            if dataset.name == name:
                return dataset
        raise PolicyViolation(
            f'dataset "{name}" is not classified by policy {self.policy_id}; '
            f"add it under datasets: in {self._file()} before using it.",
            code="policy.unknown_dataset",
        )

    def tier_of(self, dataset: str, field: str) -> Tier:
        """The tier of ``dataset.field``. Default deny: an unclassified field raises
        ``PolicyViolation`` (policy.unclassified_field) naming the field and the file to edit."""
        found = self.dataset(dataset).field(field)
        if found is None:
            raise PolicyViolation(
                f'field "{field}" of dataset "{dataset}" is not classified, so it is refused; '
                f"add it with a tier and a type under datasets: {dataset}: fields: in {self._file()}.",
                code="policy.unclassified_field",
            )
        return found.tier

    def schema(self, dataset: str) -> DatasetSchema:
        """Names, types and tiers of ``dataset``'s fields, in file order (never values)."""
        found = self.dataset(dataset)
        return DatasetSchema(
            name=found.name,
            fields=tuple(FieldSchema(name=f.name, type=f.type, tier=f.tier) for f in found.fields),
        )

    def summary(self) -> PolicySummary:
        """What the node publishes to the coordinator for pre-checks (no field names)."""
        return PolicySummary(
            policy_id=self.policy_id,
            policy_hash=self.policy_hash,
            allowed_analyses=self.allowed_analyses,
            allowed_purposes=self.allowed_purposes,
            epsilon_per_job=self.privacy.epsilon_per_job,
            epsilon_per_period=self.privacy.epsilon_per_period,
            period=f"{self.privacy.period_days}d",
            delta=self.privacy.delta,
            min_cohort_size=self.min_cohort_size,
            min_participants=self.min_participants,
            allowed_partners=self.allowed_partners,
            retention_days=self.retention_days,
            collusion_tolerance=self.collusion_tolerance,
        )

    def _file(self) -> str:
        return self.source or f"the policy file of {self.partner}"
