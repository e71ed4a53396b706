"""`tessera model card|show|predict`: the churn model card, and scoring a CSV file with it.

``card`` fetches a churn_model job's result and the participants' policy hashes from the
coordinator and writes the card (``core.analyses.churn_card`` documents its fields). ``predict``
needs no connection: it applies the card's model to a CSV file of one row per customer and writes
``id,churn_score`` to standard output.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from tessera.cli._common import console, friendly_errors
from tessera.cli.analyst_client import AnalystClient
from tessera.cli.churn_view import render_churn
from tessera.cli.options import DEFAULT_COORDINATOR, Coordinator, PkiDir, User
from tessera.core.analyses import churn_card
from tessera.core.analyses import customer_table as ct
from tessera.core.errors import ConfigError, InvalidRequest

app = typer.Typer(help="Churn model cards and scoring with them.", no_args_is_help=True)
ModelFile = Annotated[Path, typer.Option("--model", help="A churn model card (or a churn_model job result).")]


def load_model_file(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{path} is not a readable JSON file") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} holds no churn model")
    return doc


@app.command()
@friendly_errors
def card(
    job_id: str,
    pki: PkiDir,
    out: Annotated[Path, typer.Option("--out", help="Where to write the card (JSON).")],
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    user: User = "analyst",
) -> None:
    """Write a churn_model job's model card and show it."""
    with AnalystClient.from_pki(coordinator, pki, user) as client:
        doc = client.result_document(job_id)
        hashes = {n.node_id: n.policy.policy_hash for n in client.nodes()}
    built = churn_card.build_card(doc, policy_hashes=hashes)
    out.write_text(json.dumps(built, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    render_churn(built)
    console.print(f"model card written to {out}")


@app.command()
@friendly_errors
def show(path: Annotated[Path, typer.Argument(help="A churn model card.")]) -> None:
    """Show a model card as tables."""
    doc = load_model_file(path)
    churn_card.model_of(doc)
    render_churn(doc.get("result", doc))


def read_csv_columns(
    path: Path, layout: dict[str, Any], id_column: str | None
) -> tuple[list[str], dict[str, Any]]:
    """The CSV's ids and the columns the model reads (``customers.x`` may be written ``x``)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        raise ConfigError(f"{path} is not a readable CSV file") from None
    header = set(rows[0]) if rows else set()

    def column(name: str) -> str:
        for candidate in (name, ct.qualified(name)[1]):
            if candidate in header:
                return candidate
        raise InvalidRequest(f"{path} has no column {ct.qualified(name)[1]!r}, which the model reads")

    data: dict[str, Any] = {}
    for name in layout["read"]:
        col = column(name)
        values = []
        for row in rows:
            text = (row[col] or "").strip()
            try:
                values.append(float(text) if text else math.nan)
            except ValueError:
                raise InvalidRequest(f"column {col!r} of {path} must hold numbers") from None
        data[name] = np.array(values, dtype=np.float64)
    for name in layout["read_categorical"]:
        col = column(name)
        data[name] = np.array([(row[col] or "").strip() or None for row in rows], dtype=object)
    if id_column is not None and id_column not in header and rows:
        raise InvalidRequest(f"{path} has no id column {id_column!r}")
    ids = [row[id_column] if id_column else str(i) for i, row in enumerate(rows)]
    if not data:
        data["_rows"] = np.zeros(len(rows))
    return ids, data


@app.command()
@friendly_errors
def predict(
    model: ModelFile,
    data: Annotated[Path, typer.Argument(help="CSV, one row per customer, a column per feature.")],
    id_column: Annotated[
        str | None, typer.Option("--id-column", help="Column to copy as the id (default: row number).")
    ] = None,
) -> None:
    """Score a CSV of customers with a churn model card: `id,churn_score` on standard output.

    rfm.* features are read from columns of those names (the RFM values as of the card's date).
    Rows missing a numeric feature get an empty score.
    """
    m = churn_card.model_of(load_model_file(model))
    layout = churn_card.layout_of(m, dataset="customers", key=None, join=None)
    layout["read"] = tuple(layout["numeric"])
    layout["rfm_as_columns"] = True
    ids, columns = read_csv_columns(data, layout, id_column)
    rows, scores = churn_card.score(layout, columns)
    by_row = dict(zip(rows.tolist(), scores.tolist(), strict=True))
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["id", "churn_score"])
    for i, ident in enumerate(ids):
        value = by_row.get(i)
        out.writerow([ident, "" if value is None else repr(float(value))])
