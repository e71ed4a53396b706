#!/usr/bin/env python3
"""churn_model's accuracy beside central scikit-learn and diffprivlib, side by side in one run; JSON.

Two data sets, each dealt to ``--nodes`` simulated nodes (the real program in memory: every node's
vector, its distributed discrete-Gaussian noise share, the sum, the release, the driver's step):

- ``cdnow``: CDNOW's 23,570 customers (``../shared/data/cdnow``); churned = no purchase in the
  final six months (1998-01-01..06-30), features rfm.recency/frequency/monetary as of 1997-12-31.
- ``synthetic``: ``--synthetic`` customers, one row each, churn drawn from a known logistic
  model on tenure, log spend and a region (the true coefficients are in the output).

For each: the AUC on the held-out customers (the program's own keyed split) of
(1) the federated model trained without noise, (2) a central ``sklearn`` ``LogisticRegression``
on the same encoded features and training customers, (3) the federated DP model at ``--epsilon``
(δ = 1e-6), median over ``--seeds``, and (4) diffprivlib's central ε-DP ``LogisticRegression``
at the same ε on the same features (its ``data_norm`` is the public bound of an encoded row,
√(columns)·clip_sd, as the federated model's clipping is public), median over the same seeds.
Targets: |(1) - (2)| <= 0.003; (3) > (4); (2) - (3) <= 0.01. The AUCs here are exact (sklearn's
``roc_auc_score`` on the held-out scores); the released, DP-binned AUC of the model card is shown
beside them. Not run by pytest. Usage:
``.venv/bin/python scripts/bench_churn.py [--seeds 5] [--epsilon 1] [--nodes 4] [--synthetic 50000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from tessera.core.analyses import churn_features as cf
from tessera.core.analyses import churn_model
from tessera.core.analyses.churn_simulate import run
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdnow" / "CDNOW_master.txt"
DELTA = 1e-6
TX_FIELDS = {
    "customer": FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE),
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "amount": FieldSchema("amount", "float", Tier.GENERAL_SENSITIVE),
}
CDNOW: dict[str, ParamValue] = {
    "label": "rfm.no_purchase_after",
    "reference_date": "1997-12-31",
    "label_end": "1998-06-30",
    "features": ("rfm.recency", "rfm.frequency", "rfm.monetary"),
    "lower": (0.0, 1.0, 0.0),
    "upper": (365.0, 50.0, 2000.0),
    "log_features": ("rfm.frequency", "rfm.monetary"),
}
SYN_FIELDS = {
    "tenure": FieldSchema("tenure", "float", Tier.GENERAL_SENSITIVE),
    "spend": FieldSchema("spend", "float", Tier.GENERAL_SENSITIVE),
    "region": FieldSchema("region", "category", Tier.NON_SENSITIVE),
    "churned": FieldSchema("churned", "bool", Tier.GENERAL_SENSITIVE),
}
REGIONS = {"north": 0.0, "south": 0.5, "east": -0.5, "west": 1.0}
TRUE = {
    "intercept": -1.0,
    "tenure (per 10)": 0.8,
    "log1p spend (per 0.6)": -0.6,
    **{f"region={k}": v for k, v in REGIONS.items()},
}
SYNTHETIC: dict[str, ParamValue] = {
    "label": "churned",
    "features": ("tenure", "spend", "region"),
    "lower": (-20.0, 0.0),
    "upper": (80.0, 300.0),
    "log_features": ("spend",),
    "categories": tuple(f"region={r}" for r in REGIONS),
}


def load_cdnow(nodes: int) -> list[dict[str, np.ndarray]]:
    raw = np.loadtxt(DATA, skiprows=1)
    epoch = date(1970, 1, 1)
    ymd = raw[:, 1].astype(np.int64)
    days = {d: float((date(d // 10000, d // 100 % 100, d % 100) - epoch).days) for d in np.unique(ymd)}
    data = {
        "customer": raw[:, 0].astype(np.int64),
        "time": np.array([days[d] for d in ymd.tolist()]),
        "amount": raw[:, 3],
    }
    home = data["customer"] % nodes
    return [{k: v[home == n] for k, v in data.items()} for n in range(nodes)]


def synthetic(n: int, nodes: int, seed: int = 7) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    tenure, spend = rng.normal(24, 10, n), rng.gamma(2.0, 10.0, n)
    region = rng.choice(list(REGIONS), n, p=[0.4, 0.3, 0.2, 0.1])
    logit = (
        -1.0
        + 0.8 * (tenure - 24) / 10
        - 0.6 * (np.log1p(spend) - 2.8) / 0.6
        + np.array([REGIONS[r] for r in region])
    )
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    data = {"tenure": tenure, "spend": spend, "region": region.astype(object), "churned": churned}
    return [{k: v[i::nodes] for k, v in data.items()} for i in range(nodes)]


def encoded(
    job: JobSpec,
    fields: dict[str, FieldSchema],
    nodes: list[dict[str, Any]],
    result: dict[str, Any],
    public: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Design matrix, labels, held-out flags and federated scores, as the nodes encode them."""
    plan = churn_model.plan(
        job, fields, survivors_t=len(nodes), n_nodes=len(nodes), round_no=2, public=public
    )
    layout = {**plan.layout, "w": result["model"]["w"]}
    parts: dict[str, list[np.ndarray]] = {"x": [], "y": [], "hold": [], "score": []}
    for data in nodes:
        people = cf.customers(layout, data, with_label=True)
        parts["x"].append(cf.design(layout, people))
        parts["y"].append(people.label)
        parts["hold"].append(cf.held_out(people.ids, seed=layout["split_seed"], share=layout["holdout"]))
        parts["score"].append(cf.scores(layout, people))
    return {k: np.concatenate(v) for k, v in parts.items()}


