"""Reading a DP job's spec against the published field schemas: identical on every node and on the
coordinator, and no data (the plan's half of every analysis; ``vector`` builds on it).

Unit of privacy. A dataset whose schema holds a field of type ``customer_key`` has several rows per
customer (``transactions``, ``events``, a CSV file whose policy names its ``customer_key``); one
without such a field has exactly one row per customer (the vault's ``customers``: One ID merges
duplicates). The key is opaque: analyses group a customer's rows by it but may never read it as a
value nor group results by it. Every analysis bounds what ONE CUSTOMER contributes over ALL of its
rows (``Contribution``), and its sensitivities are those of one customer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.dp import rho_for
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, JobSpec, Tier

IntArray = npt.NDArray[np.int64]

NUMERIC_TYPES = frozenset({"int", "float", "bool"})
LABEL_TYPES = frozenset({"category", "string"})
OTHER = "other"  # the extra group/category for values outside the public list
ALL = "all"  # the single group when there is no group_by
GROUP_PARAMS = frozenset({"group_by", "groups"})
_MAX_CELLS = 1 << 16


def privacy_rho(spec: JobSpec) -> float:
    """The job's ρ; these analyses add Gaussian-type noise, so ε > 0 and δ in (0, 1) are required."""
    if not spec.epsilon > 0 or not 0 < spec.delta < 1:
        raise InvalidRequest("this analysis adds Gaussian noise: it needs epsilon > 0 and delta in (0, 1)")
    return rho_for(epsilon=spec.epsilon, delta=spec.delta)


def check_round(*, survivors_t: int, n_nodes: int) -> None:
    for value in (survivors_t, n_nodes):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest("survivors_t and n_nodes must be integers")
    if not 1 <= survivors_t <= n_nodes:
        raise InvalidRequest("survivors_t must be between 1 and n_nodes")


def check_params(spec: JobSpec, allowed: frozenset[str]) -> None:
    """Unknown parameters are refused: a misspelt bound must never be silently ignored."""
    for name in sorted(spec.params):
        if name not in allowed | GROUP_PARAMS:
            raise InvalidRequest(f"parameter {name!r} is not known to the {spec.analysis} analysis")


def number_param(spec: JobSpec, name: str, *, default: float | None = None) -> float:
    value = spec.params.get(name, default)
    if value is None:
        raise InvalidRequest(f"parameter {name!r} is required (fail closed: no bound, no job)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"parameter {name!r} must be a finite number")
    return float(value)


def int_param(spec: JobSpec, name: str, *, default: int | None, low: int, high: int) -> int:
    value = spec.params.get(name, default)
    if value is None:
        raise InvalidRequest(f"parameter {name!r} is required")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"parameter {name!r} must be an integer from {low} to {high}")
    return value


def labels_param(spec: JobSpec, name: str) -> tuple[str, ...]:
    """A public, non-empty list of distinct labels; ``other`` is reserved for everything else."""
    value = spec.params.get(name)
    if value is None:
        raise InvalidRequest(
            f"parameter {name!r} is required: the list must be public, never learnt from data"
        )
    if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"parameter {name!r} must be a non-empty list of non-empty strings")
    if len(set(value)) != len(value) or OTHER in value:
        raise InvalidRequest(f"parameter {name!r} must not repeat a label nor use the reserved label 'other'")
    if len(value) >= _MAX_CELLS:
        raise InvalidRequest(f"parameter {name!r} lists too many labels")
    return tuple(str(x) for x in value)


# Clip bounds beyond this are refused up front: no customer value needs them, the noise they call
# for drowns any result, and near the float range the fixed-point scale underflows to zero.
MAX_BOUND = 1e15


def bounds(spec: JobSpec) -> tuple[float, float]:
    lower, upper = number_param(spec, "lower"), number_param(spec, "upper")
    if not lower < upper:
        raise InvalidRequest("parameter 'lower' must be below parameter 'upper'")
    if max(abs(lower), abs(upper)) > MAX_BOUND:
        raise InvalidRequest(f"parameters 'lower' and 'upper' must lie within ±{MAX_BOUND:g}")
    return lower, upper


