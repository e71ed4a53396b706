"""`tessera node serve`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli._common import console, friendly_errors
from tessera.cli.options import DEFAULT_COORDINATOR, Coordinator, LogFile, LogFormat, LogLevel, PkiDir
from tessera.client.agent import NodeAgent, NodeConfig
from tessera.client.datasource import CsvDataSource
from tessera.client.db import node_engine
from tessera.client.outgoing import open_ledgers
from tessera.core.errors import ConfigError
from tessera.core.logs import configure_logging
from tessera.core.pki import TlsFiles, load_tls
from tessera.core.policy import load_policy

app = typer.Typer(help="Run a partner's node beside its data.", no_args_is_help=True)


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
    data: Annotated[list[str], typer.Option(help="A dataset as NAME=PATH to a CSV file; repeatable.")],
    state_dir: Annotated[
        Path, typer.Option(help="The node's own folder: its ledgers (egress, budget) live here.")
    ],
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
    source = CsvDataSource(parse_data_options(data), loaded_policy)
    state_dir.mkdir(parents=True, exist_ok=True)
    ledgers = open_ledgers(node_engine(f"sqlite:///{state_dir / 'ledgers.db'}"), loaded_policy)
    agent = NodeAgent(
        NodeConfig(node_id=name, coordinator=coordinator, tls=tls), loaded_policy, source, ledgers
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
    console.print(f"node {name} stopped")
