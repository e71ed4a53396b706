"""The churn model card: one documented JSON file, and applying its model at home (pure).

A card is built from a ``churn_model`` job's result (as ``tessera job result --json`` prints it) and
the participants' policy hashes as the coordinator knows them. Its fields (``CARD_VERSION`` 1):

- ``card``: ``{"kind": "tessera.churn_model_card", "version": 1}``;
- ``job_id``, ``dataset``, ``label``, ``features``: what was modelled;
- ``preprocessing``: the DP training-customer count and churners, each numeric feature's public
  bounds, ``log1p`` flag and DP mean and sd, each categorical feature's DP counts per listed
  category and the categories kept (the rest folded into ``other``, the base level);
- ``coefficients``: one per model column (``intercept``, numeric features in sd units,
  ``feature=category`` against ``other``);
- ``evaluation``: held-out AUC with its 95% interval, log-loss, calibration table (DP);
- ``privacy``: the job's (ε, δ) and ρ, and per participant the ρ and ε charged at that node
  (the rounds whose masked input it sent), its policy hash;
- ``training``: optimiser, learning rates, rounds, clipping, and ``trace`` (one row per round:
  ρ, nodes summed, drops, the driver's metrics);
- ``model``: everything scoring needs (``churn_features.scores``), so ``tessera model predict``
  and ``tessera node score`` give exactly the scores the evaluation binned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import churn_features as cf
from tessera.core.analyses import customer_table as ct
from tessera.core.analyses.churn_spec import NO_PURCHASE_AFTER
from tessera.core.dp import rho_to_epsilon
from tessera.core.errors import InvalidRequest
from tessera.core.types import JobSpec

CARD_KIND = "tessera.churn_model_card"
CARD_VERSION = 1


def build_card(result: Mapping[str, Any], *, policy_hashes: Mapping[str, str]) -> dict[str, Any]:
    """The card of a ``churn_model`` result document (``{"job_id", "result": …}`` or the result)."""
    body = result.get("result", result)
    if not isinstance(body, Mapping) or body.get("analysis") != "churn_model" or "model" not in body:
        raise InvalidRequest("this is not the result of a successful churn_model job")
    rounds = list(body.get("rounds") or [])
    delta = float(body["delta"])
    participants = sorted({n for r in rounds for n in (*r.get("survivors", ()), *r.get("dropped", ()))})
    per_node = {}
    for node in participants:
        rho = sum(r["rho"] for r in rounds if node in r.get("survivors", ()) or node in r.get("dropped", ()))
        per_node[node] = {
            "rho": rho,
            "epsilon": rho_to_epsilon(rho, delta=delta) if rho > 0 else 0.0,
            "delta": delta,
            "policy_hash": policy_hashes.get(node),
        }
    budget = body.get("budget") or {}
    return {
        "card": {"kind": CARD_KIND, "version": CARD_VERSION},
        "job_id": result.get("job_id"),
        "dataset": body["dataset"],
        "label": body["label"],
        "features": body["features"],
        "preprocessing": body["preprocessing"],
        "coefficients": body["coefficients"],
        "evaluation": {k: val for k, val in body["evaluation"].items()},
        "privacy": {
            "epsilon": body["epsilon"],
            "delta": delta,
            "rho_reserved": budget.get("rho_reserved"),
            "rho_used": budget.get("rho_used"),
            "epsilon_used": budget.get("epsilon_used"),
            "unit": "one customer with all of its rows",
            "participants": per_node,
        },
        "training": {**body["training"], "trace": rounds},
        "model": body["model"],
    }


def model_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring model of a card, of a job result document or of a bare model."""
    inner = doc.get("result", doc)
    model = inner.get("model", inner) if isinstance(inner, Mapping) else None
    if not isinstance(model, Mapping) or model.get("kind") != "churn_logistic":
        raise InvalidRequest("this file holds no churn model: give a model card or a churn_model result")
    for name in ("numeric", "categorical", "lower", "upper", "log", "mean", "sd", "kept", "w", "clip_sd"):
        if name not in model:
            raise InvalidRequest(f"the churn model lacks {name!r}")
    return dict(model)


def layout_of(model: Mapping[str, Any], *, dataset: str, key: str | None, join: str | None) -> dict[str, Any]:
    """What ``churn_features`` reads under a released model on a node's data."""
    numeric = tuple(str(f) for f in model["numeric"])
    layout: dict[str, Any] = {
        "numeric": numeric,
        "categorical": tuple(str(f) for f in model["categorical"]),
        "read": tuple(f if f in ct.RFM else ct.read_name(dataset, f) for f in numeric),
        "read_categorical": tuple(ct.read_name(dataset, f) for f in model["categorical"]),
        "read_label": str(model["label"])
        if model["label"] == NO_PURCHASE_AFTER
        else ct.read_name(dataset, str(model["label"])),
        "lower": tuple(model["lower"]),
        "upper": tuple(model["upper"]),
        "log": tuple(bool(x) for x in model["log"]),
        "mean": tuple(model["mean"]),
        "sd": tuple(model["sd"]),
        "kept": tuple(tuple(k) for k in model["kept"]),
        "w": tuple(model["w"]),
        "clip_sd": float(model["clip_sd"]),
        "key": key,
        "join": join,
        "time": model.get("time_field"),
        "amount": model.get("amount_field"),
        "reference_day": None,
        "label_end_day": None,
    }
    if len(layout["w"]) != 1 + len(numeric) + sum(len(k) for k in layout["kept"]):
        raise InvalidRequest("the churn model's coefficients do not match its columns")
    if any(f in ct.RFM for f in numeric):
        spec = JobSpec(analysis="churn_model", params={"d": model["reference_date"]})
        layout["reference_day"] = ct.day_param(spec, "d")
    return layout


def reads(layout: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields a node reads to score under ``layout`` (joined ones qualified, the key last)."""
    names = [f for f in layout["read"] if f not in ct.RFM]
    if any(f in ct.RFM for f in layout["numeric"]):
        names = [layout["time"], layout["amount"], *names]
    names += list(layout["read_categorical"])
    if any(ct.qualified(f)[0] == ct.JOINED for f in names):
        if layout["join"] is None:
            raise InvalidRequest(
                "the model joins customers.<field>: the customers dataset needs a customer_key"
            )
        names.append(layout["join"])
    out: list[str] = []
    for name in (*names, layout["key"]):
        if name is not None and name not in out:
            out.append(name)
    return tuple(out)


def score(layout: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Each scorable customer's id and churn probability (never sent anywhere)."""
    people = cf.customers(layout, data, with_label=False)
    return people.ids, cf.scores(layout, people)
