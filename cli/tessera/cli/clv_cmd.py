"""`tessera node clv`: predict every customer's purchases, P(alive), spend and CLV at home.

The model is the PUBLIC result of a ``clv_fit`` job; the predictions are computed from it and the
node's own purchase histories and never leave the node. The command prints a summary over all
predicted customers (never one customer's values) and, with ``--store``, writes each customer's
values into the vault as derived fields of ``customers`` (the policy must classify them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from tessera.cli._common import console, friendly_errors
from tessera.cli.vault_cmd import AsJson, DbUrl, PolicyFile, StateDir, _open
from tessera.client.vault.derived import store_derived
from tessera.core.analyses import clv_predict as cp
from tessera.core.analyses.clv_summary import day_number, summarise
from tessera.core.analyses.params import CUSTOMER_KEY
from tessera.core.errors import InvalidRequest

# The derived fields --store writes (each must be classified in the policy's `customers`).
STORED = cp.DERIVED_FIELDS

ModelFile = Annotated[
    Path, typer.Option("--model", help="A clv_fit job result (JSON, as `tessera job result --json` prints).")
]
Horizon = Annotated[float, typer.Option("--horizon-weeks", help="Weeks ahead to predict (whole weeks).")]
Discount = Annotated[
    float, typer.Option("--discount-rate", help="Annual discount rate of future revenue (0.1 = 10%).")
]
AsOf = Annotated[
    str | None,
    typer.Option("--as-of", help="Predict from this day (YYYY-MM-DD; default: the last purchase day)."),
]
Store = Annotated[bool, typer.Option("--store", help="Write the values into the vault (derived fields).")]


def _model(path: Path) -> tuple[Any, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise InvalidRequest(f"{path} is not a JSON file") from None
    return cp.model_from_result(doc)


def _summary(label: str, values: np.ndarray, *, total: bool) -> list[str]:
    q10, q50, q90 = np.percentile(values, [10, 50, 90]) if values.size else (math.nan,) * 3
    mean = float(values.mean()) if values.size else math.nan
    return [
        label,
        f"{mean:.3f}",
        f"{q10:.3f}",
        f"{q50:.3f}",
        f"{q90:.3f}",
        f"{values.sum():.1f}" if total else "",
    ]


def predict(
    bgnbd: Any, gg: Any, data: dict[str, np.ndarray], *, as_of: int, horizon: float, rate: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Vault customer ids and their predicted values (pure; what the command computes)."""
    s = summarise(data["customer"], data["time"], data["amount"], calibration_end=as_of)
    values = {
        "expected_purchases": cp.expected_purchases(bgnbd, horizon, s.x, s.t_x, s.big_t),
        "p_alive": cp.p_alive(bgnbd, s.x, s.t_x, s.big_t),
        "expected_spend": cp.expected_spend(gg, s.x, s.mean_spend),
        "clv": cp.clv(
            bgnbd,
            gg,
            horizon_weeks=horizon,
            annual_discount_rate=rate,
            x=s.x,
            t_x=s.t_x,
            big_t=s.big_t,
            mean_spend=s.mean_spend,
        ),
    }
    return s.customer, values


@friendly_errors
def clv(
    state_dir: StateDir,
    policy: PolicyFile,
    model: ModelFile,
    horizon_weeks: Horizon = 52.0,
    discount_rate: Discount = 0.1,
    as_of: AsOf = None,
    store: Store = False,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Predict purchases, P(alive), spend per purchase and CLV of this node's customers."""
    bgnbd, gg = _model(model)
    if horizon_weeks != int(horizon_weeks):
        raise InvalidRequest("--horizon-weeks must be a whole number of weeks")
    state = _open(state_dir, policy, db_url)
    try:
        if store:  # every field classified before any is written: no half-stored model
            for name in STORED:
                state.policy.tier_of("customers", name)
        source = state.data_source
        schema = next((s for s in source.schemas() if s.name == "transactions"), None)
        if schema is None:
            raise InvalidRequest("this node's policy has no transactions dataset to predict from")
        key = next(f.name for f in schema.fields if f.type == CUSTOMER_KEY)
        rows = source.read("transactions", ["time", "amount", key])
        data = {"customer": rows[key], "time": rows["time"], "amount": rows["amount"]}
        finite = np.isfinite(data["time"])
        if not finite.any():
            raise InvalidRequest("the vault holds no purchase with a time")
        day = day_number(as_of, "--as-of") if as_of is not None else int(np.floor(data["time"][finite].max()))
        ids, values = predict(bgnbd, gg, data, as_of=day, horizon=horizon_weeks, rate=discount_rate)
        stored: dict[str, int] = {}
        if store:
            for name in STORED:
                column = values[name]
                stored[name] = store_derived(
                    state.engine,
                    state.policy,
                    field=name,
                    values=dict(zip(ids.tolist(), column.tolist(), strict=True)),
                )
        state.audit("clv_predict", customers=int(ids.size), stored=stored, horizon_weeks=horizon_weeks)
    finally:
        state.close()
    doc = {
        "customers": int(ids.size),
        "as_of": (np.datetime64("1970-01-01") + np.timedelta64(day, "D")).astype(str),
        "horizon_weeks": horizon_weeks,
        "discount_rate": discount_rate,
        "summary": {
            name: {
                "mean": float(col.mean()) if col.size else None,
                "median": float(np.median(col)) if col.size else None,
                "total": float(col.sum()),
            }
            for name, col in values.items()
        },
        "stored": stored,
    }
    if as_json:
        console.print_json(json.dumps(doc))
        return
    console.print(
        f"{doc['customers']} customers predicted as of {doc['as_of']} over {horizon_weeks:g} weeks "
        f"(discount {discount_rate:g}/year)"
    )
    table = Table("value", "mean", "p10", "median", "p90", "total")
    table.add_row(*_summary("expected purchases", values["expected_purchases"], total=True))
    table.add_row(*_summary("P(alive)", values["p_alive"], total=False))
    table.add_row(*_summary("spend per purchase", values["expected_spend"], total=False))
    table.add_row(*_summary("CLV", values["clv"], total=True))
    console.print(table)
    if stored:
        console.print("stored in the vault: " + ", ".join(f"{k} ({n})" for k, n in stored.items()))
