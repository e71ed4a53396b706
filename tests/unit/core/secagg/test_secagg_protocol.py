"""End-to-end rounds: correct sums, wrap-around, complete and sparse graphs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core.errors import InvalidRequest
from tessera.core.secagg import EpochConfig, sparse_graph
from tessera.core.secagg.testing import simulate_round


def _exact_sum(vectors: dict[str, np.ndarray], nodes: tuple[str, ...], bits: int) -> list[int]:
    return [
        sum(int(vectors[n][i]) for n in nodes) % 2**bits for i in range(len(next(iter(vectors.values()))))
    ]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 8),
    bits=st.sampled_from([32, 64, 20, 40, 1]),
    length=st.integers(1, 40),
    sparse=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_is_correct(n: int, bits: int, length: int, sparse: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    nodes = [f"node{i}" for i in range(n)]
    dtype = np.uint32 if bits <= 32 else np.uint64
    vectors = {v: rng.integers(0, 2**bits, size=length, dtype=np.uint64).astype(dtype) for v in nodes}
    degree = 4 if n >= 6 else 2
    graph = sparse_graph(nodes, seed=rng.bytes(32), degree=degree) if sparse else None
    # A sparse graph must bear n - t drops: the threshold is at least n - degree + 1.
    threshold = max(n // 2 + 1, n - degree + 1) if sparse else n // 2 + 1
    result = simulate_round(vectors, threshold=threshold, bits=bits, graph=graph, rng=rng)
    assert result.survivors == tuple(sorted(nodes)) and result.dropped == ()
    assert result.total.dtype == dtype
    assert result.total.tolist() == _exact_sum(vectors, result.survivors, bits)


@pytest.mark.parametrize(("dtype", "bits"), [(np.uint32, 32), (np.uint64, 64)])
def test_wrap_around(dtype: type, bits: int) -> None:
    top = np.iinfo(dtype).max
    vectors: dict[str, np.ndarray] = {f"n{i}": np.full(3, top, dtype=dtype) for i in range(5)}
    result = simulate_round(vectors, threshold=3, bits=bits, rng=np.random.default_rng(1))
    # 5 * (2^k - 1) = -5 mod 2^k
    assert result.total.tolist() == [2**bits - 5] * 3


def test_masked_input_hides_the_input(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(4, threshold=3, length=64)
    forwarded = r.share(r.advertise())
    masked = r.clients["n0"].masked_input(forwarded["n0"], r.inputs["n0"], 1)
    assert masked.vector.dtype == np.uint32
    assert np.count_nonzero(masked.vector == r.inputs["n0"]) < 4


def test_larger_sparse_round(make_epoch: Callable[..., Any]) -> None:
    nodes = [f"n{i}" for i in range(12)]
    graph = sparse_graph(nodes, seed=bytes(range(32)), degree=4)
    r = make_epoch(12, threshold=9, graph=graph)
    assert r.config.share_threshold == 3
    outcome = r.unmask(r.sign(r.mask_inputs(r.share(r.advertise()))))
    assert outcome.result.total.tolist() == r.expected_sum(nodes)


def test_config_validation() -> None:
    base = {
        "job_id": "j",
        "epoch": 0,
        "first_round": 1,
        "participants": ("a", "b", "c", "d"),
        "bits": 32,
        "length": 4,
    }
    with pytest.raises(InvalidRequest, match="strict majority"):
        EpochConfig(threshold=2, **base)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="bits"):
        EpochConfig(threshold=3, **{**base, "bits": 65})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="distinct"):
        EpochConfig(threshold=3, **{**base, "participants": ("a", "a", "b", "c")})  # type: ignore[arg-type]
    cfg = EpochConfig(threshold=3, **{**base, "bits": 20})  # type: ignore[arg-type]
    cfg.check_vector(np.array([0, 0, 0, 2**20 - 1], dtype=np.uint32), what="input")
    with pytest.raises(InvalidRequest, match="2\\^bits"):
        cfg.check_vector(np.array([0, 0, 0, 2**20], dtype=np.uint32), what="input")
    with pytest.raises(InvalidRequest, match="no wider"):
        cfg.check_vector(np.array([0, 0, 0, 1], dtype=np.uint64), what="input")
    with pytest.raises(InvalidRequest, match="length"):
        cfg.check_vector(np.array([0, 1], dtype=np.uint32), what="input")
    with pytest.raises(InvalidRequest, match="unsigned"):
        cfg.check_vector(np.array([0, 0, 0, 1], dtype=np.int32), what="input")
