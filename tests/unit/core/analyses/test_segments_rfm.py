"""rfm_segments: known answers of the scoring and the segment grid, boundaries from an exact
histogram, the whole program in memory (real plans and noise), the local labels, refusals."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from _segments_helpers import TRANSACTIONS, cdnow, run, split
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import rfm, rfm_segments
from tessera.core.analyses.program import rho_total
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import JobSpec, ParamValue

PARAMS: dict[str, ParamValue] = {
    "reference_date": "1997-09-30",
    "monetary_max": 2000.0,
    "recency_max": 400.0,
    "frequency_max": 100.0,
}


def _spec(epsilon: float = 1.0, **params: ParamValue) -> JobSpec:
    return JobSpec(
        analysis="rfm_segments", dataset="transactions", epsilon=epsilon, delta=1e-6, params=PARAMS | params
    )


@pytest.mark.parametrize(
    ("r", "fm", "segment"),
    [
        (5, 5, "Champions"), (4, 4, "Champions"), (5, 3, "Loyal"), (3, 4, "Loyal"),
        (5, 2, "Potential Loyalist"), (5, 1, "New"), (4, 1, "Promising"), (3, 2, "Need Attention"),
        (3, 1, "About to Sleep"), (2, 3, "At Risk"), (1, 3, "At Risk"), (1, 5, "Can't Lose"),
        (2, 5, "Can't Lose"), (2, 2, "Hibernating"), (1, 1, "Lost"), (1, 2, "Lost"),
    ],
)  # fmt: skip
def test_the_segment_grid(r: int, fm: int, segment: str) -> None:
    assert rfm.SEGMENTS[rfm.GRID[r - 1, fm - 1]] == segment


def test_every_named_segment_has_a_cell() -> None:
    assert set(rfm.GRID.ravel().tolist()) == set(range(len(rfm.SEGMENTS)))
    assert len(rfm.SEGMENTS) == 11


def test_scores_against_boundaries() -> None:
    b = (1.0, 2.0, 3.0, 4.0)
    x = [0.5, 1.0, 1.5, 4.0, 5.0]
    assert rfm.score(x, b, higher_is_better=True).tolist() == [1, 1, 2, 4, 5]
    assert rfm.score(x, b, higher_is_better=False).tolist() == [5, 5, 4, 2, 1]
    # Tied boundaries (most customers bought once): F = 1 scores 1, F = 2 jumps to 3.
    assert rfm.score([1, 2, 3], (1.0, 1.0, 2.0, 5.0), higher_is_better=True).tolist() == [1, 3, 4]
    assert rfm.fm_score(np.array([1, 1, 4, 2]), np.array([1, 2, 5, 5])).tolist() == [1, 2, 5, 4]
    with pytest.raises(InvalidRequest):
        rfm.score(x, (3.0, 2.0, 1.0, 0.0), higher_is_better=True)


def test_segments_of_known_customers() -> None:
    boundaries = {
        "recency": (10.0, 30.0, 90.0, 180.0),
        "frequency": (1.0, 2.0, 4.0, 8.0),
        "monetary": (20.0, 50.0, 100.0, 300.0),
    }
    # recent big spender, recent first buyer, long-gone big spender, long-gone small one.
    r, f, m = [2.0, 5.0, 400.0, 400.0], [12.0, 1.0, 10.0, 1.0], [900.0, 10.0, 500.0, 5.0]
    got = [rfm.SEGMENTS[i] for i in rfm.segments(r, f, m, boundaries)]
    assert got == ["Champions", "New", "Can't Lose", "Lost"]


def test_rfm_values_per_customer_as_of_the_reference_day() -> None:
    data = {
        "customer": np.array([1, 1, 2, 1, 3, -1], dtype=np.int64),
        "time": np.array([10.2, 20.9, 5.0, 40.0, 30.0, 1.0]),
        "amount": np.array([5.0, 7.0, 3.0, 100.0, 9.0, 50.0]),
    }
    table = ct.rfm(data, key="customer", time="time", amount="amount", reference_day=25.0)
    assert table.population.ids.tolist() == [1, 2]  # 3 buys after the day, -1 is nobody
    assert table.recency.tolist() == [5.0, 20.0]
    assert table.frequency.tolist() == [2.0, 1.0]
    assert table.monetary.tolist() == [12.0, 3.0]


@pytest.mark.parametrize("upper", [365.0, 100.0, 3000.0])
def test_boundaries_from_an_exact_histogram_are_the_true_quintiles_to_the_bin(upper: float) -> None:
    rng = np.random.default_rng(5)
    x = np.clip(rng.lognormal(np.log(upper / 20), 1.0, 20_000), 0, upper)
    bins = 48
    counts = np.bincount(rfm.log_bins(x, upper=upper, bins=bins), minlength=bins)
    got = rfm.quantiles_from_histogram(counts, upper=upper)
    true = np.quantile(x, rfm.LEVELS, method="inverted_cdf")
    assert (
        rfm.log_bins(got, upper=upper, bins=bins).tolist()
        == rfm.log_bins(true, upper=upper, bins=bins).tolist()
    )
    # Integer data (frequencies): the scores the boundaries give equal the true quintiles' scores.
    f = rng.geometric(0.5, 20_000).astype(float)
    counts = np.bincount(rfm.log_bins(f, upper=100.0, bins=bins), minlength=bins)
    est = rfm.quantiles_from_histogram(counts, upper=100.0, integer=True)
    exact = tuple(np.quantile(f, rfm.LEVELS, method="inverted_cdf"))
    assert np.array_equal(
        rfm.score(f, est, higher_is_better=True), rfm.score(f, exact, higher_is_better=True)
    )


def _nodes(data: dict[str, np.ndarray], n: int = 3) -> list[dict[str, Any]]:
    """Transactions per node plus each node's customers rows: churned = no purchase after
    1997-09-30 (a label known at home), region by id."""
    ids = np.unique(data["customer"])
    late = set(data["customer"][data["time"] > ct.day_param(_spec(), "reference_date")].tolist())
    customers = {
        "customer": ids,
        "customers.customer_id": ids,
        "customers.churned": np.array([0.0 if i in late else 1.0 for i in ids.tolist()]),
        "customers.region": np.array(["north" if i % 2 else "south" for i in ids.tolist()], dtype=object),
    }
    nodes = split(data, n)
    for node, people in zip(nodes, split(customers, n), strict=True):
        node |= {k: v for k, v in people.items() if k.startswith("customers.")}
    return nodes


def test_the_program_without_noise_tabulates_the_local_labels_exactly() -> None:
    data = cdnow()
    nodes = _nodes(data)
    spec = _spec(churn_field="customers.churned")
    steps, _, spent = run(spec, TRANSACTIONS, nodes, rng=np.random.default_rng(0), noise=False)
    result = steps[-1].result
    assert result is not None and len(steps) == 2
    assert spent == pytest.approx(rho_total(spec))
    labels: Counter[str] = Counter()
    churn: Counter[str] = Counter()
    for node in nodes:
        mine = rfm_segments.label_customers(result["model"], node, key="customer")
        labels.update(mine.values())
        churned = dict(
            zip(node["customers.customer_id"].tolist(), node["customers.churned"].tolist(), strict=True)
        )
        churn.update(s for cid, s in mine.items() if churned[cid] > 0.5)
    assert sum(labels.values()) == np.unique(data["customer"]).size
    for cell in result["segments"]:
        n = labels[cell["segment"]]
        assert (cell["size"] or {"value": 0})["value"] == pytest.approx(n if n >= 10 else 0)
        if not cell["suppressed"]:
            assert cell["churn_rate"]["value"] == pytest.approx(churn[cell["segment"]] / n)
    # Champions bought again after the reference day far more often than Lost customers.
    rate = {c["segment"]: c["churn_rate"]["value"] for c in result["segments"] if not c["suppressed"]}
    assert rate["Champions"] < 0.6 < rate["Lost"]


def test_the_program_with_noise_at_epsilon_1_on_cdnow() -> None:
    data = cdnow()
    nodes = _nodes(data, n=4)
    spec = _spec(group_by="customers.region", groups=("north", "south"))
    steps, _, spent = run(spec, TRANSACTIONS, nodes, rng=np.random.default_rng(1))
    result = steps[-1].result
    assert result is not None and spent <= rho_total(spec) * (1 + 1e-12)
    assert result["budget_split"]["round1"] == pytest.approx(0.5)
    cells = [c for c in result["segments"] if c["group"] == "north" and not c["suppressed"]]
    assert sum(c["share"]["value"] for c in cells) == pytest.approx(1.0, abs=0.05)
    for c in cells:
        lo, hi = c["size"]["ci95"]
        assert lo < c["size"]["value"] < hi
        assert 0 <= c["mean_monetary"]["value"] <= 2000


def test_lying_boundaries_are_refused() -> None:
    spec = _spec()
    for bad in (
        {},
        {"boundaries": {"recency": [1, 2, 3, 4], "frequency": [1, 2, 3, 4]}},
        {"boundaries": {"recency": [4, 3, 2, 1], "frequency": [1, 2, 3, 4], "monetary": [1, 2, 3, 4]}},
        {"boundaries": {"recency": [1, 2, 3, 4e9], "frequency": [1, 2, 3, 4], "monetary": [1, 2, 3, 4]}},
        {"boundaries": {"recency": [1, 2, 3, True], "frequency": [1, 2, 3, 4], "monetary": [1, 2, 3, 4]}},
    ):
        with pytest.raises(InvalidRequest):
            rfm_segments.plan(spec, TRANSACTIONS, survivors_t=3, n_nodes=3, round_no=2, public=bad)
    with pytest.raises(InvalidRequest, match="outside"):
        rfm_segments.plan(spec, TRANSACTIONS, survivors_t=3, n_nodes=3, round_no=3, public={})


@pytest.mark.parametrize(
    ("params", "error", "fragment"),
    [
        ({"group_by": "customers.email", "groups": ("a",)}, PolicyViolation, "core_sensitive"),
        ({"group_by": "customers.loyalty", "groups": ("a",)}, PolicyViolation, "non_sensitive"),
        ({"churn_field": "customers.nope"}, PolicyViolation, "not in the dataset"),
        ({"churn_field": "customers.region"}, InvalidRequest, "bool"),
        ({"churn_field": "orders.churned"}, InvalidRequest, "only fields of the customers"),
        ({"time_field": "customer"}, PolicyViolation, "customer key"),
        ({"boundary_share": 1.0}, InvalidRequest, "boundary_share"),
        ({"monetary_max": -1.0}, InvalidRequest, "above 0"),
        ({"reference_date": "yesterday"}, InvalidRequest, "YYYY-MM-DD"),
        ({"bogus": 1}, InvalidRequest, "not known"),
    ],
)
def test_refusals(params: dict[str, ParamValue], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        rfm_segments.plan(_spec(**params), TRANSACTIONS, survivors_t=3, n_nodes=3, round_no=1, public={})


def test_monetary_max_is_required_and_one_row_data_is_refused() -> None:
    spec = JobSpec(
        analysis="rfm_segments", dataset="transactions", epsilon=1.0, delta=1e-6,
        params={"reference_date": "1997-09-30"},
    )  # fmt: skip
    with pytest.raises(InvalidRequest, match="monetary_max"):
        rfm_segments.plan(spec, TRANSACTIONS, survivors_t=3, n_nodes=3)
    one_row = {k: f for k, f in TRANSACTIONS.items() if k != "customer"}
    with pytest.raises(InvalidRequest, match="customer_key"):
        rfm_segments.plan(_spec(), one_row, survivors_t=3, n_nodes=3)


def test_the_rounds_spend_exactly_the_total_and_the_plan_reads_the_joined_fields() -> None:
    spec = _spec(churn_field="customers.churned", group_by="customers.region", groups=("north",))
    public = {"boundaries": {a: [1.0, 2.0, 3.0, 4.0] for a in rfm.AXES}}
    plans = [
        rfm_segments.plan(
            spec, TRANSACTIONS, survivors_t=3, n_nodes=3, round_no=r, public=public if r == 2 else {}
        )
        for r in (1, 2)
    ]
    assert sum(p.rho for p in plans) == pytest.approx(rho_total(spec))
    assert plans[0].fields == ("time", "amount", "customer")
    assert ct.reads(plans[1].dataset, plans[1].fields) == {
        "transactions": ("time", "amount", "customer"),
        "customers": ("churned", "region", "customer_id"),
    }


@pytest.mark.parametrize("upper", [600.0, 100.0, 1095.0])
def test_integer_span_is_what_log_bins_does(upper: float) -> None:
    bins = 128
    values = np.arange(0, int(upper) + 1)
    where = rfm.log_bins(values.astype(float), upper=upper, bins=bins)
    for b in range(bins):
        inside = values[where == b]
        span = rfm.integer_span(b, upper=upper, bins=bins)
        assert span == ((int(inside[0]), int(inside[-1])) if inside.size else None)


@given(
    per_integer=st.lists(st.integers(0, 40), min_size=128, max_size=128),
    upper=st.sampled_from([600.0, 200.0]),
)
@settings(max_examples=60, deadline=None)
def test_integer_quantiles_are_exact_when_a_bin_spreads_evenly_over_its_integers(
    per_integer: list[int], upper: float
) -> None:
    """Each bin's integers hold the same number of customers: the DP-free quantiles are numpy's."""
    bins = 128
    values = []
    for b, count in enumerate(per_integer):
        span = rfm.integer_span(b, upper=upper, bins=bins)
        if span is not None:
            for x in range(span[0], span[1] + 1):
                values += [float(x)] * count
    if not values:
        return
    x = np.array(values)
    counts = np.bincount(rfm.log_bins(x, upper=upper, bins=bins), minlength=bins)
    got = rfm.quantiles_from_histogram(counts, upper=upper, integer=True)
    assert got == tuple(float(q) for q in np.quantile(x, rfm.LEVELS, method="inverted_cdf"))