def field_schema(fields: Mapping[str, FieldSchema], name: str) -> FieldSchema:
    """The schema of a field the job reads as a value or a group; unknown, core-sensitive fields and
    the customer key are vetoed."""
    schema = fields.get(name)
    if schema is None:
        raise PolicyViolation(f"field {name!r} is not in the dataset's schema", code="policy.unknown_field")
    if schema.type == CUSTOMER_KEY:
        raise PolicyViolation(
            f"field {name!r} is the dataset's customer key: it only groups a customer's rows and is "
            "never read as a value nor used as a group",
            code="policy.customer_key_field",
        )
    if Tier(schema.tier) is Tier.CORE_SENSITIVE:
        raise PolicyViolation(
            f"field {name!r} is core_sensitive: core_sensitive fields never leave the node, "
            "not even in aggregates",
            code="policy.core_sensitive_field",
        )
    return schema


def value_field(spec: JobSpec, fields: Mapping[str, FieldSchema], *, numeric: bool) -> FieldSchema:
    value = spec.params.get("field")
    if not isinstance(value, str) or not value:
        raise InvalidRequest("parameter 'field' is required and must name a field")
    schema = field_schema(fields, value)
    if numeric and schema.type not in NUMERIC_TYPES:
        raise InvalidRequest(
            f"parameter 'field' must name a numeric field (int, float or bool) for {spec.analysis}"
        )
    return schema


@dataclass(frozen=True, slots=True)
class Grouping:
    """Public group labels; the last label is ``other`` (or the only one is ``all``)."""

    field: str | None
    labels: tuple[str, ...]

    def index(self, data: Mapping[str, Any]) -> IntArray:
        """Group of each row; values outside the list and missing values go to ``other``."""
        if self.field is None:
            raise InvalidRequest("this grouping has no field: use the row count instead")
        idx = label_index(data[self.field], self.labels[:-1])
        idx[idx < 0] = len(self.labels) - 1
        return idx


def grouping(spec: JobSpec, fields: Mapping[str, FieldSchema]) -> Grouping:
    name = spec.params.get("group_by")
    if name is None:
        if "groups" in spec.params:
            raise InvalidRequest("parameter 'groups' needs parameter 'group_by'")
        return Grouping(field=None, labels=(ALL,))
    if not isinstance(name, str) or not name:
        raise InvalidRequest("parameter 'group_by' must name a field")
    schema = field_schema(fields, name)
    if Tier(schema.tier) is not Tier.NON_SENSITIVE:
        raise PolicyViolation(
            f"field {name!r} cannot be a group-by key: only non_sensitive fields may group results",
            code="policy.group_by_tier",
        )
    if schema.type not in LABEL_TYPES:
        raise InvalidRequest("parameter 'group_by' must name a category or string field")
    return Grouping(field=name, labels=(*labels_param(spec, "groups"), OTHER))


def label_index(values: Any, labels: tuple[str, ...]) -> IntArray:
    """Position of each value in ``labels``; -2 for a value not listed, -1 for a missing value."""
    lookup = {label: i for i, label in enumerate(labels)}
    return np.fromiter(
        (lookup.get(v, -2) if isinstance(v, str) else -1 for v in np.asarray(values, dtype=object)),
        dtype=np.int64,
        count=len(values),
    )


# --- the unit of privacy: what one customer may contribute -------------------------------------

CUSTOMER_KEY = "customer_key"  # the schema type of the field that says whose row it is
PER_CUSTOMER = ("sum", "count", "mean")  # how a customer's rows in one group become one value
FIRST = "first"  # a category: the customer's first row with a value (not a parameter value)
MAX_ROWS_PER_CUSTOMER = 1 << 20
CONTRIBUTION_PARAMS = frozenset({"per_customer", "max_rows_per_customer", "max_groups_per_customer"})


