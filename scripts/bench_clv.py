"""``clv_fit`` on CDNOW: the federated fit without noise against the paper and a central fit, and
at ε = 1 against the non-private fit (medians over seeds). Prints one JSON document; not run by
pytest. Everything is seeded.

The program runs in memory exactly as the job machinery runs it (plan -> each node's local vector
-> its noise share -> sum -> release -> step), the customers split over ``--nodes`` nodes by id.
"Without noise" sums the same quantised vectors and skips only ``add_noise``; its clip bounds are
``--no-noise-clip`` (default 1e4: without noise clipping only adds bias, so none binds) and the
same fit at the default clip bounds is reported beside it (``clipping_bias``).

Central fit: maximum likelihood with scipy's L-BFGS-B on the same per-customer summaries (scipy
is installed with dp-accounting and scikit-learn; Tessera itself never imports it).

    .venv/bin/python scripts/bench_clv.py [--data ../shared/data/cdnow] [--seeds 5] [--nodes 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from tessera.core.analyses import clv_fit
from tessera.core.analyses import clv_math as cm
from tessera.core.analyses import clv_predict as cp
from tessera.core.analyses.clv_summary import day_number, summarise
from tessera.core.analyses.vector import add_noise
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

FIELDS = {
    "customer": FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE),
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "amount": FieldSchema("amount", "float", Tier.GENERAL_SENSITIVE),
}
CAL, HOLD = "1997-09-30", "1998-06-30"
PAPER = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def load_cdnow(path: Path) -> dict[str, np.ndarray]:
    """CDNOW rows as the vault gives them: customer id, days since 1970 (noon), dollar amount."""
    ids, days, amounts = [], [], []
    epoch = date(1970, 1, 1).toordinal()
    sample = path.name == "CDNOW_sample.txt"
    with path.open(encoding="ascii") as handle:
        for line in handle:
            cols = line.split()
            if not cols or not cols[0].isdigit():
                continue  # the master file's header
            cid, when, amount = (cols[0], cols[2], cols[4]) if sample else (cols[0], cols[1], cols[3])
            ids.append(int(cid))
            days.append(date(int(when[:4]), int(when[4:6]), int(when[6:])).toordinal() - epoch + 0.5)
            amounts.append(float(amount))
    return {"customer": np.array(ids, dtype=np.int64), "time": np.array(days), "amount": np.array(amounts)}


def split(data: dict[str, np.ndarray], nodes: int) -> list[dict[str, np.ndarray]]:
    """Customers dealt round-robin by id: every customer's rows on one node."""
    home = data["customer"] % nodes
    return [{k: a[home == i] for k, a in data.items()} for i in range(nodes)]


def spec(epsilon: float, **params: ParamValue) -> JobSpec:
    base: dict[str, ParamValue] = {"calibration_end": CAL, "holdout_end": HOLD}
    return JobSpec(
        analysis="clv_fit", dataset="transactions", epsilon=epsilon, delta=1e-6, params=base | params
    )


def run(job: JobSpec, nodes: list[dict[str, np.ndarray]], *, noise: bool, seed: int) -> dict[str, Any]:
    """The program in memory; returns the result document."""
    rng = np.random.default_rng(seed)
    public = clv_fit.start(job)
    spent = 0.0
    for round_no in range(1, clv_fit.max_rounds(job) + 1):
        plan = clv_fit.plan(
            job, FIELDS, survivors_t=len(nodes), n_nodes=len(nodes), round_no=round_no, public=public
        )
        spent += plan.rho
        vectors = [clv_fit.local_vector(plan, d, rng=rng) for d in nodes]
        if noise:
            vectors = [add_noise(plan, vec, rng=rng) for vec in vectors]
        total = np.sum(vectors, axis=0)
        released = clv_fit.release(plan, total, summands=len(nodes), min_cohort_size=10)
        step = clv_fit.step(job, round_no=round_no, public=public, released=released)
        if step.result is not None:
            step.result["rho_spent"] = spent
            return step.result
        assert step.next_public is not None
        public = step.next_public
    raise RuntimeError("the program did not finish")


