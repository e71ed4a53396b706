"""The demo's synthetic events: seeded, every row its own time, funnel-shaped under the example
policy, and the funnel the nodes compute from them narrows step by step (the demo's e2e test
ingests them into the vaults and runs the funnel over real processes)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from tessera.cli.demo_data import FUNNEL_STEPS, WHALE_SESSIONS, customer_id, write_events
from tessera.client.datasource import CsvDataSource
from tessera.core.analyses import funnel
from tessera.core.policy import load_policy
from tessera.core.types import JobSpec

POLICY = Path(__file__).resolve().parents[3] / "policies" / "retailer.yaml"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_events_are_seeded_distinct_and_funnel_shaped(tmp_path: Path) -> None:
    policy = load_policy(POLICY)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    written = write_events(policy, a, customers=300, seed=4)
    write_events(policy, b, customers=300, seed=4)
    assert a.read_bytes() == b.read_bytes() and written == len(_rows(a))
    rows = _rows(a)
    assert set(rows[0]) == {"customer_id", "time", "event_type"}
    assert len({(r["customer_id"], r["time"]) for r in rows}) == len(rows)  # idempotent ingestion keeps all
    kinds = Counter(r["event_type"] for r in rows)
    assert set(kinds) <= {*FUNNEL_STEPS, "search"}
    assert kinds["visit"] > kinds["view"] > kinds["cart"] > kinds["purchase"] > 0
    whale = [r for r in rows if r["customer_id"] == customer_id(4, 0)]
    assert sum(r["event_type"] == "visit" for r in whale) == WHALE_SESSIONS

    source = CsvDataSource({"events": a}, policy)
    schema = next(d for d in source.schemas() if d.name == "events")
    spec = JobSpec(
        analysis="funnel",
        dataset="events",
        epsilon=1.0,
        delta=1e-6,
        params={"steps": FUNNEL_STEPS, "window_days": 7.0},
    )
    plan = funnel.plan(spec, {f.name: f for f in schema.fields}, survivors_t=3, n_nodes=3)
    levels = funnel.exact(plan, source.read("events", plan.fields))
    stages = np.cumsum(levels[::-1])[::-1]
    assert np.all(np.diff(stages) < 0) and stages[-1] > 0
