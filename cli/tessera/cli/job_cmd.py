"""Analyst commands: `tessera job submit|watch|result|list|cancel`, `tessera nodes`, `tessera audit`."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from tessera.cli import result_tables
from tessera.cli._common import console, friendly_errors
from tessera.cli.analyses_cmd import param_kinds
from tessera.cli.options import DEFAULT_COORDINATOR, Coordinator, PkiDir, User, check_address
from tessera.cli.overlap_view import render_overlap
from tessera.core.errors import ConfigError, InvalidRequest
from tessera.core.types import JobSpec, JobState, ParamValue

if TYPE_CHECKING:  # gRPC and protobuf are imported by the commands that talk to a coordinator
    from tessera.cli.analyst_client import AnalystClient

app = typer.Typer(help="Submit and follow jobs (analysts).", no_args_is_help=True)


def _client(coordinator: str, pki: PkiDir, user: str) -> AnalystClient:
    from tessera.cli.analyst_client import AnalystClient

    return AnalystClient.from_pki(check_address(coordinator, option="--coordinator"), pki, user)


def _param(text: str, kinds: dict[str, str] | None = None) -> tuple[str, ParamValue]:
    """``NAME=VALUE`` typed: a list parameter (``kinds``, from the analysis' PARAMS) is split at
    commas — numbers for a ``numbers`` parameter — and anything else is bool, int, float or text."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--param expects NAME=VALUE, got {text!r}")
    kind = (kinds or {}).get(name)
    value: ParamValue
    if kind == "numbers":
        try:
            return name, tuple(float(part) for part in raw.split(","))
        except ValueError:
            raise ConfigError(
                f"--param {name} takes comma-separated numbers, e.g. {name}=0.25,0.5,0.75"
            ) from None
    if kind == "texts":
        return name, tuple(part.strip() for part in raw.split(","))
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = tuple(raw.split(",")) if "," in raw else raw
    return name, value


@app.command()
@friendly_errors
def submit(
    pki: PkiDir,
    analysis: Annotated[str, typer.Option(help="Analysis name, e.g. inventory.")],
    dataset: Annotated[str, typer.Option(help="Node-side dataset name.")] = "",
    purpose: Annotated[
        str, typer.Option(help="Purpose; every participant's policy must allow it.")
    ] = "research",
    epsilon: Annotated[float, typer.Option(help="Privacy budget asked for (0 for non-DP jobs).")] = 0.0,
    delta: Annotated[float, typer.Option(help="δ asked for.")] = 0.0,
    participants: Annotated[str, typer.Option(help="Comma-separated node ids; empty = every node.")] = "",
    param: Annotated[
        list[str] | None,
        typer.Option(help="Analysis parameter NAME=VALUE; repeatable. `tessera analyses` lists them."),
    ] = None,
    deadline: Annotated[float, typer.Option(help="Seconds until the job must be done.")] = 600.0,
    watch: Annotated[bool, typer.Option(help="Follow progress until the job ends.")] = False,
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    user: User = "analyst",
) -> None:
    """Submit a job and print its id."""
    if deadline <= 0:
        raise InvalidRequest("--deadline must be a positive number of seconds")
    spec = JobSpec(
        analysis=analysis,
        dataset=dataset,
        purpose=purpose,
        epsilon=epsilon,
        delta=delta,
        participants=tuple(p.strip() for p in participants.split(",") if p.strip()),
        params=dict(_param(p, param_kinds(analysis)) for p in param or ()),
        deadline=datetime.now(UTC) + timedelta(seconds=deadline),
    )
    with _client(coordinator, pki, user) as client:
        job_id = client.submit(spec)
        console.print(f"submitted job [bold]{job_id}[/] ({analysis})")
        state = _watch(client, job_id) if watch else None
    if state is not None and state is not JobState.SUCCEEDED:
        raise typer.Exit(1)  # scripts that wait for a job must see that it did not succeed


