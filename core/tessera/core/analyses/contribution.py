"""Reading a node's rows per customer: the node's half of the bounds that ``params.Contribution``
declares (pure numpy, no I/O).

``data`` holds one array per field the plan reads, one entry per ROW. With a customer key the key's
array holds opaque int64 customer ids (a negative id means the row names no customer: it cannot
be bounded, so it is left out); without one, row ``i`` is customer ``i``. Ties are broken by row
order, so the same data always gives the same vector: "first" means first in the order the data
source returns rows (the vault: ingestion order; a CSV file: file order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.analyses.params import Contribution, Grouping
from tessera.core.analyses.vector import FloatArray, IntArray, VectorPlan
from tessera.core.errors import InvalidRequest

BoolArray = npt.NDArray[np.bool_]
_HUGE = 1e300  # below float64's max even summed over 2^26 rows of one customer


def rows(data: Mapping[str, Any], plan: VectorPlan) -> int:
    """Rows in ``data``: every array holds one entry per row (per customer without a key).

    With no field to read (``count`` without ``group_by`` over one-row-per-customer data), ``data``
    must still hold one array of the dataset (any field): only its length is read, never its values.
    """
    # Joined fields (``customers.<field>``) hold one entry per row of ANOTHER dataset.
    names = tuple(n for n in plan.fields or tuple(data) if "." not in n) or tuple(data)[:1]
    if not names:
        raise InvalidRequest("data must hold at least one array so its customers can be counted")
    lengths = {len(data[name]) for name in names}
    if len(lengths) != 1:
        raise InvalidRequest("every field must hold one entry per row")
    return lengths.pop()


def numeric(data: Mapping[str, Any], name: str) -> FloatArray:
    return np.asarray(data[name], dtype=np.float64)


def grouping_of(plan: VectorPlan) -> Grouping:
    """The plan's grouping, as ``params.grouping`` built it from the spec."""
    return Grouping(field=plan.layout.get("group_by"), labels=tuple(plan.layout["groups"]))


def group_index(plan: VectorPlan, data: Mapping[str, Any]) -> IntArray:
    """Group of every row in ``data`` (all in group 0 without ``group_by``)."""
    groups = grouping_of(plan)
    count = rows(data, plan)  # also checks that every field holds one entry per row
    if groups.field is None:
        return np.zeros(count, dtype=np.int64)
    return groups.index(data)


def contribution_of(plan: VectorPlan) -> Contribution:
    return Contribution.from_layout(plan.layout)


def customer_ids(plan: VectorPlan, data: Mapping[str, Any]) -> IntArray | None:
    """The customer of every row (negative: none), or ``None`` when each row is its own customer."""
    key = contribution_of(plan).customer_key
    count = rows(data, plan)
    if key is None:
        return None
    ids = np.asarray(data[key])
    if ids.dtype.kind not in "iu" or ids.shape != (count,):
        raise InvalidRequest("the customer key must come as one integer id per row")
    return ids.astype(np.int64)


def customers_in(plan: VectorPlan, data: Mapping[str, Any]) -> int:
    """Distinct customers in the data ``plan`` reads (rows without a customer are not counted).

    The node compares it with the job's declared ``max_customers`` before it masks its vector: the
    modulus is sized for that many customers, so a larger population could wrap the sum.
    """
    ids = customer_ids(plan, data)
    if ids is None:
        return rows(data, plan)
    return int(np.unique(ids[ids >= 0]).size)


def _ranks(sorted_keys: IntArray) -> IntArray:
    """Position of each entry within its run of equal keys (``sorted_keys`` is sorted)."""
    n = sorted_keys.size
    start = np.ones(n, dtype=bool)
    start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    positions = np.arange(n, dtype=np.int64)
    return positions - np.maximum.accumulate(np.where(start, positions, 0))


def first_rows(ids: IntArray | None, eligible: BoolArray, limit: int) -> BoolArray:
    """Row mode: the eligible rows kept, at most the first ``limit`` of each customer."""
    if ids is None:
        return eligible.copy()  # one row per customer: nothing to cap
    idx = np.flatnonzero(eligible & (ids >= 0))
    order = idx[np.lexsort((idx, ids[idx]))]  # by customer, then row
    keep = np.zeros(eligible.shape, dtype=bool)
    keep[order[_ranks(ids[order]) < limit]] = True
    return keep


