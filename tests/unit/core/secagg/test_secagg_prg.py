"""Mask PRG: known answers (NIST SP 800-38A and Tessera's own vector) and vectorised equivalence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tessera.core.secagg import prg

VECTORS = json.loads((Path(__file__).parents[3] / "vectors" / "secagg" / "prg_aes256ctr.json").read_text())


def test_nist_aes256_ctr_keystream() -> None:
    v = VECTORS["nist_sp800_38a_f55"]
    stream = prg.keystream(bytes.fromhex(v["key"]), 64, counter=bytes.fromhex(v["initial_counter"]))
    plain = bytes.fromhex(v["plaintext"])
    assert bytes(a ^ b for a, b in zip(stream, plain, strict=True)) == bytes.fromhex(v["ciphertext"])


def test_tessera_prg_known_answer() -> None:
    v = VECTORS["tessera_prg"]
    seed = bytes.fromhex(v["seed"])
    stream = bytes.fromhex(v["keystream_32_bytes"])
    assert prg.keystream(seed, 32) == stream
    # Words are the keystream read little-endian, independently of numpy's view.
    assert [int.from_bytes(stream[i : i + 4], "little") for i in range(0, 32, 4)] == v["uint32_first_8"]
    assert prg.expand(seed, 8, dtype=np.uint32).tolist() == v["uint32_first_8"]
    assert prg.expand(seed, 4, dtype=np.uint64).tolist() == [int(x) for x in v["uint64_first_4"]]


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_add_keystreams_equals_signed_sum_of_expansions(dtype: type) -> None:
    rng = np.random.default_rng(11)
    n = 2 * 65536 + 3  # crosses the internal slice boundary twice
    seeds = [(rng.bytes(32), 1), (rng.bytes(32), -1), (rng.bytes(32), 1)]
    start = rng.integers(0, np.iinfo(dtype).max, size=n, dtype=dtype, endpoint=True)
    acc = start.copy()
    prg.add_keystreams(acc, seeds)
    expected = start.copy()
    for seed, sign in seeds:
        words = prg.expand(seed, n, dtype=dtype)
        expected = expected + words if sign > 0 else expected - words
    assert acc.dtype == dtype
    assert np.array_equal(acc, expected)


def test_prefix_property_and_distinct_seeds() -> None:
    seed = bytes(range(32))
    long = prg.expand(seed, 1000, dtype=np.uint32)
    assert np.array_equal(prg.expand(seed, 10, dtype=np.uint32), long[:10])
    assert not np.array_equal(prg.expand(bytes(32), 10, dtype=np.uint32), long[:10])
    assert prg.expand(seed, 0, dtype=np.uint64).shape == (0,)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        prg.expand(bytes(16), 4, dtype=np.uint32)
    with pytest.raises(TypeError):
        prg.expand(bytes(32), 4, dtype=np.int32)
    with pytest.raises(ValueError, match="sign"):
        prg.add_keystreams(np.zeros(4, np.uint32), [(bytes(32), 2)])
    with pytest.raises(ValueError, match="contiguous"):
        prg.add_keystreams(np.zeros(8, np.uint32)[::2], [(bytes(32), 1)])
