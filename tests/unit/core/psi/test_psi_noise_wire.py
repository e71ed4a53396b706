"""The dummies' sizing and sampling, the frames, and the overlap parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.analyses import overlap
from tessera.core.dp import rho_to_epsilon
from tessera.core.errors import InvalidRequest
from tessera.core.psi import group
from tessera.core.psi.noise import (
    TAIL_SHARE,
    _tail,
    draw_counts,
    interval,
    job_rho,
    plan_dummies,
    truncated_pmf,
)
from tessera.core.psi.wire import Assembler, Frame, FrameKind, refusal, split
from tessera.core.types import JobSpec


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 4.0), st.integers(1, 8), st.sampled_from([1e-5, 1e-6, 1e-9]))
def test_plan_meets_the_job_budget(epsilon: float, pairs: int, delta: float) -> None:
    rho = job_rho(epsilon=epsilon, delta=delta)
    plan = plan_dummies(rho=rho, pairs=pairs, delta=delta)
    # k pairs, one coordinate of sensitivity one each: k / (2σ²) is exactly the rho charged.
    assert math.isclose(pairs / (2 * plan.sigma**2), rho, rel_tol=1e-9)
    assert rho_to_epsilon(rho, delta=delta * (1 - TAIL_SHARE)) <= epsilon * (1 + 1e-9)
    assert plan.tail_delta <= TAIL_SHARE * delta
    # T is the smallest cap that fits: one less would not.
    assert _tail(plan.sigma, plan.cap - 1) * 2 * pairs > TAIL_SHARE * delta or plan.cap == 1


def test_counts_stay_in_their_support_and_are_centred() -> None:
    plan = plan_dummies(rho=job_rho(epsilon=0.5, delta=1e-6), pairs=2, delta=1e-6)
    counts = draw_counts(plan, 20_000, rng=np.random.default_rng(1))
    assert counts.min() >= 0 and counts.max() <= 2 * plan.cap
    assert abs(counts.mean() - plan.cap) < 4 * plan.sigma / math.sqrt(20_000)
    assert abs(counts.std() - plan.sigma) < 0.05 * plan.sigma
    assert math.isclose(truncated_pmf(plan).sum(), 1.0)


def test_interval_covers_at_its_level() -> None:
    plan = plan_dummies(rho=job_rho(epsilon=1.0, delta=1e-6), pairs=1, delta=1e-6)
    rng = np.random.default_rng(2)
    truth, hits, trials = 500, 0, 2000
    d = draw_counts(plan, 2 * trials, rng=rng).reshape(trials, 2)
    for a, b in d:
        _, low, high = interval(truth + int(a) + int(b), (plan, plan))
        hits += low <= truth <= high
    assert 0.93 <= hits / trials <= 0.98


def test_frames_round_trip_and_reassemble() -> None:
    elements = group.random_elements(20)
    public = group.random_elements(1)
    frames = list(split(FrameKind.BLINDED, 3, elements, public=public, expect=2, part_elements=6))
    assert [f.parts for f in frames] == [4] * 4
    book = Assembler()
    for f in reversed(frames):
        book.add(Frame.decode(f.encode()))
    assert book.whole(3) and book.elements(3) == elements and book.public[3] == public
    empty = list(split(FrameKind.REBLINDED, 0, b"", public=public))
    assert len(empty) == 1 and empty[0].count == 0
    no = refusal(5, "not with this partner")
    book.add(Frame.decode(no.encode()))
    assert book.whole(5) and book.refused[5] == "not with this partner"


@pytest.mark.parametrize(
    "data", [b"", b"XXXX" + bytes(60), Frame(FrameKind.BLINDED, 0, 0, 1, b"").encode()[:10]]
)
def test_bad_frames_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        Frame.decode(data)


def test_parts_that_disagree_are_refused() -> None:
    book = Assembler()
    book.add(Frame(FrameKind.BLINDED, 0, 0, 2, group.random_elements(1), group.random_elements(1)))
    with pytest.raises(InvalidRequest):
        book.add(Frame(FrameKind.BLINDED, 0, 1, 3, group.random_elements(1), group.random_elements(1)))


def test_parameters() -> None:
    spec = JobSpec(
        analysis="overlap",
        epsilon=1.0,
        delta=1e-6,
        params={"identifier": "phone", "filter": ("rfm_segment=At risk", "bank:region=north")},
    )
    params = overlap.parse(spec)
    assert params.identifier == "phone"
    assert params.label_for("bank") == overlap.Label("region", "north")
    assert params.label_for("telco") == overlap.Label("rfm_segment", "At risk")
    for bad in (
        {"identifier": "name"},
        {"filter": ("region",)},
        {"filter": ("a=1", "b=2")},
        {"colour": "red"},
    ):
        with pytest.raises(InvalidRequest):
            overlap.parse(JobSpec(analysis="overlap", epsilon=1.0, delta=1e-6, params=bad))
    with pytest.raises(InvalidRequest):
        overlap.parse(JobSpec(analysis="overlap", epsilon=1.0, delta=0.0))
    pairs = overlap.pairs_of(["telco", "bank", "retailer"])
    assert pairs == [("bank", "retailer"), ("bank", "telco"), ("retailer", "telco")]
    assert overlap.read_blind_input(overlap.blind_input(pairs, "telco")) == {1: "bank", 2: "retailer"}
