"""`tessera node serve`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli import clv_cmd, egress_cmd, identity_cmd, segments_cmd, vault_cmd
from tessera.cli._common import console, friendly_errors
from tessera.cli.options import DEFAULT_COORDINATOR, Coordinator, LogFile, LogFormat, LogLevel, PkiDir
from tessera.client.agent import NodeAgent, NodeConfig
from tessera.client.datasource import CsvDataSource, DataSource
from tessera.client.outgoing import open_ledgers
from tessera.client.overlap_source import VaultIdentifiers
from tessera.client.vault.state import open_node_state
from tessera.core.errors import ConfigError
from tessera.core.logs import configure_logging
from tessera.core.pki import TlsFiles, load_tls
from tessera.core.policy import load_policy

app = typer.Typer(help="Run a partner's node beside its data.", no_args_is_help=True)
vault_cmd.register(app)  # init, ingest, quality, rotate-keys, purge, erase, lookup, egress
app.command("clv")(clv_cmd.clv)  # predictions from a released clv_fit model, at home
segments_cmd.register(app)  # segments: label this node's customers with a released model
identity_cmd.register(app)  # merges, unmerge
egress_cmd.register(app)  # egress report|verify, budget


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
    configure_logging(level=log_level, fmt=log_format, file=log_file)
    tls = TlsFiles.for_identity(pki, "node", name)
    load_tls(tls)
    loaded_policy = load_policy(policy)
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