def central(data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Maximum likelihood on all customers at once (scipy), BG/NBD and Gamma-Gamma."""
    s = summarise(data["customer"], data["time"], data["amount"], calibration_end=day_number(CAL, "c"))
    spend = clv_fit.spend_customers(s)

    def fit(fun: Any, start: list[float]) -> np.ndarray:
        res = optimize.minimize(
            lambda t: -fun(t, 1)[0].sum(),
            np.log(start),
            jac=lambda t: -fun(t, 1)[1].sum(axis=0),
            method="L-BFGS-B",
            bounds=[(clv_fit.LOG_LOW, clv_fit.LOG_HIGH)] * len(start),
            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10_000},
        )
        return np.exp(res.x)

    bg = fit(lambda t, o: cm.bgnbd_terms(t, s.x, s.t_x, s.big_t, order=o), [1.0, 1.0, 1.0, 1.0])
    gg = fit(lambda t, o: cm.gg_terms(t, s.x[spend], s.mean_spend[spend], order=o), [1.0, 2.0, 10.0])
    return {
        "bgnbd": dict(zip(cm.BGNBD_PARAMS, bg.tolist(), strict=True)),
        "gamma_gamma": dict(zip(cm.GG_PARAMS, gg.tolist(), strict=True)),
    }


def values(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "bgnbd": {k: e["value"] for k, e in result["bgnbd"].items()},
        "gamma_gamma": {k: e["value"] for k, e in result["gamma_gamma"].items()},
    }


def holdout_mae(model: dict[str, Any], data: dict[str, np.ndarray]) -> float:
    """Mean |E[holdout purchases | history] - actual| per customer (39 weeks)."""
    cal, hold = day_number(CAL, "c"), day_number(HOLD, "h")
    s = summarise(data["customer"], data["time"], data["amount"], calibration_end=cal, holdout_end=hold)
    bg = [model["bgnbd"][k] for k in cm.BGNBD_PARAMS]
    expected = cp.expected_purchases(bg, (hold - cal) / 7, s.x, s.t_x, s.big_t)
    return float(np.mean(np.abs(expected - s.holdout)))


def rel_errors(est: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    return {f"{m}.{k}": abs(est[m][k] / ref[m][k] - 1.0) for m in ("bgnbd", "gamma_gamma") for k in ref[m]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cdnow"
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=clv_fit.DEFAULTS["rounds"])
    parser.add_argument("--no-noise-clip", type=float, default=1e4)
    args = parser.parse_args(argv)
    sample = load_cdnow(args.data / "CDNOW_sample.txt")
    master = load_cdnow(args.data / "CDNOW_master.txt")
    out: dict[str, Any] = {
        "nodes": args.nodes,
        "rounds": args.rounds,
        "calibration_end": CAL,
        "holdout_end": HOLD,
    }
    big = 10.0  # the noiseless path still prices its plans (any valid ε); no noise is added
    started = time.perf_counter()
    loose: dict[str, ParamValue] = {"grad_clip": args.no_noise_clip, "hessian_clip": args.no_noise_clip}
    fed = values(run(spec(big, rounds=args.rounds, **loose), split(sample, args.nodes), noise=False, seed=0))
    out["sample_no_noise"] = {
        "federated": fed,
        "paper": PAPER,
        "central": central(sample),
        "matches_paper_to_2_decimals": all(
            round(fed["bgnbd"][k], 2) == round(v, 2) for k, v in PAPER.items()
        ),
    }
    master_nodes = split(master, args.nodes)
    fed_all = values(run(spec(big, rounds=args.rounds, **loose), master_nodes, noise=False, seed=0))
    ref = central(master)
    errs = rel_errors(fed_all, ref)
    clipped = values(run(spec(big, rounds=args.rounds), master_nodes, noise=False, seed=0))
    out["all_no_noise"] = {
        "federated": fed_all,
        "central": ref,
        "max_relative_error": max(errs.values()),
        "matches_central_to_3_significant_figures": all(
            float(f"{fed_all[m][k]:.3g}") == float(f"{ref[m][k]:.3g}") for m in ref for k in ref[m]
        ),
        "holdout_mae_central": holdout_mae(ref, master),
        "clipping_bias": {
            "grad_clip": clv_fit.DEFAULTS["grad_clip"],
            "hessian_clip": clv_fit.DEFAULTS["hessian_clip"],
            "federated": clipped,
            "relative_error": rel_errors(clipped, ref),
        },
    }
    print(f"no-noise fits done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    runs = []
    for seed in range(args.seeds):
        result = run(spec(args.epsilon, rounds=args.rounds), master_nodes, noise=True, seed=1000 + seed)
        est = values(result)
        runs.append({"errors": rel_errors(est, ref), "mae": holdout_mae(est, master), "result": result})
        print(f"seed {seed}: {est}", file=sys.stderr)
    keys = list(runs[0]["errors"])
    last = runs[0]["result"]
    out["dp"] = {
        "epsilon": args.epsilon,
        "delta": 1e-6,
        "seeds": args.seeds,
        "median_relative_error": {k: statistics.median(r["errors"][k] for r in runs) for k in keys},
        "max_relative_error": {k: max(r["errors"][k] for r in runs) for k in keys},
        "median_holdout_mae": statistics.median(r["mae"] for r in runs),
        "non_private_holdout_mae": out["all_no_noise"]["holdout_mae_central"],
        "rho_total": last["rho_total"],
        "rho_spent": last["rho_spent"],
        "budget": [{"round": b["round"], "phase": b["phase"], "rho": b["rho"]} for b in last["budget_split"]],
        "example_result": {k: last[k] for k in ("bgnbd", "gamma_gamma", "holdout", "steps")},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
