"""`tessera node init|ingest|quality|rotate-keys|purge|erase|lookup|egress …`: the node's data commands.

Every command takes ``--state-dir`` (and ``--policy`` where the policy matters), answers bad input
with one sentence and exit 1, and never prints PII except ``lookup``, whose purpose that is.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tessera.cli._common import console, fail, friendly_errors
from tessera.client.vault import admin
from tessera.client.vault.ingest import Ingestor, IngestRejected
from tessera.client.vault.kek import LocalKek, create_key_file
from tessera.client.vault.keys import rotate
from tessera.client.vault.mapping import load_mapping, mapping_for_columns
from tessera.client.vault.quality import IngestReport, vault_quality
from tessera.client.vault.sources import DEFAULT_MAX_BYTES, CsvSource, Source, SqlSource
from tessera.client.vault.state import (
    KEY_FILE,
    NEXT_KEY_FILE,
    PROTECTED_COLUMNS,
    REPORTS_DIR,
    NodeState,
    init_node_state,
    open_node_state,
)
from tessera.core.errors import ConfigError, InvalidRequest
from tessera.core.policy import load_policy

StateDir = Annotated[
    Path, typer.Option("--state-dir", envvar="TESSERA_STATE_DIR", help="The node's state folder.")
]
PolicyFile = Annotated[
    Path, typer.Option("--policy", envvar="TESSERA_POLICY", help="The node's policy file (YAML).")
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--db-url", envvar="TESSERA_VAULT_DB", help="PostgreSQL URL of the vault (default: SQLite file)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Region = Annotated[str | None, typer.Option("--region", help="Default phone region, e.g. GB or CN.")]
Email = Annotated[str | None, typer.Option("--email", help="Find the customer by email.")]
Phone = Annotated[str | None, typer.Option("--phone", help="Find the customer by phone number.")]
NationalId = Annotated[str | None, typer.Option("--national-id", help="Find the customer by national id.")]
CustomerId = Annotated[
    str | None, typer.Option("--id", help="Find the customer by the partner's customer id.")
]


def _open(state_dir: Path, policy: Path, db_url: str | None) -> NodeState:
    return open_node_state(state_dir, load_policy(policy), db_url=db_url)


def _identifier(
    email: str | None, phone: str | None, national_id: str | None, cid: str | None
) -> tuple[str, str]:
    given = [
        (k, v)
        for k, v in (("email", email), ("phone", phone), ("national_id", national_id), ("customer_id", cid))
        if v is not None
    ]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of --email, --phone, --national-id or --id")
    return given[0]


def _json(doc: Any) -> None:
    console.print_json(json.dumps(doc, default=str))


def _save_report(state: NodeState, report: IngestReport) -> Path:
    folder = state.state_dir / REPORTS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"ingest-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(report.as_dict(), handle, indent=2)
    return path


def _print_report(report: IngestReport) -> None:
    if report.status == "already_ingested":
        held_back = report.rows_conflicted + report.rows_erased + report.rows_rejected
        console.print(
            f"{report.dataset}: this file was already ingested with this mapping; nothing written, "
            f"{report.rows_unchanged} row(s) unchanged"
            + (
                f"; refused as before: {report.rows_conflicted} in merge conflicts, "
                f"{report.rows_erased} of erased customers, {report.rows_rejected} invalid"
                if held_back
                else ""
            ),
            soft_wrap=True,
        )
        _print_flags(report)
        return
    console.print(
        f"{report.dataset}: {report.status}; rows read {report.rows_read}, written {report.rows_written}, "
        f"rejected {report.rows_rejected}, unchanged {report.rows_unchanged}; customers created "
        f"{report.customers_created}, updated {report.customers_updated}; duplicates merged "
        f"{report.duplicates_merged}; refused: {report.rows_conflicted} in merge conflicts, "
        f"{report.rows_erased} of erased customers"
    )
    _print_flags(report)
    if report.merges:
        merged = Table(
            "merge", "kind", "kept", "merged", "matched by", "rows", title="merges (undo: node unmerge)"
        )
        for m in report.merges[:50]:
            rows = ", ".join(map(str, m.get("rows", [])[:10]))
            merged.add_row(
                str(m["merge"]), m["kind"], str(m["kept"]), str(m["merged"] or "(row)"), m["matched_by"], rows
            )
        console.print(merged)
    if report.conflicts:
        refused = Table(
            "rows", "customers", "fields that differ", "reason", title="merges refused (nothing written)"
        )
        for c in report.conflicts[:50]:
            refused.add_row(
                ", ".join(map(str, c["rows"][:10])),
                ", ".join(map(str, c["customers"])) or "-",
                ", ".join(c["fields"]) or "-",
                c["reason"],
            )
        console.print(refused)
    if report.erased_rows:
        listed = ", ".join(map(str, report.erased_rows[:20]))
        console.print(f"rows naming an erased customer, refused: {listed}")
    table = Table("field", "tier", "present", "missing", "invalid", "completeness")
    for f in report.fields:
        table.add_row(
            f.field, f.tier, str(f.present), str(f.missing), str(f.invalid), f"{f.completeness:.1%}"
        )
    console.print(table)
    if report.errors:
        errors = Table("row", "column", "reason", title="rejected rows")
        for e in report.errors[:50]:
            errors.add_row(str(e.row), e.column or "", e.reason)
        console.print(errors)


def _print_flags(report: IngestReport) -> None:
    """Values accepted as written but worth a look: spreadsheet formulas and dates in the future."""
    counts = [
        f"{f.field}: {what}"
        for f in report.fields
        for what in (
            f"{f.formulas} spreadsheet formula(s)" if f.formulas else "",
            f"{f.future_dates} date(s) in the future" if f.future_dates else "",
        )
        if what
    ]
    if not counts:
        return
    console.print(f"[yellow]flagged[/] (accepted as written; check the source): {'; '.join(counts)}")
    table = Table("row", "column", "flag", title="flagged values (first 50)")
    for w in report.warnings[:50]:
        table.add_row(str(w.row), w.column or "", w.reason)
    console.print(table)


@friendly_errors
def init(state_dir: StateDir, policy: PolicyFile, db_url: DbUrl = None) -> None:
    """Create the node's state folder: key file (0600), vault keys and tables, egress ledger."""
    state = init_node_state(state_dir, load_policy(policy), db_url=db_url)
    try:
        where = "environment variable TESSERA_VAULT_KEK" if state.kek_from_env else str(state_dir / KEY_FILE)
        console.print(f"node state initialised in {state_dir}; the vault key is in {where} — back it up")
    finally:
        state.close()


