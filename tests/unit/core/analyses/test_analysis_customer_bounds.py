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


# --- programs of many rounds: every round's plan, with joined customers.<field> attributes -----

PROGRAM_FIELDS = {
    "customer": FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE),
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "amount": FieldSchema("amount", "float", Tier.GENERAL_SENSITIVE),
    "customers.id": FieldSchema("id", "customer_key", Tier.CORE_SENSITIVE),
    "customers.churned": FieldSchema("churned", "bool", Tier.GENERAL_SENSITIVE),
    "customers.region": FieldSchema("region", "category", Tier.NON_SENSITIVE),
    "customers.tenure": FieldSchema("tenure", "float", Tier.GENERAL_SENSITIVE),
}
CUSTOMER_FIELDS = {
    "region": FieldSchema("region", "category", Tier.NON_SENSITIVE),
    "tenure": FieldSchema("tenure", "float", Tier.GENERAL_SENSITIVE),
    "spend": FieldSchema("spend", "float", Tier.GENERAL_SENSITIVE),
}
RFM_SPEC: dict[str, ParamValue] = {"reference_date": "1970-07-01", "monetary_max": 500.0, "bins": 8}
BOUNDARIES = {
    "recency": [3.0, 10.0, 30.0, 90.0],
    "frequency": [1.0, 1.0, 2.0, 4.0],
    "monetary": [5, 20, 50, 200],
}
KM_RFM: dict[str, ParamValue] = {
    "features": ("rfm.recency", "rfm.monetary", "customers.tenure"),
    "lower": (0.0, 0.0, 0.0),
    "upper": (365.0, 1000.0, 60.0),
    "log_features": ("rfm.monetary",),
    "reference_date": "1970-07-01",
    "k": 3,
    "iterations": 2,
}
KM_CUSTOMERS: dict[str, ParamValue] = {
    "features": ("tenure", "spend"),
    "lower": (0.0, 0.0),
    "upper": (60.0, 500.0),
    "k": 4,
    "iterations": 1,
}
_MEAN3 = {"mean": [50.0, 3.0, 20.0], "sd": [30.0, 1.0, 10.0]}
_CENTROIDS3 = [[-1.0, 0.0, 0.5], [0.0, 1.0, -2.0], [2.0, -1.0, 0.0]]
_MEAN2 = {"mean": [20.0, 100.0], "sd": [10.0, 80.0]}
CHURN_RFM: dict[str, ParamValue] = {
    "label": "customers.churned",
    "features": ("rfm.recency", "rfm.monetary", "customers.tenure", "customers.region"),
    "lower": (0.0, 0.0, 0.0),
    "upper": (365.0, 1000.0, 60.0),
    "log_features": ("rfm.monetary",),
    "categories": ("customers.region=n", "customers.region=s"),
    "reference_date": "1970-07-01",
    "rounds": 2,
    "holdout": 0.4,
}
CHURN_CUSTOMERS: dict[str, ParamValue] = {
    "label": "spend",  # any number: above 0.5 is a churner
    "features": ("tenure", "region"),
    "lower": (0.0,),
    "upper": (60.0,),
    "categories": ("region=n", "region=s", "region=e"),
    "rounds": 1,
    "holdout": 0.5,
}
CHURN_AFTER: dict[str, ParamValue] = {
    "label": "rfm.no_purchase_after",
    "label_end": "1970-09-01",
    "features": ("rfm.frequency", "customers.tenure"),
    "lower": (0.0, 0.0),
    "upper": (50.0, 60.0),
    "reference_date": "1970-07-01",
    "rounds": 1,
}
_CHURN_AFTER = {
    "mean": [3.0, 20.0],
    "sd": [1.0, 10.0],
    "kept": [],
    "w": [0.5, -1.0, 2.0],
    "prep": {"customers": 10.0, "churners": 3.0, "category_counts": []},
}
_CHURN3 = {
    **_MEAN3,
    "kept": [["n", "s"]],
    "w": [-1.0, 0.5, -2.0, 0.3, 1.0, -0.5],
    "prep": {"customers": 10.0, "churners": 3.0, "category_counts": [[1.0, 2.0, 3.0]]},
}
_CHURN1 = {
    "mean": [20.0],
    "sd": [10.0],
    "kept": [["n", "e"]],
    "w": [0.2, -1.5, 2.0, 0.7],
    "prep": {"customers": 10.0, "churners": 3.0, "category_counts": [[1.0, 2.0, 3.0, 4.0]]},
}
# (analysis, dataset, params, round, public input)
PROGRAM_ROUNDS: list[tuple[str, str, dict[str, ParamValue], int, dict[str, Any]]] = [
    ("rfm_segments", "transactions", RFM_SPEC, 1, {}),
    ("rfm_segments", "transactions", RFM_SPEC, 2, {"boundaries": BOUNDARIES}),
    ("rfm_segments", "transactions",
     {**RFM_SPEC, "churn_field": "customers.churned", "group_by": "customers.region", "groups": ("n", "s")},
     2, {"boundaries": BOUNDARIES}),
    ("kmeans", "transactions", KM_RFM, 1, {}),
    ("kmeans", "transactions", KM_RFM, 2, _MEAN3),
    ("kmeans", "transactions", KM_RFM, 3, {**_MEAN3, "centroids": _CENTROIDS3}),
    ("kmeans", "customers", KM_CUSTOMERS, 1, {}),
    ("kmeans", "customers", KM_CUSTOMERS, 2, _MEAN2),
    ("kmeans", "customers", {**KM_CUSTOMERS, "init": "random"}, 2,
     {**_MEAN2, "centroids": [[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0], [2.5, -2.5]]}),
    ("mean_descent", "transactions", {"field": "amount", "lower": 0.0, "upper": 100.0, "rounds": 3}, 2,
     {"theta": [40.0]}),
    ("clv_fit", "transactions", {"calibration_end": "1970-06-01"}, 1, {}),  # {}: the program's start
    ("churn_model", "transactions", CHURN_RFM, 1, {}),
    ("churn_model", "transactions", CHURN_RFM, 2, {**_CHURN3, "clip": 1.5}),
    ("churn_model", "transactions", CHURN_RFM, 3, {**_CHURN3, "clip": 0.01}),
    ("churn_model", "transactions", CHURN_RFM, 4, _CHURN3),
    ("churn_model", "transactions", CHURN_AFTER, 1, {}),
    ("churn_model", "transactions", CHURN_AFTER, 2, {**_CHURN_AFTER, "clip": 0.7}),
    ("churn_model", "transactions", CHURN_AFTER, 3, _CHURN_AFTER),
    ("churn_model", "customers", CHURN_CUSTOMERS, 1, {}),
    ("churn_model", "customers", CHURN_CUSTOMERS, 2, {**_CHURN1, "clip": 3.0}),
    ("churn_model", "customers", CHURN_CUSTOMERS, 3, _CHURN1),
]  # fmt: skip


