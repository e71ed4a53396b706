"""What every CLI command shares: one-sentence errors and a console."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from tessera.core.errors import TesseraError

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one plain sentence to stderr and return the Exit to raise."""
    # soft_wrap: one sentence stays one line, whatever the terminal width (logs and grep rely on it).
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn Tessera's and the OS's expected errors into one sentence and exit 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except TesseraError as exc:
            raise fail(exc.message) from None
        except FileNotFoundError as exc:
            raise fail(f"file not found: {exc.filename}") from None
        except PermissionError as exc:
            raise fail(f"permission denied: {exc.filename}") from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper
