"""`tessera node …`: serve, and the operator commands of the vault, ledgers and local models."""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar

import typer

from tessera.cli._common import console, friendly_errors
from tessera.cli.lazy import LazyCommand, LazyGroup
from tessera.cli.options import (
    DEFAULT_COORDINATOR,
    Coordinator,
    LogFile,
    LogFormat,
    LogLevel,
    PkiDir,
    check_address,
)
from tessera.core.errors import ConfigError


def _cmd(module: str, attribute: str, text: str) -> LazyCommand:
    return LazyCommand(f"tessera.cli.{module}", attribute, text)


class NodeGroup(LazyGroup):
    """`tessera node …`: each command's module (SQLAlchemy, crypto, numpy) is imported when it runs."""

    lazy: ClassVar[Mapping[str, LazyCommand]] = {
        "init": _cmd(
            "vault_cmd", "init", "Create the node's state folder: key file, vault keys and tables, ledgers."
        ),
        "ingest": _cmd("vault_cmd", "ingest", "Ingest a CSV file or a database table/query into the vault."),
        "quality": _cmd("vault_cmd", "quality", "Data-quality report of the vault and of the last ingest."),
        "rotate-keys": _cmd(
            "vault_cmd", "rotate_keys", "Re-wrap the data keys, or re-encrypt every protected value."
        ),
        "purge": _cmd(
            "vault_cmd", "purge", "Apply the policy's retention: remove data older than retention_days."
        ),
        "erase": _cmd(
            "vault_cmd", "erase", "Remove one customer everywhere in the vault; leaves a tombstone."
        ),
        "lookup": _cmd("vault_cmd", "lookup", "Decrypt one customer's record on this node (audited)."),
        "clv": _cmd("clv_cmd", "clv", "Predict purchases, P(alive) and CLV of this node's customers."),
        "segments": _cmd("segments_cmd", "segments", "Label this node's customers with a released model."),
        "score": _cmd("score_cmd", "score", "Score this node's customers with a churn model card."),
        "merges": _cmd(
            "identity_cmd", "merges", "List One ID's merges: kept and merged customer, rules, rows."
        ),
        "unmerge": _cmd(
            "identity_cmd", "unmerge", "Undo one merge: what it brought becomes its own customer."
        ),
        "egress": _cmd("egress_cmd", "egress_app", "The node's egress ledger: what left the node and why."),
        "budget": _cmd(
            "egress_cmd", "budget", "The node's own privacy budget and what a next job can afford."
        ),
    }


app = typer.Typer(help="Run a partner's node beside its data.", no_args_is_help=True, cls=NodeGroup)


def parse_data_options(values: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--data expects NAME=PATH (e.g. customers=data/customers.csv), got {value!r}")
        if name in files:
            raise ConfigError(f"dataset {name!r} is given twice")
        files[name] = Path(path)
    return files


@app.command()
@friendly_errors
def serve(
    pki: PkiDir,
    name: Annotated[str, typer.Option(help="This node's certificate name under PKI/nodes/.")],
    policy: Annotated[Path, typer.Option(help="The node's policy file (YAML).")],
    state_dir: Annotated[
        Path,
        typer.Option(
            help="The node's folder made by `tessera node init`: vault, key, egress and budget ledgers."
        ),
    ],
    data: Annotated[
        list[str] | None,
        typer.Option(help="Serve a CSV file as a dataset (NAME=PATH; repeatable) instead of the vault."),
    ] = None,
    db_url: Annotated[
        str | None, typer.Option(help="The vault's database URL if not the SQLite file in --state-dir.")
    ] = None,
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    log_file: LogFile = None,
    log_format: LogFormat = "text",
    log_level: LogLevel = "info",
) -> None:
    """Dial out to the coordinator and execute tasks the policy allows, until SIGTERM or Ctrl-C."""
    from tessera.client.agent import NodeAgent, NodeConfig, check_identity
    from tessera.client.datasource import CsvDataSource, DataSource
    from tessera.client.outgoing import open_ledgers
    from tessera.client.overlap_source import VaultIdentifiers
    from tessera.client.vault.state import open_node_state
    from tessera.core.logs import configure_logging
    from tessera.core.pki import TlsFiles, load_tls
    from tessera.core.policy import load_policy

    check_address(coordinator, option="--coordinator")
    configure_logging(level=log_level, fmt=log_format, file=log_file)
    tls = TlsFiles.for_identity(pki, "node", name)
    identity = load_tls(tls).identity
    loaded_policy = load_policy(policy)
    check_identity(loaded_policy, identity.name)
    # The analyses read the vault (decrypting nothing); --data serves raw CSV files instead.
    csv_source = CsvDataSource(parse_data_options(data), loaded_policy) if data else None
    state = open_node_state(state_dir, loaded_policy, db_url=db_url)
    source: DataSource = csv_source or state.data_source
    ledgers = open_ledgers(state.engine, loaded_policy)  # in the vault's database
    # overlap matches normalised identifiers: from the CSV served, else decrypted from the vault.
    identifiers = None if csv_source else VaultIdentifiers(state.engine, state.keys.cipher(), loaded_policy)
    agent = NodeAgent(
        NodeConfig(node_id=name, coordinator=coordinator, tls=tls),
        loaded_policy,
        source,
        ledgers,
        identifiers=identifiers,
    )

    def _on_signal(signum: int, _frame: object) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    console.print(f"node {name} dialling {coordinator}")
    worker = threading.Thread(target=agent.run, name="node-agent")
    worker.start()
    # The main thread only waits, so signals are handled promptly.
    while worker.is_alive():
        worker.join(timeout=0.5)
    state.close()
    console.print(f"node {name} stopped")