def _state(value: int) -> JobState:
    from tessera.core import serde

    return serde.state_from_pb(value)  # type: ignore[arg-type]


def _watch(client: AnalystClient, job_id: str) -> JobState:
    state = JobState.PENDING
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(f"job {job_id}", total=None)
        for event in client.watch(job_id):
            state = _state(event.state)
            if event.expected:
                progress.update(bar, total=event.expected, completed=event.done)
            progress.console.print(
                f"  [dim]{event.at.ToDatetime():%H:%M:%S}[/] {state.value:<9} {event.message}"
            )
            if state.terminal:
                total = progress.tasks[0].total or event.expected
                if state is JobState.SUCCEEDED and total:  # the last event carries no count
                    progress.update(bar, total=total, completed=total)
                break
    colour = "green" if state is JobState.SUCCEEDED else "red"
    console.print(f"job {job_id} [bold {colour}]{state.value}[/]")
    return state


@app.command()
@friendly_errors
def watch(
    job_id: str, pki: PkiDir, coordinator: Coordinator = DEFAULT_COORDINATOR, user: User = "analyst"
) -> None:
    """Follow a job's progress live until it ends; exit 1 unless it succeeded."""
    with _client(coordinator, pki, user) as client:
        state = _watch(client, job_id)
    if state is not JobState.SUCCEEDED:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def result(
    job_id: str,
    pki: PkiDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result document as JSON.")] = False,
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    user: User = "analyst",
) -> None:
    """Print a job's result (or why it failed)."""
    with _client(coordinator, pki, user) as client:
        doc = client.result_document(job_id)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        render_result(doc)
    if doc["status"] == JobState.FAILED.value:
        raise typer.Exit(1)


def render_result(doc: dict[str, Any]) -> None:
    console.print(f"job {doc['job_id']} ({doc['analysis']}): [bold]{doc['status']}[/]")
    if doc["error"]:
        console.print(f"  reason: {doc['error']}")
    for veto in doc["vetoes"]:
        policy = f", policy {veto['policy_hash'][:12]}" if veto.get("policy_hash") else ""
        console.print(f"  veto from [bold]{veto['node_id']}[/] ({veto['code']}{policy}): {veto['reason']}")
    result_doc = doc.get("result") or {}
    if doc["analysis"] == "inventory" and result_doc:
        tiers = (("core_sensitive", "T1"), ("general_sensitive", "T2"), ("non_sensitive", "T3"))
        for node_id, node in result_doc["nodes"].items():
            policy = node["policy"]
            console.print(
                f"  [bold]{node_id}[/] policy {policy['policy_id']} ({policy['policy_hash'][:12]}), "
                f"ε/job {policy['epsilon_per_job']:g}, min cohort {policy['min_cohort_size']}, "
                f"analyses: {', '.join(policy['allowed_analyses'])}"
            )
            for dataset in node["datasets"]:
                groups = [
                    f"{label} " + ", ".join(f["name"] for f in dataset["fields"] if f["tier"] == tier)
                    for tier, label in tiers
                    if any(f["tier"] == tier for f in dataset["fields"])
                ]
                console.print(f"    {dataset['name']}: " + " | ".join(groups), highlight=False)
    elif result_tables.render(doc["analysis"], result_doc):
        pass  # rfm_segments, kmeans, funnel, cohort_retention: their own tables
    elif result_doc.get("analysis") == "churn_model" and "model" in result_doc:
        from tessera.cli.churn_view import render_churn

        render_churn(result_doc)
    elif result_doc.get("cells") is not None:
        render_dp(result_doc)
    elif result_doc.get("bgnbd"):
        render_clv(result_doc)
    elif doc["analysis"] == "overlap" and result_doc.get("pairs") is not None:
        render_overlap(result_doc)
    elif result_doc:
        main = {k: v for k, v in result_doc.items() if k not in _TRAILER}
        console.print_json(json.dumps(main))
    if len(result_doc.get("rounds") or ()) > 1:
        render_trace(result_doc)
    if result_doc.get("budget"):
        b = result_doc["budget"]
        freed = "; the rest was freed at every node" if b["rho_used"] < b["rho_reserved"] else ""
        console.print(
            f"  budget: ρ {b['rho_used']:.4g} used of {b['rho_reserved']:.4g} reserved "
            f"(ε {b['epsilon_used']:.3g} at δ {b['delta']:g}){freed}",
            highlight=False,
        )


