"""`tessera demo`: a whole federation on this machine — dev PKI, a coordinator and N nodes as
separate processes on loopback with mTLS, each node with its own policy and synthetic data — runs
every job type that exists, prints a summary, writes DIR/results.json and stops everything."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from tessera.cli._common import console, friendly_errors
from tessera.cli.analyst_client import AnalystClient
from tessera.cli.demo_data import (
    CHANNELS,
    FUNNEL_STEPS,
    append_cdnow,
    cdnow_purchases,
    write_customers,
    write_events,
    write_transactions,
)
from tessera.cli.demo_truth import add_truth, write_churn_cards
from tessera.cli.job_cmd import render_result
from tessera.client.vault.ingest import Ingestor
from tessera.client.vault.mapping import mapping_for_columns
from tessera.client.vault.sources import CsvSource
from tessera.client.vault.state import init_node_state
from tessera.core.errors import ConfigError, TesseraError, Unavailable
from tessera.core.pki import init_ca, issue
from tessera.core.policy import Policy, load_policy
from tessera.core.types import JobSpec, JobState, ParamValue

BASE_PARTNERS = ("bank", "telco", "retailer")
MARKER = ".tessera-demo"
ANALYST = "demo-analyst"


def partner_names(count: int) -> list[str]:
    """bank, telco, retailer, bank-2, telco-2, …"""
    names = []
    for i in range(count):
        base = BASE_PARTNERS[i % len(BASE_PARTNERS)]
        names.append(base if i < len(BASE_PARTNERS) else f"{base}-{i // len(BASE_PARTNERS) + 1}")
    return names


def policies_dir() -> Path:
    """The example policies shipped in the repository's policies/ folder."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "policies"
        if (candidate / "bank.yaml").is_file():
            return candidate
    raise ConfigError("cannot find the example policies (policies/bank.yaml); run the demo from a checkout")


@dataclass
class _Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


def ingest_raw(state_dir: Path, policy: Policy, raw: Mapping[str, Path]) -> int:
    """`tessera node init` + `tessera node ingest` for one partner, customers first (transactions
    name them): the real ingestion path (tiers from the policy, PII encrypted, One ID blind index);
    returns the customers in the vault."""
    state = init_node_state(state_dir, policy)
    try:
        for dataset, path in raw.items():
            source = CsvSource(path)
            mapping = mapping_for_columns(policy, dataset, source.columns, default_region="GB")
            Ingestor(state.handle(default_region="GB")).ingest(source, mapping)
            state.audit("ingest", dataset=dataset, source="demo")
        return len(state.data_source.read("customers", ("region",))["region"])
    finally:
        state.close()


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"{out} is not empty and was not made by `tessera demo`; choose another --out")
    if (out / MARKER).exists():
        import shutil

        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by tessera demo; the next run may empty this folder\n")