def _source(
    file: Path | None, source_url: str | None, table: str | None, query: str | None, max_bytes: int
) -> Source:
    if (file is None) == (source_url is None):
        raise ConfigError("give a CSV file or --source-url (with --table or --query), not both")
    if file is not None:
        return CsvSource(file, max_bytes=max_bytes)
    return SqlSource(source_url or "", table=table, query=query)


@friendly_errors
def ingest(
    state_dir: StateDir,
    policy: PolicyFile,
    file: Annotated[Path | None, typer.Argument(help="A CSV file to ingest.")] = None,
    mapping: Annotated[Path | None, typer.Option("--mapping", help="Mapping file (YAML).")] = None,
    dataset: Annotated[
        str, typer.Option("--dataset", help="Without --mapping: customers, transactions or events.")
    ] = "customers",
    source_url: Annotated[
        str | None, typer.Option("--source-url", help="SQLAlchemy URL to read from.")
    ] = None,
    table: Annotated[str | None, typer.Option("--table", help="Table to read at --source-url.")] = None,
    query: Annotated[str | None, typer.Option("--query", help="Query to read at --source-url.")] = None,
    region: Region = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows per committed batch.")] = 2000,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, max=64, help="Processes that parse and index rows (large files)."),
    ] = 1,
    max_bytes: Annotated[
        int, typer.Option("--max-bytes", help="Refuse CSV files larger than this.")
    ] = DEFAULT_MAX_BYTES,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Ingest a CSV file or a database table/query into the vault (idempotent, resumable)."""
    state = _open(state_dir, policy, db_url)
    try:
        src = _source(file, source_url, table, query, max_bytes)
        plan = (
            load_mapping(mapping, state.policy)
            if mapping is not None
            else mapping_for_columns(state.policy, dataset, src.columns, default_region=region)
        )
        region = region or plan.default_region
        with Progress(
            TextColumn("ingesting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as bar:
            task = bar.add_task("rows", total=None)
            ingestor = Ingestor(
                state.handle(default_region=region),
                batch_size=batch_size,
                workers=workers,
                on_start=lambda total: bar.update(task, total=total),
                on_progress=lambda done: bar.update(task, completed=done),
            )
            try:
                report = ingestor.ingest(src, plan)
            except IngestRejected as rejected:
                path = _save_report(state, rejected.report)
                if as_json:
                    _json(rejected.report.as_dict())
                else:
                    _print_report(rejected.report)
                raise fail(f"{rejected.message} (report: {path})") from None
        path = _save_report(state, report)
        state.audit("ingest", dataset=report.dataset, status=report.status, rows=report.rows_read)
        if as_json:
            _json(report.as_dict())
        else:
            _print_report(report)
            console.print(f"quality report written to {path}")
    finally:
        state.close()


@friendly_errors
def quality(state_dir: StateDir, policy: PolicyFile, db_url: DbUrl = None, as_json: AsJson = False) -> None:
    """Data-quality report of the vault: completeness per field, merges, erasures, last ingest."""
    state = _open(state_dir, policy, db_url)
    try:
        doc = vault_quality(state.engine, state.policy)
        reports = sorted((state.state_dir / REPORTS_DIR).glob("ingest-*.json"))
        doc["last_ingest"] = json.loads(reports[-1].read_text(encoding="utf-8")) if reports else None
    finally:
        state.close()
    if as_json:
        _json(doc)
        return
    console.print(
        f"customers {doc['customers']}, transactions {doc['transactions']}, events {doc['events']}, "
        f"merges {doc['merges']}, tombstones {doc['tombstones']}"
    )
    table = Table("field", "tier", "present", "missing", "completeness")
    for f in doc["fields"]:
        table.add_row(f["field"], f["tier"], str(f["present"]), str(f["missing"]), f"{f['completeness']:.1%}")
    console.print(table)
    if doc["last_ingest"]:
        _print_report(IngestReport.from_dict(doc["last_ingest"]))


@friendly_errors
def rotate_keys(
    state_dir: StateDir,
    policy: PolicyFile,
    mode: Annotated[
        str, typer.Option("--mode", help="rewrap (new KEK, fast) or reencrypt (new data key).")
    ] = "rewrap",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 500,
    db_url: DbUrl = None,
) -> None:
    """Re-wrap the data keys under a new key file, or re-encrypt every protected value (resumable)."""
    if mode not in ("rewrap", "reencrypt"):
        raise ConfigError("--mode must be rewrap or reencrypt")
    state = _open(state_dir, policy, db_url)
    try:
        if mode == "rewrap":
            if state.kek_from_env:
                raise ConfigError(
                    "the vault key comes from TESSERA_VAULT_KEK; re-wrap needs the key file layout"
                )
            nxt = state_dir / NEXT_KEY_FILE
            if not nxt.exists():
                create_key_file(nxt)
            result = rotate(state.keys, mode="rewrap", new_kek=LocalKek.from_file(nxt))
            os.replace(nxt, state_dir / KEY_FILE)  # the vault now needs the new key; promote it
            console.print(
                f"re-wrapped {result.keys_rewrapped} keys under a new key in {state_dir / KEY_FILE}"
            )
        else:
            with Progress(
                TextColumn("re-encrypting"),
                BarColumn(),
                TextColumn("{task.completed} values"),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task("values", total=None)
                result = rotate(
                    state.keys,
                    mode="reencrypt",
                    columns=PROTECTED_COLUMNS,
                    batch_size=batch_size,
                    on_batch=lambda p: bar.update(task, completed=p.rows_done),
                )
            resumed = " (resumed)" if result.resumed else ""
            console.print(
                f"re-encrypted {result.values_reencrypted} values under data key {result.new_key_id}{resumed}"
            )
        state.audit("rotate-keys", mode=mode)
    finally:
        state.close()


@friendly_errors
def purge(state_dir: StateDir, policy: PolicyFile, db_url: DbUrl = None) -> None:
    """Apply the policy's retention: remove data not delivered within retention_days."""
    state = _open(state_dir, policy, db_url)
    try:
        result = admin.purge(state)
    finally:
        state.close()
    console.print(
        f"retention {result.retention_days} days (cutoff {result.cutoff:%Y-%m-%d %H:%M} UTC): removed "
        f"{result.customers} customers, {result.transactions} transactions, {result.events} events"
    )