@dataclass(frozen=True, slots=True)
class Cells:
    """Customer mode: the (customer, group) cells kept, at most ``max_groups`` per customer.

    ``row_cell`` maps each row to its cell (-1: row not used); ``group`` and ``first_row`` describe
    each cell (cells of one customer are contiguous, ordered by group).
    """

    row_cell: IntArray
    group: IntArray
    first_row: IntArray

    @property
    def size(self) -> int:
        return int(self.group.size)

    def count(self) -> IntArray:
        """Rows of each cell."""
        used = self.row_cell >= 0
        return np.bincount(self.row_cell[used], minlength=self.size).astype(np.int64)

    def total(self, values: FloatArray) -> FloatArray:
        """Sum of ``values`` over the rows of each cell."""
        used = self.row_cell >= 0
        return np.bincount(self.row_cell[used], weights=values[used], minlength=self.size).astype(np.float64)


def customer_cells(ids: IntArray | None, groups: IntArray, eligible: BoolArray, max_groups: int) -> Cells:
    """Group the eligible rows into (customer, group) cells; keep each customer's first
    ``max_groups`` groups (by their first row). Without ids every eligible row is a cell."""
    if ids is None:
        idx = np.flatnonzero(eligible)
        row_cell = np.full(groups.shape, -1, dtype=np.int64)
        row_cell[idx] = np.arange(idx.size, dtype=np.int64)
        return Cells(row_cell, groups[idx].astype(np.int64), idx.astype(np.int64))
    idx = np.flatnonzero(eligible & (ids >= 0))
    order = idx[np.lexsort((idx, groups[idx], ids[idx]))]  # by customer, group, row
    cid, grp = ids[order], groups[order]
    new = np.ones(order.size, dtype=bool)
    new[1:] = (cid[1:] != cid[:-1]) | (grp[1:] != grp[:-1])
    cell_of_sorted = np.cumsum(new) - 1
    first_row, cell_customer, cell_group = order[new], cid[new], grp[new]
    by_first = np.lexsort((first_row, cell_customer))  # a customer's cells in row order
    rank = np.empty(first_row.size, dtype=np.int64)
    rank[by_first] = _ranks(cell_customer[by_first])
    keep = rank < max_groups
    renumber = np.where(keep, np.cumsum(keep) - 1, -1)
    row_cell = np.full(groups.shape, -1, dtype=np.int64)
    row_cell[order] = renumber[cell_of_sorted]
    return Cells(row_cell, cell_group[keep].astype(np.int64), first_row[keep].astype(np.int64))


def per_customer_values(
    plan: VectorPlan, data: Mapping[str, Any], *, values: FloatArray | None, eligible: BoolArray
) -> tuple[IntArray, FloatArray]:
    """Customer mode: for each kept (customer, group) cell, its group and its one value.

    ``per_customer`` says how the cell's eligible rows become the value: ``sum``, ``count`` (rows),
    ``mean``, ``first`` (the first row's value, for categories), or presence only (``None``: 1).
    """
    contribution = contribution_of(plan)
    groups = group_index(plan, data)
    cells = customer_cells(customer_ids(plan, data), groups, eligible, contribution.groups_cap)
    how = contribution.per_customer
    if how is None or how == "count":
        value = cells.count().astype(np.float64)
        return cells.group, value if how == "count" else np.ones(cells.size)
    if values is None:
        raise InvalidRequest(f"per_customer {how!r} needs a field")
    # Finite rows only: ±inf would turn a customer's sum into NaN (inf - inf); the clip to the
    # analysis's bounds comes after the aggregation, on the customer's one value.
    values = np.clip(values, -_HUGE, _HUGE)
    if how == "first":
        return cells.group, values[cells.first_row]
    total = cells.total(values)
    if how == "sum":
        return cells.group, total
    if how == "mean":
        return cells.group, total / cells.count()
    raise InvalidRequest(f"unknown per_customer {how!r}")


def rows_kept(plan: VectorPlan, data: Mapping[str, Any], *, eligible: BoolArray) -> BoolArray:
    """Row mode: the eligible rows that count (at most ``max_rows_per_customer`` per customer)."""
    contribution = contribution_of(plan)
    return first_rows(customer_ids(plan, data), eligible, contribution.rows_cap)
