"""Plans: deterministic, JSON-ready, and every privacy or parameter refusal fails closed."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from _analysis_helpers import FIELDS, GROUPS, spec

from tessera.core.analyses import count, histogram, mean, quantiles, sums
from tessera.core.analyses import vector as v
from tessera.core.dp import ddg_rho, distributed_gaussian_rho, rho_for
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import Stage

MODULES = (count, sums, mean, histogram, quantiles)
GOOD: dict[str, dict[str, Any]] = {
    "count": {"group_by": "region", "groups": GROUPS},
    "sum": {"field": "spend", "lower": 0.0, "upper": 500.0, "group_by": "region", "groups": GROUPS},
    "mean": {"field": "spend", "lower": 0, "upper": 500, "group_by": "region", "groups": GROUPS},
    "histogram": {"field": "spend", "lower": 0.0, "upper": 500.0, "bins": 10},
    "quantiles": {"field": "spend", "lower": 0.0, "upper": 500.0, "levels": (0.5, 0.9)},
}


def make(module: Any, params: dict[str, Any], **kw: Any) -> v.VectorPlan:
    plan: v.VectorPlan = module.plan(spec(module.INFO.name, params, **kw), FIELDS, survivors_t=2, n_nodes=3)
    return plan


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.INFO.name)
def test_info_declares_one_dp_secagg_round(module: Any) -> None:
    info = module.INFO
    assert info.differentially_private and not info.resumable and info.min_nodes == 3
    assert info.stages == (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.INFO.name)
def test_plan_is_deterministic_and_json_ready(module: Any) -> None:
    first, second = make(module, GOOD[module.INFO.name]), make(module, GOOD[module.INFO.name])
    assert first == second
    assert first.as_dict() == second.as_dict()
    assert json.loads(json.dumps(first.as_dict())) == first.as_dict()
    # Parts split the job's ρ exactly (zCDP composition adds them back).
    assert math.isclose(sum(p.rho for p in first.parts), first.rho, rel_tol=1e-12)
    assert first.rho == pytest.approx(rho_for(epsilon=1.0, delta=1e-6))


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.INFO.name)
def test_each_part_sigma_meets_its_rho(module: Any) -> None:
    plan = make(module, GOOD[module.INFO.name])
    for part in plan.parts:
        # Priced by the accountant that calibrated it (the tight one of the exact sum) ...
        cost = ddg_rho(
            sigma_total=part.sigma,
            survivors_t=plan.survivors_t,
            l1=part.l1_sensitivity,
            linf=part.linf_bound,
            l2=part.l2_sensitivity,
            dim=part.stop - part.start,
        )
        assert cost <= part.rho * (1 + 1e-12)
        assert cost >= part.rho * 0.999  # and is not wastefully large (σ is found to 1e-4)
        # ... which is never looser than the KLS 2021 bound it keeps as a fallback.
        if part.sigma / math.sqrt(plan.survivors_t) >= 0.5:
            kls = distributed_gaussian_rho(
                l1=part.l1_sensitivity,
                l2=part.l2_sensitivity,
                sigma_node=part.sigma / math.sqrt(plan.survivors_t),
                summands=plan.survivors_t,
                dim=part.stop - part.start,
            )
            assert cost <= kls * (1 + 1e-12)


def test_layouts() -> None:
    assert make(count, GOOD["count"]).layout["groups"] == ("north", "south", "other")
    assert make(count, {}).layout["groups"] == ("all",)
    assert make(count, {}).fields == ()
    moments = make(mean, GOOD["mean"])
    assert moments.length == 6 and [p.name for p in moments.parts] == ["count", "sum"]
    assert moments.fields == ("spend", "region")
    hist = make(histogram, GOOD["histogram"])
    assert hist.length == 10 and hist.layout["edges"][0] == 0.0 and hist.layout["edges"][-1] == 500.0
    cat = make(histogram, {"field": "segment", "categories": ("a", "b")})
    assert cat.layout["bins"] == ("a", "b", "other")
    q = make(quantiles, {"field": "spend", "lower": 0, "upper": 1})
    assert q.length == 64 and q.layout["levels"] == (0.25, 0.5, 0.75)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.INFO.name)
def test_core_sensitive_field_is_vetoed(module: Any) -> None:
    params = dict(GOOD[module.INFO.name])
    if "field" in params:
        params["field"] = "income"
    else:
        params = {"group_by": "email", "groups": ("x",)}
    with pytest.raises(PolicyViolation) as info:
        make(module, params)
    assert info.value.code == "policy.core_sensitive_field"
    assert "never leave the node" in info.value.message


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.INFO.name)
def test_group_by_on_general_sensitive_is_vetoed(module: Any) -> None:
    params = GOOD[module.INFO.name] | {"group_by": "segment", "groups": ("a",)}
    with pytest.raises(PolicyViolation) as info:
        make(module, params)
    assert info.value.code == "policy.group_by_tier"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.INFO.name)
def test_unknown_field_is_vetoed(module: Any) -> None:
    params = GOOD[module.INFO.name] | {"group_by": "planet", "groups": ("x",)}
    with pytest.raises(PolicyViolation) as info:
        make(module, params)
    assert info.value.code == "policy.unknown_field"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.INFO.name)
@pytest.mark.parametrize(("epsilon", "delta"), [(0.0, 1e-6), (1.0, 0.0)])
def test_gaussian_noise_needs_epsilon_and_delta(module: Any, epsilon: float, delta: float) -> None:
    with pytest.raises(InvalidRequest, match="epsilon > 0 and delta"):
        make(module, GOOD[module.INFO.name], epsilon=epsilon, delta=delta)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.INFO.name)
def test_group_by_needs_public_groups(module: Any) -> None:
    params = {k: x for k, x in GOOD[module.INFO.name].items() if k != "groups"} | {"group_by": "region"}
    with pytest.raises(InvalidRequest, match="'groups' is required"):
        make(module, params)


@pytest.mark.parametrize("module", (sums, mean, quantiles), ids=lambda m: m.INFO.name)
@pytest.mark.parametrize("missing", ["lower", "upper"])
def test_missing_bound_fails_closed(module: Any, missing: str) -> None:
    params = {k: x for k, x in GOOD[module.INFO.name].items() if k != missing}
    with pytest.raises(InvalidRequest, match=f"'{missing}' is required"):
        make(module, params)


@pytest.mark.parametrize(
    ("module", "params", "name"),
    [
        (sums, {"field": "spend", "lower": 5.0, "upper": 5.0}, "lower"),
        (sums, {"field": "region", "lower": 0.0, "upper": 5.0}, "field"),
        (sums, {"lower": 0.0, "upper": 5.0}, "field"),
        (mean, {"field": "spend", "lower": 0.0, "upper": float("inf")}, "upper"),
        (mean, {"field": "spend", "lower": 0.0, "upper": 1.0, "lowr": 2.0}, "lowr"),
        (count, {"groups": GROUPS}, "groups"),
        (count, {"group_by": "region", "groups": ("north", "north")}, "groups"),
        (count, {"group_by": "region", "groups": ("other",)}, "groups"),
        (count, {"group_by": "visits", "groups": ("1",)}, "group_by"),
        (histogram, {"field": "spend", "lower": 0.0, "upper": 1.0}, "bins"),
        (histogram, {"field": "spend", "lower": 0.0, "upper": 1.0, "bins": 0}, "bins"),
        (histogram, {"field": "segment"}, "categories"),
        (histogram, {"field": "segment", "categories": ("a",), "bins": 3}, "bins"),
        (
            histogram,
            {"field": "spend", "lower": 0.0, "upper": 1.0, "bins": 2, "categories": ("a",)},
            "categories",
        ),
        (quantiles, {"field": "spend", "lower": 0.0, "upper": 1.0, "levels": (0.5, 1.0)}, "levels"),
        (quantiles, {"field": "segment", "lower": 0.0, "upper": 1.0}, "field"),
    ],
)
def test_bad_parameter_is_named(module: Any, params: dict[str, Any], name: str) -> None:
    with pytest.raises(InvalidRequest, match=f"'{name}'"):
        make(module, params)


def test_round_sizes_are_checked() -> None:
    with pytest.raises(InvalidRequest, match="survivors_t"):
        count.plan(spec("count", {}), FIELDS, survivors_t=4, n_nodes=3)