def bench(
    name: str,
    job_params: dict[str, ParamValue],
    fields: dict[str, FieldSchema],
    nodes: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from diffprivlib.models import LogisticRegression as DpLogisticRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    def job(epsilon: float, **extra: ParamValue) -> JobSpec:
        return JobSpec(
            analysis="churn_model",
            dataset="transactions" if name == "cdnow" else "customers",
            epsilon=epsilon,
            delta=DELTA,
            params={**job_params, **extra},
        )

    started = time.perf_counter()
    plain = run(
        churn_model, job(args.epsilon, l2=0.0), fields, nodes, noise=False, rng=np.random.default_rng(0)
    )
    enc = encoded(job(args.epsilon), fields, nodes, plain.result, dict(plain.publics[1]))
    x, y, hold = enc["x"], enc["y"], enc["hold"]
    central = LogisticRegression(max_iter=2000).fit(x[~hold, 1:], y[~hold])
    central_auc = float(roc_auc_score(y[hold], central.predict_proba(x[hold, 1:])[:, 1]))
    plain_auc = float(roc_auc_score(y[hold], enc["score"][hold]))
    dp_auc, dp_released, dpl_auc = [], [], []
    norm = math.sqrt(x.shape[1] - 1) * float(churn_model.settings(job(args.epsilon))["clip_sd"])
    for seed in range(args.seeds):
        trace = run(
            churn_model, job(args.epsilon), fields, nodes, noise=True, rng=np.random.default_rng(100 + seed)
        )
        scores = encoded(job(args.epsilon), fields, nodes, trace.result, dict(trace.publics[1]))
        # Each DP run encodes with its own DP means: score its model on its own encoding.
        dp_auc.append(float(roc_auc_score(scores["y"][scores["hold"]], scores["score"][scores["hold"]])))
        dp_released.append(trace.result["evaluation"]["auc"]["value"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dpl = DpLogisticRegression(epsilon=args.epsilon, data_norm=norm, random_state=seed, max_iter=2000)
            dpl.fit(x[~hold, 1:], y[~hold])
        dpl_auc.append(float(roc_auc_score(y[hold], dpl.predict_proba(x[hold, 1:])[:, 1])))
    med = statistics.median
    return {
        "customers": int(y.size),
        "held_out": int(hold.sum()),
        "churn_rate": float(y.mean()),
        "columns": x.shape[1],
        "auc_central_sklearn": central_auc,
        "auc_federated_no_noise": plain_auc,
        "auc_federated_no_noise_released_binned": plain.result["evaluation"]["auc"]["value"],
        f"auc_federated_dp_eps{args.epsilon:g}": {
            "median": med(dp_auc),
            "min": min(dp_auc),
            "max": max(dp_auc),
        },
        f"auc_federated_dp_eps{args.epsilon:g}_released_binned_median": med(dp_released),
        f"auc_diffprivlib_central_dp_eps{args.epsilon:g}": {
            "median": med(dpl_auc),
            "min": min(dpl_auc),
            "max": max(dpl_auc),
        },
        "diffprivlib_data_norm": norm,
        "targets": {
            "no_noise_within_0.003_of_central": abs(plain_auc - central_auc) <= 0.003,
            "dp_beats_diffprivlib": med(dp_auc) > med(dpl_auc),
            "dp_within_0.01_of_non_private": central_auc - med(dp_auc) <= 0.01,
        },
        "coefficients_no_noise": plain.result["coefficients"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--synthetic", type=int, default=50_000)
    args = parser.parse_args()
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]},
        "epsilon": args.epsilon,
        "delta": DELTA,
        "nodes": args.nodes,
        "seeds": args.seeds,
        "defaults": {
            k: churn_model.settings(
                JobSpec(
                    analysis="churn_model", dataset="customers", epsilon=1.0, delta=DELTA, params=SYNTHETIC
                )
            )[k]
            for k in ("rounds", "optimizer", "server_lr", "client_lr", "clip_quantile", "holdout")
        },
    }
    if DATA.is_file():
        out["cdnow"] = bench("cdnow", CDNOW, TX_FIELDS, load_cdnow(args.nodes), args)
    else:
        out["cdnow"] = {"skipped": f"CDNOW not found at {DATA}"}
    syn = bench("synthetic", SYNTHETIC, SYN_FIELDS, synthetic(args.synthetic, args.nodes), args)
    syn["true_coefficients"] = TRUE
    out["synthetic"] = syn
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
