"""The churn model card as readable tables (`tessera job result`, `tessera model card|show`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from tessera.cli._common import console


def _ci(value: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not isinstance(value, Mapping):
        return "-"
    low, high = value["ci95"]
    return f"{value['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def render_churn(doc: Mapping[str, Any]) -> None:
    """A churn_model result or model card: evaluation, coefficients, preprocessing, privacy."""
    ev = doc["evaluation"]
    prep = doc["preprocessing"]
    privacy = doc.get("privacy") or {"epsilon": doc.get("epsilon"), "delta": doc.get("delta")}
    console.print(
        f"  churn_model of {doc['label']} on {prep['training_customers']:,.0f} training customers "
        f"(DP count), ε={privacy['epsilon']:g}, δ={privacy['delta']:g}",
        highlight=False,
    )
    console.print(
        f"  held-out AUC {_ci(ev['auc'])}, log-loss {ev['log_loss']:.4f}, "
        f"calibration error {ev['expected_calibration_error']:.4f} on "
        f"{ev['holdout_customers']:,.0f} held-out customers",
        highlight=False,
    )
    truth = doc.get("true") or {}
    if "auc" in truth:
        console.print(f"  the same model trained without noise (demo only): AUC {truth['auc']:.3f}")
    table = Table(title="coefficients (numeric: per sd; categories: against 'other')", show_edge=False)
    table.add_column("column")
    table.add_column("coefficient", justify="right")
    table.add_column("preprocessing", justify="right")
    numeric = prep.get("numeric") or {}
    for name, value in doc["coefficients"].items():
        note = ""
        if name in numeric:
            f = numeric[name]
            log = "log1p, " if f["log1p"] else ""
            note = f"{log}clip [{f['lower']:g}, {f['upper']:g}], mean {f['mean']:.3g}, sd {f['sd']:.3g}"
        table.add_row(name, f"{value:+.4f}", note)
    console.print(table)
    for feature, counts in (prep.get("categories") or {}).items():
        kept = set((prep.get("kept") or {}).get(feature, ()))
        cells = ", ".join(
            f"{c}: {'<floor' if n is None else f'{n:,.0f}'}{'' if c in kept or c == 'other' else ' (folded)'}"
            for c, n in counts.items()
        )
        console.print(f"  {feature}: {cells}", highlight=False)
    calib = Table(title="calibration (held-out, DP)", show_edge=False)
    for column in ("predicted", "customers", "observed rate"):
        calib.add_column(column, justify="right")
    for row in ev["calibration"]:
        if not row["suppressed"]:
            calib.add_row(
                f"{row['predicted']:.3f}", f"{row['customers']:,.0f}", f"{row['observed_rate']:.3f}"
            )
    console.print(calib)
    participants = privacy.get("participants") or {}
    if participants:
        nodes = Table(title="privacy per node", show_edge=False)
        for column in ("node", "ρ", "ε", "δ", "policy hash"):
            nodes.add_column(column)
        for node, p in participants.items():
            nodes.add_row(
                node,
                f"{p['rho']:.4g}",
                f"{p['epsilon']:.3g}",
                f"{p['delta']:g}",
                (p["policy_hash"] or "-")[:12],
            )
        console.print(nodes)