@friendly_errors
def erase(
    state_dir: StateDir,
    policy: PolicyFile,
    email: Email = None,
    phone: Phone = None,
    national_id: NationalId = None,
    cid: CustomerId = None,
    region: Region = None,
    db_url: DbUrl = None,
) -> None:
    """Remove one customer everywhere in the vault (right to be forgotten); leaves a tombstone."""
    kind, value = _identifier(email, phone, national_id, cid)
    state = _open(state_dir, policy, db_url)
    try:
        removed = admin.erase(state, kind, value, default_region=region)
    finally:
        state.close()
    console.print(
        f"customer erased: {removed} rows removed; a tombstone without PII was recorded, and later "
        "ingests refuse rows that name this customer"
    )


@friendly_errors
def lookup(
    state_dir: StateDir,
    policy: PolicyFile,
    email: Email = None,
    phone: Phone = None,
    national_id: NationalId = None,
    cid: CustomerId = None,
    region: Region = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Decrypt one customer's record on this node (authorised operators only; audited)."""
    kind, value = _identifier(email, phone, national_id, cid)
    state = _open(state_dir, policy, db_url)
    try:
        record = admin.lookup(state, kind, value, default_region=region)
    finally:
        state.close()
    doc = {
        "customer": record.customer_id,
        **record.pii,
        **record.attributes,
        "transactions": record.transactions,
        "events": record.events,
    }
    if as_json:
        _json(doc)
        return
    table = Table("field", "value", title=f"customer {record.customer_id}")
    for name, val in doc.items():
        table.add_row(name, str(val))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the vault commands to `tessera node`."""
    app.command("init")(init)
    app.command("ingest")(ingest)
    app.command("quality")(quality)
    app.command("rotate-keys")(rotate_keys)
    app.command("purge")(purge)
    app.command("erase")(erase)
    app.command("lookup")(lookup)
