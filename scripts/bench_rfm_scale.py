#!/usr/bin/env python3
"""``rfm_segments`` at scale over real processes: wall time and where it goes (JSON; not pytest).

A coordinator and 4 ``tessera node serve`` processes on loopback (dev PKI, mTLS, the retailer's
example policy), each holding a quarter of ``--customers`` synthetic customers with
``--transactions`` purchases in all (seeded: customer ``c`` lives on node ``c mod 4``; about
``transactions / customers`` purchases each, geometric; times over 2023-24; log-normal amounts).
One ``rfm_segments`` job (ε = 1, δ = 1e-6, reference date 2025-01-01) is timed from submit to
result, ``--runs`` times on the same federation.

``--source csv`` (default): each node serves its transactions CSV (``--data``), read once per job
by the node. ``--source vault``: each node's CSV is first ingested into its encrypted vault (the
real ``Ingestor``: parse, One ID blind index, SQLite inserts) and the node reads the vault; the
ingestion time is reported per node (ingestion runs one node after another, as four partners'
machines would each do for themselves).

Where the time goes, measured apart on node 0's data in this process (same code as the node):
``read_seconds`` (the data source's read of the job's columns), ``round1_local_seconds`` and
``round2_local_seconds`` (RFM per customer, histograms / scoring and the segment table),
``noise_seconds`` (its discrete-Gaussian share of both rounds); and from the coordinator's event
timestamps the seconds of each stage of each round. On 2 shared cores the 4 nodes contend, so the
job's wall time is close to 2x one node's work in the masked-input stages.

    .venv/bin/python scripts/bench_rfm_scale.py --customers 1000000 --transactions 10000000 [--runs 2]
    .venv/bin/python scripts/bench_rfm_scale.py --customers 100000 --transactions 1000000 --source vault
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tessera.cli.analyst_client import AnalystClient
from tessera.cli.demo import ANALYST, _Proc, _spawn, _stop_all, _wait_enrolled, _wait_port, policies_dir
from tessera.client.datasource import CsvDataSource, read_for_plan
from tessera.core.analyses import rfm_segments
from tessera.core.analyses.vector import add_noise
from tessera.core.pki import init_ca, issue
from tessera.core.policy import load_policy
from tessera.core.rounds import analysis_spec
from tessera.core.types import JobSpec

NODES = 4
NAMES = tuple(f"partner-{i}" for i in range(NODES))
START = datetime(2023, 1, 1, tzinfo=UTC)
DAYS = 730
PARAMS = {"reference_date": "2025-01-01", "monetary_max": 2000.0, "recency_max": 730.0}


def log(message: str) -> None:
    print(f"[bench_rfm_scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_node_csv(path: Path, node: int, *, customers: int, transactions: int, seed: int) -> int:
    """Node ``node``'s transactions CSV (customers ``c`` with ``c % NODES == node``); returns rows."""
    rng = np.random.default_rng([seed, node])
    ids = np.arange(node, customers, NODES)
    mean = transactions / customers
    counts = rng.geometric(1.0 / mean, ids.size)
    who = np.repeat(ids, counts)
    day = rng.integers(0, DAYS, who.size)
    second = rng.integers(0, 86_400, who.size)
    amount = np.round(rng.lognormal(3.2, 0.9, who.size), 2)
    dates = np.datetime64(START.date()) + day.astype("timedelta64[D]")
    day_text = np.datetime_as_string(dates, unit="D")
    with path.open("w", encoding="utf-8") as handle:
        handle.write("customer_id,time,amount,channel,category\n")
        chunk = 500_000
        for start in range(0, who.size, chunk):
            stop = min(who.size, start + chunk)
            # A distinct time per row (day and second) keeps rows apart for idempotent ingestion.
            lines = [
                f"C{c},{d}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+00:00,{a},web,music\n"
                for c, d, s, a in zip(
                    who[start:stop].tolist(),
                    day_text[start:stop].tolist(),
                    second[start:stop].tolist(),
                    amount[start:stop].tolist(),
                    strict=True,
                )
            ]
            handle.writelines(lines)
    return int(who.size)


