"""Demo only: the true values beside each DP release, computed from the raw partner CSVs.

The demo made the partners' data, so it can compute what no real participant could: the exact,
noiseless answer. It runs the same analysis code on the same columns and puts a ``true`` value
next to every released cell, so coverage of the 95% intervals can be checked from results.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tessera.client.datasource import CsvDataSource, read_for_plan
from tessera.core.analyses.registry import get_vector_analysis
from tessera.core.policy import Policy
from tessera.core.rounds import analysis_spec
from tessera.core.types import JobSpec


def add_truth(
    doc: dict[str, Any], spec: JobSpec, partners: Mapping[str, tuple[Policy, Mapping[str, Path]]]
) -> dict[str, Any]:
    """``doc`` (a released result) with ``true`` values merged into its cells, and a coverage line.

    The truth is bounded per customer exactly as the nodes bound it (same plan, same code, the raw
    CSVs grouped by the policy's ``customer_key``): it is the value the noise was added to.
    """
    if spec.analysis == "mean_descent":
        return _descent_truth(doc, spec, partners)
    if spec.analysis == "churn_model":
        return _churn_truth(doc, spec, partners)
    if spec.analysis in ("rfm_segments", "kmeans"):
        return doc  # the truth of a segmentation is its local labels: see `tessera node segments`
    if spec.analysis == "overlap":
        return _overlap_truth(doc, partners)
    if spec.analysis == "clv_fit":
        # For orientation: the published fit on the 1/10th sample of these customers.
        doc["reference"] = {"source": "Fader, Hardie & Lee 2005, on the 1/10th sample", **PAPER_BGNBD}
        return doc
    analysis = get_vector_analysis(spec.analysis)
    survivors = [n for n in doc.get("survivors", partners) if n in partners]
    sources = [CsvDataSource({spec.dataset: partners[n][1][spec.dataset]}, partners[n][0]) for n in survivors]
    schema = next(d for d in sources[0].schemas() if d.name == spec.dataset)
    plan = analysis.plan(
        analysis_spec(spec),
        {f.name: f for f in schema.fields},
        survivors_t=len(survivors),
        n_nodes=len(survivors),
    )
    truth = sum(
        (analysis.exact(plan, read_for_plan(src, spec.dataset, plan.fields)) for src in sources),
        start=np.zeros(plan.length),
    )
    reference = analysis.release(
        plan, np.zeros(plan.length, dtype=np.int64), summands=len(survivors), min_cohort_size=0, truth=truth
    )
    if "true" in reference:
        doc["true"] = reference["true"]
    for cell, ref in zip(doc.get("cells", []), reference.get("cells", []), strict=False):
        if "true" in ref:
            cell["true"] = ref["true"]
    doc["coverage"] = coverage(doc.get("cells", []))
    return doc


PAPER_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
_DESCENT_ONLY = ("rounds", "learning_rate", "tolerance")


def _descent_truth(
    doc: dict[str, Any], spec: JobSpec, partners: Mapping[str, tuple[Policy, Mapping[str, Path]]]
) -> dict[str, Any]:
    """Gradient descent heads for each group's mean: the truth is the exact (bounded) mean."""
    params = {k: v for k, v in spec.params.items() if k not in _DESCENT_ONLY}
    groups = spec.params.get("groups")
    labels = (*groups, "other") if isinstance(groups, tuple) else ("all",)
    cells: list[dict[str, Any]] = [{"group": g} for g in labels]
    mean_doc: dict[str, Any] = {"survivors": doc.get("survivors", list(partners)), "cells": cells}
    add_truth(mean_doc, replace(spec, analysis="mean", params=params), partners)
    doc["true_means"] = {c["group"]: (c.get("true") or {}).get("mean") for c in cells}
    return doc


def coverage(cells: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many released (unsuppressed) values have their true value inside their 95% interval."""
    inside = released = 0
    for cell in cells:
        if cell.get("suppressed") or "true" not in cell:
            continue
        for key, estimate in cell.items():
            true = cell["true"].get(key) if isinstance(cell["true"], Mapping) else None
            if (
                not isinstance(estimate, Mapping)
                or "ci95" not in estimate
                or not isinstance(true, int | float)
            ):
                continue
            low, high = estimate["ci95"]
            released += 1
            inside += int(low <= true <= high)
    return {"released": released, "inside_ci95": inside}


def _churn_truth(
    doc: dict[str, Any], spec: JobSpec, partners: Mapping[str, tuple[Policy, Mapping[str, Path]]]
) -> dict[str, Any]:
    """Beside the DP model: the same program run without noise on the same partners' data."""
    from tessera.core.analyses import churn_model
    from tessera.core.analyses.churn_simulate import run

    survivors = [n for n in doc.get("survivors", partners) if n in partners]
    sources = [CsvDataSource({spec.dataset: partners[n][1][spec.dataset]}, partners[n][0]) for n in survivors]
    schema = next(d for d in sources[0].schemas() if d.name == spec.dataset)
    fields = {f.name: f for f in schema.fields}
    job = analysis_spec(spec)
    plan = churn_model.plan(job, fields, survivors_t=len(sources), n_nodes=len(sources))
    datas = [read_for_plan(src, spec.dataset, plan.fields) for src in sources]
    plain = run(churn_model, job, fields, datas, noise=False, rng=np.random.default_rng(0)).result
    doc["true"] = {"auc": plain["evaluation"]["auc"]["value"], "coefficients": plain["coefficients"]}
    return doc


def write_churn_cards(out: Path, results: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
    """Each successful churn_model job's model card as ``churn-card.json`` (the demo's last one)."""
    from tessera.core.analyses.churn_card import build_card

    hashes = {n["node_id"]: n["policy_hash"] for n in nodes}
    for doc in results:
        if doc.get("analysis") == "churn_model" and doc.get("status") == "succeeded":
            card = build_card(doc, policy_hashes=hashes)
            (out / "churn-card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def _overlap_truth(
    doc: dict[str, Any], partners: Mapping[str, tuple[Policy, Mapping[str, Path]]]
) -> dict[str, Any]:
    """Each released pair's true number of shared e-mail addresses (normalised as the nodes do)."""
    from tessera.client.overlap_source import CsvIdentifiers

    emails = {
        name: set(CsvIdentifiers(files, policy).identifiers("email", label=None))
        for name, (policy, files) in partners.items()
    }
    covered = 0
    released = [p for p in doc["pairs"] if p["status"] == "released"]
    for pair in released:
        pair["true"] = len(emails[pair["a"]] & emails[pair["b"]])
        covered += pair["interval"][0] <= pair["true"] <= pair["interval"][1]
    doc["coverage"] = f"{covered} of {len(released)} pair intervals hold the true count"
    return doc