def customer_key(fields: Mapping[str, FieldSchema]) -> str | None:
    """The dataset's customer-key field, or ``None`` when its schema says one row is one customer."""
    # Qualified names (``customers.id``) are another dataset's fields joined in, not this one's key.
    keys = sorted(name for name, schema in fields.items() if schema.type == CUSTOMER_KEY and "." not in name)
    if len(keys) > 1:
        raise InvalidRequest(f"the dataset's schema has {len(keys)} customer keys; it must have at most one")
    return keys[0] if keys else None


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one customer may add to the vector, from the spec and the schema only.

    Two modes. Customer mode (``max_rows`` is ``None``): a customer's rows in one group become
    ONE value (``per_customer``; ``None`` when only presence is counted) and the customer touches
    at most ``max_groups`` groups: its first ones, in row order. Row mode (``max_rows`` set): at
    most the customer's first ``max_rows`` rows count, wherever they fall. Without a customer key
    every customer has one row, so both caps are 1 whatever the job asked.
    """

    customer_key: str | None
    per_customer: str | None
    max_rows: int | None
    max_groups: int

    @property
    def groups_cap(self) -> int:
        """Most groups (cells of a customer-mode part) one customer touches."""
        return 1 if self.customer_key is None else self.max_groups

    @property
    def rows_cap(self) -> int:
        """Most rows one customer adds in row mode (1 without a key: one row per customer)."""
        if self.max_rows is None:
            raise InvalidRequest("this contribution is not counted by rows")
        return 1 if self.customer_key is None else self.max_rows

    def count_bounds(self) -> tuple[int, float, float]:
        """``(L∞, L1, L2)`` of one customer in a part of counts (integer units, exact)."""
        if self.max_rows is not None:
            m = self.rows_cap  # all m rows may fall in one cell
            return m, float(m), float(m)
        k = self.groups_cap  # at most 1 in each of k cells
        return 1, float(k), math.sqrt(k)

    def as_layout(self) -> dict[str, Any]:
        return {
            "customer_key": self.customer_key,
            "per_customer": self.per_customer,
            "max_rows_per_customer": self.max_rows,
            "max_groups_per_customer": self.max_groups,
        }

    @classmethod
    def from_layout(cls, layout: Mapping[str, Any]) -> Contribution:
        c = layout["contribution"]
        return cls(
            c["customer_key"], c["per_customer"], c["max_rows_per_customer"], c["max_groups_per_customer"]
        )


def contribution(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    *,
    groups: int,
    values: bool,
    rows_allowed: bool,
    category: bool = False,
) -> Contribution:
    """The job's per-customer bounds (fail closed on anything ambiguous).

    ``groups``: cells a customer could touch in customer mode; ``values``: the analysis reads a
    value per customer (``per_customer`` applies, default ``sum``); ``rows_allowed``: it may count
    rows instead (``max_rows_per_customer``); ``category``: the value is a category, so a
    customer's value in a group is that of its first row with one.
    """
    params = spec.params
    key = customer_key(fields)
    max_groups = int_param(spec, "max_groups_per_customer", default=1, low=1, high=groups)
    if "max_rows_per_customer" in params:
        if not rows_allowed:
            raise InvalidRequest(
                f"parameter 'max_rows_per_customer' does not apply to {spec.analysis}: it aggregates "
                "each customer's rows into one value (per_customer)"
            )
        clash = sorted({"per_customer", "max_groups_per_customer"} & set(params))
        if clash:
            raise InvalidRequest(
                f"parameter 'max_rows_per_customer' counts a customer's rows one by one; it cannot be "
                f"combined with {clash[0]!r}, which bounds per-customer values: choose one"
            )
        m = int_param(spec, "max_rows_per_customer", default=None, low=1, high=MAX_ROWS_PER_CUSTOMER)
        return Contribution(key, None, m, 1)
    if not values:
        if "per_customer" in params:
            raise InvalidRequest(f"parameter 'per_customer' does not apply to {spec.analysis}")
        return Contribution(key, None, None, max_groups)
    if category:
        if "per_customer" in params:
            raise InvalidRequest(
                "parameter 'per_customer' applies to numeric fields; a category histogram counts a "
                "customer once per group (its first row's category) or by rows (max_rows_per_customer)"
            )
        return Contribution(key, FIRST, None, max_groups)
    how = params.get("per_customer", "sum")
    if how not in PER_CUSTOMER:
        raise InvalidRequest(f"parameter 'per_customer' must be one of {', '.join(PER_CUSTOMER)}")
    return Contribution(key, str(how), None, max_groups)


def optional_value_field(
    spec: JobSpec, fields: Mapping[str, FieldSchema], *, numeric: bool
) -> FieldSchema | None:
    """``value_field``, except that ``per_customer: count`` may leave ``field`` out (count rows)."""
    if "field" not in spec.params and spec.params.get("per_customer") == "count":
        return None
    return value_field(spec, fields, numeric=numeric)


def touched(key: str | None, *names: str | None) -> tuple[str, ...]:
    """Fields a plan reads, each once, in order; the customer key last (it only groups rows)."""
    out: list[str] = []
    for name in (*names, key):
        if name is not None and name not in out:
            out.append(name)
    return tuple(out)
