"""Options shared by several commands (Annotated aliases, read from env vars too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tessera.core.errors import ConfigError

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


def check_address(value: str, *, option: str, any_port: bool = False) -> str:
    """``value`` if it is HOST:PORT with a port in range (0 too when ``any_port``), else one sentence.

    gRPC takes an out-of-range port modulo 65536 and would silently serve somewhere else.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{option} expects HOST:PORT (e.g. 127.0.0.1:50051), got {value!r}")
    low = 0 if any_port else 1
    if not low <= int(port) <= 65535:
        raise ConfigError(f"{option}: port {port} is out of range ({low} to 65535)")
    return value
