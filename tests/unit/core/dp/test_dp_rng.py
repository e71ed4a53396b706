"""The AES-256-CTR generator: known answers, exact laws, fail-closed surface, samplers on top."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tessera.core.dp import noise, pmf
from tessera.core.dp.quantise import stochastic_round
from tessera.core.dp.rng import AesCtrGenerator, secure_generator

KEY = bytes(range(32))
VECTOR = Path(__file__).parents[3] / "vectors" / "dp" / "aes_ctr_generator.json"
N = 200_000


def test_words_are_the_aes_ctr_keystream_known_answer():
    vector = json.loads(VECTOR.read_text())
    words = AesCtrGenerator(key=bytes.fromhex(vector["key_hex"])).words(4)
    assert [str(int(w)) for w in words] == vector["first_words"]
    # Independently: CTR block i is AES_k(i as a 128-bit big-endian counter), read as 2 words.
    ecb = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()  # a reference only
    blocks = ecb.update(b"".join(i.to_bytes(16, "big") for i in range(2)))
    assert words.tolist() == np.frombuffer(blocks, dtype="<u8").tolist()


def test_explicit_key_reproduces_and_fresh_keys_differ():
    a, b = AesCtrGenerator(key=KEY), AesCtrGenerator(key=KEY)
    assert np.array_equal(a.random(1000), b.random(1000))
    assert not np.array_equal(secure_generator().words(8), secure_generator().words(8))
    # Chunking never repeats keystream: a long draw equals the same draws made piecemeal.
    long = AesCtrGenerator(key=KEY).words(100_000)
    parts = AesCtrGenerator(key=KEY)
    assert np.array_equal(long, np.concatenate([parts.words(33_333), parts.words(66_667)]))


def test_uniform_and_exponential_laws():
    g = AesCtrGenerator(key=KEY)
    u = g.random(N)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.all(u * 2.0**53 == np.floor(u * 2.0**53))  # 53-bit grid, as numpy
    counts = np.bincount((u * 20).astype(int), minlength=20)
    chi2 = float(np.sum((counts - N / 20) ** 2 / (N / 20)))
    assert chi2 < 50.0  # 19 dof: p ~ 1e-4
    e = g.standard_exponential(N)
    assert e.min() > 0.0 and e.max() <= 53 * math.log(2)
    assert e.mean() == pytest.approx(1.0, abs=0.01) and e.var() == pytest.approx(1.0, abs=0.03)
    # P(E > x) = e^-x at a few points (3.5 standard errors)
    for x in (0.5, 2.0, 5.0):
        p = math.exp(-x)
        assert abs(float(np.mean(e > x)) - p) < 3.5 * math.sqrt(p * (1 - p) / N)


def test_geometric_matches_its_pmf(gof, p_min):
    p = 0.3
    draws = AesCtrGenerator(key=KEY).geometric(p, N)

    def geometric_pmf(k):
        k = np.asarray(k)
        return np.where(k >= 1, (1 - p) ** np.maximum(k - 1, 0) * p, 0.0)

    assert gof(draws, geometric_pmf) >= p_min


def test_integers_full_word_and_small_ranges():
    g = AesCtrGenerator(key=KEY)
    words = g.integers(0, np.iinfo(np.uint64).max, size=4, dtype=np.uint64, endpoint=True)
    assert words.dtype == np.uint64
    small = g.integers(3, 9, size=60_000)
    assert small.min() == 3 and small.max() == 8
    assert np.all(np.abs(np.bincount(small - 3) - 10_000) < 450)
    assert g.integers(5, 6) == 5


def test_discrete_gaussian_driven_by_aes_fits_the_exact_pmf(gof, p_min):
    for sigma in (0.6, 7.5, 1000.5):
        draws = noise.discrete_gaussian(sigma=sigma, size=N, rng=AesCtrGenerator(key=KEY))
        assert gof(draws, lambda x, s=sigma: pmf.discrete_gaussian_pmf(x, sigma=s)) >= p_min


def test_discrete_laplace_driven_by_aes_fits_the_exact_pmf(gof, p_min):
    draws = noise.discrete_laplace(scale=4.0, size=N, rng=AesCtrGenerator(key=KEY))
    assert gof(draws, lambda x: pmf.discrete_laplace_pmf(x, scale=4.0)) >= p_min


def test_stochastic_rounding_driven_by_aes_is_unbiased():
    values = np.full(N, 0.3)
    q = stochastic_round(values, scale=1.0, rng=AesCtrGenerator(key=KEY))
    assert set(np.unique(q).tolist()) == {0, 1}
    assert q.mean() == pytest.approx(0.3, abs=3.5 * math.sqrt(0.21 / N))


def test_everything_else_fails_closed():
    g = secure_generator()
    for name in ("normal", "poisson", "negative_binomial", "bit_generator", "choice", "spawn"):
        with pytest.raises(NotImplementedError):
            getattr(g, name)
    with pytest.raises(NotImplementedError):
        noise.skellam(variance=4.0, size=3, rng=g)
    assert "key" not in repr(g).replace("<key hidden>", "")


def test_bad_keys_are_refused():
    with pytest.raises(ValueError):
        AesCtrGenerator(key=b"short")
    with pytest.raises(TypeError):
        AesCtrGenerator(key="0" * 32)  # type: ignore[arg-type]
