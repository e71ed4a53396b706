"""The customer is the unit of privacy: for EVERY registered DP analysis, adding one customer with
ALL of its rows moves each part of the node's vector by at most the part's declared L1, L2 and L∞
(integer units, before noise) — over one-row-per-customer data and over transactions/events with
many rows per customer, missing and extreme values, and a customer with a thousand rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core.analyses import vector as v
from tessera.core.analyses.registry import VECTOR_ANALYSES
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

CHANNELS = ("web", "app", "store")
KEYED = {
    "customer": FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE),
    "amount": FieldSchema("amount", "float", Tier.GENERAL_SENSITIVE),
    "channel": FieldSchema("channel", "category", Tier.NON_SENSITIVE),
    "kind": FieldSchema("kind", "category", Tier.NON_SENSITIVE),
}
ONE_ROW = {name: f for name, f in KEYED.items() if name != "customer"}
SPEND: dict[str, ParamValue] = {"field": "amount", "lower": -50.0, "upper": 300.0}
BY_CHANNEL: dict[str, ParamValue] = {"group_by": "channel", "groups": CHANNELS}
# Every registered analysis must list its cases here: a new analysis fails the coverage test below
# until its author says how it bounds a customer.
CASES: dict[str, list[dict[str, ParamValue]]] = {
    "count": [
        {},
        BY_CHANNEL,
        {**BY_CHANNEL, "max_groups_per_customer": 3},
        {"max_rows_per_customer": 5},
        {**BY_CHANNEL, "max_rows_per_customer": 7},
    ],
    "sum": [
        SPEND,
        {**SPEND, **BY_CHANNEL, "max_groups_per_customer": 2},
        {**SPEND, "per_customer": "mean", **BY_CHANNEL},
        {"per_customer": "count", "lower": 0.0, "upper": 20.0, **BY_CHANNEL, "max_groups_per_customer": 4},
        {**SPEND, "per_customer": "count"},
    ],
    "mean": [
        SPEND,
        {**SPEND, **BY_CHANNEL, "max_groups_per_customer": 4},
        {"per_customer": "count", "lower": 0.0, "upper": 50.0},
    ],
    "histogram": [
        {**SPEND, "bins": 6, **BY_CHANNEL, "max_groups_per_customer": 2},
        {**SPEND, "bins": 5, "max_rows_per_customer": 4},
        {**SPEND, "bins": 5, "per_customer": "mean"},
        {"per_customer": "count", "lower": 0.0, "upper": 50.0, "bins": 10},
        {"field": "kind", "categories": ("a", "b"), "max_rows_per_customer": 3, **BY_CHANNEL},
        {"field": "kind", "categories": ("a", "b"), **BY_CHANNEL, "max_groups_per_customer": 3},
    ],
    "quantiles": [
        {**SPEND, "bins": 20},
        {**SPEND, "bins": 20, "max_rows_per_customer": 3, **BY_CHANNEL},
        {"per_customer": "count", "lower": 0.0, "upper": 30.0, "bins": 15, **BY_CHANNEL},
    ],
    # ``amount`` stands in for the time (days since 1970) and ``kind`` for the event type.
    "funnel": [
        {"event_field": "kind", "time_field": "amount", "steps": ("a", "b"), "window_days": 30.0},
        {"event_field": "kind", "time_field": "amount", "steps": ("b", "a", "zz"), "window_days": 1e9},
        {"event_field": "kind", "time_field": "amount", "steps": ("a", "b"), "window_days": 5.0,
         "since": "1970-01-02", "until": "1970-08-01"},
    ],
    "cohort_retention": [
        {"time_field": "amount", "first_month": "1970-01", "cohorts": 6, "months": 4},
        {"time_field": "amount", "first_month": "1969-12", "cohorts": 1, "months": 12},
    ],
}  # fmt: skip
PLANS = [
    (name, i, keyed)
    for name in sorted(VECTOR_ANALYSES)
    for i in range(len(CASES.get(name, [])))
    for keyed in (True, False)
]


def test_every_registered_analysis_has_bound_cases() -> None:
    assert set(CASES) == set(VECTOR_ANALYSES)


def _plan(name: str, case: int, *, keyed: bool) -> v.VectorPlan:
    spec = JobSpec(
        analysis=name,
        dataset="transactions" if keyed else "customers",
        params=CASES[name][case],
        epsilon=1.0,
        delta=1e-6,
    )
    plan: v.VectorPlan = VECTOR_ANALYSES[name].plan(
        spec, KEYED if keyed else ONE_ROW, survivors_t=2, n_nodes=3
    )
    return plan


channel = st.sampled_from([*CHANNELS, "unlisted", None])
kind = st.sampled_from(["a", "b", "zz", None])
amount = st.one_of(
    st.just(float("nan")),
    st.sampled_from([float("inf"), float("-inf"), 1e308, -1e308, 0.0, 299.99, 300.0]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)
row = st.tuples(st.integers(0, 6), channel, kind, amount)


def _table(rows: list[tuple[int, str | None, str | None, float]]) -> dict[str, Any]:
    return {
        "customer": np.array([r[0] for r in rows], dtype=np.int64),
        "channel": np.array([r[1] for r in rows], dtype=object),
        "kind": np.array([r[2] for r in rows], dtype=object),
        "amount": np.array([r[3] for r in rows], dtype=np.float64),
    }


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from(PLANS),
    others=st.lists(row, max_size=40),
    newcomer=st.lists(st.tuples(channel, kind, amount), min_size=1, max_size=12),
    whale=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    placement=st.randoms(use_true_random=False),
)
def test_one_customer_with_all_its_rows_moves_each_part_within_its_declared_bounds(
    which: tuple[str, int, bool],
    others: list[tuple[int, str | None, str | None, float]],
    newcomer: list[tuple[str | None, str | None, float]],
    whale: bool,
    seed: int,
    placement: Any,
) -> None:
    name, case, keyed = which
    plan = _plan(name, case, keyed=keyed)
    module = VECTOR_ANALYSES[name]
    if keyed:
        if whale:  # a customer with a thousand rows, most of them in one channel
            newcomer = [newcomer[0]] * 900 + newcomer * (100 // len(newcomer) + 1)
        # The newcomer has the largest id, so its cells come last and a seeded generator rounds
        # everyone else identically; its rows are spread anywhere among the others'.
        rows = list(others)
        for item in [(7, *r) for r in newcomer]:
            rows.insert(placement.randint(0, len(rows)), item)
    else:  # one row per customer: the newcomer is one row, last
        others = [(i, *r[1:]) for i, r in enumerate(others)]
        rows = [*others, (len(others), *newcomer[0])]
    before = module.local_vector(plan, _table(others), rng=np.random.default_rng(seed))
    after = module.local_vector(plan, _table(rows), rng=np.random.default_rng(seed))
    assert before.dtype == np.int64 and before.shape == (plan.length,)
    diff = (after - before).astype(np.float64)
    for part in plan.parts:
        piece = diff[part.start : part.stop]
        assert np.max(np.abs(piece)) <= part.linf_bound
        assert np.abs(piece).sum() <= part.l1_sensitivity + 1e-9
        assert np.linalg.norm(piece) <= part.l2_sensitivity * (1 + 1e-12)


@pytest.mark.parametrize(("name", "case", "keyed"), PLANS)
def test_exact_is_bounded_like_the_local_vector(name: str, case: int, keyed: bool) -> None:
    """The demo's truth bounds customers exactly as the node does (same cells, no rounding)."""
    plan = _plan(name, case, keyed=keyed)
    module = VECTOR_ANALYSES[name]
    rng = np.random.default_rng(3)
    n = 3000
    data = _table(
        [
            (
                int(rng.integers(0, 300 if keyed else n)) if keyed else i,
                CHANNELS[int(rng.integers(0, 3))],
                "ab"[int(rng.integers(0, 2))],
                float(rng.gamma(2.0, 40.0)),
            )
            for i in range(n)
        ]
    )
    truth = module.exact(plan, data)
    scales = np.concatenate([np.full(p.length, p.scale) for p in plan.parts])
    noisy = module.local_vector(plan, data, rng=rng) / scales
    # Stochastic rounding moves each kept cell by less than one unit.
    assert np.all(np.abs(noisy - truth) <= n / scales + 1e-9)
    if all(p.scale == 1.0 for p in plan.parts):
        assert np.array_equal(noisy, truth)
