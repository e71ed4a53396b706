"""The shape of a policy file, version 1, as pydantic models (structure and types only).

These models check *shape*: which keys exist, which are required, and the type of each value.
Ranges and contradictions are checked afterwards in ``_checks`` so that every sentence can name
the rule in words a compliance officer uses. Models are strict: a number in quotes is text, and
``yes`` is not a count.
"""

from __future__ import annotations

import types
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1

# Every analysis Tessera knows (DESIGN §8). A policy may allow only names from this list.
KNOWN_ANALYSES: tuple[str, ...] = (
    "inventory",
    "count",
    "sum",
    "mean",
    "histogram",
    "quantiles",
    "mean_descent",
    "rfm_segments",
    "kmeans",
    "funnel",
    "cohort_retention",
    "churn_model",
    "clv_fit",
    "overlap",
)

# Analyses that spend no privacy budget: `inventory` publishes field names, types and tiers only.
NON_DP_ANALYSES: frozenset[str] = frozenset({"inventory"})

TIERS: tuple[str, ...] = ("core_sensitive", "general_sensitive", "non_sensitive")
FIELD_TYPES: tuple[str, ...] = ("string", "int", "float", "date", "bool", "category")

TierName = Literal["core_sensitive", "general_sensitive", "non_sensitive"]
FieldTypeName = Literal["string", "int", "float", "date", "bool", "category"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FieldDoc(_Strict):
    tier: TierName
    type: FieldTypeName
    # A compliance officer's explicit decision that a non-core field may hold PII-looking values.
    pii_override: bool = False


class DatasetDoc(_Strict):
    description: str = ""
    # The field that says which customer a row belongs to. Every DP analysis bounds what one
    # customer contributes over all of its rows, so a CSV dataset is refused for DP jobs without it.
    customer_key: str | None = None
    fields: dict[str, FieldDoc]


class PrivacyDoc(_Strict):
    epsilon_per_job: float
    epsilon_per_period: float
    period_days: int
    delta: float


class OverlapDoc(_Strict):
    # partner name (or "*") -> identifier kinds it may be matched on
    partners: dict[str, list[str]]
    max_jobs_per_period: int


class PolicyDoc(_Strict):
    version: int
    policy_id: str
    description: str = ""
    partner: str
    datasets: dict[str, DatasetDoc]
    allowed_analyses: list[str]
    allowed_purposes: list[str]
    privacy: PrivacyDoc
    min_cohort_size: int
    min_participants: int
    allowed_partners: list[str]
    retention_days: int
    # Nodes this partner assumes may collude with the coordinator (secure aggregation, DESIGN §1).
    collusion_tolerance: int = 0
    # What "overlap" may match on, with whom, how often (absent: overlap matches nothing).
    overlap: OverlapDoc | None = None


def model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model whose keys are valid at ``path`` (a key path into the document), if any.

    Walks model fields, dict values and list items so that an unknown key can be compared with
    the keys that *are* allowed at that place.
    """
    current: object = PolicyDoc
    for step in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(step))
            if info is None:
                return None
            current = info.annotation
            continue
        origin = typing.get_origin(current)
        args = typing.get_args(current)
        if origin is dict and len(args) == 2:
            current = args[1]
        elif origin is list and args:
            current = args[0]
        elif origin in (typing.Union, types.UnionType):
            return None
        else:
            return None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def home_of_key(key: str) -> str | None:
    """Where a key belongs, when it is a known key of some other section (e.g. ``delta``)."""
    if key in PrivacyDoc.model_fields:
        return 'under "privacy"'
    if key in FieldDoc.model_fields:
        return "inside a field (under datasets: NAME: fields: FIELD:)"
    if key in PolicyDoc.model_fields:
        return "at the top level of the file"
    if key in DatasetDoc.model_fields:
        return "inside a dataset (under datasets: NAME:)"
    return None
