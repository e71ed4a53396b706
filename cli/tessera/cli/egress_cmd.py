"""`tessera node egress report|verify` and `tessera node budget`: what left the node, whether the
record of it is whole, and what privacy budget the node has left — read from the node's own ledgers.

Split from ``vault_cmd`` (STYLE 14). The report is laid out one entry per block, each value wrapped
(never cut) to the terminal's width, so it reads at 80 columns; ``--json`` carries every column.
"""

from __future__ import annotations

import math
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import typer

from tessera.cli._common import console, fail, friendly_errors
from tessera.cli.vault_cmd import AsJson, DbUrl, PolicyFile, StateDir, _json
from tessera.client.vault.state import DB_FILE
from tessera.core.errors import ConfigError

egress_app = typer.Typer(help="The node's egress ledger: what left the node and why.", no_args_is_help=True)
_KEY = 10  # width of the label column of a report block


def _ledger_engine(state_dir: Path, db_url: str | None) -> sa.Engine:
    if db_url is None and not (state_dir / DB_FILE).exists():
        raise ConfigError(
            f"{state_dir} is not an initialised node state directory; run `tessera node init` first"
        )
    return sa.create_engine(db_url or f"sqlite:///{state_dir / DB_FILE}")


def _day(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{name} must be a date like 2026-11-01 or an ISO date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render_report(rows: list[dict[str, Any]], width: int) -> str:
    """One block per entry: ``label  value`` lines, values wrapped (long words folded) to ``width``."""
    width = max(width, 40)
    indent = " " * (_KEY + 1)
    out = [f"egress ledger: {len(rows)} entries (every column: --json)"]
    for doc in rows:
        out.append("")
        when = str(doc["time"])[:19].replace("T", " ")
        out.append(f"entry {doc['seq']} · {when} UTC · {doc['stage']} (round {doc['round']})")
        pairs = [
            ("job", doc["job_id"]),
            ("analyst", doc.get("analyst") or "(not recorded)"),
            ("purpose", f"{doc['purpose']} · analysis {doc['analysis']}"),
            ("fields", doc.get("fields") or "-"),
            ("shape", doc["shape"]),
            ("privacy", f"ε {doc['epsilon']:g} · δ {doc['delta']:g} · ρ {doc['rho']:g}"),
            ("noise", doc["noise"]),
            ("payload", f"{doc['bytes']} bytes · sha256 {doc['payload_sha256']}"),
            ("policy", doc["policy_hash"]),
        ]
        for key, value in pairs:
            out.extend(
                textwrap.wrap(
                    str(value),
                    width=width,
                    initial_indent=f"{key:<{_KEY}} ",
                    subsequent_indent=indent,
                    break_long_words=True,
                    break_on_hyphens=False,
                )
                or [f"{key:<{_KEY}} "]
            )
    return "\n".join(out)


@egress_app.command("report")
@friendly_errors
def egress_report(
    state_dir: StateDir,
    since: Annotated[str | None, typer.Option("--since", help="From this date (UTC), inclusive.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this date (UTC), exclusive.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Only this job.")] = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Print exactly what left the node, when, why, for which analyst and at what privacy cost."""
    from tessera.client.egress import EgressLedger

    engine = _ledger_engine(state_dir, db_url)
    try:
        rows = EgressLedger(engine).report(_day(since, "--since"), _day(until, "--until"), job_id=job)
    finally:
        engine.dispose()
    if as_json:
        _json([r.as_dict() for r in rows])
        return
    console.print(render_report([r.as_dict() for r in rows], console.width), markup=False, highlight=False)


@egress_app.command("verify")
@friendly_errors
def egress_verify(state_dir: StateDir, db_url: DbUrl = None) -> None:
    """Check the hash chain, the heads the coordinator acknowledged, and the budget ledger against it:
    any edited, removed, inserted, reordered or re-chained entry is named."""
    from tessera.client.budget import check_budget_chain
    from tessera.client.egress import EgressLedger

    engine = _ledger_engine(state_dir, db_url)
    try:
        ledger = EgressLedger(engine)
        result = ledger.verify()
        anchors = ledger.anchors()
        budget = check_budget_chain(engine, ledger.entries()) if result.ok else None
    finally:
        engine.dispose()
    if not result.ok:
        raise fail(f"the egress ledger is broken: {result.reason}")
    if budget is not None:
        raise fail(f"the budget ledger disagrees with the egress chain: {budget}")
    console.print(f"egress ledger intact: {result.entries_checked} entries verified; budget ledger agrees")
    if anchors:
        seq, _, at = anchors[-1]
        console.print(
            f"{len(anchors)} head(s) acknowledged by the coordinator hold, the latest entry {seq} "
            f"({at:%Y-%m-%d %H:%M} UTC)"
        )
    else:
        console.print(
            "no head acknowledged by the coordinator yet (the node sends it with every heartbeat): "
            "entries cut from the end could not be told"
        )


@friendly_errors
def budget(
    state_dir: StateDir,
    policy: PolicyFile,
    epsilon: Annotated[
        float | None, typer.Option("--epsilon", help="What a next job of this ε could afford.")
    ] = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """The node's own privacy budget: spent, reserved and left this period, the largest next job,
    and when spent budget returns (the period is rolling)."""
    from tessera.client.budget import BudgetLedger
    from tessera.client.budget._accounting import job_rho
    from tessera.core.policy import load_policy

    loaded = load_policy(policy)
    limits = loaded.privacy
    engine = _ledger_engine(state_dir, db_url)
    try:
        ledger = BudgetLedger(engine, limits=limits, policy_hash=loaded.policy_hash)
        status = ledger.remaining()
        charged = [c for r in ledger.history() for c in r.charges if c.charged_at > status.period_start]
    finally:
        engine.dispose()
    rho_left = max(0.0, status.rho_limit - status.rho_spent - status.rho_reserved)
    doc: dict[str, Any] = {
        "period_days": limits.period_days,
        "epsilon_per_period": limits.epsilon_per_period,
        "epsilon_per_job": limits.epsilon_per_job,
        "delta": limits.delta,
        "epsilon_spent": round(status.epsilon_spent, 6),
        "rho_spent": status.rho_spent,
        "rho_reserved": status.rho_reserved,
        "rho_limit": status.rho_limit,
        "rho_left": rho_left,
        "largest_next_job_epsilon": round(status.largest_job_epsilon, 6),
        "releases": status.releases,
        "open_reservations": status.reservations,
        "next_renewal": None,
    }
    if charged:
        oldest = min(charged, key=lambda c: c.charged_at)
        doc["next_renewal"] = (oldest.charged_at + timedelta(days=limits.period_days)).isoformat()
        doc["next_renewal_rho"] = oldest.rho
    if epsilon is not None:
        if not math.isfinite(epsilon) or epsilon <= 0:
            raise ConfigError("--epsilon must be a positive number")
        per_job = job_rho(epsilon=epsilon, delta=limits.delta)
        doc["job_epsilon"] = epsilon
        doc["job_rho"] = per_job
        doc["job_fits"] = epsilon <= limits.epsilon_per_job and epsilon <= status.largest_job_epsilon + 1e-12
        doc["jobs_of_that_epsilon_left"] = 0 if epsilon > limits.epsilon_per_job else int(rho_left // per_job)
    if as_json:
        _json(doc)
        return
    console.print(
        f"one budget for all of this node's customers: ε {limits.epsilon_per_period:g} per rolling "
        f"{limits.period_days}-day period (δ {limits.delta:g}), at most ε {limits.epsilon_per_job:g} per job"
    )
    console.print(
        f"spent ε {status.epsilon_spent:.3g} in {status.releases} release(s); reserved by "
        f"{status.reservations} open job(s): ρ {status.rho_reserved:.3g}; left: ρ {rho_left:.3g} of "
        f"{status.rho_limit:.3g}"
    )
    console.print(f"the largest next job it can take: ε {status.largest_job_epsilon:.3g}")
    if epsilon is not None:
        verdict = "fits" if doc["job_fits"] else "does not fit"
        count = doc["jobs_of_that_epsilon_left"]
        console.print(
            f"a job of ε {epsilon:g} costs ρ {doc['job_rho']:.3g} of the ρ {rho_left:.3g} left: "
            f"{verdict}; {count} such job(s) fit in what is left"
        )
    if doc["next_renewal"]:
        when = doc["next_renewal"][:16].replace("T", " ")
        console.print(
            f"budget returns as spends leave the period: the next on {when} UTC "
            f"(ρ {doc['next_renewal_rho']:.3g})"
        )
    else:
        console.print("nothing spent in the current period")


def register(app: typer.Typer) -> None:
    """Add `egress` and `budget` to `tessera node`."""
    app.add_typer(egress_app, name="egress")
    app.command("budget")(budget)