# What every DP result carries beside its numbers (see the coordinator's job service).
_TRAILER = frozenset(
    {
        "rounds",
        "round_results",
        "budget",
        "survivors",
        "dropped",
        "out_of_job",
        "vetoes",
        "quorum",
        "collusion_tolerance",
        "modulus_bits",
        "wrap_probability_at_most",
    }
)


def render_clv(doc: dict[str, Any]) -> None:
    """The fitted BG/NBD and Gamma-Gamma parameters with their 95% intervals (and a reference)."""
    reference = doc.get("reference") or {}
    table = Table(show_edge=False, pad_edge=False)
    for column in ("model", "parameter", "estimate [95% interval]", "reference"):
        table.add_column(column, justify="right")
    for model in ("bgnbd", "gamma_gamma"):
        for name, estimate in (doc.get(model) or {}).items():
            ref = reference.get(name) if model == "bgnbd" else None
            table.add_row(model, name, _estimate(estimate, digits=3), "-" if ref is None else f"{ref:g}")
    console.print(
        f"  clv_fit on {doc.get('customers', 0):,.0f} customers (calibration to "
        f"{doc.get('calibration_end')}), ε={doc.get('epsilon')}, {doc.get('rounds_run')} rounds",
        highlight=False,
    )
    console.print(table)
    if doc.get("warning"):
        console.print(f"  [yellow]not settled: {doc['warning']}[/]", highlight=False)


def render_trace(doc: dict[str, Any]) -> None:
    """One row per released round: nodes summed, drops, ρ and the driver's metric."""
    metrics = sorted({k for r in doc["rounds"] for k in r["metric"]})
    if len(metrics) > 4:  # a wide model: its step sizes say how the fit converges
        metrics = [m for m in metrics if m.endswith("step")][:4] or metrics[:4]
    table = Table(title="rounds", show_edge=False, pad_edge=False)
    for column in ("round", "nodes", "dropped", "ρ", *metrics):
        table.add_column(column, justify="right")
    for r in doc["rounds"]:
        table.add_row(
            str(r["round"]),
            str(len(r["survivors"])),
            ", ".join(r["dropped"]) or "-",
            f"{r['rho']:.3g}",
            *(f"{r['metric'][k]:.6g}" if k in r["metric"] else "-" for k in metrics),
        )
    console.print(table)


def _estimate(value: Any, digits: int = 1) -> str:
    if not isinstance(value, dict):
        return "-"
    low, high = value["ci95"]
    return f"{value['value']:,.{digits}f} [{low:,.{digits}f}, {high:,.{digits}f}]"


