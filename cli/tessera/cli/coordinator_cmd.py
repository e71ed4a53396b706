"""`tessera coordinator serve`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli._common import console, friendly_errors
from tessera.cli.options import DEFAULT_COORDINATOR, LogFile, LogFormat, LogLevel, PkiDir, check_address
from tessera.core.errors import ConfigError

app = typer.Typer(help="Run the central coordinator.", no_args_is_help=True)


@app.command()
@friendly_errors
def serve(
    pki: PkiDir,
    name: Annotated[
        str, typer.Option(help="Coordinator certificate name under PKI/coordinators/.")
    ] = "coordinator",
    listen: Annotated[
        str, typer.Option(help="Address to listen on; port 0 picks a free port.")
    ] = DEFAULT_COORDINATOR,
    db: Annotated[str, typer.Option(help="SQLAlchemy URL of the store (SQLite file or PostgreSQL).")] = (
        "sqlite:///tessera-coordinator.db"
    ),
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here once serving.")] = None,
    stage_timeout: Annotated[float, typer.Option(help="Seconds a node has to answer a stage.")] = 120.0,
    heartbeat_ms: Annotated[int, typer.Option(help="Heartbeat interval asked of nodes.")] = 2000,
    stream_grace: Annotated[
        float,
        typer.Option(
            help="Seconds a node's closed task stream may stay closed before the node counts as "
            "dropped (raise it for links that take longer to reconnect)."
        ),
    ] = 0.5,
    log_file: LogFile = None,
    log_format: LogFormat = "text",
    log_level: LogLevel = "info",
) -> None:
    """Serve the node and analyst services over mTLS until SIGTERM or Ctrl-C."""
    from datetime import timedelta

    from tessera.core.logs import configure_logging
    from tessera.core.pki import TlsFiles
    from tessera.server.app import Coordinator, CoordinatorConfig
    from tessera.server.store import open_store

    check_address(listen, option="--listen", any_port=True)
    if not 0 < stream_grace <= 600:
        raise ConfigError(f"--stream-grace is in seconds, above 0 and at most 600; got {stream_grace:g}")
    configure_logging(level=log_level, fmt=log_format, file=log_file)
    store = open_store(db)
    config = CoordinatorConfig(
        listen=listen,
        tls=TlsFiles.for_identity(pki, "coordinator", name),
        stage_timeout=timedelta(seconds=stage_timeout),
        heartbeat_interval_ms=heartbeat_ms,
        stream_grace=timedelta(seconds=stream_grace),
    )
    coordinator = Coordinator(config, store)
    port = coordinator.start()
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(port_file)  # atomic: a reader never sees a half-written port
    console.print(f"coordinator serving on port {port}")
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stopping.wait(0.5):
        pass
    coordinator.stop(grace=5.0)
    store.close()
    console.print("coordinator stopped")