def policy_doc(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((policies_dir() / "retailer.yaml").read_text())
    doc["partner"] = name
    doc["policy_id"] = f"{name}-bench"
    doc["allowed_partners"] = [n for n in NAMES if n != name]
    doc["privacy"] = {"epsilon_per_job": 1.0, "epsilon_per_period": 1000.0, "period_days": 30, "delta": 1e-6}
    return doc


def spec() -> JobSpec:
    return JobSpec(
        analysis="rfm_segments",
        dataset="transactions",
        purpose="research",
        epsilon=1.0,
        delta=1e-6,
        params=PARAMS,  # type: ignore[arg-type]
        deadline=datetime.now(UTC) + timedelta(hours=2),
    )


def ingest(node_dir: Path, csv_path: Path) -> dict[str, float]:
    """The real vault ingestion of one node: its customers (id and region, from the ids in its
    transactions), then its transactions; seconds of each."""
    from tessera.client.vault.ingest import Ingestor
    from tessera.client.vault.mapping import mapping_for_columns
    from tessera.client.vault.sources import CsvSource
    from tessera.client.vault.state import init_node_state

    policy = load_policy(node_dir / "policy.yaml")
    with csv_path.open(encoding="utf-8") as handle:
        next(handle)
        ids = sorted({line.split(",", 1)[0] for line in handle})
    customers = node_dir / "customers.csv"
    customers.write_text("customer_id,region\n" + "".join(f"{c},north\n" for c in ids))
    out = {}
    state = init_node_state(node_dir / "state", policy)
    try:
        for dataset, path in (("customers", customers), ("transactions", csv_path)):
            started = time.perf_counter()
            source = CsvSource(path)
            mapping = mapping_for_columns(policy, dataset, source.columns)
            Ingestor(state.handle()).ingest(source, mapping)
            out[dataset] = round(time.perf_counter() - started, 1)
    finally:
        state.close()
    return out


def where_it_goes(node_dir: Path, csv_path: Path, source_kind: str) -> dict[str, float]:
    """Node 0's own work for the job, step by step, with the node's code (no transport)."""
    policy = load_policy(node_dir / "policy.yaml")
    if source_kind == "csv":
        source: Any = CsvDataSource({"transactions": csv_path}, policy)
    else:
        from tessera.client.db import node_engine
        from tessera.client.vault.source import VaultDataSource

        source = VaultDataSource(node_engine(f"sqlite:///{node_dir / 'state' / 'vault.db'}"), policy)
    schema = next(d for d in source.schemas() if d.name == "transactions")
    fields = {f.name: f for f in schema.fields}
    job = analysis_spec(spec())
    plan1 = rfm_segments.plan(job, fields, survivors_t=NODES, n_nodes=NODES)
    out: dict[str, float] = {}
    t = time.perf_counter()
    data = read_for_plan(source, "transactions", plan1.fields)
    out["read_seconds"] = time.perf_counter() - t
    out["rows"] = float(len(data["time"]))
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    v1 = rfm_segments.local_vector(plan1, data, rng=rng)
    out["round1_local_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    add_noise(plan1, v1, rng=rng)
    noise = time.perf_counter() - t
    public = {
        "boundaries": {
            "recency": [30.0, 90.0, 200.0, 400.0],
            "frequency": [1, 2, 4, 8],
            "monetary": [30, 80, 160, 320],
        }
    }
    plan2 = rfm_segments.plan(job, fields, survivors_t=NODES, n_nodes=NODES, round_no=2, public=public)
    t = time.perf_counter()
    v2 = rfm_segments.local_vector(plan2, data, rng=rng)
    out["round2_local_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    add_noise(plan2, v2, rng=rng)
    out["noise_seconds"] = noise + time.perf_counter() - t
    return {k: round(v, 3) for k, v in out.items()}


def _seconds(event: Any) -> float:
    return float(event.at.seconds) + float(event.at.nanos) / 1e9


def stages(events: list[Any]) -> list[dict[str, Any]]:
    """(message, seconds since the job's first event) of every event: the stages as they ran."""
    if not events:
        return []
    t0 = _seconds(events[0])
    return [{"at": round(_seconds(e) - t0, 3), "event": e.message} for e in events]


def stage_seconds(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds of each round's stages, from one 'asked' event to the next (or the release)."""
    marks = [
        (e["event"].split(": asked")[0].replace(" of 2, ", " "), e["at"])
        for e in events
        if ": asked " in e["event"] or " released" in e["event"]
    ]
    return {
        name: round(marks[i + 1][1] - at, 3)
        for i, (name, at) in enumerate(marks[:-1])
        if "released" not in name
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--source", choices=("csv", "vault"), default="csv")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--stage-timeout", type=float, default=900.0)
    parser.add_argument("--work", type=Path, default=None, help="Folder to keep (default: a temp one).")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "nodes": NODES,
        "customers": args.customers,
        "transactions_asked": args.transactions,
        "source": args.source,
        "params": PARAMS,
        "epsilon": 1.0,
        "delta": 1e-6,
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="tessera-rfm-scale-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pki = work / "pki"
        init_ca(pki, consortium="tessera-bench")
        issue(pki, kind="coordinator", name="coordinator")
        for name in NAMES:
            issue(pki, kind="node", name=name)
        issue(pki, kind="analyst", name=ANALYST, role="analyst")
        rows, t = 0, time.perf_counter()
        csvs = {}
        for i, name in enumerate(NAMES):
            node_dir = work / "nodes" / name
            node_dir.mkdir(parents=True)
            (node_dir / "policy.yaml").write_text(yaml.safe_dump(policy_doc(name), sort_keys=False))
            csvs[name] = node_dir / "transactions.csv"
            rows += write_node_csv(
                csvs[name], i, customers=args.customers, transactions=args.transactions, seed=args.seed
            )
        report["transactions"] = rows
        report["generate_seconds"] = round(time.perf_counter() - t, 1)
        log(f"{rows:,} transactions of {args.customers:,} customers written in {report['generate_seconds']}s")
        if args.source == "vault":
            report["ingest_seconds_per_node"] = []
            for name in NAMES:
                seconds = ingest(work / "nodes" / name, csvs[name])
                report["ingest_seconds_per_node"].append(seconds)
                log(f"{name}: ingested in {seconds}s")
            spent = sum(s["transactions"] for s in report["ingest_seconds_per_node"])
            report["ingest_transactions_per_second"] = round(rows / spent)
        else:
            for name in NAMES:
                from tessera.client.vault.state import init_node_state

                init_node_state(
                    work / "nodes" / name / "state", load_policy(work / "nodes" / name / "policy.yaml")
                ).close()
        report["node0_work"] = where_it_goes(work / "nodes" / NAMES[0], csvs[NAMES[0]], args.source)
        log(f"node 0's own work: {report['node0_work']}")
        procs: list[_Proc] = []
        try:
            port_file = work / "coordinator" / "port"
            port_file.parent.mkdir(parents=True, exist_ok=True)
            # fmt: off
            procs.append(_spawn("coordinator", [
                "coordinator", "serve", "--pki", str(pki), "--listen", "127.0.0.1:0",
                "--port-file", str(port_file), "--db", f"sqlite:///{work / 'coordinator' / 'c.db'}",
                "--heartbeat-ms", "2000", "--stage-timeout", str(args.stage_timeout),
                "--log-file", str(work / "logs" / "coordinator.log"),
            ], work / "logs" / "coordinator.out"))
            address = f"127.0.0.1:{_wait_port(procs[0], port_file, 60)}"
            for name in NAMES:
                node_dir = work / "nodes" / name
                argv = [
                    "node", "serve", "--pki", str(pki), "--name", name, "--coordinator", address,
                    "--policy", str(node_dir / "policy.yaml"), "--state-dir", str(node_dir / "state"),
                    "--log-file", str(work / "logs" / f"node-{name}.log"),
                ]
                if args.source == "csv":
                    argv += ["--data", f"transactions={csvs[name]}"]
                procs.append(_spawn(name, argv, work / "logs" / f"node-{name}.out"))
            # fmt: on
            runs = []
            with AnalystClient.from_pki(address, pki, ANALYST, timeout_s=600.0) as client:
                _wait_enrolled(client, NAMES, procs, 120)
                for run in range(args.runs):
                    events: list[Any] = []
                    started = time.perf_counter()
                    job_id = client.submit(spec())
                    events.extend(client.watch(job_id, timeout_s=args.stage_timeout * 4))
                    doc = client.result_document(job_id)
                    seconds = time.perf_counter() - started
                    log(f"run {run + 1}: {doc['status']} in {seconds:.1f}s")
                    result = doc["result"] or {}
                    runs.append(
                        {
                            "status": doc["status"],
                            "error": doc["error"],
                            "seconds": round(seconds, 2),
                            "stage_seconds": stage_seconds(stages(events)),
                            "events": stages(events),
                            "customers_segmented": sum(
                                (c.get("size") or {}).get("value", 0.0) for c in result.get("segments", [])
                            ),
                        }
                    )
            report["runs"] = runs
            ok = [r["seconds"] for r in runs if r["status"] == "succeeded"]
            report["wall_seconds_median"] = statistics.median(ok) if ok else None
        finally:
            report["killed"] = _stop_all(list(reversed(procs)))
    report["load_average_end"] = os.getloadavg()
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
