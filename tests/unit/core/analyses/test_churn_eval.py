"""The churn evaluation's AUC under DP noise, with seeded noise: nearly unbiased on raw noisy
counts, and the noise part of its reported sd is the spread the noise really causes."""

from __future__ import annotations

import numpy as np

from tessera.core.analyses.churn_eval import auc, evaluate
from tessera.core.analyses.vector import Z95

BINS = 25
COUNT_SD = 4.4  # the histogram noise of a churn job at ε = 4 (ρ_eval = 0.1·ρ)


def _histograms() -> tuple[np.ndarray, np.ndarray]:
    """540 held-out customers like CDNOW's sample: 130 stay, 410 lapse, scores overlapping."""
    centres = np.arange(BINS)
    neg = 130 * np.exp(-0.5 * ((centres - 9) / 3.0) ** 2)
    pos = 410 * np.exp(-0.5 * ((centres - 14) / 3.5) ** 2)
    return np.round(neg / neg.sum() * 130), np.round(pos / pos.sum() * 410)


def _noisy_runs(trials: int) -> tuple[float, np.ndarray, np.ndarray]:
    neg, pos = _histograms()
    rng = np.random.default_rng(20261129)
    values, noise_sds = [], []
    for i in range(trials):
        noisy_neg = neg + rng.normal(0.0, COUNT_SD, BINS)
        noisy_pos = pos + rng.normal(0.0, COUNT_SD, BINS)
        out = evaluate(
            noisy_neg.tolist(),
            noisy_pos.tolist(),
            centres=np.linspace(0.05, 0.95, BINS),
            count_sd=COUNT_SD,
            min_cohort_size=10,
            seed=i,
        )
        values.append(out["auc"]["value"])
        noise_sds.append(out["auc_sd_parts"]["dp_noise"])
    return auc(neg, pos), np.array(values), np.array(noise_sds)


def test_the_noisy_auc_is_nearly_unbiased_and_its_noise_sd_is_the_real_spread() -> None:
    truth, values, noise_sds = _noisy_runs(400)
    assert 0.75 < truth < 0.9
    spread = float(values.std())
    assert abs(float(values.mean()) - truth) < 0.01  # raw counts: bilinear, nearly unbiased
    # Fresh noise on the already noisy counts: the reported sd errs a little high (1.2x here).
    assert spread <= float(np.median(noise_sds)) <= 1.35 * spread
    # The noise part of the interval covers the noise-free AUC about 95% of the time.
    covered = np.abs(values - truth) <= Z95 * noise_sds
    assert 0.9 <= float(covered.mean()) <= 0.99


def test_an_estimate_past_one_is_clipped_and_its_interval_stays_in_zero_one() -> None:
    neg = np.array([5.0, 0.0, -3.0])  # noise pushed the top bin's non-churners below zero
    pos = np.array([0.0, 1.0, 9.0])
    assert auc(neg, pos) > 1.0
    out = evaluate(
        neg.tolist(), pos.tolist(), centres=np.array([0.2, 0.5, 0.8]), count_sd=2.0, min_cohort_size=1
    )
    assert out["auc"]["value"] == 1.0 and 0.0 <= out["auc"]["ci95"][0] <= out["auc"]["ci95"][1] <= 1.0
