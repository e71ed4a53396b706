"""Per-customer semantics over datasets with several rows per customer: known answers, the plan's
declared sensitivities, ``customers_in``, and the refusals (fail closed)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from test_analysis_customer_bounds import CHANNELS, KEYED, ONE_ROW

from tessera.core.analyses import contribution, count, histogram, mean, quantiles, sums
from tessera.core.analyses import vector as v
from tessera.core.analyses.registry import VECTOR_ANALYSES
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

RNG = np.random.default_rng(0)


def plan(module: Any, params: dict[str, ParamValue], fields: Any = None) -> v.VectorPlan:
    spec = JobSpec(analysis=module.INFO.name, dataset="transactions", params=params, epsilon=1.0, delta=1e-6)
    result: v.VectorPlan = module.plan(spec, KEYED if fields is None else fields, survivors_t=2, n_nodes=3)
    return result


# Customer 1: three web rows (10, 20, NaN) and one app row (5); customer 2: one store row (7);
# customer 3: 100 web rows of 1.0; one row names no customer (-1) and is left out.
DATA = {
    "customer": np.array([1, 1, 2, 1, 1, -1, *[3] * 100], dtype=np.int64),
    "channel": np.array(["web", "web", "store", "app", "web", "web", *["web"] * 100], dtype=object),
    "kind": np.array(["a", "b", "a", "a", None, "a", *["b"] * 100], dtype=object),
    "amount": np.array([10.0, 20.0, 7.0, 5.0, np.nan, 99.0, *[1.0] * 100]),
}
BY_CHANNEL: dict[str, ParamValue] = {"group_by": "channel", "groups": CHANNELS}


def test_a_customer_with_100_transactions_counts_once_not_100_times() -> None:
    p = plan(count, {})
    assert count.local_vector(p, DATA, rng=RNG).tolist() == [3]  # customers 1, 2, 3
    assert (p.parts[0].l1_sensitivity, p.parts[0].l2_sensitivity, p.parts[0].linf_bound) == (1, 1, 1)


def test_rows_are_counted_up_to_the_cap_per_customer() -> None:
    p = plan(count, {**BY_CHANNEL, "max_rows_per_customer": 3})
    # web: customer 1's rows 0, 1 (its 3rd kept row is app) + 3 of customer 3's; app: 1; store: 1.
    assert count.local_vector(p, DATA, rng=RNG).tolist() == [5, 1, 1, 0]
    part = p.parts[0]
    assert (part.l1_sensitivity, part.l2_sensitivity, part.linf_bound) == (3, 3, 3)
    assert p.fields == ("channel", "customer")
    assert p.layout["contribution"] == {
        "customer_key": "customer",
        "per_customer": None,
        "max_rows_per_customer": 3,
        "max_groups_per_customer": 1,
    }


def test_customers_count_in_their_first_groups() -> None:
    one = plan(count, BY_CHANNEL)
    assert count.local_vector(one, DATA, rng=RNG).tolist() == [2, 0, 1, 0]  # customer 1 in web only
    both = plan(count, {**BY_CHANNEL, "max_groups_per_customer": 2})
    assert count.local_vector(both, DATA, rng=RNG).tolist() == [2, 1, 1, 0]
    part = both.parts[0]
    assert (part.l1_sensitivity, part.l2_sensitivity, part.linf_bound) == (2, math.sqrt(2), 1)
    # A larger L2 needs more noise for the same budget.
    assert part.sigma > one.parts[0].sigma


def test_a_customers_spend_is_summed_then_clipped_as_one_value() -> None:
    p = plan(sums, {"field": "amount", "lower": 0.0, "upper": 50.0})
    truth = sums.exact(p, DATA)
    offset = 25.0
    # customer 1: 10 + 20 + 5 = 35; customer 2: 7; customer 3: 100 -> clipped to 50.
    assert truth[0] == 3 and truth[1] + offset * truth[0] == pytest.approx(35 + 7 + 50)
    top = 2**23 - 1
    assert p.part("sum").l1_sensitivity == top and p.part("sum").linf_bound == top


def test_spend_per_channel_over_several_groups_declares_the_whole_vector() -> None:
    p = plan(
        sums, {"field": "amount", "lower": 0.0, "upper": 50.0, **BY_CHANNEL, "max_groups_per_customer": 3}
    )
    truth = sums.exact(p, DATA)
    size = 4
    assert truth[:size].tolist() == [2, 1, 1, 0]
    assert (truth[size:] + 25.0 * truth[:size]).tolist() == pytest.approx([30 + 50, 5, 7, 0])
    top = 2**23 - 1
    assert p.part("sum").l1_sensitivity == 3 * top
    assert p.part("sum").l2_sensitivity == pytest.approx(math.sqrt(3) * top)
    assert p.part("count").l1_sensitivity == 3


def test_mean_of_per_customer_mean_and_count() -> None:
    p = plan(mean, {"field": "amount", "lower": 0.0, "upper": 100.0, "per_customer": "mean"})
    truth = mean.exact(p, DATA)
    assert truth[1] + 50.0 * truth[0] == pytest.approx(35 / 3 + 7 + 1)
    counted = plan(mean, {"per_customer": "count", "lower": 0.0, "upper": 100.0})
    assert counted.fields == ("customer",)
    truth = mean.exact(counted, DATA)
    assert truth[1] + 50.0 * truth[0] == pytest.approx(4 + 1 + 100)  # rows, NaN amounts included


def test_histogram_of_per_customer_event_counts() -> None:
    p = plan(histogram, {"per_customer": "count", "lower": 0.0, "upper": 10.0, "bins": 10})
    vec = histogram.local_vector(p, DATA, rng=RNG)
    assert vec.tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0, 1]  # 1, 4 and 100 (clamped) rows
    assert p.layout["field"] is None


def test_category_histograms_by_customer_or_by_rows() -> None:
    cats: dict[str, ParamValue] = {"field": "kind", "categories": ("a", "b")}
    first = plan(histogram, cats)
    assert histogram.local_vector(first, DATA, rng=RNG).tolist() == [2, 1, 0]  # first kinds: a, a, b
    rows = plan(histogram, {**cats, "max_rows_per_customer": 2})
    assert histogram.local_vector(rows, DATA, rng=RNG).tolist() == [2, 3, 0]


def test_quantiles_of_capped_rows() -> None:
    p = plan(
        quantiles, {"field": "amount", "lower": 0.0, "upper": 100.0, "bins": 100, "max_rows_per_customer": 2}
    )
    vec = quantiles.local_vector(p, DATA, rng=RNG)
    assert vec.sum() == 2 + 1 + 2  # customer 1: 10, 20; customer 2: 7; customer 3: two of its 1.0s
    assert p.parts[0].l2_sensitivity == 2


def test_customers_in_counts_distinct_customers_never_rows() -> None:
    p = plan(count, {"max_rows_per_customer": 5})
    assert contribution.customers_in(p, DATA) == 3
    one_row = plan(count, {}, fields=ONE_ROW)
    assert contribution.customers_in(one_row, {"amount": np.zeros(7)}) == 7
    grouped = plan(sums, {"field": "amount", "lower": 0.0, "upper": 1.0})
    assert contribution.customers_in(grouped, {k: a[:0] for k, a in DATA.items()}) == 0


def test_one_row_per_customer_data_is_unchanged_by_the_caps() -> None:
    """Without a customer key the schema promises one row per customer: caps are 1 whatever the
    job says, so a customers count keeps the sensitivity (and noise) it always had."""
    base = plan(count, BY_CHANNEL, fields=ONE_ROW)
    capped = plan(count, {**BY_CHANNEL, "max_rows_per_customer": 50}, fields=ONE_ROW)
    assert capped.parts[0].sigma == base.parts[0].sigma
    assert base.fields == ("channel",) and base.layout["contribution"]["customer_key"] is None


@pytest.mark.parametrize(
    ("module", "params", "fragment"),
    [
        (count, {"max_rows_per_customer": 0}, "'max_rows_per_customer' must be an integer from 1"),
        (count, {"max_rows_per_customer": True}, "'max_rows_per_customer' must be an integer"),
        (count, {"max_rows_per_customer": 2.5}, "'max_rows_per_customer' must be an integer"),
        (count, {"max_groups_per_customer": 5, **BY_CHANNEL}, "integer from 1 to 4"),
        (count, {"max_groups_per_customer": 2}, "integer from 1 to 1"),
        (count, {"per_customer": "sum"}, "not known to the count analysis"),
        (count, {"max_rows_per_customer": 2, "max_groups_per_customer": 1}, "cannot be combined"),
        (sums, {"field": "amount", "lower": 0.0, "upper": 1.0, "per_customer": "max"}, "sum, count, mean"),
        (sums, {"field": "amount", "lower": 0.0, "upper": 1.0, "max_rows_per_customer": 3}, "not known"),
        (sums, {"lower": 0.0, "upper": 1.0}, "'field' is required"),
        (sums, {"lower": 0.0, "upper": 1.0, "per_customer": "sum"}, "'field' is required"),
        (histogram, {"field": "amount", "lower": 0.0, "upper": 1.0, "bins": 2, "per_customer": "sum",
                     "max_rows_per_customer": 3}, "cannot be combined with 'per_customer'"),
        (histogram, {"field": "kind", "categories": ("a",), "per_customer": "sum"}, "applies to numeric"),
    ],
)  # fmt: skip
def test_bad_contribution_parameters_are_refused(
    module: Any, params: dict[str, ParamValue], fragment: str
) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        plan(module, params)


_KEY_AS_VALUE: dict[str, dict[str, ParamValue]] = {
    "count": {},  # count reads no value field
    "sum": {"field": "customer", "lower": 0.0, "upper": 1.0},
    "mean": {"field": "customer", "lower": 0.0, "upper": 1.0},
    "histogram": {"field": "customer", "categories": ("1",)},
    "quantiles": {"field": "customer", "lower": 0.0, "upper": 1.0},
    "funnel": {"event_field": "customer", "time_field": "amount", "steps": ("a", "b"), "window_days": 1.0},
    "cohort_retention": {"time_field": "customer", "first_month": "1997-01", "cohorts": 1, "months": 2},
}
# Analyses whose results have no groups: they refuse group_by whatever it names.
_UNGROUPED = {"funnel", "cohort_retention"}


_KEY_CASES = [(name, False) for name in sorted(VECTOR_ANALYSES) if _KEY_AS_VALUE[name]] + [
    (name, True) for name in sorted(VECTOR_ANALYSES) if name not in _UNGROUPED
]


@pytest.mark.parametrize("name", sorted(_UNGROUPED))
def test_analyses_without_groups_refuse_group_by(name: str) -> None:
    with pytest.raises(InvalidRequest, match="does not group"):
        plan(VECTOR_ANALYSES[name], {**_KEY_AS_VALUE[name], "group_by": "channel", "groups": ("web",)})


@pytest.mark.parametrize(("name", "as_group"), _KEY_CASES)
def test_the_customer_key_is_never_a_value_nor_a_group(name: str, as_group: bool) -> None:
    params = dict(_KEY_AS_VALUE[name])
    if as_group:
        params = {"field": "amount", "lower": 0.0, "upper": 1.0} if name != "count" else {}
        params |= {"group_by": "customer", "groups": ("1",)}
    with pytest.raises(PolicyViolation) as caught:
        plan(VECTOR_ANALYSES[name], params)
    assert caught.value.code == "policy.customer_key_field"


def test_a_schema_with_two_customer_keys_is_refused() -> None:
    fields = {**KEYED, "other": FieldSchema("other", "customer_key", Tier.CORE_SENSITIVE)}
    with pytest.raises(InvalidRequest, match="2 customer keys"):
        plan(count, {}, fields=fields)


def test_a_part_must_declare_consistent_norms() -> None:
    with pytest.raises(InvalidRequest, match="L∞ <= L2 <= L1"):
        v.make_part("x", start=0, stop=2, scale=1.0, linf_bound=3, l1=2, l2=2, rho=1.0, survivors_t=1)
    part = v.make_part(
        "x", start=0, stop=2, scale=1.0, linf_bound=1, l1=2, l2=math.sqrt(2), rho=1.0, survivors_t=1
    )
    assert part.as_dict()["l1_sensitivity"] == 2


def test_the_customer_key_must_arrive_as_integer_ids() -> None:
    p = plan(count, {})
    with pytest.raises(InvalidRequest, match="integer id per row"):
        count.local_vector(p, {"customer": np.array(["C1", "C2"], dtype=object)}, rng=RNG)


def test_results_state_the_contribution_bound() -> None:
    p = plan(count, {"max_rows_per_customer": 4})
    doc = count.release(p, np.array([100]), summands=2, min_cohort_size=0)
    assert doc["contribution"]["max_rows_per_customer"] == 4
