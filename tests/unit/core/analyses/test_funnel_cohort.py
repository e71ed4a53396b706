"""funnel and cohort_retention: known answers, a customer with 1000 events counted once per
stage, releases without noise, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.core.analyses import cohort_retention, funnel
from tessera.core.analyses import vector as v
from tessera.core.analyses.customer_table import day_param
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

EVENTS = {
    "customer": FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE),
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "event_type": FieldSchema("event_type", "category", Tier.NON_SENSITIVE),
    "email": FieldSchema("email", "string", Tier.CORE_SENSITIVE),
}
STEPS: dict[str, ParamValue] = {"steps": ("visit", "cart", "buy"), "window_days": 7.0}
RNG = np.random.default_rng(0)


def _plan(module: object, params: dict[str, ParamValue]) -> v.VectorPlan:
    spec = JobSpec(analysis=module.INFO.name, dataset="events", params=params, epsilon=1.0, delta=1e-6)  # type: ignore[attr-defined]
    plan: v.VectorPlan = module.plan(spec, EVENTS, survivors_t=3, n_nodes=3)  # type: ignore[attr-defined]
    return plan


def _events(rows: list[tuple[int, float, str | None]]) -> dict[str, np.ndarray]:
    return {
        "customer": np.array([r[0] for r in rows], dtype=np.int64),
        "time": np.array([r[1] for r in rows], dtype=np.float64),
        "event_type": np.array([r[2] for r in rows], dtype=object),
    }


FUNNEL_ROWS = [
    (1, 0.0, "visit"), (1, 1.0, "cart"), (1, 2.0, "buy"),  # 1: all three
    (2, 5.0, "cart"), (2, 6.0, "visit"), (2, 7.0, "buy"),  # 2: cart before visit -> stage 1
    (3, 0.0, "visit"), (3, 3.0, "cart"), (3, 20.0, "buy"),  # 3: buy outside the window -> 2
    (4, 0.0, "visit"), (4, 30.0, "visit"), (4, 31.0, "cart"), (4, 32.0, "buy"),  # 4: later start -> 3
    (5, 1.0, "buy"), (5, 2.0, None),  # 5: never visits -> 0
    (6, 4.0, "buy"), (6, 4.0, "cart"), (6, 4.0, "visit"),  # 6: equal times, row order -> 1
    (-1, 0.0, "visit"),  # names no customer
]  # fmt: skip


def test_funnel_levels_known_answers() -> None:
    plan = _plan(funnel, STEPS)
    data = _events(FUNNEL_ROWS)
    assert funnel.levels(plan, data).tolist() == [3, 1, 2, 3, 0, 1]
    assert funnel.local_vector(plan, data, rng=RNG).tolist() == [2, 1, 2]
    part = plan.part("levels")
    assert (part.linf_bound, part.l1_sensitivity, part.l2_sensitivity) == (1, 1, 1)


def test_a_customer_with_1000_events_counts_once_per_stage() -> None:
    plan = _plan(funnel, STEPS)
    rng = np.random.default_rng(4)
    kinds = rng.choice(["visit", "cart", "buy", "other"], 1000)
    whale = [(9, float(t), str(k)) for t, k in zip(np.sort(rng.uniform(0, 50, 1000)), kinds, strict=True)]
    before = funnel.local_vector(plan, _events(FUNNEL_ROWS), rng=RNG)
    after = funnel.local_vector(plan, _events(FUNNEL_ROWS + whale), rng=RNG)
    assert (after - before).tolist() == [0, 0, 1]  # one customer, at its highest stage only
    doc = funnel.release(plan, after, summands=3, min_cohort_size=0)
    assert [c["count"]["value"] for c in doc["cells"]] == [6, 4, 3]  # one per stage reached


def test_funnel_window_and_period() -> None:
    data = _events(FUNNEL_ROWS)
    wide = _plan(funnel, {**STEPS, "window_days": 30.0})
    assert funnel.levels(wide, data).tolist() == [3, 1, 3, 3, 0, 1]  # customer 3's buy now counts
    # Only events from day 3 on (customers 2, 3, 4, 6 keep some): 3 loses its visit.
    since = _plan(funnel, {**STEPS, "since": "1970-01-04"})
    assert funnel.levels(since, data).tolist() == [1, 0, 3, 1]


def test_funnel_release_stage_counts_and_conversions() -> None:
    plan = _plan(funnel, STEPS)
    doc = funnel.release(plan, np.array([100, 50, 50]), summands=3, min_cohort_size=20)
    counts = [c["count"]["value"] for c in doc["cells"]]
    assert counts == [200, 100, 50]
    assert doc["cells"][1]["conversion_from_first"]["value"] == pytest.approx(0.5)
    assert doc["cells"][2]["conversion_from_previous"]["value"] == pytest.approx(0.5)
    assert doc["cells"][2]["conversion_from_first"]["value"] == pytest.approx(0.25)
    sd = [c["count"]["ci95"][1] - c["count"]["value"] for c in doc["cells"]]
    assert sd[0] > sd[1] > sd[2]  # later stages add fewer level noises
    small = funnel.release(plan, np.array([100, 50, 5]), summands=3, min_cohort_size=20)
    assert small["cells"][2]["suppressed"] and small["cells"][2]["conversion_from_first"] is None


COHORT: dict[str, ParamValue] = {"first_month": "1997-01", "cohorts": 3, "months": 4}


def _day(text: str) -> float:
    return day_param(JobSpec(analysis="x", params={"d": text}), "d")


def test_cohort_retention_known_answers() -> None:
    rows = [
        (1, _day("1997-01-05"), "t"), (1, _day("1997-02-10"), "t"), (1, _day("1997-04-01"), "t"),
        (2, _day("1997-02-28"), "t"), (2, _day("1997-03-01"), "t"),
        (3, _day("1996-12-31"), "t"), (3, _day("1997-01-02"), "t"),  # cohort before the first month
        (4, _day("1997-03-15"), "t"), (4, _day("1998-01-01"), "t"),  # beyond the horizon
        (5, float("nan"), "t"),
    ]  # fmt: skip
    plan = _plan(cohort_retention, COHORT)
    got = cohort_retention.local_vector(plan, _events(rows), rng=RNG).reshape(3, 4).tolist()
    assert got == [[1, 1, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0]]
    part = plan.part("count")
    assert (part.linf_bound, part.l1_sensitivity, part.l2_sensitivity) == (1, 4, 2)
    whale = [(7, _day("1997-01-01") + i / 40, "t") for i in range(1000)]  # 1000 rows in January
    more = cohort_retention.local_vector(plan, _events(rows + whale), rng=RNG).reshape(3, 4)
    assert (more - np.array(got)).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_cohort_retention_release() -> None:
    plan = _plan(cohort_retention, COHORT)
    total = np.array([200, 100, 50, 10, 100, 80, 0, 0, 5, 5, 5, 5])
    doc = cohort_retention.release(plan, total, summands=3, min_cohort_size=20)
    cells = {(c["cohort"], c["months_since"]): c for c in doc["cells"]}
    assert cells[("1997-01", 1)]["retention"]["value"] == pytest.approx(0.5)
    assert cells[("1997-01", 0)]["retention"]["value"] == 1.0
    assert cells[("1997-02", 1)]["retention"]["value"] == pytest.approx(0.8)
    assert cells[("1997-01", 3)]["suppressed"] and cells[("1997-01", 3)]["retention"] is None
    assert cells[("1997-03", 0)]["suppressed"] and cells[("1997-03", 1)]["retention"] is None


@pytest.mark.parametrize(
    ("module", "params", "error", "fragment"),
    [
        (funnel, {**STEPS, "steps": ("visit",)}, InvalidRequest, "2 to"),
        (funnel, {**STEPS, "steps": ("visit", "visit")}, InvalidRequest, "must not repeat"),
        (funnel, {**STEPS, "window_days": 0.0}, InvalidRequest, "above 0"),
        (funnel, {**STEPS, "event_field": "email"}, PolicyViolation, "core_sensitive"),
        (funnel, {**STEPS, "time_field": "nope"}, PolicyViolation, "not in the dataset"),
        (funnel, {**STEPS, "since": "1998-01-01", "until": "1997-01-01"}, InvalidRequest, "before"),
        (cohort_retention, {**COHORT, "first_month": "1997-13"}, InvalidRequest, "YYYY-MM"),
        (cohort_retention, {**COHORT, "months": 0}, InvalidRequest, "'months'"),
        (cohort_retention, {**COHORT, "time_field": "event_type"}, InvalidRequest, "date or numeric"),
        (cohort_retention, {**COHORT, "time_field": "email"}, PolicyViolation, "core_sensitive"),
    ],
)
def test_refusals(
    module: object, params: dict[str, ParamValue], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        _plan(module, params)


def _brute_force_level(events: list[tuple[float, int, str]], steps: tuple[str, ...], window: float) -> int:
    """Every start, greedy earliest next step (events sorted by time, then row)."""
    best = 0
    for i, (t0, _, kind) in enumerate(events):
        if kind != steps[0]:
            continue
        level, j = 1, i + 1
        while level < len(steps) and j < len(events):
            t, _, k = events[j]
            if t - t0 > window:
                break
            if k == steps[level]:
                level += 1
            j += 1
        best = max(best, level)
    return best


def test_funnel_levels_match_a_brute_force_reference() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    who, when = rng.integers(0, 200, n), np.round(rng.uniform(0, 60, n), 1)
    what = rng.choice(["visit", "cart", "buy", "x"], n)
    rows = [(int(c), float(t), str(k)) for c, t, k in zip(who, when, what, strict=True)]
    plan = _plan(funnel, STEPS)
    got = funnel.levels(plan, _events(rows))
    people = sorted({r[0] for r in rows if r[2] in STEPS["steps"]})  # type: ignore[operator]
    expected = []
    for person in people:
        mine = sorted((t, i, k) for i, (c, t, k) in enumerate(rows) if c == person)
        expected.append(_brute_force_level(mine, ("visit", "cart", "buy"), 7.0))
    assert got.tolist() == expected
