"""A histogram of a million bins: a compact plan and result, same privacy arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.core.analyses import histogram, quantiles
from tessera.core.errors import InvalidRequest
from tessera.core.secagg.graph import sparse_graph
from tessera.core.types import FieldSchema, JobSpec, Tier

FIELDS = {"spend": FieldSchema("spend", "float", Tier.GENERAL_SENSITIVE)}


def _spec(analysis: str, bins: int) -> JobSpec:
    return JobSpec(
        analysis=analysis,
        dataset="d",
        purpose="p",
        epsilon=0.5,
        delta=1e-7,
        params={"field": "spend", "lower": 0.0, "upper": 1000.0, "bins": bins},
    )


def test_a_million_bins_plan_and_release_compactly() -> None:
    plan = histogram.plan(_spec("histogram", 1_000_000), FIELDS, survivors_t=3, n_nodes=3)
    assert plan.length == 1_000_000 and "bins" not in plan.layout
    data = {"spend": np.array([0.0, 0.0005, 999.9999, np.nan, 1500.0])}
    vector = histogram.local_vector(plan, data, rng=np.random.default_rng(1))
    assert vector[0] == 2 and vector[-1] == 2 and vector.sum() == 4
    total = vector * 30
    doc = histogram.release(plan, total, summands=3, min_cohort_size=25, truth=vector.astype(float))
    assert doc["nbins"] == 1_000_000 and len(doc["counts"]) == 1_000_000
    assert doc["counts"][0] == 60.0 and doc["counts"][1] is None
    assert doc["suppressed_cells"] == 999_998 and doc["ci95_half_width"] > 0
    assert doc["true_counts"][0] == 2.0


def test_small_histograms_keep_labelled_cells_and_quantiles_stay_small() -> None:
    plan = histogram.plan(_spec("histogram", 10), FIELDS, survivors_t=3, n_nodes=3)
    assert len(plan.layout["bins"]) == 10
    with pytest.raises(InvalidRequest, match="at most"):
        quantiles.plan(_spec("quantiles", 100_000), FIELDS, survivors_t=3, n_nodes=3)


def test_a_degree_that_means_complete_gives_the_complete_graph() -> None:
    nodes = [f"n{i:02d}" for i in range(20)]
    assert sparse_graph(nodes, seed=bytes(32)).complete
    assert not sparse_graph([f"n{i:03d}" for i in range(200)], seed=bytes(32)).complete
