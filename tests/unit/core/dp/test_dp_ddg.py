"""The tight accountant of the distributed discrete Gaussian against independent references.

References: Google's ``dp-accounting`` (PLD of the discrete Gaussian at t = 1, RDP of the
continuous Gaussian), and a brute-force float64 convolution of the shares written here apart from
``ddg`` (plain ``np.convolve``, no truncation accounting), from which exact hockey-stick δ(ε) and
Rényi divergences are read. The claim attacked: the accountant never reports a smaller ε or ρ
than the exact one.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution as pld
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.analyses.vector import sigma_for
from tessera.core.dp import ddg
from tessera.core.dp.accounting import distributed_gaussian_rho, rho_to_epsilon
from tessera.core.dp.ddg import ddg_rho, ddg_sigma, ddg_sum_variance
from tessera.core.dp.errors import DpParameterError

VECTORS = Path(__file__).parents[3] / "vectors" / "dp" / "ddg_rho.json"


def brute_sum_pmf(sigma_total: float, t: int) -> np.ndarray:
    """pmf of the sum of t shares N_Z(0, σ²/t) on [-R, R] (index R is 0), plain float64."""
    s = sigma_total / math.sqrt(t)
    half = math.ceil(40 * s) + 2
    y = np.arange(-half, half + 1, dtype=np.float64)
    share = np.exp(-(y * y) / (2 * s * s))
    share /= share.sum()
    out = share
    for _ in range(t - 1):
        out = np.convolve(out, share)
        keep = np.nonzero(out > 1e-300)[0]
        lo = min(keep[0], out.size - 1 - keep[-1])
        out = out[lo : out.size - lo]
    return out / out.sum()


def hockey_delta(pmf: np.ndarray, shift: int, epsilon: float) -> float:
    """Exact δ(ε) = Σ max(0, P(x) - e^ε Q(x)) for Q = P shifted by ``shift``, both directions."""
    p = np.concatenate((pmf, np.zeros(shift)))
    q = np.concatenate((np.zeros(shift), pmf))
    return max(
        float(np.sum(np.maximum(0.0, p - math.exp(epsilon) * q))),
        float(np.sum(np.maximum(0.0, q - math.exp(epsilon) * p))),
    )


def renyi(pmf: np.ndarray, shift: int, alpha: float) -> float:
    keep = pmf > 1e-250
    lp = np.where(keep, np.log(np.where(keep, pmf, 1.0)), -np.inf)
    a, b = lp[shift:], lp[:-shift]
    ok = np.isfinite(a) & np.isfinite(b)
    terms = alpha * a[ok] + (1 - alpha) * b[ok]
    top = terms.max()
    return float((top + math.log(np.sum(np.exp(terms - top)))) / (alpha - 1))


# (σ_total, t, Δ): small shares (σ/√t < 1/2, where KLS does not even apply), the band around
# σ/√t ≈ 0.6-1 where discreteness matters most, and near-Gaussian sums.
GRID = [
    (4.0, 100, 1),
    (7.4, 400, 1),
    (3.3, 30, 1),
    (5.0, 40, 1),
    (2.2, 3, 1),
    (9.0, 50, 2),
    (6.0, 12, 3),
    (12.0, 9, 4),
]


@pytest.mark.parametrize(("sigma", "t", "shift"), GRID)
def test_never_below_the_exact_renyi_divergences(sigma, t, shift):
    rho = ddg_rho(sigma_total=sigma, survivors_t=t, l1=shift, l2=shift, dim=1)
    pmf = brute_sum_pmf(sigma, t)
    exact = max(renyi(pmf, shift, a) / a for a in (1.001, 1.5, 2.0, 4.0, 8.0, 16.0))
    # 1e-9: the brute force's own float error (a 1e-14 error in log Σ, divided by α - 1 = 1e-3).
    assert rho >= exact * (1 - 1e-9)
    # and tight: within 5% of the exact supremum over these orders (a Gaussian is flat in α)
    assert rho <= exact * 1.05


@pytest.mark.parametrize(("sigma", "t", "shift"), GRID)
@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-9])
def test_never_a_smaller_epsilon_than_the_exact_one(sigma, t, shift, delta):
    rho = ddg_rho(sigma_total=sigma, survivors_t=t, l1=shift, l2=shift, dim=1)
    eps = rho_to_epsilon(rho, delta=delta)
    pmf = brute_sum_pmf(sigma, t)
    # The exact δ at our ε is at most δ, i.e. the exact ε at δ is at most ours.
    assert hockey_delta(pmf, shift, eps) <= delta * (1 + 1e-9)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 3.0, 10.0])
def test_single_discrete_gaussian_against_dp_accounting_pld(sigma):
    rho = ddg_rho(sigma_total=sigma, survivors_t=1, l1=1, l2=1, dim=1)
    # t = 1 is the discrete Gaussian: Canonne-Kamath-Steinke give ρ <= 1/(2σ²); we are that tight.
    assert rho <= 1 / (2 * sigma * sigma) * (1 + 2e-3)
    for delta in (1e-4, 1e-8):
        exact = pld.from_discrete_gaussian_mechanism(sigma, sensitivity=1).get_epsilon_for_delta(delta)
        assert rho_to_epsilon(rho, delta=delta) >= exact


def test_continuous_gaussian_limit_against_dp_accounting_rdp():
    orders = [1.5, 2.0, 4.0, 16.0, 64.0]
    for sigma, t in ((300.0, 10), (2000.0, 1000)):
        accountant = rdp.RdpAccountant(orders)
        accountant.compose(dp_event.GaussianDpEvent(noise_multiplier=sigma))
        gaussian = max(float(r) / a for r, a in zip(accountant._rdp, orders, strict=True))
        rho = ddg_rho(sigma_total=sigma, survivors_t=t, l1=1, l2=1, dim=1)
        assert rho == pytest.approx(gaussian, rel=2e-3)
        assert rho >= gaussian * (1 - 1e-9)


def test_dimension_does_not_inflate_unshifted_coordinates():
    base = ddg_rho(sigma_total=5.0, survivors_t=60, l1=1, l2=1, dim=1)
    assert ddg_rho(sigma_total=5.0, survivors_t=60, l1=1, l2=1, dim=10**6) == base
    # KLS charges τ·d for every coordinate; at σ/√t ≈ 0.65 and d = 1e6 it is hopeless.
    kls = distributed_gaussian_rho(l1=1, l2=1, sigma_node=5.0 / math.sqrt(60), summands=60, dim=10**6)
    assert kls > 100 * base


def test_vector_shifts_cover_spread_and_concentrated_mass():
    # l1 = l2 = 2: one coordinate moved by 2, or two moved by 1 (L2 √2 <= 2): both are covered.
    sigma, t = 4.0, 40
    rho = ddg_rho(sigma_total=sigma, survivors_t=t, l1=2, l2=2, dim=8)
    pmf = brute_sum_pmf(sigma, t)
    for a in (1.001, 2.0, 8.0):
        one = renyi(pmf, 2, a)
        two = 2 * renyi(pmf, 1, a)
        assert rho >= max(one, two) / a
    # linf = 1 rules the concentrated shift out: only spread unit shifts remain, cheaper.
    spread = ddg_rho(sigma_total=sigma, survivors_t=t, l1=2, l2=2, linf=1, dim=8)
    assert spread < rho
    assert spread >= max(2 * renyi(pmf, 1, a) / a for a in (1.001, 2.0, 8.0))


def test_never_looser_than_kls():
    for sigma, t in ((4.0, 40), (9.0, 50), (20.0, 400)):
        kls = distributed_gaussian_rho(l1=1, l2=1, sigma_node=sigma / math.sqrt(t), summands=t, dim=1)
        assert ddg_rho(sigma_total=sigma, survivors_t=t, l1=1, l2=1, dim=1) <= kls * (1 + 1e-12)


def test_known_answers():
    cases = json.loads(VECTORS.read_text())
    for case in cases:
        got = ddg_rho(**case["input"])
        assert got == pytest.approx(case["rho"], rel=1e-6), case["input"]


def test_sum_variance_is_exact():
    for sigma, t in ((4.0, 100), (7.4, 400), (3.0, 3), (100.0, 10)):
        pmf = brute_sum_pmf(sigma, t)
        x = np.arange(pmf.size) - (pmf.size - 1) // 2
        assert ddg_sum_variance(sigma_total=sigma, survivors_t=t) == pytest.approx(
            float(np.sum(pmf * x * x)), rel=1e-9
        )


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    sigma=st.floats(1.0, 12.0),
    factor=st.floats(1.01, 1.5),
    t=st.sampled_from([1, 3, 20, 100, 400]),
    shift=st.integers(1, 3),
)
def test_rho_decreases_in_sigma(sigma, factor, t, shift):
    small = ddg_rho(sigma_total=sigma, survivors_t=t, l1=shift, l2=shift, dim=4)
    large = ddg_rho(sigma_total=sigma * factor, survivors_t=t, l1=shift, l2=shift, dim=4)
    assert large <= small


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    rho=st.floats(1e-3, 0.5),
    t=st.sampled_from([1, 3, 10, 100, 400]),
    bound=st.integers(1, 4),
    dim=st.integers(1, 1000),
)
def test_sigma_for_meets_the_requested_rho(rho, t, bound, dim):
    sigma = sigma_for(rho=rho, l1=bound, l2=bound, survivors_t=t, dim=dim)
    assert ddg_rho(sigma_total=sigma, survivors_t=t, l1=bound, l2=bound, dim=dim) <= rho
    # and is not wastefully large: 0.1% less noise would overspend
    assert ddg_rho(sigma_total=sigma * 0.999, survivors_t=t, l1=bound, l2=bound, dim=dim) > rho


def test_calibration_is_cached_and_rounds_rho_down():
    ddg_sigma(rho=0.02, survivors_t=7, l1=1, l2=1, dim=3)
    hits = ddg._sigma.cache_info().hits
    ddg_sigma(rho=0.02 * (1 + 1e-14), survivors_t=7, l1=1.0, l2=1.0, dim=3)
    assert ddg._sigma.cache_info().hits == hits + 1


def test_threads_asking_for_one_calibration_at_once_compute_it_once():
    # The nodes of one process reach the same set-up together; each computing σ itself took
    # 250 harness nodes at t = 1,000 past the heartbeat silence window.
    start = threading.Barrier(8)
    found: list[float] = []

    def ask() -> None:
        start.wait()
        found.append(ddg_sigma(rho=0.0123456, survivors_t=150, l1=2, l2=2, dim=5))

    misses = ddg._sigma.cache_info().misses
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ddg._sigma.cache_info().misses == misses + 1 and len(set(found)) == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: ddg_rho(sigma_total=0.0, survivors_t=3, l1=1, l2=1, dim=1),
        lambda: ddg_rho(sigma_total=1.0, survivors_t=0, l1=1, l2=1, dim=1),
        lambda: ddg_rho(sigma_total=1.0, survivors_t=3, l1=-1, l2=1, dim=1),
        lambda: ddg_rho(sigma_total=1.0, survivors_t=3, l1=1, l2=math.nan, dim=1),
        lambda: ddg_sigma(rho=0.0, survivors_t=3, l1=1, l2=1, dim=1),
        lambda: ddg_sigma(rho=0.1, survivors_t=3, l1=0.5, l2=0.5, dim=1),
    ],
)
def test_bad_parameters_fail_closed(call):
    with pytest.raises(DpParameterError):
        call()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    root=st.floats(0.01, 1e4),
    slope=st.floats(0.2, 20.0),
    bend=st.floats(0.0, 50.0),
    kink=st.booleans(),
    offset=st.floats(0.0, 3.0),
)
def test_narrowing_returns_the_least_sigma_that_meets_within_the_tolerance(root, slope, bend, kink, offset):
    # A decreasing excess: nearly straight in log σ like the real cost, bent, or with a jump at
    # the root (where a secant is useless and only the bisection safeguard makes progress).
    def excess(sigma: float) -> float:
        u = math.log(root) - math.log(sigma)
        return slope * u + bend * u**3 + (0.5 if kink and u > 0 else 0.0)

    probes: list[float] = []
    lo, hi = root * math.exp(-offset - 0.05), root * math.exp(offset + 0.05)

    def counted(sigma: float) -> float:
        probes.append(sigma)
        return excess(sigma)

    found = ddg._narrow(counted, lo, hi, 1e-4)
    assert found in probes or found == hi
    assert excess(found) <= 0 < excess(found * (1 - 1e-4))
    assert len(probes) <= 2 + 60


def test_the_calibration_probes_half_as_often_as_bisection():
    # Each probe is a pmf: a second at t = 300, 20 s at t = 1,000 (bisection took 11).
    ddg._rho.cache_clear()
    ddg._sigma.cache_clear()
    ddg_sigma(rho=0.0234567, survivors_t=30, l1=1, l2=1, dim=3)
    assert ddg._rho.cache_info().misses <= 6
