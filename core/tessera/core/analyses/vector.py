"""Shared machinery of the one-round DP analyses: the vector plan, noise shares, coding, release.

A DP analysis is ONE secure-aggregation round. A ``VectorPlan`` says, without touching data, how
every node lays out its int64 vector: contiguous ``VectorPart`` slices, each with its fixed-point
scale, its per-customer bounds and its own discrete-Gaussian noise. The plan is a pure function of
the job spec, the field schemas and the round's ``(survivors_t, n_nodes)``, so the coordinator and
every node compute the same plan independently.

Privacy (add/remove-one-customer adjacency, zCDP): the job's ``(ε, δ)`` becomes ``ρ = rho_for(ε,
δ)``; ρ is split across the parts (parts compose by adding their ρ). Each customer touches exactly
ONE coordinate of every part, so a part's L1, L2 and L∞ sensitivities in integer units are equal
(``l2_sensitivity == linf_bound``). A part's ``sigma`` is the least σ whose sum of ``survivors_t``
shares of ``N_Z(0, σ²/t)`` meets the part's ρ under the tight accountant of the exact sum
(``dp.ddg.ddg_rho``; with small shares the sum's real sd is well below ``sigma``). Sums that hold
more shares only carry more noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.dp import (
    DpParameterError,
    Mechanism,
    NoisePlan,
    choose_bits,
    distributed_gaussian_share,
    interval95,
    max_abs_node_for,
    rho_for,
)
from tessera.core.dp import decode as _dp_decode
from tessera.core.dp import encode_words as _dp_encode_words
from tessera.core.dp.ddg import ddg_sigma
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, JobSpec, Stage, Tier

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
MECHANISM = "distributed_discrete_gaussian"
# Every analysis built on this module is one secure-aggregation round.
DP_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
Z95 = 1.959963984540054  # standard normal 97.5% quantile: a two-sided 95% interval is ±Z95·sd
# Probability that ANY coordinate of the decoded sum wraps, shared equally by the parts.
_WRAP_TARGET = 2.0**-40


@dataclass(frozen=True, slots=True)
class VectorPart:
    """A contiguous slice ``[start, stop)`` of the vector with its own noise (integer units)."""

    name: str
    start: int
    stop: int
    scale: float  # real value = integer / scale (1.0 for counts)
    l2_sensitivity: float  # the most one customer can move this slice (L2)
    linf_bound: int  # the most one customer adds to one coordinate
    rho: float  # this part's share of the job's zCDP budget
    sigma: float  # discrete-Gaussian sigma of the noise in the SUM of survivors_t shares

    @property
    def length(self) -> int:
        return self.stop - self.start

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start,
            "stop": self.stop,
            "scale": self.scale,
            "l2_sensitivity": self.l2_sensitivity,
            "linf_bound": self.linf_bound,
            "rho": self.rho,
            "sigma": self.sigma,
        }


def _json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class VectorPlan:
    """What a round's vector holds and how it is noised; equal on every node and the coordinator."""

    analysis: str
    dataset: str
    fields: tuple[str, ...]  # fields touched (egress ledger and policy)
    length: int
    parts: tuple[VectorPart, ...]
    layout: Mapping[str, Any]  # group labels, bin edges, quantile levels… (tuples inside)
    epsilon: float
    delta: float
    rho: float
    survivors_t: int
    n_nodes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", MappingProxyType(dict(self.layout)))
        cursor = 0
        for part in self.parts:
            if part.start != cursor or part.stop <= part.start:
                raise InvalidRequest("vector parts must be contiguous, non-empty and in order")
            cursor = part.stop
        if cursor != self.length:
            raise InvalidRequest("vector parts must cover the whole vector")

    def part(self, name: str) -> VectorPart:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for results and the egress ledger."""
        return {
            "analysis": self.analysis,
            "dataset": self.dataset,
            "fields": list(self.fields),
            "length": self.length,
            "parts": [p.as_dict() for p in self.parts],
            "layout": _json(self.layout),
            "mechanism": MECHANISM,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rho": self.rho,
            "survivors_t": self.survivors_t,
            "n_nodes": self.n_nodes,
        }


def sigma_for(
    *, rho: float, l1: float, l2: float, survivors_t: int, dim: int, linf: float | None = None
) -> float:
    """Least ``sigma_total`` whose sum of ``t`` shares ``N_Z(0, σ²/t)^dim`` is ``rho``-zCDP.

    Calibrated by the tight accountant of the exact sum (``dp.ddg.ddg_sigma``: exact pmf and Rényi
    divergences, with the KLS 2021 bound as a fallback), to a relative precision of 1e-4 and on
    the side that holds; cached, so every node and the coordinator pay for it once per key.
    ``linf`` defaults to ``l1``. ``dim`` only counts through the coordinates a shift can touch.
    """
    if not math.isfinite(rho) or rho <= 0:
        raise DpParameterError("a part's rho must be a positive finite number")
    return ddg_sigma(rho=rho, survivors_t=survivors_t, l1=l1, l2=l2, linf=linf, dim=dim)


def make_part(
    name: str, *, start: int, stop: int, scale: float, linf_bound: int, rho: float, survivors_t: int
) -> VectorPart:
    """A part where each customer touches exactly one coordinate: L1 = L2 = L∞ = ``linf_bound``."""
    bound = float(linf_bound)
    sigma = sigma_for(rho=rho, l1=bound, l2=bound, survivors_t=survivors_t, dim=stop - start)
    return VectorPart(
        name=name,
        start=start,
        stop=stop,
        scale=scale,
        l2_sensitivity=bound,
        linf_bound=linf_bound,
        rho=rho,
        sigma=sigma,
    )


def _check_vector(plan: VectorPlan, vector: npt.ArrayLike) -> IntArray:
    vec = np.asarray(vector)
    if vec.dtype.kind not in "iu" or vec.shape != (plan.length,):
        raise InvalidRequest("the vector must be an integer array of the plan's length")
    return vec.astype(np.int64)


def add_noise(plan: VectorPlan, vector: npt.ArrayLike, *, rng: np.random.Generator) -> IntArray:
    """This node's noise share, per part: ``N_Z(0, σ²/t)`` so any ``t`` shares carry ``N_Z(0, σ²)``."""
    vec = _check_vector(plan, vector)
    if np.may_share_memory(vec, vector):
        vec = vec.copy()  # never write into the caller's array (the check usually copies already)
    for part in plan.parts:
        vec[part.start : part.stop] = distributed_gaussian_share(
            vec[part.start : part.stop], sigma_total=part.sigma, survivors_t=plan.survivors_t, rng=rng
        )
    return vec


