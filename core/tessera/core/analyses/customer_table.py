"""One row per customer, from a node's rows: derived RFM values and customer attributes (no I/O).

The segment analyses (``rfm_segments``, ``kmeans``) describe CUSTOMERS, while their inputs come
per row (``transactions``) and their labels and groups live on the ``customers`` dataset (a
``churned`` label, a ``region``). This module is the node's half of that reshaping.

Joined fields. A job reads its own dataset (``spec.dataset``) and may name fields of the
``customers`` dataset as ``customers.<field>``. The plan sees their schemas under the same
qualified names (the node publishes them next to its own dataset's fields; a node that cannot
serve them fails closed: ``policy.unknown_field``), and a node reads them with
:func:`read_columns`, which asks its data source for each dataset's fields and returns one mapping
of qualified names. The join is on the customer key: a customer's row in ``customers`` is the
first one whose key equals the customer's key in the job's dataset. That needs ids drawn from one
id space in both datasets — true of the vault (internal customer ids in every dataset); a CSV
node's opaque ids are per file, so over CSV files a joined field is only meaningful when both
files come from one source keyed the same way. A customer of the job's dataset without a row in
``customers`` has the joined field missing (it is left out of the label's rate, never guessed).

Derived RFM values (``rfm.recency``, ``rfm.frequency``, ``rfm.monetary``), as of a public
reference day ``D`` (days since 1970, UTC): the rows of a customer whose ``time`` falls on or
before ``D`` count; recency = ``D - floor(last time)`` in whole days, frequency = the number of
those rows, monetary = the sum of their amounts (missing amounts count 0). A customer without
such a row has no RFM values and is not part of the population.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np

from tessera.core.analyses import params as p
from tessera.core.analyses.vector import FloatArray, IntArray
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import DatasetSchema, FieldSchema, JobSpec

JOINED = "customers"
RFM = ("rfm.recency", "rfm.frequency", "rfm.monetary")
_EPOCH = date(1970, 1, 1)
_HUGE = 1e300


def qualified(name: str) -> tuple[str | None, str]:
    """``customers.x`` -> ``("customers", "x")``; an unqualified name -> ``(None, name)``."""
    head, dot, tail = name.partition(".")
    return (head, tail) if dot else (None, name)


def own_fields(fields: Mapping[str, FieldSchema]) -> dict[str, FieldSchema]:
    """The job's own dataset's fields (the plan's mapping may also hold qualified joined ones)."""
    return {name: f for name, f in fields.items() if "." not in name}


def joined_fields(fields: Mapping[str, FieldSchema]) -> dict[str, FieldSchema]:
    prefix = JOINED + "."
    return {name[len(prefix) :]: f for name, f in fields.items() if name.startswith(prefix)}


def attribute_schema(spec: JobSpec, fields: Mapping[str, FieldSchema], name: str) -> FieldSchema:
    """Schema of a per-customer attribute the job names (own or ``customers.``-qualified).

    Refuses unknown, core-sensitive and key fields (``params.field_schema``), other datasets than
    ``customers``, and a join without a customer key on both sides (nothing to join on).
    """
    dataset, field = qualified(name)
    if dataset is None or dataset == spec.dataset:
        return p.field_schema(own_fields(fields), field)
    if dataset != JOINED:
        raise InvalidRequest(f"field {name!r}: only fields of the customers dataset may be joined")
    joined = joined_fields(fields)
    if p.customer_key(own_fields(fields)) is None or p.customer_key(joined) is None:
        raise PolicyViolation(
            f"field {name!r} cannot be joined: both datasets need a customer_key in the policy",
            code="policy.customer_key_required",
        )
    return p.field_schema(joined, field)


def read_name(spec_dataset: str, name: str) -> str:
    """The name under which a node's data mapping holds an attribute (own fields unqualified)."""
    dataset, field = qualified(name)
    return field if dataset is None or dataset == spec_dataset else name


def join_key(fields: Mapping[str, FieldSchema]) -> str | None:
    key = p.customer_key(joined_fields(fields))
    return None if key is None else f"{JOINED}.{key}"


def reads(dataset: str, fields: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Which fields of which dataset a node reads for a job on ``dataset`` that touches ``fields``
    (a plan's ``fields``: own names plain, joined ones ``customers.``-qualified); ``dataset`` first."""
    out: dict[str, list[str]] = {dataset: []}
    for name in fields:
        source, field = qualified(name)
        out.setdefault(source or dataset, []).append(field)
    return {name: tuple(names) for name, names in out.items()}


def read_columns(
    read: Callable[[str, Sequence[str]], Mapping[str, Any]], dataset: str, fields: Sequence[str]
) -> dict[str, Any]:
    """One data mapping from a data source's ``read(dataset, fields)``: ``dataset``'s columns under
    their names, joined ones under ``customers.<field>`` (call it with ``plan.dataset, plan.fields``)."""
    data: dict[str, Any] = {}
    for source, names in reads(dataset, fields).items():
        if not names:
            continue
        columns = read(source, names)
        for name in names:
            data[name if source == dataset else f"{source}.{name}"] = columns[name]
    return data


def plan_fields(dataset: str, schemas: Sequence[DatasetSchema]) -> dict[str, FieldSchema]:
    """What a plan sees of a node's schemas for a job on ``dataset``: its own fields, and those of
    ``customers`` as ``customers.<field>`` (for joins) when the job reads another dataset."""
    own = next((d for d in schemas if d.name == dataset), None)
    fields = {f.name: f for f in own.fields} if own is not None else {}
    joined = next((d for d in schemas if d.name == JOINED), None)
    if joined is not None and dataset != JOINED:
        fields |= {f"{JOINED}.{f.name}": f for f in joined.fields}
    return fields


def day_param(spec: JobSpec, name: str) -> float:
    """A public date parameter (``YYYY-MM-DD``) as days since 1970-01-01."""
    value = spec.params.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"parameter {name!r} is required as a date YYYY-MM-DD")
    try:
        return float((date.fromisoformat(value) - _EPOCH).days)
    except ValueError:
        raise InvalidRequest(f"parameter {name!r} must be a date YYYY-MM-DD") from None


@dataclass(frozen=True, slots=True)
class Population:
    """The customers a job describes: sorted ids and each row's position among them (-1: none)."""

    ids: IntArray
    row: IntArray

    @property
    def size(self) -> int:
        return int(self.ids.size)


def population(ids: IntArray, eligible: np.ndarray) -> Population:
    """Customers with at least one eligible row (negative ids name no customer)."""
    ok = eligible & (ids >= 0)
    unique, inverse = np.unique(ids[ok], return_inverse=True)
    row = np.full(ids.shape, -1, dtype=np.int64)
    row[ok] = inverse
    return Population(unique.astype(np.int64), row)


def key_column(data: Mapping[str, Any], key: str) -> IntArray:
    ids = np.asarray(data[key])
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise InvalidRequest("the customer key must come as one integer id per row")
    return ids.astype(np.int64)


@dataclass(frozen=True, slots=True)
class Rfm:
    population: Population
    recency: FloatArray  # whole days since the last counted row (>= 0)
    frequency: FloatArray  # counted rows (>= 1)
    monetary: FloatArray  # sum of their amounts

    def feature(self, name: str) -> FloatArray:
        return {"rfm.recency": self.recency, "rfm.frequency": self.frequency, "rfm.monetary": self.monetary}[
            name
        ]


def rfm(data: Mapping[str, Any], *, key: str, time: str, amount: str, reference_day: float) -> Rfm:
    """Each customer's recency, frequency and monetary value as of ``reference_day`` (see above)."""
    ids = key_column(data, key)
    when = np.asarray(data[time], dtype=np.float64)
    day = np.floor(when)
    counted = np.isfinite(day) & (day <= reference_day)
    pop = population(ids, counted)
    used = pop.row >= 0
    n = pop.size
    last = np.full(n, -np.inf)
    np.maximum.at(last, pop.row[used], day[used])
    frequency = np.bincount(pop.row[used], minlength=n).astype(np.float64)
    spend = np.nan_to_num(np.asarray(data[amount], dtype=np.float64), nan=0.0, posinf=_HUGE, neginf=-_HUGE)
    monetary = np.bincount(pop.row[used], weights=np.clip(spend[used], -_HUGE, _HUGE), minlength=n)
    return Rfm(pop, reference_day - last, frequency, np.nan_to_num(monetary, nan=0.0))


def attribute(
    data: Mapping[str, Any], name: str, pop: Population, *, key: str | None, join: str | None
) -> np.ndarray:
    """Each customer's value of an attribute: a joined field by the customer key (``join``: the
    joined key's column), else the customer's first row with a value in the job's dataset.
    Missing values stay missing (NaN / None)."""
    column = np.asarray(data[name])
    numeric = column.dtype.kind in "fiub"
    missing: np.ndarray = (
        np.isnan(column.astype(np.float64))
        if numeric
        else np.array([not isinstance(x, str) for x in column], dtype=bool)
    )
    if join is not None:
        owner = key_column(data, join)
    elif key is not None:
        owner = key_column(data, key)
    else:
        owner = np.arange(column.shape[0], dtype=np.int64)
    out: np.ndarray = np.full(pop.size, np.nan) if numeric else np.full(pop.size, None, dtype=object)
    rows = np.flatnonzero(~missing & (owner >= 0))
    rows = rows[np.argsort(owner[rows], kind="stable")]  # by customer, then row order
    first = np.ones(rows.size, dtype=bool)
    first[1:] = owner[rows][1:] != owner[rows][:-1]
    rows = rows[first]
    where = np.searchsorted(pop.ids, owner[rows])
    found = where < pop.size
    found[found] = pop.ids[where[found]] == owner[rows][found]
    out[where[found]] = column[rows[found]].astype(np.float64) if numeric else column[rows[found]]
    return out


def customers_of(
    data: Mapping[str, Any], layout: Mapping[str, Any], *, with_rfm: bool
) -> tuple[Rfm | None, Population]:
    """A plan's customers (``layout``: its ``key``, and ``time``/``amount``/``reference_day`` for
    RFM): with their RFM table when a feature or label needs one, else every key in the rows (every
    row when the dataset has no key)."""
    key = layout["key"]
    if with_rfm:
        table = rfm(
            data, key=key, time=layout["time"], amount=layout["amount"], reference_day=layout["reference_day"]
        )
        return table, table.population
    rows = len(next(iter(data.values()))) if key is None else 0
    ids = np.arange(rows, dtype=np.int64) if key is None else key_column(data, key)
    return None, population(ids, np.ones(ids.shape, dtype=bool))


def layout_attribute(
    data: Mapping[str, Any], read: str, pop: Population, layout: Mapping[str, Any]
) -> np.ndarray:
    """``attribute`` of a plan's read name: a ``customers.<field>`` through the plan's join key."""
    join = layout["join"] if qualified(read)[0] == JOINED else None
    return attribute(data, read, pop, key=layout["key"], join=join)
