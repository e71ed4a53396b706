"""The `tessera` command.

Every command module is imported only when its command runs (``lazy.LazyGroup``): a call pays for
the libraries it uses, and `tessera --help` for none of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

import typer

from tessera.cli.lazy import LazyCommand, LazyGroup
from tessera.core import __version__


class TesseraGroup(LazyGroup):
    lazy: ClassVar[Mapping[str, LazyCommand]] = {
        "pki": LazyCommand("tessera.cli.pki_cmd", "app", "Make a dev consortium CA and issue certificates."),
        "policy": LazyCommand(
            "tessera.cli.policy_cmd", "app", "Lint and compare policy files (compliance officers)."
        ),
        "coordinator": LazyCommand("tessera.cli.coordinator_cmd", "app", "Run the central coordinator."),
        "node": LazyCommand("tessera.cli.node_cmd", "app", "Run a partner's node beside its data."),
        "job": LazyCommand("tessera.cli.job_cmd", "app", "Submit and follow jobs (analysts)."),
        "model": LazyCommand("tessera.cli.model_cmd", "app", "Churn model cards and scoring with them."),
        "nodes": LazyCommand(
            "tessera.cli.job_cmd", "nodes", "List enrolled nodes: online, last seen, version, policy."
        ),
        "audit": LazyCommand(
            "tessera.cli.job_cmd", "audit", "Show the coordinator's audit log (admin or auditor role)."
        ),
        "budget": LazyCommand(
            "tessera.cli.job_cmd", "budget", "Privacy budget left per node, and what a next job can afford."
        ),
        "analyses": LazyCommand(
            "tessera.cli.analyses_cmd", "analyses", "List the analyses, their parameters, defaults and units."
        ),
        "demo": LazyCommand(
            "tessera.cli.demo", "demo", "Run a whole federation on this machine and write OUT/results.json."
        ),
    }


app = typer.Typer(
    name="tessera",
    help="Tessera: privacy-preserving federated customer analytics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=TesseraGroup,
)


@app.callback()
def root() -> None:
    """Tessera: privacy-preserving federated customer analytics."""
    # A callback keeps `tessera` a group: with one eager command typer would collapse into it.


@app.command()
def version() -> None:
    """Print Tessera's version."""
    typer.echo(__version__)


def main() -> None:
    # Tessera never sends telemetry; libraries that would (flwr) are told so before any import.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    app()


if __name__ == "__main__":
    main()
