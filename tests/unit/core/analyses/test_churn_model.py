"""churn_model: the program's rounds, its budget, accuracy against a central fit, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _churn_helpers import FIELDS, nodes_of, population, spec, train

from tessera.core.analyses import churn_features as cf
from tessera.core.analyses import churn_model
from tessera.core.analyses.program import rho_total
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import JobSpec


def _holdout_split(result: dict, nodes: list[dict]) -> tuple[np.ndarray, ...]:
    """Design matrices and labels of the training and held-out customers, as the nodes split them."""
    layout = {**result["model"], "key": None, "join": None, "time": None, "amount": None}
    layout |= {"reference_day": None, "read": tuple(result["model"]["numeric"])}
    layout |= {"read_categorical": tuple(result["model"]["categorical"]), "read_label": "churned"}
    parts: list[list[np.ndarray]] = [[], [], [], [], []]
    for data in nodes:
        people = cf.customers(layout, data, with_label=True)
        hold = cf.held_out(people.ids, seed=layout["split_seed"], share=layout["holdout"])
        x = cf.design(layout, people)
        for i, piece in enumerate((x[~hold], people.label[~hold], x[hold], people.label[hold])):
            parts[i].append(piece)
        parts[4].append(cf.scores(layout, people)[hold])
    return tuple(np.concatenate(p) for p in parts)


def test_without_noise_the_federated_auc_is_within_0_003_of_a_central_fit() -> None:
    linear = pytest.importorskip("sklearn.linear_model")
    metrics = pytest.importorskip("sklearn.metrics")
    nodes = nodes_of(population(30_000), 3)
    trace = train(spec(epsilon=1.0, l2=0.0), nodes, noise=False)
    x_train, y_train, x_test, y_test, scores = _holdout_split(trace.result, nodes)
    central = linear.LogisticRegression(C=1e6, max_iter=2000).fit(x_train[:, 1:], y_train)
    central_auc = metrics.roc_auc_score(y_test, central.predict_proba(x_test[:, 1:])[:, 1])
    federated_auc = metrics.roc_auc_score(y_test, scores)
    assert abs(federated_auc - central_auc) < 0.003
    # The released (binned) AUC is close to the exact one of the same scores.
    assert abs(trace.result["evaluation"]["auc"]["value"] - federated_auc) < 0.005
    # The rare region was folded into "other": its DP count is below the floor.
    assert "isle" not in trace.result["model"]["kept"][0]
    assert set(trace.result["model"]["kept"][0]) == {"north", "south", "east", "west"}


def test_the_rounds_spend_exactly_the_reserved_budget() -> None:
    job = spec(epsilon=2.0, rounds=5)
    trace = train(job, nodes_of(population(6000), 3), noise=True)
    assert len(trace.rho) == churn_model.max_rounds(job) == 7
    assert math.isclose(sum(trace.rho), rho_total(job), rel_tol=1e-12)
    assert trace.result["evaluation"]["auc"]["ci95"][0] < trace.result["evaluation"]["auc"]["value"]


def test_adaptive_clipping_moves_towards_the_target_quantile() -> None:
    nodes = nodes_of(population(20_000), 3)
    low = train(
        spec(epsilon=50.0, initial_clip=0.05, rounds=10, clip_quantile=0.5), nodes, noise=True
    ).metrics
    high = train(
        spec(epsilon=50.0, initial_clip=20.0, rounds=10, clip_quantile=0.5), nodes, noise=True
    ).metrics
    assert low[-2]["clip"] > 0.05 * 1.5  # too small a bound grows…
    assert high[-2]["clip"] < 20.0 / 1.5  # …too large a bound shrinks
    assert 0.3 < high[-2]["within_clip"] <= 1.0


@pytest.mark.parametrize("optimizer", ["fedavg", "fedadam", "fedyogi"])
def test_every_server_optimizer_learns_at_epsilon_one(optimizer: str) -> None:
    trace = train(spec(epsilon=1.0, optimizer=optimizer), nodes_of(population(20_000), 3), noise=True)
    assert trace.result["evaluation"]["auc"]["value"] > 0.7
    assert trace.result["training"]["optimizer"] == optimizer


def _plan(job: JobSpec, round_no: int = 1, public: dict | None = None) -> object:
    return churn_model.plan(job, FIELDS, survivors_t=3, n_nodes=3, round_no=round_no, public=public)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"label": "email"}, PolicyViolation),
        (
            {"features": ("tenure", "email"), "lower": (0.0,), "upper": (1.0,), "log_features": ()},
            PolicyViolation,
        ),
        ({"label": "missing_field"}, PolicyViolation),
        ({"features": ("tenure", "churned", "region"), "label": "churned"}, InvalidRequest),
        ({"label": "region"}, InvalidRequest),
        ({"lower": (0.0,)}, InvalidRequest),
        ({"categories": ("region=other",)}, InvalidRequest),
        ({"categories": ("tenure=3",)}, InvalidRequest),
        ({"optimizer": "sgd"}, InvalidRequest),
        ({"prep_share": 0.6, "eval_share": 0.5}, InvalidRequest),
        ({"bogus": 1}, InvalidRequest),
    ],
)
def test_a_label_or_feature_the_policy_or_the_model_does_not_allow_is_refused(
    changes: dict, error: type[Exception]
) -> None:
    with pytest.raises(error):
        _plan(spec(**changes))


def test_a_lying_coordinator_cannot_send_nonsense_as_public_input() -> None:
    good = {"mean": [24.0], "sd": [10.0], "kept": [["north"]], "w": [0.0, 0.0, 0.0, 0.0], "clip": 1.0}
    good["mean"], good["sd"] = [24.0, 2.8], [10.0, 0.6]
    _plan(spec(), 2, good)
    for bad in (
        {**good, "kept": [["atlantis"]]},
        {**good, "w": [0.0, 0.0]},
        {**good, "w": [1e9, 0.0, 0.0, 0.0]},
        {**good, "clip": -1.0},
        {**good, "sd": [0.0, 0.6]},
    ):
        with pytest.raises(InvalidRequest):
            _plan(spec(), 2, bad)


def test_the_held_out_split_is_keyed_deterministic_and_of_the_asked_size() -> None:
    ids = np.arange(100_000, dtype=np.int64)
    a = cf.held_out(ids, seed="s1", share=0.2)
    assert np.array_equal(a, cf.held_out(ids[::-1], seed="s1", share=0.2)[::-1])
    assert abs(a.mean() - 0.2) < 0.005
    b = cf.held_out(ids, seed="s2", share=0.2)
    assert 0.02 < (a & b).mean() < 0.06  # another key: an independent split


def test_cdnow_churn_without_noise_matches_a_central_fit() -> None:
    """CDNOW: churned = no purchase in the final six months; RFM features as of 1997-12-31."""
    from _clv_helpers import FIELDS as TX_FIELDS
    from _clv_helpers import cdnow, split

    from tessera.core.analyses.churn_simulate import run

    linear = pytest.importorskip("sklearn.linear_model")
    metrics = pytest.importorskip("sklearn.metrics")
    nodes = split(cdnow("CDNOW_master.txt"), 3)
    job = JobSpec(
        analysis="churn_model",
        dataset="transactions",
        epsilon=1.0,
        delta=1e-6,
        params={
            "label": "rfm.no_purchase_after",
            "reference_date": "1997-12-31",
            "label_end": "1998-06-30",
            "features": ("rfm.recency", "rfm.frequency", "rfm.monetary"),
            "lower": (0.0, 1.0, 0.0),
            "upper": (365.0, 50.0, 2000.0),
            "log_features": ("rfm.frequency", "rfm.monetary"),
            "l2": 0.0,
        },
    )
    trace = run(churn_model, job, TX_FIELDS, nodes, noise=False, rng=np.random.default_rng(0))
    plan = churn_model.plan(job, TX_FIELDS, survivors_t=3, n_nodes=3, round_no=2, public=trace.publics[1])
    layout = {**plan.layout, "w": trace.result["model"]["w"]}
    xs, ys, holds, scores = [], [], [], []
    for data in nodes:
        people = cf.customers(layout, data, with_label=True)
        xs.append(cf.design(layout, people))
        ys.append(people.label)
        holds.append(cf.held_out(people.ids, seed=layout["split_seed"], share=layout["holdout"]))
        scores.append(cf.scores(layout, people))
    x, y, hold, s = (np.concatenate(a) for a in (xs, ys, holds, scores))
    assert 23_000 < y.size <= 23_570 and 0.5 < y.mean() < 0.8  # most CDNOW buyers lapse
    central = linear.LogisticRegression(C=1e6, max_iter=2000).fit(x[~hold, 1:], y[~hold])
    central_auc = metrics.roc_auc_score(y[hold], central.predict_proba(x[hold, 1:])[:, 1])
    assert abs(metrics.roc_auc_score(y[hold], s[hold]) - central_auc) < 0.003
    assert central_auc > 0.75
