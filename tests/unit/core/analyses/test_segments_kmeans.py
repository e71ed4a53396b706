"""kmeans: without noise the program converges to Lloyd's result from the same start; with noise
it still clusters; local labels; the budget of every round; refusals."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from _segments_helpers import TRANSACTIONS, cdnow, run, split

from tessera.core.analyses import kmeans, kmeans_spec
from tessera.core.analyses import kmeans_math as km
from tessera.core.analyses.program import rho_total
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

CUSTOMERS = {
    "x": FieldSchema("x", "float", Tier.GENERAL_SENSITIVE),
    "y": FieldSchema("y", "float", Tier.GENERAL_SENSITIVE),
    "email": FieldSchema("email", "string", Tier.CORE_SENSITIVE),
    "region": FieldSchema("region", "category", Tier.NON_SENSITIVE),
}
BLOBS: dict[str, ParamValue] = {
    "features": ("x", "y"),
    "lower": (-20.0, -20.0),
    "upper": (20.0, 20.0),
    "k": 4,
    "iterations": 15,
}
_UNIT: dict[str, ParamValue] = {"lower": (0.0, 0.0), "upper": (1.0, 1.0)}
CENTRES = np.array([[-6.0, -5.0], [5.0, -6.0], [0.0, 6.0], [7.0, 4.0]])


def _spec(params: dict[str, ParamValue], epsilon: float = 1.0, dataset: str = "customers") -> JobSpec:
    return JobSpec(analysis="kmeans", dataset=dataset, epsilon=epsilon, delta=1e-6, params=params)


def _blobs(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    label = rng.integers(0, len(CENTRES), n)
    points = CENTRES[label] + rng.normal(0, 1.5, (n, 2))
    thirds = np.array_split(points, 3)
    return [{"x": p[:, 0].copy(), "y": p[:, 1].copy()} for p in thirds]


def test_without_noise_the_program_converges_to_lloyds_result_from_its_start() -> None:
    rng = np.random.default_rng(11)
    nodes = _blobs(rng, 6000)
    spec = _spec(BLOBS)
    steps, publics, spent = run(spec, CUSTOMERS, nodes, rng=rng, noise=False)
    result = steps[-1].result
    assert result is not None and result["rounds_run"] == kmeans.max_rounds(spec) == 17
    assert spent == pytest.approx(rho_total(spec))
    # Statistics without noise are the pooled mean and sd.
    points = np.concatenate([np.stack([n["x"], n["y"]], 1) for n in nodes])
    assert publics[1]["mean"] == pytest.approx(points.mean(0), abs=1e-5)
    assert publics[1]["sd"] == pytest.approx(points.std(0), rel=1e-5)
    z = (points - points.mean(0)) / points.std(0)
    start = np.asarray(publics[2]["centroids"])  # the grid coreset's k-means++ start
    expected = km.lloyd(z, start, iterations=15)
    got = np.asarray(result["model"]["centroids_z"])
    assert got == pytest.approx(expected, abs=1e-4)
    # ... which is the best non-private clustering: cost equal to Lloyd from k-means++.
    reference = km.best_of(z, 4, rng=np.random.default_rng(0))
    assert km.cost(z, got) == pytest.approx(km.cost(z, reference), rel=1e-3)
    # Centroids in original units sit on the blobs' centres.
    centroids = np.array([[c["centroid"]["x"], c["centroid"]["y"]] for c in result["clusters"]])
    nearest = np.abs(centroids[:, None, :] - CENTRES[None]).sum(2).min(1)
    assert nearest.max() < 0.3
    # The nodes' local labels agree with the released sizes (no noise).
    labels: Counter[int] = Counter()
    for node in nodes:
        labels.update(kmeans.label_customers(result["model"], node, dataset="customers", key=None).values())
    sizes = {c["cluster"]: c["size"]["value"] for c in result["clusters"]}
    assert sum(labels.values()) == 6000
    assert all(abs(labels[j] - sizes[j]) <= 5 for j in sizes)  # last move after the last count


@pytest.mark.parametrize("init", ["grid", "random"])
def test_with_noise_at_epsilon_1_the_clusters_are_found(init: str) -> None:
    rng = np.random.default_rng(3)
    nodes = _blobs(rng, 9000)
    spec = _spec({**BLOBS, "iterations": 5, "init": init, "seed": 4})
    steps, _, spent = run(spec, CUSTOMERS, nodes, rng=rng)
    result = steps[-1].result
    assert result is not None and spent == pytest.approx(rho_total(spec))
    assert result["budget_split"]["init"] == pytest.approx(0.15 * rho_total(spec) if init == "grid" else 0.0)
    points = np.concatenate([np.stack([n["x"], n["y"]], 1) for n in nodes])
    centroids = np.array([[c["centroid"]["x"], c["centroid"]["y"]] for c in result["clusters"]])
    reference = km.best_of(points, 4, rng=np.random.default_rng(0))
    ratio = km.cost(points, centroids) / km.cost(points, reference)
    assert ratio < (1.1 if init == "grid" else 3.0)
    for c in result["clusters"]:
        lo, hi = c["size"]["ci95"]
        assert lo < c["size"]["value"] < hi


def test_rfm_features_and_a_joined_customer_field_on_cdnow() -> None:
    data = cdnow()
    ids = np.unique(data["customer"])
    people = {
        "customer": ids,
        "customers.customer_id": ids,
        "customers.tenure_months": (ids % 24).astype(float),
    }
    nodes = split(data, 3)
    for node, mine in zip(nodes, split(people, 3), strict=True):
        node |= {k: v for k, v in mine.items() if k.startswith("customers.")}
    params: dict[str, ParamValue] = {
        "features": ("rfm.recency", "rfm.frequency", "rfm.monetary", "customers.tenure_months"),
        "lower": (0.0, 1.0, 0.0, 0.0),
        "upper": (600.0, 100.0, 3000.0, 24.0),
        "log_features": ("rfm.frequency", "rfm.monetary"),
        "reference_date": "1998-06-30",
        "k": 4,
        "iterations": 3,
    }
    spec = _spec(params, epsilon=2.0, dataset="transactions")
    steps, _, _ = run(spec, TRANSACTIONS, nodes, rng=np.random.default_rng(2))
    result = steps[-1].result
    assert result is not None
    assert sum(c["size"]["value"] for c in result["clusters"] if c["size"]) == pytest.approx(
        ids.size, rel=0.05
    )
    plan = kmeans.plan(spec, TRANSACTIONS, survivors_t=3, n_nodes=3)
    assert plan.fields == ("time", "amount", "customers.tenure_months", "customers.customer_id", "customer")
    labels = kmeans.label_customers(
        result["model"], nodes[0], dataset="transactions", key="customer", join="customers.customer_id"
    )
    assert set(labels) == set(np.unique(nodes[0]["customer"]).tolist())
    assert set(labels.values()) <= set(range(4))


@pytest.mark.parametrize("init", ["grid", "random"])
def test_the_rounds_spend_at_most_the_total(init: str) -> None:
    spec = _spec({**BLOBS, "init": init, "iterations": 4})
    public = {"mean": [0.0, 0.0], "sd": [1.0, 1.0], "centroids": [[0.0, 0.0]] * 4}
    total = sum(
        kmeans.plan(spec, CUSTOMERS, survivors_t=3, n_nodes=3, round_no=r, public=public).rho
        for r in range(1, kmeans.max_rounds(spec) + 1)
    )
    assert total == pytest.approx(rho_total(spec))
    with pytest.raises(InvalidRequest, match="outside"):
        kmeans.plan(
            spec, CUSTOMERS, survivors_t=3, n_nodes=3, round_no=kmeans.max_rounds(spec) + 1, public=public
        )


@pytest.mark.parametrize(
    ("params", "error", "fragment"),
    [
        ({"features": ("x", "email"), **_UNIT}, PolicyViolation, "core_sensitive"),
        ({"features": ("x", "nope"), **_UNIT}, PolicyViolation, "not in the dataset"),
        ({"features": ("x", "region"), **_UNIT}, InvalidRequest, "numeric"),
        ({"features": ("x", "rfm.recency"), **_UNIT}, InvalidRequest, "transactions"),
        ({"lower": (0.0,)}, InvalidRequest, "one finite number per feature"),
        ({"lower": (30.0, 0.0)}, InvalidRequest, "below its upper"),
        ({"k": 65}, InvalidRequest, "'k'"),
        ({"stats_share": 0.5, "init_share": 0.5}, InvalidRequest, "add up to the job's total"),
        ({"stats_share": 1.2}, InvalidRequest, "stats_share"),
        ({"init": "random", "init_share": 0.1}, InvalidRequest, "'grid' only"),
        ({"k": 20, "population": 5000}, InvalidRequest, "too many clusters for the budget"),
        ({"log_features": ("x",)}, InvalidRequest, "lower bound of at least 0"),
        ({"group_by": "region", "groups": ("a",)}, InvalidRequest, "does not group"),
    ],
)  # fmt: skip
def test_refusals(params: dict[str, ParamValue], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        kmeans.plan(_spec({**BLOBS, **params}), CUSTOMERS, survivors_t=3, n_nodes=3)


def test_too_many_clusters_for_the_budget_without_a_population_ends_after_round_1() -> None:
    rng = np.random.default_rng(0)
    nodes = _blobs(rng, 900)
    spec = _spec({**BLOBS, "k": 12}, epsilon=0.5)
    kmeans.plan(spec, CUSTOMERS, survivors_t=3, n_nodes=3)  # nothing to check it against yet
    with pytest.raises(InvalidRequest, match="too many clusters for the budget"):
        run(spec, CUSTOMERS, nodes, rng=rng)
    # Plenty of customers per cluster: accepted with a population estimate.
    kmeans.plan(_spec({**BLOBS, "population": 1_000_000}), CUSTOMERS, survivors_t=3, n_nodes=3)


def test_a_lying_coordinator_cannot_move_the_standardisation_or_the_centroids() -> None:
    spec = _spec(BLOBS)
    good = {"mean": [0.0, 0.0], "sd": [1.0, 1.0], "centroids": [[0.0, 0.0]] * 4}
    for bad in (
        {},
        {**good, "mean": [100.0, 0.0]},
        {**good, "sd": [0.0, 1.0]},
        {**good, "centroids": [[0.0, 0.0]] * 3},
        {**good, "centroids": [[9.0, 0.0]] * 4},
        {**good, "centroids": [[True, 0.0]] * 4},
    ):
        with pytest.raises(InvalidRequest):
            kmeans.plan(spec, CUSTOMERS, survivors_t=3, n_nodes=3, round_no=3, public=bad)


def test_grid_size_keeps_the_grid_small() -> None:
    assert [kmeans_spec.grid_size(d) for d in (1, 2, 3, 4, 5, 8, 12, 13)] == [8, 8, 8, 8, 5, 2, 2, 1]
    assert km.grid_cells(np.array([[-9.0, -9.0], [0.1, 0.1], [9.0, 9.0]]), 4, clip=3.0).tolist() == [
        0,
        10,
        15,
    ]
    assert km.grid_centres(4, 2, clip=3.0)[10].tolist() == [0.75, 0.75]
