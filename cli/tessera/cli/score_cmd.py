"""`tessera node score`: every customer's churn risk at home, from a released churn model card.

The node reads its own data as the job did, computes each customer's score with the card's model
(the functions the evaluation used), prints a summary over all scored customers — never one
customer's value — and with ``--store`` keeps the scores in the vault as the derived customer
field ``churn_risk`` (the policy must classify it, general_sensitive). Nothing leaves the node.
"""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from tessera.cli._common import console, friendly_errors
from tessera.cli.model_cmd import ModelFile, load_model_file
from tessera.cli.vault_cmd import AsJson, DbUrl, PolicyFile, StateDir
from tessera.client.datasource import DataSource, customer_key, customers_join
from tessera.client.vault.derived import store_derived
from tessera.client.vault.state import open_node_state
from tessera.core.analyses import churn_card
from tessera.core.analyses import customer_table as ct
from tessera.core.errors import InvalidRequest
from tessera.core.policy import load_policy

FIELD = "churn_risk"
Store = Annotated[bool, typer.Option("--store", help="Keep each customer's score in the vault (churn_risk).")]


def node_scores(source: DataSource, doc: dict[str, object]) -> dict[int, float]:
    """Every scorable customer's vault id -> churn probability under the card's model."""
    inner = doc.get("result", doc)
    dataset = str(inner.get("dataset") or "transactions") if isinstance(inner, dict) else "transactions"
    model = churn_card.model_of(doc)
    key = customer_key(source, dataset)
    if key is None:
        raise InvalidRequest(
            f"dataset {dataset!r} names no customer_key, so scores cannot be tied to customers"
        )
    join = customers_join(source, dataset)
    layout = churn_card.layout_of(model, dataset=dataset, key=key, join=join)
    data = ct.read_columns(source.read, dataset, churn_card.reads(layout))
    ids, scores = churn_card.score(layout, data)
    return dict(zip(ids.tolist(), scores.tolist(), strict=True))


@friendly_errors
def score(
    state_dir: StateDir,
    policy: PolicyFile,
    model: ModelFile,
    store: Store = False,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Score this node's customers with a churn model card; a summary only, never one customer."""
    doc = load_model_file(model)
    state = open_node_state(state_dir, load_policy(policy), db_url=db_url)
    try:
        if store:
            state.policy.tier_of("customers", FIELD)  # classified before anything is computed
        found = node_scores(state.data_source, doc)
        stored = store_derived(state.engine, state.policy, field=FIELD, values=found) if store else 0
        state.audit("churn_score", customers=len(found), stored=stored, field=FIELD)
    finally:
        state.close()
    values = np.array(list(found.values()), dtype=np.float64)
    q = np.percentile(values, [10, 50, 90]).tolist() if values.size else [None] * 3
    summary = {
        "customers": len(found),
        "mean": float(values.mean()) if values.size else None,
        "p10": q[0],
        "median": q[1],
        "p90": q[2],
        "stored": stored,
    }
    if as_json:
        console.print_json(json.dumps(summary))
        return
    table = Table("customers", "mean risk", "p10", "median", "p90", title="this node's churn risk")
    fmt = [f"{x:.3f}" if isinstance(x, float) else "-" for x in (summary["mean"], *q)]
    table.add_row(str(len(found)), *fmt)
    console.print(table)
    if store:
        console.print(f"{stored} scores stored in the vault as field {FIELD!r}")


def register(app: typer.Typer) -> None:
    """Add `score` to `tessera node`."""
    app.command("score")(score)