def _noise_plan(plan: VectorPlan, part: VectorPart) -> NoisePlan:
    return NoisePlan(
        mechanism=Mechanism.DISCRETE_GAUSSIAN,
        survivors_t=plan.survivors_t,
        n_nodes=plan.n_nodes,
        sigma_total=part.sigma,
    )


def bits_for(plan: VectorPlan, *, max_customers: int) -> int:
    """Smallest modular width (<= 64) keeping P(any coordinate of the sum wraps) <= 2^-40.

    ``max_customers`` is the declared per-node cap (a public policy figure, never a real count).
    Raises ``DpParameterError`` when even 64 bits are not enough (fail closed).
    """
    if isinstance(max_customers, bool) or not isinstance(max_customers, int) or max_customers < 1:
        raise DpParameterError("max_customers must be a positive integer")
    target = _WRAP_TARGET / len(plan.parts)
    bits = 8
    for part in plan.parts:
        # linf_bound is already in integer units (stochastic rounding included), hence scale 1.
        max_abs = max_abs_node_for(linf_bound=part.linf_bound, scale=1.0, max_customers=max_customers)
        width = choose_bits(
            plan=_noise_plan(plan, part), max_abs_node=max_abs, dim=part.length, target=target
        )
        bits = max(bits, width.bits)
    return bits


def encode(vector_int: npt.ArrayLike, *, bits: int) -> npt.NDArray[np.uint64]:
    """Signed int64 -> Z_2^bits as a uint64 array. Raises ``QuantisationOverflow`` if out of range."""
    # Straight into uint64 words: one cast and one mask, no uint32 intermediate.
    return np.asarray(_dp_encode_words(vector_int, bits=bits, word=np.uint64), dtype=np.uint64)


def decode(total: npt.ArrayLike, *, bits: int) -> IntArray:
    """Z_2^bits (any unsigned array) -> signed int64."""
    return _dp_decode(total, bits=bits)


def half_width(plan: VectorPlan, part: VectorPart, *, summands: int) -> float:
    """95% half-width of the noise on one coordinate of ``part`` in VALUE units (÷ scale).

    The noise is integer-valued in integer units, so an interval of half-width h covers it exactly
    when |noise| <= floor(h): rounding h up to a whole unit keeps coverage at or above 95% (1.96 sd
    of a count's noise of sd 9.6 would otherwise cover only |noise| <= 18, about 94.6%).
    """
    half = interval95(Mechanism.DISCRETE_GAUSSIAN, _noise_plan(plan, part).as_params(summands))
    return math.ceil(half) / part.scale


