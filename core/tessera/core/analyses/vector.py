"""Shared machinery of the one-round DP analyses: the vector plan, noise shares, coding, release.

A DP analysis is ONE secure-aggregation round. A ``VectorPlan`` says, without touching data, how
every node lays out its int64 vector: contiguous ``VectorPart`` slices, each with its fixed-point
scale, its per-customer bounds and its own discrete-Gaussian noise. The plan is a pure function of
the job spec, the field schemas and the round's ``(survivors_t, n_nodes)``, so the coordinator and
every node compute the same plan independently (``params`` reads the spec; ``contribution`` reads
a node's rows per customer).

Privacy (add/remove-one-customer adjacency, zCDP): the job's ``(ε, δ)`` becomes ``ρ = rho_for(ε,
δ)``; ρ is split across the parts (parts compose by adding their ρ). Each part declares what ONE
customer — with all of its rows — can change in it, in integer units with stochastic rounding
included: ``l1_sensitivity``, ``l2_sensitivity`` and ``linf_bound`` (one coordinate; it also sizes
the modulus). A part's ``sigma`` is the least σ whose sum of ``survivors_t`` shares of
``N_Z(0, σ²/t)`` meets the part's ρ for those sensitivities under the tight accountant of the
exact sum (``dp.ddg.ddg_rho``; with small shares the sum's real sd is well below ``sigma``).
Sums that hold more shares only carry more noise.
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
)
from tessera.core.dp import decode as _dp_decode
from tessera.core.dp import encode_words as _dp_encode_words
from tessera.core.dp.ddg import ddg_sigma
from tessera.core.errors import InvalidRequest
from tessera.core.types import Stage

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
    l1_sensitivity: float  # the most one customer (all of its rows) can move this slice, in L1
    l2_sensitivity: float  # the same in L2
    linf_bound: int  # the most one customer adds to one coordinate
    rho: float  # this part's share of the job's zCDP budget
    sigma: float  # discrete-Gaussian sigma of the noise in the SUM of survivors_t shares

    def __post_init__(self) -> None:
        # Norms of one vector always satisfy L∞ <= L2 <= L1 (relative slack for sqrt rounding).
        if not 0 <= self.linf_bound <= self.l2_sensitivity * (1 + 1e-12) <= self.l1_sensitivity * (1 + 1e-12):
            raise InvalidRequest("a part's bounds must satisfy L∞ <= L2 <= L1")

    @property
    def length(self) -> int:
        return self.stop - self.start

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start,
            "stop": self.stop,
            "scale": self.scale,
            "l1_sensitivity": self.l1_sensitivity,
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
    name: str,
    *,
    start: int,
    stop: int,
    scale: float,
    linf_bound: int,
    rho: float,
    survivors_t: int,
    l1: float | None = None,
    l2: float | None = None,
) -> VectorPart:
    """A part whose noise meets ``rho`` for one customer's L1 and L2 (integer units).

    ``l1`` and ``l2`` default to ``linf_bound``: a customer that touches one coordinate only.
    """
    l1_bound = float(linf_bound if l1 is None else l1)
    l2_bound = float(linf_bound if l2 is None else l2)
    sigma = sigma_for(
        rho=rho, l1=l1_bound, l2=l2_bound, linf=float(linf_bound), survivors_t=survivors_t, dim=stop - start
    )
    return VectorPart(
        name=name,
        start=start,
        stop=stop,
        scale=scale,
        l1_sensitivity=l1_bound,
        l2_sensitivity=l2_bound,
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
        "contribution": dict(plan.layout.get("contribution") or {}),
        "cells": [],
        "min_cohort_size": min_cohort_size,
        "summands": summands,
    }


def count_estimate(value: float, half: float, *, min_cohort_size: int) -> tuple[dict[str, Any] | None, bool]:
    """A noisy count and whether its cell is suppressed (noisy count below the cohort floor).

    The rule reads only DP output, so it is post-processing and costs no privacy budget.
    """
    suppressed = value < min_cohort_size
    return (None if suppressed else estimate(value, half)), suppressed