def render_dp(doc: dict[str, Any]) -> None:
    """One row per released cell: estimate with its 95% interval (and, in the demo, the truth)."""
    field = f" of {doc['field']}" if doc.get("field") else ""
    by = f" by {doc['group_by']}" if doc.get("group_by") else ""
    console.print(
        f"  {doc['analysis']}{field}{by}: ε={doc['epsilon']:g}, δ={doc['delta']:g}, "
        f"{doc.get('summands', '?')} node(s), cells under {doc.get('min_cohort_size')} suppressed",
        highlight=False,
    )
    keys = [k for k in ("count", "sum", "mean") if any(isinstance(c.get(k), dict) for c in doc["cells"])]
    with_truth = any("true" in c for c in doc["cells"])
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("cell")
    for key in keys:
        table.add_column(f"{key} [95% interval]", justify="right")
        if with_truth:
            table.add_column(f"true {key}", justify="right")
    for cell in doc["cells"]:
        label = str(cell.get("group", ""))
        if cell.get("bin"):
            label = f"{label} {cell['bin']}" if label != "all" else str(cell["bin"])
        row = [label]
        for key in keys:
            row.append("suppressed" if cell.get("suppressed") else _estimate(cell.get(key)))
            if with_truth:
                true = (cell.get("true") or {}).get(key)
                row.append("-" if true is None else f"{true:,.1f}")
        table.add_row(*row)
    console.print(table)
    true_quantiles = (doc.get("true") or {}).get("quantiles") or []
    for i, q in enumerate(doc.get("quantiles") or []):
        truth = f", true {true_quantiles[i]:,.1f}" if i < len(true_quantiles) else ""
        low, high = q["ci95"]
        console.print(
            f"  quantile {q['level']:g}: {q['value']:,.1f} [{low:,.1f}, {high:,.1f}]{truth}", highlight=False
        )
    if "coverage" in doc:
        cov = doc["coverage"]
        console.print(
            f"  {cov['inside_ci95']} of {cov['released']} released values lie inside their 95% interval"
        )


@app.command("list")
@friendly_errors
def list_jobs(
    pki: PkiDir,
    limit: Annotated[int, typer.Option(help="How many recent jobs.")] = 20,
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    user: User = "analyst",
) -> None:
    """List recent jobs."""
    with _client(coordinator, pki, user) as client:
        jobs = client.jobs(limit)
    table = Table(title="jobs")
    for column in ("id", "analysis", "state", "by", "created", "detail"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            job.job_id,
            job.spec.analysis,
            _state(job.state).value,
            job.submitted_by,
            f"{job.created_at.ToDatetime():%Y-%m-%d %H:%M:%S}",
            job.status_detail,
        )
    console.print(table)


@app.command()
@friendly_errors
def cancel(
    job_id: str, pki: PkiDir, coordinator: Coordinator = DEFAULT_COORDINATOR, user: User = "analyst"
) -> None:
    """Cancel a job that has not ended."""
    with _client(coordinator, pki, user) as client:
        job = client.cancel(job_id)
    console.print(f"job {job.job_id} {_state(job.state).value}")


@friendly_errors
def nodes(pki: PkiDir, coordinator: Coordinator = DEFAULT_COORDINATOR, user: User = "analyst") -> None:
    """List enrolled nodes: online, last seen, version, policy."""
    with _client(coordinator, pki, user) as client:
        found = client.nodes()
    table = Table(title="nodes")
    for column in ("node", "online", "last seen (UTC)", "version", "policy", "hash", "datasets"):
        table.add_column(column)
    for node in found:
        table.add_row(
            node.node_id,
            "yes" if node.online else "no",
            f"{node.last_seen.ToDatetime():%Y-%m-%d %H:%M:%S}",
            node.node_version,
            node.policy.policy_id,
            node.policy.policy_hash[:12],
            ", ".join(d.name for d in node.datasets),
        )
    console.print(table)


@friendly_errors
def audit(
    pki: PkiDir,
    limit: Annotated[int, typer.Option(help="How many recent entries.")] = 50,
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    user: User = "analyst",
) -> None:
    """Show the coordinator's audit log (admin or auditor role)."""
    with _client(coordinator, pki, user) as client:
        entries = client.audit(limit)
    table = Table(title="audit log")
    for column in ("at (UTC)", "actor", "role", "action", "job", "outcome"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            f"{e.at.ToDatetime():%Y-%m-%d %H:%M:%S}", e.actor, e.role, e.action, e.job_id, e.outcome
        )
    console.print(table)


