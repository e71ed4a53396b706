"""Node half: per-customer bounds, exact vs quantised vectors, and noiseless releases."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from _analysis_helpers import FIELDS, GROUPS, customers, spec
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.analyses import count, histogram, mean, quantiles, sums
from tessera.core.analyses import vector as v
from tessera.core.errors import InvalidRequest

PARAMS: dict[str, dict[str, Any]] = {
    "count": {"group_by": "region", "groups": GROUPS},
    "sum": {"field": "spend", "lower": -50.0, "upper": 300.0, "group_by": "region", "groups": GROUPS},
    "mean": {"field": "spend", "lower": 0.0, "upper": 300.0},
    "histogram": {
        "field": "spend",
        "lower": 0.0,
        "upper": 300.0,
        "bins": 6,
        "group_by": "region",
        "groups": GROUPS,
    },
    "quantiles": {"field": "spend", "lower": 0.0, "upper": 300.0, "bins": 30},
}
MODULES = {m.INFO.name: m for m in (count, sums, mean, histogram, quantiles)}


def _plan(name: str) -> v.VectorPlan:
    plan: v.VectorPlan = MODULES[name].plan(spec(name, PARAMS[name]), FIELDS, survivors_t=2, n_nodes=3)
    return plan


region = st.sampled_from(["north", "south", "east", None])
spend = st.one_of(st.just(float("nan")), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(MODULES)),
    rows=st.lists(st.tuples(region, spend), max_size=30),
    extra=st.tuples(region, spend),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_more_customer_moves_each_part_within_its_bounds(
    name: str, rows: list[tuple[str | None, float]], extra: tuple[str | None, float], seed: int
) -> None:
    plan = _plan(name)
    module = MODULES[name]

    def table(items: list[tuple[str | None, float]]) -> dict[str, Any]:
        return {
            "region": np.array([r for r, _ in items], dtype=object),
            "spend": np.array([s for _, s in items], dtype=np.float64),
        }

    # The new customer comes last, so a seeded generator rounds everyone else identically.
    before = module.local_vector(plan, table(rows), rng=np.random.default_rng(seed))
    after = module.local_vector(plan, table([*rows, extra]), rng=np.random.default_rng(seed))
    assert before.dtype == np.int64 and before.shape == (plan.length,)
    diff = (after - before).astype(np.float64)
    for part in plan.parts:
        piece = diff[part.start : part.stop]
        assert np.max(np.abs(piece)) <= part.linf_bound
        assert np.linalg.norm(piece) <= part.l2_sensitivity
        assert np.count_nonzero(piece) <= 1  # one customer, one cell per part


@pytest.mark.parametrize("name", sorted(MODULES))
def test_exact_is_the_dequantised_local_vector_in_expectation(name: str) -> None:
    plan = _plan(name)
    module = MODULES[name]
    data = customers(np.random.default_rng(5), 400)
    truth = module.exact(plan, data)
    rng = np.random.default_rng(6)
    scales = np.concatenate([np.full(p.stop - p.start, p.scale) for p in plan.parts])
    draws = np.stack([module.local_vector(plan, data, rng=rng) / scales for _ in range(200)])
    # Stochastic rounding is unbiased and moves each customer by < 1 unit: the mean of 200 draws
    # lies within a few standard errors (sd <= sqrt(n)/2 units per draw) of the exact vector.
    tolerance = 4 * np.sqrt(400) / 2 / np.sqrt(200) / scales + 1e-9
    assert np.all(np.abs(draws.mean(axis=0) - truth) <= tolerance)
    single = draws[0]
    assert np.all(np.abs(single - truth) <= 400 / scales)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_release_of_a_noiseless_total_reproduces_the_truth(name: str) -> None:
    plan = _plan(name)
    module = MODULES[name]
    rng = np.random.default_rng(8)
    nodes = [customers(rng, 300) for _ in range(3)]
    total = sum(module.local_vector(plan, d, rng=rng) for d in nodes)
    truth = sum(module.exact(plan, d) for d in nodes)
    doc = module.release(plan, total, summands=3, min_cohort_size=0, truth=truth)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["analysis"] == name and doc["summands"] == 3
    assert doc["mechanism"] == "distributed_discrete_gaussian"
    for cell in doc["cells"]:
        assert not cell["suppressed"]
        for stat, true_value in cell["true"].items():
            got = cell[stat]
            if stat == "quantiles":
                assert [q["value"] for q in got] == pytest.approx(true_value, abs=1e-9)
            else:
                # Only stochastic rounding separates them (well under 1e-3 of a value unit here).
                assert got["value"] == pytest.approx(true_value, abs=1e-3)
                assert got["ci95"][0] < got["ci95"][1]
    if name == "quantiles":
        assert [q["value"] for q in doc["quantiles"]] == pytest.approx(doc["true"]["quantiles"], abs=1e-9)


def test_sum_and_mean_leave_out_missing_values_and_clip() -> None:
    plan = _plan("sum")
    data = {
        "region": np.array(["north", "north", None, "mars"], dtype=object),
        "spend": np.array([1000.0, np.nan, -80.0, 10.0]),
    }
    exact = sums.exact(plan, data)
    offset = plan.layout["offset"]
    assert list(exact[:3]) == [1.0, 0.0, 2.0]  # north: one value (one missing); other: two
    assert exact[3] + offset * exact[0] == pytest.approx(300.0)  # clipped to upper
    assert exact[5] + offset * exact[2] == pytest.approx(-50.0 + 10.0)  # lower clip, "mars" -> other


def test_histogram_clamps_into_end_bins_and_maps_categories() -> None:
    plan = _plan("histogram")
    data = {"region": np.array(["south"] * 4, dtype=object), "spend": np.array([-5.0, 0.0, 300.0, 1e9])}
    counts = histogram.local_vector(plan, data, rng=np.random.default_rng(0)).reshape(3, 6)
    assert list(counts[1]) == [2, 0, 0, 0, 0, 2]
    cat = histogram.plan(
        spec("histogram", {"field": "segment", "categories": ("a", "b")}), FIELDS, survivors_t=2, n_nodes=3
    )
    data = {"segment": np.array(["a", "zz", None, "b", "a"], dtype=object)}
    assert list(histogram.local_vector(cat, data, rng=np.random.default_rng(0))) == [2, 1, 1]


def test_count_without_group_reads_only_the_length() -> None:
    plan = _plan("count")
    ungrouped = count.plan(spec("count", {}), FIELDS, survivors_t=2, n_nodes=3)
    data = customers(np.random.default_rng(1), 17)
    assert list(count.local_vector(ungrouped, {"spend": data["spend"]}, rng=np.random.default_rng(0))) == [17]
    assert count.local_vector(plan, data, rng=np.random.default_rng(0)).sum() == 17


def test_fields_of_different_lengths_are_refused() -> None:
    plan = _plan("sum")
    data = {"region": np.array(["north"], dtype=object), "spend": np.array([1.0, 2.0])}
    with pytest.raises(InvalidRequest, match="one entry per row"):
        sums.local_vector(plan, data, rng=np.random.default_rng(0))
    ungrouped = count.plan(spec("count", {}), FIELDS, survivors_t=2, n_nodes=3)
    with pytest.raises(InvalidRequest, match="at least one array"):
        count.local_vector(ungrouped, {}, rng=np.random.default_rng(0))
