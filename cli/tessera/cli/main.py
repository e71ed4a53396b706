"""The `tessera` command."""

from __future__ import annotations

import os

import typer

from tessera.cli import analyses_cmd, coordinator_cmd, demo, job_cmd, model_cmd, node_cmd, pki_cmd, policy_cmd
from tessera.core import __version__

app = typer.Typer(
    name="tessera",
    help="Tessera: privacy-preserving federated customer analytics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(pki_cmd.app, name="pki", help="Make a dev consortium CA and issue certificates.")
app.add_typer(policy_cmd.app, name="policy", help="Lint and compare policy files (compliance officers).")
app.add_typer(coordinator_cmd.app, name="coordinator")
app.add_typer(node_cmd.app, name="node")
app.add_typer(job_cmd.app, name="job")
app.add_typer(model_cmd.app, name="model")
app.command("nodes")(job_cmd.nodes)
app.command("audit")(job_cmd.audit)
app.command("budget")(job_cmd.budget)
app.command("analyses")(analyses_cmd.analyses)
app.command("demo")(demo.demo)


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