@friendly_errors
def budget(
    pki: PkiDir,
    epsilon: Annotated[
        float | None,
        typer.Option("--epsilon", help="Show what a next job of this ε costs and whether it fits."),
    ] = None,
    delta: Annotated[
        float | None, typer.Option("--delta", help="That job's δ (default: each node's δ).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    user: User = "analyst",
) -> None:
    """Privacy budget left per node: one budget for each node's customers, whatever dataset a release
    read (the coordinator's mirror; each node is the authority). Budgets compose in zCDP (ρ), so
    "ε left" is not what a next job may ask for: --epsilon shows the ρ such a job costs against
    the ρ left, and when the rolling period gives budget back."""
    if epsilon is not None and (not math.isfinite(epsilon) or epsilon <= 0):
        raise ConfigError("--epsilon must be a positive number")
    if delta is not None and (not math.isfinite(delta) or not 0 <= delta < 1):
        raise ConfigError("--delta must be at least 0 and below 1")
    with _client(coordinator, pki, user) as client:
        views = client.budgets()
    rows = [_budget_row(v, epsilon, delta) for v in views]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="privacy budget per node, all datasets (composed in zCDP, ε at each node's δ)")
    columns = ["node", "ε per period", "ε spent", "ρ left of limit", "ε per job", "renews (UTC)"]
    if epsilon is not None:
        columns.append(f"a job of ε {epsilon:g} costs")
    for column in columns:
        table.add_column(column)
    for r in rows:
        cells = [
            str(r["node"]),
            f"{r['epsilon_limit']:g} per {r['period']}",
            f"{r['epsilon_spent']:.3f}",
            f"{r['rho_left']:.3g} of {r['rho_limit']:.3g}",
            f"{r['epsilon_per_job']:g}",
            _renewal_text(r),
        ]
        if epsilon is not None:
            verdict = "fits" if r["job_fits"] else "does not fit"
            if epsilon > r["epsilon_per_job"]:
                verdict = "above the cap per job"
            cells.append(f"ρ {r['job_rho']:.3g}: {verdict} ({r['jobs_of_that_epsilon_left']} such)")
        table.add_row(*cells)
    console.print(table)


def _budget_row(v: Any, epsilon: float | None, delta: float | None) -> dict[str, Any]:
    from tessera.core.dp import rho_for

    rho_limit = v.rho_limit or (
        rho_for(epsilon=v.epsilon_limit, delta=v.delta) if v.epsilon_limit > 0 else 0.0
    )
    rho_left = max(0.0, rho_limit - v.rho_spent)
    row: dict[str, Any] = {
        "node": v.node_id,
        "period": v.period,
        "epsilon_limit": v.epsilon_limit,
        "epsilon_spent": round(v.epsilon_spent, 4),
        "epsilon_left": round(v.epsilon_left, 4),
        "rho_limit": rho_limit,
        "rho_spent": v.rho_spent,
        "rho_left": rho_left,
        "releases": v.releases,
        "epsilon_per_job": v.epsilon_per_job,
        "delta": v.delta,
        "next_renewal": v.next_renewal.ToDatetime(UTC).isoformat() if v.HasField("next_renewal") else None,
        "next_renewal_rho": v.next_renewal_rho,
    }
    if epsilon is not None:
        job_delta = v.delta if delta is None else delta
        # What the node charges for a job of (ε, δ): the largest ρ meeting it (ε²/2 when δ = 0).
        cost = epsilon * epsilon / 2 if job_delta == 0 else rho_for(epsilon=epsilon, delta=job_delta)
        capped = epsilon > v.epsilon_per_job
        row["job_epsilon"] = epsilon
        row["job_delta"] = job_delta
        row["job_rho"] = cost
        row["job_fits"] = not capped and cost <= rho_left * (1 + 1e-9)
        row["jobs_of_that_epsilon_left"] = 0 if capped else int(rho_left * (1 + 1e-9) // cost)
    return row


def _renewal_text(row: dict[str, Any]) -> str:
    if not row["next_renewal"]:
        return "nothing spent"
    return f"{row['next_renewal'][:10]}: ρ {row['next_renewal_rho']:.3g} back"
