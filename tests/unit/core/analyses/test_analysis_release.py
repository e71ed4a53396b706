"""Coordinator half: DP-safe suppression, and end-to-end interval coverage in memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _analysis_helpers import FIELDS, GROUPS, customers, spec

from tessera.core.analyses import count, histogram, mean, quantiles, sums
from tessera.core.analyses import vector as v


def test_suppression_reads_the_noisy_count_only() -> None:
    plan = mean.plan(
        spec("mean", {"field": "spend", "lower": 0.0, "upper": 10.0, "group_by": "region", "groups": GROUPS}),
        FIELDS,
        survivors_t=2,
        n_nodes=3,
    )
    scale = plan.part("sum").scale
    noisy = np.array([9, 10, 50, 0, int(-5 * 10 * scale), int(2 * 50 * scale)], dtype=np.int64)
    truth = np.array([100.0, 100.0, 100.0, 0.0, 0.0, 0.0])  # a true count far above the floor…
    doc = mean.release(plan, noisy, summands=3, min_cohort_size=10, truth=truth)
    first, second, third = doc["cells"]
    # …does not save a cell whose NOISY count is below it (the rule is post-processing of DP output).
    assert first["suppressed"] and first["count"] is None and first["sum"] is None and first["mean"] is None
    assert not second["suppressed"] and second["count"]["value"] == 10.0
    assert second["mean"]["value"] == 0.0  # offset 5 + (-50/10) = 0, clipped into [0, 10]
    assert third["mean"]["value"] == pytest.approx(7.0)
    assert 0.0 <= third["mean"]["ci95"][0] <= 7.0 <= third["mean"]["ci95"][1] <= 10.0


def test_histogram_bins_are_suppressed_on_their_own_counts() -> None:
    plan = histogram.plan(
        spec("histogram", {"field": "spend", "lower": 0.0, "upper": 1.0, "bins": 3}),
        FIELDS,
        survivors_t=2,
        n_nodes=3,
    )
    doc = histogram.release(plan, np.array([4, 5, 6], dtype=np.int64), summands=2, min_cohort_size=5)
    assert [c["suppressed"] for c in doc["cells"]] == [True, False, False]
    assert doc["cells"][0]["count"] is None and doc["cells"][1]["count"]["value"] == 5.0


def test_quantiles_are_suppressed_whole_below_the_floor() -> None:
    plan = quantiles.plan(
        spec("quantiles", {"field": "spend", "lower": 0.0, "upper": 1.0, "bins": 4}),
        FIELDS,
        survivors_t=2,
        n_nodes=3,
    )
    low = quantiles.release(plan, np.array([2, 2, 2, 3], dtype=np.int64), summands=3, min_cohort_size=10)
    assert low["suppressed"] and low["quantiles"] is None and low["cells"][0]["quantiles"] is None
    high = quantiles.release(plan, np.array([20, 20, 20, 20], dtype=np.int64), summands=3, min_cohort_size=10)
    assert not high["suppressed"]
    assert [q["value"] for q in high["quantiles"]] == pytest.approx([0.25, 0.5, 0.75])
    for q in high["quantiles"]:
        assert q["ci95"][0] <= q["value"] <= q["ci95"][1]


def _coverage(
    module: Any, params: dict[str, Any], stats: tuple[str, ...], trials: int = 400
) -> dict[str, float]:
    """Share of (trial, cell) pairs whose 95% interval covers the truth: 3 nodes, 1 dropout budget."""
    plan = module.plan(spec(module.INFO.name, params), FIELDS, survivors_t=2, n_nodes=3)
    rng = np.random.default_rng(2024)
    nodes = [customers(rng, 150) for _ in range(3)]
    truth = sum(module.exact(plan, d) for d in nodes)
    bits = v.bits_for(plan, max_customers=10_000)
    hits = dict.fromkeys(stats, 0)
    cells = 0
    for _ in range(trials):
        coded = [
            v.encode(v.add_noise(plan, module.local_vector(plan, d, rng=rng), rng=rng), bits=bits)
            for d in nodes
        ]
        total = v.decode(coded[0] + coded[1] + coded[2], bits=bits)
        doc = module.release(plan, total, summands=3, min_cohort_size=0, truth=truth)
        for cell in doc["cells"]:
            cells += 1
            for stat in stats:
                low, high = cell[stat]["ci95"]
                hits[stat] += low <= cell["true"][stat] <= high
    return {stat: hit / cells for stat, hit in hits.items()}


@pytest.mark.parametrize(
    ("module", "params", "stats"),
    [
        (count, {"group_by": "region", "groups": GROUPS}, ("count",)),
        (sums, {"field": "spend", "lower": 0.0, "upper": 200.0}, ("count", "sum")),
        (
            mean,
            {"field": "spend", "lower": 0.0, "upper": 200.0, "group_by": "region", "groups": GROUPS},
            ("mean",),
        ),
    ],
    ids=["count", "sum", "mean"],
)
def test_end_to_end_intervals_cover_about_95_percent(
    module: Any, params: dict[str, Any], stats: tuple[str, ...]
) -> None:
    for stat, share in _coverage(module, params, stats).items():
        assert 0.90 <= share <= 0.99, (stat, share)


def test_quantile_intervals_cover_the_binned_truth() -> None:
    """Snapping to bin edges makes these intervals conservative: at least ~95%, often more."""
    params = {"field": "spend", "lower": 0.0, "upper": 400.0, "bins": 32, "levels": (0.1, 0.5, 0.9)}
    plan = quantiles.plan(spec("quantiles", params, epsilon=0.3), FIELDS, survivors_t=2, n_nodes=3)
    rng = np.random.default_rng(99)
    nodes = [customers(rng, 150) for _ in range(3)]
    truth = sum(quantiles.exact(plan, d) for d in nodes)
    hits = total = 0
    widths = []
    for _ in range(300):
        noisy = sum(v.add_noise(plan, quantiles.local_vector(plan, d, rng=rng), rng=rng) for d in nodes)
        doc = quantiles.release(plan, noisy, summands=3, min_cohort_size=1, truth=truth)
        if doc["suppressed"]:
            continue
        for got, true_value in zip(doc["quantiles"], doc["true"]["quantiles"], strict=True):
            total += 1
            hits += got["ci95"][0] <= true_value <= got["ci95"][1]
            widths.append(got["ci95"][1] - got["ci95"][0])
    assert total >= 800
    assert 0.93 <= hits / total <= 1.0
    assert np.mean(widths) < 400 / 2  # informative, not the whole range
