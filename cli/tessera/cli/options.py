"""Options shared by several commands (Annotated aliases, read from env vars too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Coordinator = Annotated[
    str, typer.Option("--coordinator", envvar="TESSERA_COORDINATOR", help="Coordinator address host:port.")
]
PkiDir = Annotated[
    Path,
    typer.Option(
        "--pki", envvar="TESSERA_PKI", help="Folder with ca.pem and this party's certificate and key."
    ),
]
User = Annotated[
    str, typer.Option("--user", envvar="TESSERA_USER", help="Analyst certificate name under PKI/analysts/.")
]
LogFile = Annotated[Path | None, typer.Option("--log-file", help="Write logs here instead of stderr.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="text or json.")]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]

DEFAULT_COORDINATOR = "127.0.0.1:50051"
