"""Programs of rounds: the driver loop run in memory (no transport), and its refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tessera.core.analyses import mean_descent
from tessera.core.analyses.program import OneRound, Step, check_public, rho_total
from tessera.core.analyses.registry import PROGRAMS, get_program
from tessera.core.analyses.vector import add_noise
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec, Tier

FIELDS = {
    "spend": FieldSchema(name="spend", type="float", tier=Tier.GENERAL_SENSITIVE),
    "region": FieldSchema(name="region", type="category", tier=Tier.NON_SENSITIVE),
}


def _spec(**params: object) -> JobSpec:
    base: dict[str, object] = {"field": "spend", "lower": 0.0, "upper": 100.0, "rounds": 12}
    return JobSpec(
        analysis="mean_descent", dataset="customers", epsilon=8.0, delta=1e-6, params=base | params
    )


def _run(spec: JobSpec, nodes: list[Any], rng: np.random.Generator) -> tuple[list[Step], float]:
    program = get_program(spec.analysis)
    public = program.start(spec)
    steps: list[Step] = []
    spent = 0.0
    for round_no in range(1, program.max_rounds(spec) + 1):
        plan = program.plan(
            spec, FIELDS, survivors_t=len(nodes), n_nodes=len(nodes), round_no=round_no, public=public
        )
        spent += plan.rho
        total = sum(
            add_noise(
                plan, program.local_vector(plan, x if isinstance(x, dict) else {"spend": x}, rng=rng), rng=rng
            )
            for x in nodes
        )
        released = program.release(plan, np.asarray(total), summands=len(nodes), min_cohort_size=10)
        step = program.step(spec, round_no=round_no, public=public, released=released)
        steps.append(step)
        if step.done:
            break
        assert step.next_public is not None
        public = step.next_public
    return steps, spent


def test_mean_descent_converges_to_the_mean_and_spends_at_most_its_budget() -> None:
    rng = np.random.default_rng(7)
    nodes = [rng.uniform(10, 90, size=4000) for _ in range(3)]
    spec = _spec()
    steps, spent = _run(spec, nodes, rng)
    truth = float(np.mean(np.concatenate(nodes)))
    assert steps[-1].result is not None
    assert steps[-1].result["estimate"] == pytest.approx(truth, abs=0.5)
    assert len(steps) == 12
    assert spent == pytest.approx(rho_total(spec))


def test_mean_descent_steps_each_group_towards_its_own_mean() -> None:
    rng = np.random.default_rng(9)
    regions = np.array(["north", "south", "east"], dtype=object)
    nodes = []
    for _ in range(3):
        region = regions[rng.integers(0, 3, size=3000)]
        spend = np.where(region == "north", 20.0, np.where(region == "south", 50.0, 80.0)) + rng.normal(
            0, 5, 3000
        )
        nodes.append({"spend": spend, "region": region})
    spec = _spec(group_by="region", groups=("north", "south", "east"), rounds=15)
    steps, _ = _run(spec, nodes, rng)
    result = steps[-1].result
    assert result is not None
    for label, truth in (("north", 20.0), ("south", 50.0), ("east", 80.0)):
        assert result["estimates"][label] == pytest.approx(truth, abs=1.0)
    assert result["estimates"]["other"] == 50.0  # nobody there: suppressed every round, never moved


def test_mean_descent_stops_early_and_leaves_budget_unspent() -> None:
    rng = np.random.default_rng(8)
    nodes = [rng.uniform(10, 90, size=4000) for _ in range(3)]
    spec = _spec(learning_rate=1.0, tolerance=0.01, rounds=20)
    steps, spent = _run(spec, nodes, rng)
    assert steps[-1].done and len(steps) < 20
    assert steps[-1].result is not None and steps[-1].result["converged"]
    assert spent < rho_total(spec)


def test_each_round_is_priced_from_the_spec_alone() -> None:
    spec = _spec(rounds=4)
    plans = [
        mean_descent.plan(spec, FIELDS, survivors_t=3, n_nodes=3, round_no=r, public={"theta": [50.0]})
        for r in range(1, 5)
    ]
    assert sum(p.rho for p in plans) == pytest.approx(rho_total(spec))
    with pytest.raises(InvalidRequest, match="outside"):
        mean_descent.plan(spec, FIELDS, survivors_t=3, n_nodes=3, round_no=5, public={"theta": [50.0]})


@pytest.mark.parametrize(
    "public", [{"theta": [500.0]}, {"theta": ["x"]}, {}, {"theta": [True]}, {"theta": [1.0, 2.0]}]
)
def test_a_lying_coordinator_cannot_move_theta_outside_the_bounds(public: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        mean_descent.plan(_spec(), FIELDS, survivors_t=3, n_nodes=3, round_no=1, public=public)


def test_one_round_analyses_are_programs_of_one_round() -> None:
    count = PROGRAMS["count"]
    assert isinstance(count, OneRound)
    spec = JobSpec(analysis="count", dataset="customers", epsilon=1.0, delta=1e-6)
    assert count.max_rounds(spec) == 1
    with pytest.raises(InvalidRequest):
        count.plan(spec, FIELDS, survivors_t=3, n_nodes=3, round_no=2, public={})
    released = {"cells": []}
    assert count.step(spec, round_no=1, public={}, released=released).result is released


@pytest.mark.parametrize("bad", [[1], {"x": float("nan")}, {"x": {"y": {"z": {"w": {"v": {"u": 1}}}}}}])
def test_public_inputs_must_be_finite_json_objects(bad: object) -> None:
    with pytest.raises(InvalidRequest):
        check_public(bad)
