"""``clv_fit`` as a program of rounds, run in memory: the federated fit without noise equals a
central maximum-likelihood fit, a DP run stays within its budget and reports what it spent, one
customer with all of its rows moves each part within its declared bounds, and the refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _clv_helpers import FIELDS, cdnow, central_fit, run, simulate, spec, split, values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core.analyses import clv_fit
from tessera.core.analyses.clv_newton import MAX_STEP, settled
from tessera.core.analyses.clv_summary import day_number, summarise
from tessera.core.analyses.program import check_public, rho_total
from tessera.core.analyses.registry import get_program
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, Tier

TRUE_BG = (0.4, 8.0, 0.9, 3.0)
TRUE_GG = (5.0, 4.0, 20.0)
CAL, HOLD = "2020-08-31", "2021-03-31"  # 35 weeks of calibration from 2020-01-01, then 30 of holdout
LOOSE = {"grad_clip": 1e4, "hessian_clip": 1e4}  # without noise no clip needs to bind


@pytest.fixture(scope="module")
def synthetic() -> dict[str, np.ndarray]:
    return simulate(np.random.default_rng(11), 2500, bgnbd=TRUE_BG, gg=TRUE_GG)


def _central(data: dict[str, np.ndarray], cal: str) -> tuple[np.ndarray, np.ndarray]:
    s = summarise(data["customer"], data["time"], data["amount"], calibration_end=day_number(cal, "c"))
    return central_fit(s)


def test_registered_as_a_program() -> None:
    assert get_program("clv_fit") is clv_fit


def test_federated_fit_without_noise_equals_the_central_fit(synthetic: dict[str, np.ndarray]) -> None:
    result, _ = run(spec(calibration_end=CAL, **LOOSE), split(synthetic, 3), noise=False)
    bg, gg = values(result)
    central_bg, central_gg = _central(synthetic, CAL)
    assert np.allclose(bg, central_bg, rtol=1e-3)
    assert np.allclose(gg, central_gg, rtol=1e-3)
    assert result["rounds_run"] == clv_fit.DEFAULTS["rounds"] and result["holdout"] is None


def test_cdnow_sample_federated_without_noise_reproduces_the_paper() -> None:
    data = cdnow("CDNOW_sample.txt")
    result, _ = run(spec(calibration_end="1997-09-30", **LOOSE), split(data, 4), noise=False)
    bg, gg = values(result)
    assert np.round(bg, 2).tolist() == [0.24, 4.41, 0.79, 2.43]  # FHL 2005: 0.243, 4.414, 0.793, 2.426
    assert np.round(gg, 2).tolist() == [6.25, 3.74, 15.44]  # Fader & Hardie 2013
    central_bg, central_gg = _central(data, "1997-09-30")
    assert np.allclose(bg, central_bg, rtol=1e-3) and np.allclose(gg, central_gg, rtol=1e-3)
    assert result["converged"] == {"bgnbd": True, "gamma_gamma": True} and result["warning"] is None


def test_a_fit_whose_last_step_its_noise_cannot_explain_is_flagged_not_settled() -> None:
    cov = [[0.01, 0.0], [0.0, 0.04]]  # sds 0.1 and 0.2 on the log scale
    assert settled(0.5, cov)  # within 3 sds of the widest estimate
    assert not settled(0.7, cov)  # more than noise moves it
    assert not settled(MAX_STEP, [[100.0]])  # a capped step never counts as settled


def test_a_dp_run_spends_its_budget_exactly_and_reports_it(synthetic: dict[str, np.ndarray]) -> None:
    job = spec(calibration_end=CAL, holdout_end=HOLD, epsilon=2.0)
    result, spent = run(job, split(synthetic, 3), noise=True, seed=4)
    assert spent == pytest.approx(rho_total(job), rel=1e-12) and spent <= rho_total(job) * (1 + 1e-12)
    assert result["rounds_run"] == result["rounds_planned"] == clv_fit.DEFAULTS["rounds"] + 1
    assert sum(r["rho"] for r in result["budget_split"]) == pytest.approx(result["rho_total"])
    for section in ("bgnbd", "gamma_gamma"):
        for est in result[section].values():
            lo, hi = est["ci95"]
            assert 0 < lo < est["value"] < hi
    bg, _ = values(result)
    central_bg, _ = _central(synthetic, CAL)
    # DP at ε=2 on 2,500 customers: near, not equal. a and b are weakly identified apart at this
    # size (their ridge), the mean dropout probability a/(a+b) is not.
    assert np.allclose(bg[:2], central_bg[:2], rtol=0.3)
    assert bg[2] / bg[2:].sum() == pytest.approx(central_bg[2] / central_bg[2:].sum(), rel=0.2)
    table = result["holdout"]["table"]
    assert [row["label"] for row in table] == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert table[0]["actual"]["value"] == pytest.approx(table[0]["expected"]["value"], rel=0.25)


def test_budget_split_adds_up_and_every_plan_charges_its_share() -> None:
    for params in ({"calibration_end": CAL}, {"calibration_end": CAL, "holdout_end": HOLD, "rounds": 5}):
        job = spec(**params)  # type: ignore[arg-type]
        shares = clv_fit.budget(job)
        assert len(shares) == clv_fit.max_rounds(job)
        assert sum(s["rho"] for s in shares) == pytest.approx(rho_total(job), rel=1e-12)
        assert sum(s["rho"] for s in shares) <= rho_total(job) * (1 + 1e-12)
        for s in shares:
            assert sum(s["parts"].values()) == pytest.approx(s["rho"], rel=1e-12)
        fit_public = clv_fit.start(job)
        plans = [
            clv_fit.plan(job, FIELDS, survivors_t=3, n_nodes=3, round_no=k, public=fit_public)
            for k in range(1, clv_fit._fit_rounds(job) + 1)
        ]
        assert [p.rho for p in plans] == [s["rho"] for s in shares[: len(plans)]]
        for p in plans:
            assert sum(part.rho for part in p.parts) == pytest.approx(p.rho, rel=1e-12)
        with pytest.raises(InvalidRequest, match="outside"):
            clv_fit.plan(job, FIELDS, survivors_t=3, n_nodes=3, round_no=len(shares) + 1, public=fit_public)


# --- one customer with all of its rows ------------------------------------------------------------

day0 = day_number("2020-01-01", "d")
when = st.one_of(st.floats(day0 - 30, day0 + 400), st.just(float("nan")))
money = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.0, float("nan"), float("inf"), 1e308, -1e308])
)
rows = st.lists(st.tuples(st.integers(0, 8), when, money), max_size=60)


def _plans() -> list[tuple[Any, ...]]:
    job = spec(calibration_end=CAL, holdout_end=HOLD, holdout_bins=4)
    odd = {
        "phase": "fit",
        "bgnbd": [-3.0, 4.0, 2.0, -1.0],
        "gg": [3.0, -2.0, 9.0],
        "bgnbd_metric": (np.diag([30.0, 5.0, 50.0, 0.01]) + 0.5).tolist(),
        "gg_metric": (np.diag([100.0, 0.1, 7.0]) - 0.3).tolist(),
    }
    check = {"phase": "check", "bgnbd": [-1.4, 1.5, -0.2, 0.9]}
    out = []
    for round_no, public in ((1, clv_fit.start(job)), (2, odd), (clv_fit.max_rounds(job), check)):
        out.append(clv_fit.plan(job, FIELDS, survivors_t=2, n_nodes=3, round_no=round_no, public=public))
    return out


PLANS = _plans()


def _table(items: list[tuple[int, float, float]]) -> dict[str, np.ndarray]:
    return {
        "customer": np.array([r[0] for r in items], dtype=np.int64),
        "time": np.array([r[1] for r in items], dtype=np.float64),
        "amount": np.array([r[2] for r in items], dtype=np.float64),
    }


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(PLANS) - 1),
    others=rows,
    newcomer=st.lists(st.tuples(when, money), min_size=1, max_size=15),
    whale=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    placement=st.randoms(use_true_random=False),
)
def test_one_customer_with_all_its_rows_moves_each_part_within_its_declared_bounds(
    which: int,
    others: list[tuple[int, float, float]],
    newcomer: list[tuple[float, float]],
    whale: bool,
    seed: int,
    placement: Any,
) -> None:
    plan = PLANS[which]
    if whale:  # a customer with a thousand purchases
        newcomer = [(day0 + i * 0.3, 50.0) for i in range(1000)] + newcomer
    # The newcomer has the largest id, so it is summarised last and a seeded generator rounds
    # everyone else identically; its rows are spread anywhere among the others'.
    items = list(others)
    for item in [(9, *r) for r in newcomer]:
        items.insert(placement.randint(0, len(items)), item)
    before = clv_fit.local_vector(plan, _table(others), rng=np.random.default_rng(seed))
    after = clv_fit.local_vector(plan, _table(items), rng=np.random.default_rng(seed))
    assert before.dtype == np.int64 and before.shape == (plan.length,)
    diff = (after - before).astype(np.float64)
    for part in plan.parts:
        piece = diff[part.start : part.stop]
        assert np.max(np.abs(piece)) <= part.linf_bound
        assert np.abs(piece).sum() <= part.l1_sensitivity + 1e-9
        assert np.linalg.norm(piece) <= part.l2_sensitivity * (1 + 1e-12)


def test_clipping_binds_on_a_whale_and_the_exact_sums_follow_the_vector() -> None:
    plan = PLANS[1]
    whale = _table([(1, day0 + i * 0.5, 1e5) for i in range(800)])
    rows_ = clv_fit.customer_rows(plan, whale)
    assert np.linalg.norm(rows_["bgnbd_grad"]) <= plan.layout["grad_clip"]
    assert np.linalg.norm(rows_["gg_hess"]) <= plan.layout["hessian_clip"]
    vec = clv_fit.local_vector(plan, whale, rng=np.random.default_rng(0))
    scales = np.concatenate([np.full(p.length, p.scale) for p in plan.parts])
    assert np.all(np.abs(vec / scales - clv_fit.exact(plan, whale)) <= 1 / scales + 1e-12)


# --- refusals -------------------------------------------------------------------------------------


def _plan(
    fields: dict[str, FieldSchema] = FIELDS, public: dict[str, Any] | None = None, **params: Any
) -> Any:
    base: dict[str, Any] = {"calibration_end": CAL}
    return clv_fit.plan(spec(**(base | params)), fields, survivors_t=3, n_nodes=3, round_no=1, public=public)


def test_fields_the_policy_does_not_allow_are_refused() -> None:
    core = FIELDS | {"amount": FieldSchema("amount", "float", Tier.CORE_SENSITIVE)}
    with pytest.raises(PolicyViolation, match="core_sensitive"):
        _plan(core)
    with pytest.raises(PolicyViolation, match="not in the dataset"):
        _plan(amount_field="spend")
    with pytest.raises(PolicyViolation, match="customer key"):
        _plan(time_field="customer")
    category = FIELDS | {"amount": FieldSchema("amount", "category", Tier.NON_SENSITIVE)}
    with pytest.raises(PolicyViolation, match="amount of a purchase"):
        _plan(category)
    no_key = {k: f for k, f in FIELDS.items() if k != "customer"}
    with pytest.raises(InvalidRequest, match="customer key"):
        _plan(no_key)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"calibration_end": None}, "calibration_end"),
        ({"calibration_end": "30/09/1997"}, "YYYY-MM-DD"),
        ({"holdout_end": "2020-01-01"}, "after"),
        ({"holdout_end": "2040-01-01"}, "at most"),
        ({"rounds": 1}, "rounds"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"hessian_clip": float("inf")}, "finite"),
        ({"group_by": "channel"}, "group"),
        ({"learning_rate": 0.1}, "not known"),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, Any], match: str) -> None:
    if params.get("calibration_end", "") is None:
        with pytest.raises(InvalidRequest, match=match):
            clv_fit.plan(spec(), FIELDS, survivors_t=3, n_nodes=3, round_no=1, public=None)
        return
    with pytest.raises(InvalidRequest, match=match):
        _plan(**params)


@pytest.mark.parametrize(
    "change",
    [
        {"bgnbd": [0.0, 0.0, 0.0, 50.0]},  # a parameter of e^50: absurd
        {"bgnbd": [0.0, 0.0, 0.0]},
        {"gg": [0.0, "x", 0.0]},
        {"gg_metric": [[float("nan")] * 3] * 3},
        {"bgnbd_metric": np.eye(3).tolist()},
        {"bgnbd_metric": (np.eye(4) * 1e9).tolist()},
        {"phase": "check"},
    ],
)
def test_a_lying_coordinator_cannot_send_absurd_public_inputs(change: dict[str, Any]) -> None:
    job = spec(calibration_end=CAL)
    public = dict(clv_fit.start(job)) | change
    with pytest.raises(InvalidRequest):
        clv_fit.plan(job, FIELDS, survivors_t=3, n_nodes=3, round_no=2, public=public)


def test_public_inputs_stay_valid_json_through_every_step(synthetic: dict[str, np.ndarray]) -> None:
    job = spec(calibration_end=CAL, holdout_end=HOLD, rounds=2, epsilon=4.0)
    public = clv_fit.start(job)
    nodes = split(synthetic, 3)
    for round_no in (1, 2):
        check_public(public)
        plan = clv_fit.plan(job, FIELDS, survivors_t=3, n_nodes=3, round_no=round_no, public=public)
        total = np.sum([clv_fit.local_vector(plan, d, rng=np.random.default_rng(1)) for d in nodes], axis=0)
        released = clv_fit.release(plan, total, summands=3, min_cohort_size=10)
        nxt = clv_fit.step(job, round_no=round_no, public=public, released=released).next_public
        assert nxt is not None
        public = nxt
    assert check_public(public)["phase"] == "check"


def test_too_few_customers_stop_the_fit() -> None:
    job = spec(calibration_end=CAL)
    data = simulate(np.random.default_rng(2), 5, bgnbd=TRUE_BG, gg=TRUE_GG)
    plan = clv_fit.plan(job, FIELDS, survivors_t=1, n_nodes=1, round_no=1, public=None)
    released = clv_fit.release(
        plan, clv_fit.local_vector(plan, data, rng=np.random.default_rng(0)), summands=1, min_cohort_size=10
    )
    with pytest.raises(InvalidRequest, match="too few"):
        clv_fit.step(job, round_no=1, public=clv_fit.start(job), released=released)
