"""The node's customers as ``churn_model`` sees them: one row per customer, the held-out split, the
encoded design matrix and the scores (pure numpy; training, evaluation and scoring at home all use
these functions, so a score computed at home is the score the evaluation binned).

Rows. The population is the customers of the job's dataset (with ``rfm.*`` features: those with a
purchase on or before the reference day); each customer's numeric features come from
``customers.<field>`` (joined on the customer key), its own row (one row per customer) or the
derived RFM values (``customer_table``). A customer missing a numeric feature (or, when training,
the label) is left out; a missing category is ``other``.

Encoding (the preprocessing plan, public): a numeric feature is clipped to its public bounds,
``log1p``-ed if asked, standardised with the DP mean and sd and clipped to ``±clip_sd``; a
categorical feature becomes one 0/1 column per KEPT category (``other`` and folded rare
categories are the base level, all zeros). Column 0 is the intercept's 1.

Held-out split: a customer is held out when a keyed hash of its id (splitmix64 of the id xor a
64-bit key derived from the public ``split_seed``) falls below ``holdout``: deterministic, the
same on every run and at home, and independent of the label and features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import params as p
from tessera.core.analyses.churn_spec import NO_PURCHASE_AFTER
from tessera.core.analyses.vector import FloatArray, IntArray

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True, slots=True)
class Customers:
    """The node's customers with every numeric feature present (ids sorted ascending)."""

    ids: IntArray
    numeric: FloatArray  # n × d, raw values
    categories: tuple[np.ndarray, ...]  # one object array (str or None) per categorical feature
    label: FloatArray  # 0/1, NaN where missing (or not read)


def split_key(seed: str) -> int:
    return int.from_bytes(hashlib.sha256(b"tessera/churn/split\0" + seed.encode()).digest()[:8], "little")


def held_out(ids: IntArray, *, seed: str, share: float) -> np.ndarray:
    """Whether each customer id is held out for evaluation (see the module docstring)."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) ^ np.uint64(split_key(seed))
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        z = z ^ (z >> np.uint64(31))
    uniform = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    out: np.ndarray = uniform < share
    return out


def customers(layout: Mapping[str, Any], data: Mapping[str, Any], *, with_label: bool) -> Customers:
    """The node's customers and their raw values under ``layout`` (a plan's or a model card's)."""
    derived_label = with_label and layout["read_label"] == NO_PURCHASE_AFTER
    # A file of one row per customer may carry the RFM values as columns (``tessera model predict``).
    rfm_rows = any(f in ct.RFM for f in layout["numeric"]) and not layout.get("rfm_as_columns")
    table, pop = ct.customers_of(data, layout, with_rfm=rfm_rows or derived_label)

    def attribute(read: str) -> np.ndarray:
        return ct.layout_attribute(data, read, pop, layout)

    columns = []
    for name, read in zip(layout["numeric"], layout["read"], strict=True):
        if table is not None and name in ct.RFM:
            columns.append(table.feature(name))
        else:
            columns.append(attribute(read).astype(np.float64))
    x = np.stack(columns, axis=1) if columns else np.zeros((pop.size, 0))
    keep = np.all(np.isfinite(x), axis=1)
    label = np.full(pop.size, np.nan)
    if derived_label:
        label = _no_purchase_after(layout, data, pop)
    elif with_label:
        raw = attribute(layout["read_label"]).astype(np.float64)
        label = np.where(np.isfinite(raw), (raw > 0.5).astype(np.float64), np.nan)
        keep &= np.isfinite(label)
    cats = tuple(np.asarray(attribute(read), dtype=object)[keep] for read in layout["read_categorical"])
    return Customers(pop.ids[keep], x[keep], cats, label[keep])


def _no_purchase_after(layout: Mapping[str, Any], data: Mapping[str, Any], pop: ct.Population) -> FloatArray:
    """1 for a customer without a row after the reference day up to ``label_end_day``, else 0."""
    day = np.floor(np.asarray(data[layout["time"]], dtype=np.float64))
    after = np.isfinite(day) & (day > layout["reference_day"]) & (day <= layout["label_end_day"])
    ids = ct.key_column(data, layout["key"])
    bought = np.isin(pop.ids, ids[after & (ids >= 0)])
    out: FloatArray = np.where(bought, 0.0, 1.0)
    return out


def unit_moments(layout: Mapping[str, Any], x: FloatArray) -> FloatArray:
    """Each numeric feature transformed and rescaled from its public range to ``u`` in [-1, 1]."""
    t = transformed(layout, x)
    lo, hi = np.asarray(layout["t_lower"]), np.asarray(layout["t_upper"])
    out: FloatArray = np.clip((t - (lo + hi) / 2) / ((hi - lo) / 2), -1.0, 1.0)
    return out


def transformed(layout: Mapping[str, Any], x: FloatArray) -> FloatArray:
    t = np.clip(
        x, np.asarray(layout["lower"], dtype=np.float64), np.asarray(layout["upper"], dtype=np.float64)
    )
    log = np.asarray(layout["log"], dtype=bool)
    if log.any():
        t[:, log] = np.log1p(t[:, log])
    return t


def category_index(values: np.ndarray, labels: tuple[str, ...]) -> IntArray:
    """Position of each value in ``labels``; ``len(labels)`` (other) for anything else or missing."""
    idx = p.label_index(values, labels)
    idx[idx < 0] = len(labels)
    return idx


def design(layout: Mapping[str, Any], people: Customers) -> FloatArray:
    """The encoded design matrix under a public preprocessing plan (``mean``, ``sd``, ``kept``)."""
    n = people.ids.size
    blocks: list[np.ndarray] = [np.ones((n, 1))]
    if people.numeric.shape[1]:
        z = (transformed(layout, people.numeric) - np.asarray(layout["mean"])) / np.asarray(layout["sd"])
        c = float(layout["clip_sd"])
        blocks.append(np.clip(z, -c, c))
    for values, kept in zip(people.categories, layout["kept"], strict=True):
        if kept:
            idx = category_index(values, tuple(kept))
            onehot = np.zeros((n, len(kept) + 1))
            onehot[np.arange(n), idx] = 1.0
            blocks.append(onehot[:, :-1])
    return np.hstack(blocks)


def sigmoid(t: FloatArray) -> FloatArray:
    out: FloatArray = np.exp(-np.logaddexp(0.0, -t))
    return out


def scores(layout: Mapping[str, Any], people: Customers) -> FloatArray:
    """Each customer's churn probability under the public coefficients ``w``."""
    return sigmoid(design(layout, people) @ np.asarray(layout["w"], dtype=np.float64))


def score_bin(score: FloatArray, bins: int, logit_range: float) -> IntArray:
    """Bin of each score on ``bins`` equal widths of logit(score) over ``[-range, range]`` (ends open)."""
    with np.errstate(divide="ignore"):
        logit = np.log(score) - np.log1p(-score)
    pos = (np.nan_to_num(logit, nan=0.0, posinf=logit_range, neginf=-logit_range) + logit_range) / (
        2 * logit_range
    )
    out: IntArray = np.clip(np.floor(pos * bins), 0, bins - 1).astype(np.int64)
    return out


def bin_edges(bins: int, logit_range: float) -> FloatArray:
    """The probability edges of ``score_bin``'s bins (0 and 1 at the open ends)."""
    logits = np.linspace(-logit_range, logit_range, bins + 1)
    edges = sigmoid(logits)
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def bin_centres(bins: int, logit_range: float) -> FloatArray:
    width = 2 * logit_range / bins
    return sigmoid(np.asarray(-logit_range + width * (np.arange(bins) + 0.5), dtype=np.float64))
