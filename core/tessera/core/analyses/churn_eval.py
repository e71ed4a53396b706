"""Evaluation of a churn model from DP histograms of held-out scores per label (pure numpy; all of
it post-processing of the released noisy counts).

AUC: the probability that a churner's score exceeds a non-churner's, with scores in the same bin
counted as half (Mann-Whitney on binned scores, on the raw noisy counts, negative ones included:
the statistic is bilinear in two independently noised histograms, so it stays nearly unbiased). Log-loss: each
bin's customers at the bin's centre probability. Calibration: per bin, the centre probability
beside the observed churn rate, and the expected calibration error weighted by bin size.

The AUC's 95% interval adds two variances: sampling (Hanley & McNeil 1982, from the AUC and the
noisy class sizes) and the DP noise (the sd of the AUC over replicates of the released histograms
with fresh noise of the released sd, from a public seeded generator).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.analyses.vector import Z95, FloatArray

NOISE_REPLICATES = 200


def auc(negatives: npt.ArrayLike, positives: npt.ArrayLike) -> float:
    """Binned AUC from the two histograms (bins in ascending score order)."""
    # Noisy counts are NOT clipped at 0: the AUC is a bilinear form of two independently noised
    # histograms, so raw counts keep it nearly unbiased; clipping would bias it towards 0.5.
    neg = np.asarray(negatives, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    n_neg, n_pos = float(neg.sum()), float(pos.sum())
    if n_neg <= 0 or n_pos <= 0:
        return math.nan
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float(np.sum(pos * (below + 0.5 * neg)) / (n_neg * n_pos))


def _auc_rows(neg: FloatArray, pos: FloatArray) -> FloatArray:
    below = np.concatenate([np.zeros((neg.shape[0], 1)), np.cumsum(neg, axis=1)[:, :-1]], axis=1)
    denom = np.maximum(neg.sum(axis=1) * pos.sum(axis=1), 1e-12)
    out: FloatArray = np.sum(pos * (below + 0.5 * neg), axis=1) / denom
    return out


def hanley_mcneil_sd(a: float, n_pos: float, n_neg: float) -> float:
    if not (n_pos > 1 and n_neg > 1) or not 0 <= a <= 1:
        return math.nan
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def evaluate(
    negatives: list[float],
    positives: list[float],
    *,
    centres: FloatArray,
    count_sd: float,
    min_cohort_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC with its interval, log-loss and the calibration table from the noisy histograms."""
    neg = np.asarray(negatives, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    a = float(np.clip(auc(neg, pos), 0.0, 1.0))
    n_neg, n_pos = float(np.clip(neg, 0, None).sum()), float(np.clip(pos, 0, None).sum())
    rng = np.random.default_rng(seed)  # public randomness: post-processing only
    replicate = _auc_rows(
        neg + rng.normal(0.0, count_sd, (NOISE_REPLICATES, neg.size)),
        pos + rng.normal(0.0, count_sd, (NOISE_REPLICATES, pos.size)),
    )
    noise_sd = float(np.std(replicate))
    sampling_sd = hanley_mcneil_sd(a, n_pos, n_neg)
    sd = math.sqrt(noise_sd**2 + (sampling_sd if math.isfinite(sampling_sd) else 0.0) ** 2)
    cn, cp = np.clip(neg, 0, None), np.clip(pos, 0, None)
    total = n_neg + n_pos
    eps = 1e-12
    log_loss = (
        float(
            np.sum(cp * -np.log(np.maximum(centres, eps)) + cn * -np.log(np.maximum(1 - centres, eps)))
            / total
        )
        if total > 0
        else math.nan
    )
    calibration = []
    ece = 0.0
    for i, centre in enumerate(centres.tolist()):
        size = cn[i] + cp[i]
        shown = size >= max(min_cohort_size, 1)
        rate = float(cp[i] / size) if size > 0 else None
        if size > 0 and rate is not None:
            ece += size / total * abs(rate - centre)
        calibration.append(
            {
                "bin": i,
                "predicted": centre,
                "customers": float(size) if shown else None,
                "observed_rate": rate if shown else None,
                "suppressed": not shown,
            }
        )
    return {
        "auc": {"value": a, "ci95": [max(0.0, a - Z95 * sd), min(1.0, a + Z95 * sd)], "sd": sd},
        "auc_sd_parts": {"sampling": sampling_sd, "dp_noise": noise_sd},
        "log_loss": log_loss,
        "expected_calibration_error": ece if total > 0 else math.nan,
        "holdout_customers": total,
        "holdout_churners": n_pos,
        "calibration": calibration,
    }
