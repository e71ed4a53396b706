"""Commands imported only when run: `tessera --help` and `tessera job list --help` start fast.

Importing every command module up front pulled in gRPC, SQLAlchemy, numpy and cryptography for
every call (about 2 s on a loaded machine). The top-level group knows each command's name, module
and one-line help; listing them for `--help` imports nothing, and running one imports only its
module (which imports what it needs inside the commands that need it).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import click
import typer
import typer.main
from typer.core import TyperGroup


@dataclass(frozen=True, slots=True)
class LazyCommand:
    module: str  # e.g. "tessera.cli.job_cmd"
    attribute: str  # a typer.Typer (a group of commands) or a command function
    help: str  # one line, shown by `tessera --help` without importing ``module``


def _load(name: str, spec: LazyCommand) -> click.Command:
    target = getattr(importlib.import_module(spec.module), spec.attribute)
    if isinstance(target, typer.Typer):
        command: click.Command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    if isinstance(target, typer.Typer):
        command.help = spec.help
    return command


class LazyGroup(TyperGroup):
    """A typer group whose ``LAZY`` commands are imported on first use (see the module doc)."""

    lazy: ClassVar[Mapping[str, LazyCommand]] = {}

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._loaded: dict[str, click.Command] = {}
        self._listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy, *super().list_commands(ctx)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = self.lazy.get(cmd_name)
        if spec is None:
            return super().get_command(ctx, cmd_name)
        if self._listing and cmd_name not in self._loaded:
            return click.Command(cmd_name, help=spec.help, short_help=spec.help)  # a label only
        if cmd_name not in self._loaded:
            self._loaded[cmd_name] = _load(cmd_name, spec)
        return self._loaded[cmd_name]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