def test_every_registered_program_has_round_cases() -> None:
    from tessera.core.analyses.registry import PROGRAMS

    many = {name for name in PROGRAMS if name not in VECTOR_ANALYSES}
    assert many == {case[0] for case in PROGRAM_ROUNDS}


def _program_plan(case: int) -> v.VectorPlan:
    from tessera.core.analyses.registry import get_program

    name, dataset, params, round_no, public = PROGRAM_ROUNDS[case]
    spec = JobSpec(analysis=name, dataset=dataset, params=params, epsilon=1.0, delta=1e-6)
    fields = PROGRAM_FIELDS if dataset == "transactions" else CUSTOMER_FIELDS
    program = get_program(name)
    public = public or dict(program.start(spec))
    return program.plan(spec, fields, survivors_t=2, n_nodes=3, round_no=round_no, public=public)


day = st.one_of(
    st.just(float("nan")),
    st.sampled_from([float("inf"), float("-inf"), 0.0, 181.0, 181.5, 182.0, 1e9]),
    st.floats(min_value=-400, max_value=400, allow_nan=False),
)
fact = st.tuples(st.integers(0, 6), day, amount)
profile = st.tuples(
    st.sampled_from([True, False, None]), st.sampled_from(["n", "s", "e", None]), amount, amount
)


def _program_table(
    facts: list[tuple[int, float, float]], profiles: dict[int, tuple[Any, Any, float, float]]
) -> dict[str, Any]:
    ids = sorted(profiles)
    return {
        "customer": np.array([f[0] for f in facts], dtype=np.int64),
        "time": np.array([f[1] for f in facts], dtype=np.float64),
        "amount": np.array([f[2] for f in facts], dtype=np.float64),
        "customers.id": np.array(ids, dtype=np.int64),
        "customers.churned": np.array(
            [np.nan if profiles[i][0] is None else float(profiles[i][0]) for i in ids]
        ),
        "customers.region": np.array([profiles[i][1] for i in ids], dtype=object),
        "customers.tenure": np.array([profiles[i][2] for i in ids], dtype=np.float64),
    }


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.integers(0, len(PROGRAM_ROUNDS) - 1),
    others=st.lists(fact, max_size=30),
    profiles=st.lists(profile, min_size=8, max_size=8),
    newcomer=st.lists(st.tuples(day, amount), min_size=0, max_size=10),
    whale=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    placement=st.randoms(use_true_random=False),
)
def test_one_customer_moves_every_round_of_every_program_within_its_bounds(
    case: int,
    others: list[tuple[int, float, float]],
    profiles: list[tuple[Any, Any, float, float]],
    newcomer: list[tuple[float, float]],
    whale: bool,
    seed: int,
    placement: Any,
) -> None:
    from tessera.core.analyses.registry import get_program

    plan = _program_plan(case)
    program = get_program(plan.analysis)
    if plan.dataset == "transactions":
        if whale and newcomer:
            newcomer = newcomer * (1000 // len(newcomer) + 1)
        rows = list(others)
        for item in [(7, *r) for r in newcomer]:
            rows.insert(placement.randint(0, len(rows)), item)
        # The newcomer (id 7) brings its rows AND its row of the customers dataset.
        before = _program_table(others, dict(enumerate(profiles[:7])))
        after = _program_table(rows, dict(enumerate(profiles)))
    else:  # one row per customer: the newcomer is one more row, last
        table = [(p[0], p[1], p[2], p[3]) for p in profiles]

        def columns(n: int) -> dict[str, Any]:
            return {
                "region": np.array([t[1] for t in table[:n]], dtype=object),
                "tenure": np.array([t[2] for t in table[:n]], dtype=np.float64),
                "spend": np.array([t[3] for t in table[:n]], dtype=np.float64),
            }

        before, after = columns(7), columns(8)
    v_before = program.local_vector(plan, before, rng=np.random.default_rng(seed))
    v_after = program.local_vector(plan, after, rng=np.random.default_rng(seed))
    assert v_before.dtype == np.int64 and v_before.shape == (plan.length,)
    diff = (v_after - v_before).astype(np.float64)
    for part in plan.parts:
        piece = diff[part.start : part.stop]
        assert np.max(np.abs(piece)) <= part.linf_bound
        assert np.abs(piece).sum() <= part.l1_sensitivity + 1e-9
        assert np.linalg.norm(piece) <= part.l2_sensitivity * (1 + 1e-12)
