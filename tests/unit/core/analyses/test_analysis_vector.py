"""The shared vector machinery: coding in Z_2^k with wrap-around, bit widths, noise shares."""

from __future__ import annotations

import numpy as np
import pytest
from _analysis_helpers import FIELDS, GROUPS, spec

from tessera.core.analyses import count, mean
from tessera.core.analyses import vector as v
from tessera.core.dp import DpParameterError, QuantisationOverflow
from tessera.core.errors import InvalidRequest


def _mean_plan() -> v.VectorPlan:
    params = {"field": "spend", "lower": 0.0, "upper": 500.0, "group_by": "region", "groups": GROUPS}
    return mean.plan(spec("mean", params), FIELDS, survivors_t=2, n_nodes=3)


@pytest.mark.parametrize("bits", [8, 20, 32, 33, 64])
def test_encode_decode_round_trip_with_wrap(bits: int) -> None:
    rng = np.random.default_rng(7)
    half = 1 << (bits - 1)
    nodes = [rng.integers(-half // 4, half // 4, size=50, dtype=np.int64) for _ in range(3)]
    encoded = [v.encode(x, bits=bits) for x in nodes]
    assert all(e.dtype == np.uint64 for e in encoded)
    # Negative inputs wrap: their codes are large, and the uint64 sum overflows for 64 bits.
    total = encoded[0] + encoded[1] + encoded[2]
    assert np.array_equal(v.decode(total, bits=bits), nodes[0] + nodes[1] + nodes[2])
    assert np.array_equal(v.decode(v.encode(np.array([-1]), bits=bits), bits=bits), [-1])


def test_encode_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(QuantisationOverflow):
        v.encode(np.array([128]), bits=8)


def test_bits_for_grows_with_the_customer_cap_and_fails_closed() -> None:
    plan = _mean_plan()
    small, large = v.bits_for(plan, max_customers=1000), v.bits_for(plan, max_customers=10**8)
    assert 8 <= small < large <= 64
    # The chosen width holds the worst-case sum of n_nodes full nodes (signal part).
    top = max(p.linf_bound for p in plan.parts)
    assert plan.n_nodes * 10**8 * top < 2 ** (large - 1)
    with pytest.raises(DpParameterError):
        v.bits_for(plan, max_customers=2**45)
    with pytest.raises(DpParameterError):
        v.bits_for(plan, max_customers=0)


def test_add_noise_adds_each_parts_share() -> None:
    plan = _mean_plan()
    zero = np.zeros(plan.length, dtype=np.int64)
    rng = np.random.default_rng(11)
    shares = np.stack([v.add_noise(plan, zero, rng=rng) for _ in range(4000)])
    for part in plan.parts:
        sd = shares[:, part.start : part.stop].std()
        expected = part.sigma / np.sqrt(plan.survivors_t)
        assert sd == pytest.approx(expected, rel=0.05)
    assert np.array_equal(zero, np.zeros(plan.length))  # input untouched


def test_add_noise_is_reproducible_with_a_seeded_generator() -> None:
    plan = _mean_plan()
    vec = np.arange(plan.length, dtype=np.int64)
    first = v.add_noise(plan, vec, rng=np.random.default_rng(3))
    second = v.add_noise(plan, vec, rng=np.random.default_rng(3))
    assert np.array_equal(first, second) and not np.array_equal(first, vec)


def test_vectors_of_the_wrong_shape_or_kind_are_refused() -> None:
    plan = count.plan(spec("count", {}), FIELDS, survivors_t=2, n_nodes=3)
    with pytest.raises(InvalidRequest):
        v.add_noise(plan, np.zeros(2, dtype=np.int64), rng=np.random.default_rng(0))
    with pytest.raises(InvalidRequest):
        v.add_noise(plan, np.zeros(1), rng=np.random.default_rng(0))
    with pytest.raises(InvalidRequest, match="summands"):
        count.release(plan, np.zeros(1, dtype=np.int64), summands=1, min_cohort_size=0)