def variance(plan: VectorPlan, part: VectorPart, *, summands: int) -> float:
    """Variance of the noise on one coordinate of ``part`` in VALUE units squared."""
    return _noise_plan(plan, part).variance_of_sum(summands) / part.scale**2


def check_total(plan: VectorPlan, total: npt.ArrayLike, *, summands: int) -> IntArray:
    """Validate the decoded noisy sum and its number of shares before releasing anything."""
    if isinstance(summands, bool) or not isinstance(summands, int):
        raise InvalidRequest("summands must be an integer")
    if not plan.survivors_t <= summands <= plan.n_nodes:
        raise InvalidRequest("summands must be between survivors_t and n_nodes")
    return _check_vector(plan, total)


def estimate(value: float, half: float) -> dict[str, Any]:
    return {"value": float(value), "ci95": [float(value - half), float(value + half)]}


def header(plan: VectorPlan, *, summands: int, min_cohort_size: int) -> dict[str, Any]:
    """The common fields of every result document."""
    if isinstance(min_cohort_size, bool) or not isinstance(min_cohort_size, int) or min_cohort_size < 0:
        raise InvalidRequest("min_cohort_size must be a non-negative integer")
    return {
        "analysis": plan.analysis,
        "dataset": plan.dataset,
        "field": plan.layout.get("field"),
        "group_by": plan.layout.get("group_by"),
        "epsilon": plan.epsilon,
        "delta": plan.delta,
        "rho": plan.rho,
        "mechanism": MECHANISM,
        "noise": {p.name: {"sigma": p.sigma, "scale": p.scale} for p in plan.parts},
        "cells": [],
        "min_cohort_size": min_cohort_size,
        "summands": summands,
    }


# --- reading the job spec (identical on every node and on the coordinator; no data) -----------

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


def bounds(spec: JobSpec) -> tuple[float, float]:
    lower, upper = number_param(spec, "lower"), number_param(spec, "upper")
    if not lower < upper:
        raise InvalidRequest("parameter 'lower' must be below parameter 'upper'")
    return lower, upper


def field_schema(fields: Mapping[str, FieldSchema], name: str) -> FieldSchema:
    """The schema of a field the job touches; unknown and core-sensitive fields are vetoed."""
    schema = fields.get(name)
    if schema is None:
        raise PolicyViolation(f"field {name!r} is not in the dataset's schema", code="policy.unknown_field")
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
        """Group of each customer; values outside the list and missing values go to ``other``."""
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


def rows(data: Mapping[str, Any], plan: VectorPlan) -> int:
    """Customers in ``data``: every array holds one entry per customer.

    With no field to read (``count`` without ``group_by``), ``data`` must still hold one array of
    the dataset (any field): only its length is read, never its values.
    """
    names = plan.fields or tuple(data)
    if not names:
        raise InvalidRequest("data must hold at least one array so its customers can be counted")
    lengths = {len(data[name]) for name in names}
    if len(lengths) != 1:
        raise InvalidRequest("every field must hold one entry per customer")
    return lengths.pop()


def numeric(data: Mapping[str, Any], name: str) -> FloatArray:
    return np.asarray(data[name], dtype=np.float64)


def grouping_of(plan: VectorPlan) -> Grouping:
    """The plan's grouping, as ``grouping`` built it from the spec."""
    return Grouping(field=plan.layout.get("group_by"), labels=tuple(plan.layout["groups"]))


def group_index(plan: VectorPlan, data: Mapping[str, Any]) -> IntArray:
    """Group of every customer in ``data`` (all in group 0 without ``group_by``)."""
    groups = grouping_of(plan)
    count = rows(data, plan)  # also checks that every field holds one entry per customer
    if groups.field is None:
        return np.zeros(count, dtype=np.int64)
    return groups.index(data)


def count_estimate(value: float, half: float, *, min_cohort_size: int) -> tuple[dict[str, Any] | None, bool]:
    """A noisy count and whether its cell is suppressed (noisy count below the cohort floor).

    The rule reads only DP output, so it is post-processing and costs no privacy budget.
    """
    suppressed = value < min_cohort_size
    return (None if suppressed else estimate(value, half)), suppressed
