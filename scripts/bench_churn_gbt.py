#!/usr/bin/env python3
"""A PROTOTYPE of DP histogram-based gradient-boosted trees for churn, beside ``churn_model``'s
logistic regression at ε = 1 and 4 (δ = 1e-6), on CDNOW-derived churn and the synthetic set of
``bench_churn``; prints JSON. Issue item 3: keep boosting only if it wins somewhere.

Not a registered analysis: the boosting runs here in memory, with the same customers, encoding
inputs and held-out split as ``churn_model`` (``churn_features``). Each tree level is one private
sum: per tree node and per feature bin, the sums of the customers' logistic gradients
``g = p - y`` (|g| <= 1) and hessians ``h = p(1 - p)`` (<= 1/4); a customer falls in one node and
one bin per feature, so L2 sensitivity √d (g) and √d/4 (h). The noise here is the continuous
Gaussian of the same zCDP ρ (σ = Δ₂/√(2ρ); the distributed discrete Gaussian the nodes would add
is within a few per cent of it, ``bench_ddg_rmse``). Budget: 5% to the DP count and churn rate,
10% to the evaluation's score histograms (as churn_model), the rest evenly over trees × depth.
Numeric features: ``bins`` equal-width bins of the transformed public range (no data needed);
categories: one bin per listed category plus other. Splits by the usual second-order gain with
``λ`` raised to the noise level of the node's hessian sum; leaf values ``-η·G/(H + λ)``.
Usage: ``.venv/bin/python scripts/bench_churn_gbt.py [--seeds 3] [--trees 8] [--depth 3]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Any

import numpy as np
from bench_churn import CDNOW, DATA, SYN_FIELDS, SYNTHETIC, TX_FIELDS, load_cdnow, synthetic

from tessera.core.analyses import churn_features as cf
from tessera.core.analyses import churn_model
from tessera.core.analyses.churn_simulate import run
from tessera.core.analyses.program import rho_total
from tessera.core.types import FieldSchema, JobSpec, ParamValue


def customers(
    job: JobSpec, fields: dict[str, FieldSchema], nodes: list[dict[str, Any]]
) -> dict[str, np.ndarray]:
    """Every node's customers pooled for the simulation: binned features, labels, held-out flags."""
    plan = churn_model.plan(job, fields, survivors_t=len(nodes), n_nodes=len(nodes), round_no=1)
    layout = plan.layout
    xs, cats, ys, holds = [], [], [], []
    for data in nodes:
        people = cf.customers(layout, data, with_label=True)
        xs.append(cf.transformed(layout, people.numeric))
        cats.append(
            np.stack(
                [
                    cf.category_index(c, tuple(lv))
                    for c, lv in zip(people.categories, layout["levels"], strict=True)
                ],
                axis=1,
            )
            if people.categories
            else np.zeros((people.ids.size, 0), dtype=np.int64)
        )
        ys.append(people.label)
        holds.append(cf.held_out(people.ids, seed=layout["split_seed"], share=layout["holdout"]))
    return {
        "t": np.vstack(xs),
        "cat": np.vstack(cats),
        "y": np.concatenate(ys),
        "hold": np.concatenate(holds),
        "lo": np.asarray(layout["t_lower"]),
        "hi": np.asarray(layout["t_upper"]),
        "levels": np.asarray([len(lv) + 1 for lv in layout["levels"]], dtype=np.int64),
    }


def binned(c: dict[str, np.ndarray], bins: int) -> tuple[np.ndarray, list[int]]:
    t = (c["t"] - c["lo"]) / (c["hi"] - c["lo"])
    num = np.clip(np.floor(t * bins), 0, bins - 1).astype(np.int64)
    cols = np.hstack([num, c["cat"]]) if c["cat"].size else num
    sizes = [bins] * num.shape[1] + c["levels"].tolist()
    return cols, sizes


