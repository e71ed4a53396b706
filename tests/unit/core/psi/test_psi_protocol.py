"""The pair protocol in memory: exact counts without noise, the dummies' arithmetic with noise."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.core.errors import InvalidRequest
from tessera.core.psi import group
from tessera.core.psi.noise import DummyPlan, interval, job_rho, plan_dummies
from tessera.core.psi.parallel import Blinder
from tessera.core.psi.protocol import PairSide, count_matches, shuffle

NO_NOISE = DummyPlan(rho=1.0, pairs=1, sigma=1.0, cap=0, tail_delta=0.0)


def _run(x: list[str], y: list[str], plan_a: DummyPlan, plan_b: DummyPlan, seed: int = 0) -> tuple[int, dict]:
    rng = np.random.default_rng(seed)
    blinder = Blinder(workers=1)
    side_a, m_a = PairSide.new(plan_a, rng=rng)
    side_b, m_b = PairSide.new(plan_b, rng=rng)
    u_a = side_a.blinded("email", x, extra=m_a, blinder=blinder)
    u_b = side_b.blinded("email", y, extra=m_b, blinder=blinder)
    v_a = side_a.reblinded(side_b.public, u_b, blinder=blinder)
    v_b = side_b.reblinded(side_a.public, u_a, blinder=blinder)
    seen = {"u_a": u_a, "u_b": u_b, "v_a": v_a, "v_b": v_b, "d": len(side_a.matched) + len(side_b.matched)}
    return count_matches(v_a, v_b), seen


@pytest.mark.parametrize(("n_x", "n_y", "shared"), [(0, 0, 0), (1, 1, 1), (50, 30, 0), (200, 120, 77)])
def test_counts_are_exact_without_noise(n_x: int, n_y: int, shared: int) -> None:
    x = [f"a{i}@example.com" for i in range(n_x - shared)] + [f"s{i}@example.com" for i in range(shared)]
    y = [f"b{i}@example.com" for i in range(n_y - shared)] + [f"s{i}@example.com" for i in range(shared)]
    count, _ = _run(x, y, NO_NOISE, NO_NOISE)
    assert count == shared


def test_the_dummies_add_exactly_what_each_party_drew() -> None:
    plan = plan_dummies(rho=job_rho(epsilon=1.0, delta=1e-6), pairs=2, delta=1e-6)
    x = [f"s{i}" for i in range(40)] + [f"a{i}" for i in range(60)]
    y = [f"s{i}" for i in range(40)] + [f"b{i}" for i in range(10)]
    count, seen = _run(x, y, plan, plan, seed=3)
    assert count == 40 + seen["d"]
    assert len(seen["v_a"]) // 32 == len(seen["u_b"]) // 32 + 2 * plan.cap  # constant padding
    estimate, lo, hi = interval(count, (plan, plan))
    assert lo <= estimate <= hi


def test_no_list_holds_an_unblinded_hash() -> None:
    x = [f"s{i}" for i in range(30)]
    count, seen = _run(x, x, NO_NOISE, NO_NOISE)
    plain = {group.hash_to_group("email", v) for v in x}
    for name in ("u_a", "u_b", "v_a", "v_b"):
        blob = seen[name]
        assert not plain & {blob[i : i + 32] for i in range(0, len(blob), 32)}
    assert count == 30


def test_shuffle_permutes() -> None:
    blob = group.random_elements(64)
    mixed = shuffle(blob)
    assert mixed != blob
    assert sorted(mixed[i : i + 32] for i in range(0, 2048, 32)) == sorted(
        blob[i : i + 32] for i in range(0, 2048, 32)
    )


def test_count_refuses_ragged_lists() -> None:
    with pytest.raises(InvalidRequest):
        count_matches(b"\x01" * 33, b"")