def _child_preexec() -> None:
    # Linux: children get SIGTERM if the demo itself dies, so no orphans survive a crash.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(name: str, args: Sequence[str], log: Path) -> _Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli.main", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_child_preexec,  # noqa: PLW1509 - set before any thread of ours runs a child
        )
    return _Proc(name, process, log)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_port(proc: _Proc, port_file: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise Unavailable(f"the coordinator exited at start; its log says:\n{_tail(proc.log)}")
        if port_file.exists():
            return int(port_file.read_text().strip())
        time.sleep(0.05)
    raise Unavailable(f"the coordinator did not start within {timeout:.0f}s")


def _wait_enrolled(
    client: AnalystClient, names: Sequence[str], procs: Sequence[_Proc], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.process.poll() is not None:
                raise Unavailable(f"{proc.name} exited early; its log says:\n{_tail(proc.log)}")
        with contextlib.suppress(Unavailable):
            enrolled = {n.node_id for n in client.nodes() if n.online}
            if set(names) <= enrolled:
                return
        time.sleep(0.1)
    raise Unavailable(f"not every node enrolled within {timeout:.0f}s; see the logs under the output folder")


def _stop_all(procs: Sequence[_Proc], grace: float = 10.0) -> list[str]:
    """SIGTERM everything (nodes first), wait, then SIGKILL stragglers; return any that needed it."""
    for proc in procs:
        if proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
    killed = []
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()
            killed.append(proc.name)
    return killed


def _run_job(client: AnalystClient, spec: JobSpec, timeout: float) -> dict[str, Any]:
    job_id = client.submit(spec)
    console.print(f"  submitted [bold]{spec.analysis}[/] as job {job_id}")
    for event in client.watch(job_id, timeout_s=timeout):
        console.print(f"    {event.message}")
    return client.result_document(job_id)


REGIONS = ("north", "south", "east", "west", "central")
EPSILON, DELTA = 0.5, 1e-7  # within every example policy's per-job limits


def _job_specs(*, with_cdnow: bool) -> list[JobSpec]:
    """Every job type that exists; later analyses add their specs here."""
    deadline = datetime.now(UTC) + timedelta(minutes=5)

    def make(analysis: str, dataset: str, params: dict[str, ParamValue]) -> JobSpec:
        return JobSpec(
            analysis=analysis,
            dataset=dataset,
            purpose="research",
            epsilon=EPSILON,
            delta=DELTA,
            params=params,
            deadline=deadline,
        )

    def dp(analysis: str, **params: ParamValue) -> JobSpec:
        return make(analysis, "customers", params)

    def tx(analysis: str, **params: ParamValue) -> JobSpec:
        return make(analysis, "transactions", params)

    spend: dict[str, ParamValue] = {"field": "monthly_spend", "lower": 0.0, "upper": 300.0}
    return [
        JobSpec(analysis="inventory", dataset="customers", purpose="research", deadline=deadline),
        dp("count", group_by="region", groups=REGIONS),
        dp("sum", group_by="region", groups=REGIONS, **spend),
        dp("mean", **spend),
        dp("histogram", bins=12, **spend),
        dp("quantiles", bins=60, levels=(0.25, 0.5, 0.75), **spend),
        # Transactions: many rows per customer, so every job bounds what ONE customer adds.
        # Transactions per channel, at most 20 of each customer's (the whale's 300 count as 20).
        tx("count", group_by="channel", groups=CHANNELS, max_rows_per_customer=20),
        # Spend per customer (its transactions summed, then clipped as one value).
        tx("sum", field="amount", per_customer="sum", lower=0.0, upper=1500.0),
        # Spend per channel: a customer's spend in each channel, in at most 2 channels.
        tx(
            "sum",
            field="amount",
            lower=0.0,
            upper=600.0,
            group_by="channel",
            groups=CHANNELS,
            max_groups_per_customer=2,
        ),
        # How many transactions customers make: one per-customer count each.
        tx("histogram", per_customer="count", lower=0.0, upper=30.0, bins=10),
        # A job of many rounds: each round steps every region's theta from the last released one.
        dp("mean_descent", rounds=3, learning_rate=1.0, group_by="region", groups=REGIONS, **spend),
        # A web/app funnel over the partners' synthetic events: customers reaching each step in a week.
        make("funnel", "events", {"steps": FUNNEL_STEPS, "window_days": 7.0}),
        # How many customers each pair of partners shares (PSI cardinality, DP), never who.
        make("overlap", "customers", {"identifier": "email"}),
    ] + (
        # Lifetime value on the real CDNOW purchases, calibrated and held out as in FHL 2005.
        [
            tx("clv_fit", calibration_end="1997-09-30", holdout_end="1998-06-30"),
            # Segments on one consortium-wide scale; the churn label joined from customers.
            tx(
                "rfm_segments",
                reference_date="1998-06-30",
                monetary_max=1000.0,
                churn_field="customers.churned",
            ),
            # Retention by month of first purchase (CDNOW's customers all joined in Q1 1997).
            tx("cohort_retention", first_month="1997-01", cohorts=3, months=18),
            tx(
                "kmeans",
                features=("rfm.recency", "rfm.frequency", "rfm.monetary"),
                lower=(0.0, 0.0, 0.0),
                upper=(600.0, 50.0, 2000.0),
                log_features=("rfm.monetary",),
                reference_date="1998-06-30",
                k=4,
                iterations=3,
            ),
            # Churn: no purchase in the final six months, from RFM as of the end of 1997.
            tx(
                "churn_model",
                label="rfm.no_purchase_after",
                reference_date="1997-12-31",
                label_end="1998-06-30",
                features=("rfm.recency", "rfm.frequency", "rfm.monetary"),
                lower=(0.0, 1.0, 0.0),
                upper=(365.0, 50.0, 2000.0),
                log_features=("rfm.frequency", "rfm.monetary"),
                rounds=8,  # few rounds keep the demo fast; a bigger share to the held-out AUC
                eval_share=0.3,
            ),
        ]
        if with_cdnow
        else []
    )


@friendly_errors
def demo(
    nodes: Annotated[int, typer.Option("--nodes", help="How many partner nodes to start (3 or more).")] = 3,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for PKI, data, databases, logs, results.")
    ] = Path("demo-out"),
    rows: Annotated[int, typer.Option(help="Synthetic customers per partner.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 7,
    timeout: Annotated[float, typer.Option(help="Seconds allowed for start-up and for each job.")] = 60.0,
    cdnow: Annotated[
        int, typer.Option(help="How many of CDNOW's 23,570 real customers to deal to the partners.")
    ] = 23_570,
) -> None:
    """Run a whole federation on this machine and write OUT/results.json."""
    if nodes < 3:
        raise ConfigError(
            "--nodes must be at least 3: with fewer, an aggregate would reveal a partner's data"
        )
    if rows < 1:
        raise ConfigError("--rows must be at least 1")
    started = time.monotonic()
    out = out.resolve()
    _prepare_out(out)
    names = partner_names(nodes)
    pki = out / "pki"
    console.print(f"[bold]Tessera demo[/]: coordinator + {nodes} nodes in {out}")

    init_ca(pki, consortium="tessera-demo")
    issue(pki, kind="coordinator", name="coordinator")
    for name in names:
        issue(pki, kind="node", name=name)
    issue(pki, kind="analyst", name=ANALYST, role="analyst")
    issue(pki, kind="analyst", name="demo-auditor", role="auditor")
    console.print(f"  dev PKI: consortium CA, coordinator, {nodes} node and 2 analyst certificates")

    templates = policies_dir()
    if cdnow < 0:
        raise ConfigError("--cdnow must be 0 or more")
    purchases = cdnow_purchases(templates.parent) if cdnow else None
    if purchases is not None:
        keep = set(sorted({r[0] for r in purchases})[:cdnow])
        purchases = [r for r in purchases if r[0] in keep]
    if purchases is None:
        console.print("  [yellow]no CDNOW purchases (not found, or --cdnow 0): their jobs are skipped[/]")
    partners: dict[str, tuple[Policy, dict[str, Path]]] = {}  # demo only: to show the true values
    written = 0
    for index, name in enumerate(names):
        base = BASE_PARTNERS[index % len(BASE_PARTNERS)]
        doc = yaml.safe_load((templates / f"{base}.yaml").read_text())
        doc["partner"] = name
        doc["policy_id"] = f"{name}-v1"
        doc["allowed_partners"] = [n for n in names if n != name]
        node_dir = out / "nodes" / name
        node_dir.mkdir(parents=True)
        (node_dir / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        policy = load_policy(node_dir / "policy.yaml")
        raw = {"customers": node_dir / "raw" / "customers.csv"}
        has_transactions = "transactions" in {d.name for d in policy.datasets}
        # Real purchases too: CDNOW's 23,570 customers dealt round-robin to the partners, as
        # extra customers after the synthetic ones (their 1997 purchases feed clv_fit).
        mine = [r for r in purchases or () if r[0] % nodes == index] if has_transactions else []
        extra = len({r[0] for r in mine})
        write_customers(policy, "customers", raw["customers"], rows=rows + extra, seed=seed + index)
        if has_transactions:
            raw["transactions"] = node_dir / "raw" / "transactions.csv"
            written = write_transactions(policy, raw["transactions"], customers=rows, seed=seed + index)
            if mine:
                append_cdnow(policy, raw["transactions"], mine, first=rows, seed=seed + index)
        if "events" in {d.name for d in policy.datasets}:
            raw["events"] = node_dir / "raw" / "events.csv"
            write_events(policy, raw["events"], customers=rows, seed=seed + index)
        partners[name] = (policy, raw)
        ingested = ingest_raw(node_dir / "state", policy, raw)
    console.print(
        f"  policies written; each partner's raw CSVs ({rows} customers, realistic PII; {written} "
        f"transactions in the last) ingested into its encrypted vault ({ingested} customers in the last)"
    )

    procs: list[_Proc] = []
    results: list[dict[str, Any]] = []
    failed = False
    try:
        port_file = out / "coordinator" / "port"
        coordinator = _spawn(
            "coordinator",
            [
                "coordinator",
                "serve",
                "--pki",
                str(pki),
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--db",
                f"sqlite:///{out / 'coordinator' / 'coordinator.db'}",
                "--heartbeat-ms",
                "500",
                "--stage-timeout",
                str(timeout),
                "--log-file",
                str(out / "logs" / "coordinator.log"),
            ],
            out / "logs" / "coordinator.out",
        )
        procs.append(coordinator)
        port_file.parent.mkdir(parents=True, exist_ok=True)
        port = _wait_port(coordinator, port_file, timeout)
        address = f"127.0.0.1:{port}"
        console.print(f"  coordinator listening on {address} (mTLS)")
        for name in names:
            node_dir = out / "nodes" / name
            procs.append(
                _spawn(
                    name,
                    [
                        "node",
                        "serve",
                        "--pki",
                        str(pki),
                        "--name",
                        name,
                        "--coordinator",
                        address,
                        "--policy",
                        str(node_dir / "policy.yaml"),
                        "--state-dir",
                        str(node_dir / "state"),
                        "--log-file",
                        str(out / "logs" / f"node-{name}.log"),
                    ],
                    out / "logs" / f"node-{name}.out",
                )
            )
        with AnalystClient.from_pki(address, pki, ANALYST) as client:
            _wait_enrolled(client, names, procs, timeout)
            console.print(f"  {nodes} nodes enrolled: {', '.join(names)}")
            for spec in _job_specs(with_cdnow=purchases is not None):
                try:
                    doc = _run_job(client, spec, timeout)
                except TesseraError as exc:
                    doc = {
                        "analysis": spec.analysis,
                        "status": JobState.FAILED.value,
                        "result": None,
                        "vetoes": [],
                        "error": exc.message,
                        "job_id": "",
                    }
                if doc["status"] == JobState.SUCCEEDED.value and spec.analysis != "inventory":
                    add_truth(doc["result"], spec, partners)
                results.append(doc)
                failed |= doc["status"] != JobState.SUCCEEDED.value
            node_list = [
                {
                    "node_id": n.node_id,
                    "online": n.online,
                    "policy_id": n.policy.policy_id,
                    "policy_hash": n.policy.policy_hash,
                }
                for n in client.nodes()
            ]
    finally:
        killed = _stop_all(list(reversed(procs)))
    if killed:
        console.print(f"[yellow]had to kill: {', '.join(killed)}[/]")
        failed = True

    summary = {
        "nodes": node_list,
        "jobs": results,
        "seconds": round(time.monotonic() - started, 2),
        "ok": not failed,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_churn_cards(out, results, node_list)
    console.print()
    for doc in results:
        render_result(doc)
    verdict = "[bold green]all jobs succeeded[/]" if not failed else "[bold red]some jobs failed[/]"
    console.print(f"{verdict} in {summary['seconds']}s; results in {out / 'results.json'}")
    if failed:
        raise typer.Exit(1)