def gbt(
    c: dict[str, np.ndarray],
    *,
    rho: float,
    trees: int,
    depth: int,
    bins: int,
    eta: float,
    rng: np.random.Generator,
    noise: bool,
) -> np.ndarray:
    """Held-out scores of a DP boosted ensemble trained on the training customers."""
    x, sizes = binned(c, bins)
    train, y = ~c["hold"], c["y"]
    d = x.shape[1]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    cells = int(offsets[-1])
    per_level = 0.85 * rho / (trees * depth)
    sg = math.sqrt(d) / math.sqrt(2 * 0.7 * per_level) if noise else 0.0
    sh = math.sqrt(d) / 4 / math.sqrt(2 * 0.3 * per_level) if noise else 0.0
    sc = 1 / math.sqrt(2 * 0.05 * rho) if noise else 0.0
    n = train.sum() + rng.normal(0, sc)
    pos = y[train].sum() + rng.normal(0, sc)
    rate = float(np.clip(pos / n, 1e-3, 1 - 1e-3))
    f = np.full(y.size, math.log(rate / (1 - rate)))
    lam = max(1.0, 3 * sh * math.sqrt(bins))
    for _ in range(trees):
        p = 1 / (1 + np.exp(-f))
        g, h = p - y, p * (1 - p)
        node = np.zeros(y.size, dtype=np.int64)
        leaf = {}
        for level in range(depth):
            k = 2**level
            idx = node[train][:, None] * cells + (x[train] + offsets[:-1])
            G = np.bincount(idx.ravel(), weights=np.repeat(g[train], d), minlength=k * cells).reshape(
                k, cells
            )
            H = np.bincount(idx.ravel(), weights=np.repeat(h[train], d), minlength=k * cells).reshape(
                k, cells
            )
            G = G + rng.normal(0, sg, G.shape) if noise else G
            H = H + rng.normal(0, sh, H.shape) if noise else H
            split = np.full((k, 2), -1, dtype=np.int64)
            for j in range(k):
                best = (0.0, -1, -1, 0.0, 0.0, 0.0, 0.0)
                tot_g = np.mean([G[j, offsets[a] : offsets[a + 1]].sum() for a in range(d)])
                tot_h = max(np.mean([H[j, offsets[a] : offsets[a + 1]].sum() for a in range(d)]), 0.0)
                for a in range(d):
                    cg = np.cumsum(G[j, offsets[a] : offsets[a + 1]])[:-1]
                    ch = np.clip(np.cumsum(H[j, offsets[a] : offsets[a + 1]])[:-1], 0, None)
                    if cg.size == 0:
                        continue
                    gain = (
                        cg**2 / (ch + lam)
                        + (tot_g - cg) ** 2 / (np.clip(tot_h - ch, 0, None) + lam)
                        - tot_g**2 / (tot_h + lam)
                    )
                    b = int(np.argmax(gain))
                    if gain[b] > best[0]:
                        best = (float(gain[b]), a, b, cg[b], ch[b], tot_g - cg[b], max(tot_h - ch[b], 0.0))
                if best[1] >= 0:
                    split[j] = best[1], best[2]
                    if level == depth - 1:
                        leaf[(j, 0)] = -eta * best[3] / (best[4] + lam)
                        leaf[(j, 1)] = -eta * best[5] / (best[6] + lam)
                elif level == depth - 1:
                    leaf[(j, 0)] = leaf[(j, 1)] = -eta * tot_g / (tot_h + lam)
            a, b = split[node, 0], split[node, 1]
            right = np.where(a >= 0, x[np.arange(y.size), np.maximum(a, 0)] > b, False)
            node = 2 * node + right
        parent, side = node // 2, node % 2
        f = f + np.array([leaf.get((int(pp), int(s)), 0.0) for pp, s in zip(parent, side, strict=True)])
    return 1 / (1 + np.exp(-f[c["hold"]]))


def main() -> None:
    from sklearn.metrics import roc_auc_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trees", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--bins", type=int, default=16)
    parser.add_argument("--eta", type=float, default=0.5)
    args = parser.parse_args()
    out: dict[str, Any] = {"trees": args.trees, "depth": args.depth, "bins": args.bins, "eta": args.eta}
    sets: list[tuple[str, dict[str, ParamValue], dict[str, FieldSchema], list[dict[str, Any]]]] = []
    if DATA.is_file():
        sets.append(("cdnow", CDNOW, TX_FIELDS, load_cdnow(4)))
    sets.append(("synthetic", SYNTHETIC, SYN_FIELDS, synthetic(50_000, 4)))
    for name, params, fields, nodes in sets:
        row: dict[str, Any] = {}
        for eps in (1.0, 4.0):
            job = JobSpec(
                analysis="churn_model",
                dataset="transactions" if name == "cdnow" else "customers",
                epsilon=eps,
                delta=1e-6,
                params=params,
            )
            c = customers(job, fields, nodes)
            y = c["y"][c["hold"]]
            lr, boost = [], []
            for seed in range(args.seeds):
                trace = run(churn_model, job, fields, nodes, noise=True, rng=np.random.default_rng(10 + seed))
                layout = {
                    **churn_model.plan(
                        job, fields, survivors_t=4, n_nodes=4, round_no=2, public=trace.publics[1]
                    ).layout,
                    "w": trace.result["model"]["w"],
                }
                scores = []
                for data in nodes:
                    people = cf.customers(layout, data, with_label=True)
                    hold = cf.held_out(people.ids, seed=layout["split_seed"], share=layout["holdout"])
                    scores.append(cf.scores(layout, people)[hold])
                lr.append(float(roc_auc_score(y, np.concatenate(scores))))
                s = gbt(
                    c,
                    rho=rho_total(job),
                    trees=args.trees,
                    depth=args.depth,
                    bins=args.bins,
                    eta=args.eta,
                    rng=np.random.default_rng(seed),
                    noise=True,
                )
                boost.append(float(roc_auc_score(y, s)))
            plain = gbt(
                c,
                rho=rho_total(job),
                trees=args.trees,
                depth=args.depth,
                bins=args.bins,
                eta=args.eta,
                rng=np.random.default_rng(0),
                noise=False,
            )
            row[f"eps{eps:g}"] = {
                "logistic_auc_median": statistics.median(lr),
                "boosting_auc_median": statistics.median(boost),
                "boosting_auc_no_noise": float(roc_auc_score(y, plain)),
                "boosting_wins": statistics.median(boost) > statistics.median(lr),
            }
        out[name] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
