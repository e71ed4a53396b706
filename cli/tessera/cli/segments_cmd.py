"""`tessera node segments`: a node labels its own customers with a released segment model.

The model is a job's result (``rfm_segments`` or ``kmeans``, JSON) or its ``model`` part. The node
reads its own data, computes every customer's segment or cluster locally (the same functions the
analyses define), prints how many of its customers fall in each — counts only, never an id or a
value — and with ``--store`` keeps the labels in the vault as a derived customer field
(``rfm_segment`` or ``cluster``, which the policy must classify under ``customers``). Nothing
leaves the node: this command opens no connection.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tessera.cli._common import console, friendly_errors
from tessera.cli.vault_cmd import AsJson, DbUrl, PolicyFile, StateDir
from tessera.client.datasource import DataSource, customer_key, customers_join
from tessera.client.vault.derived import store_derived
from tessera.client.vault.state import open_node_state
from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import kmeans, rfm, rfm_segments
from tessera.core.errors import ConfigError, InvalidRequest
from tessera.core.policy import load_policy

FIELDS = {"rfm": "rfm_segment", "kmeans": "cluster"}

ModelFile = Annotated[
    Path, typer.Option("--model", help="A released rfm_segments or kmeans result (JSON), or its model.")
]
Store = Annotated[bool, typer.Option("--store", help="Keep the labels in the vault (rfm_segment / cluster).")]


def _model(path: Path) -> tuple[dict[str, Any], str]:
    """The model and the dataset its job read (a result names it; a bare model is transactions)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ConfigError(f"{path} is not JSON: give a job result of rfm_segments or kmeans") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} holds no segment model")
    model = doc.get("model", doc)
    if not isinstance(model, dict) or model.get("kind") not in FIELDS:
        raise ConfigError(f"{path} holds no rfm_segments or kmeans model")
    dataset = doc.get("dataset") or "transactions"
    return model, str(dataset)


def labels(source: DataSource, model: dict[str, Any], dataset: str) -> dict[int, str]:
    """Every labelled customer's vault id -> its segment (or cluster number as text)."""
    key = customer_key(source, dataset)
    if model["kind"] == "rfm":
        if key is None:
            raise InvalidRequest(f"dataset {dataset!r} has no customer key: RFM needs rows per customer")
        fields = (model["time_field"], model["amount_field"], key)
        data = source.read(dataset, fields)
        return rfm_segments.label_customers(model, data, key=key)
    join = customers_join(source, dataset)
    layout = kmeans.model_layout(model, dataset=dataset, key=key, join=join)
    if key is None:
        raise InvalidRequest(
            f"dataset {dataset!r} names no customer_key in the policy, so labels cannot be tied to customers"
        )
    data = ct.read_columns(source.read, dataset, kmeans.model_fields(layout))
    clusters = kmeans.label_customers(model, data, dataset=dataset, key=key, join=join)
    return {cid: str(label) for cid, label in clusters.items()}


@friendly_errors
def segments(
    state_dir: StateDir,
    policy: PolicyFile,
    model: ModelFile,
    store: Store = False,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Label this node's customers with a released RFM or k-means model; counts only, never PII."""
    doc, dataset = _model(model)
    state = open_node_state(state_dir, load_policy(policy), db_url=db_url)
    try:
        found = labels(state.data_source, doc, dataset)
        counts = Counter(found.values())
        field = FIELDS[doc["kind"]]
        stored = store_derived(state.engine, state.policy, field=field, values=found) if store else 0
        state.audit("segments", kind=doc["kind"], customers=len(found), stored=stored, field=field)
    finally:
        state.close()
    order = list(rfm.SEGMENTS) if doc["kind"] == "rfm" else sorted(counts, key=int)
    rows = [(label, counts.get(label, 0)) for label in order]
    if as_json:
        console.print_json(
            json.dumps({"kind": doc["kind"], "customers": len(found), "stored": stored, "labels": dict(rows)})
        )
        return
    table = Table(field, "customers", title=f"this node's customers by {field}")
    for label, n in rows:
        table.add_row(label, str(n))
    console.print(table)
    if store:
        console.print(f"{stored} labels stored in the vault as field {field!r}")


def register(app: typer.Typer) -> None:
    """Add `segments` to `tessera node`."""
    app.command("segments")(segments)
