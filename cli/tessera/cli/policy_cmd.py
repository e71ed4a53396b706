"""``tessera policy lint|diff``: the compliance officer's tools for policy files.

``lint`` exits 1 when any file has an error (warnings alone exit 0, or 1 with ``--strict``);
``diff`` exits 0, or 3 with ``--fail-if-looser`` when the new policy loosens anything, so a CI job
can demand a second reviewer for loosening changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from tessera.cli._common import console, friendly_errors
from tessera.core.policy import Direction, LintReport, diff_policies, lint_policy, load_policy

app = typer.Typer(help="Check and compare node policy files.", no_args_is_help=True)

# Exit code of `diff --fail-if-looser` when the new policy is looser somewhere (1 is for errors).
EXIT_LOOSER = 3

_STYLE = {Direction.LOOSER: "bold yellow", Direction.STRICTER: "bold green", Direction.NEUTRAL: "dim"}


def _say(text: Text) -> None:
    # soft_wrap keeps one finding per line (greppable); Text avoids reading "[...]" as markup.
    console.print(text, soft_wrap=True, highlight=False)


def _print_report(report: LintReport) -> None:
    if report.ok and not report.warnings:
        _say(Text.assemble((report.source, "bold"), ": ok, no problems found"))
        return
    for problem in report.errors:
        _say(Text.assemble(("error", "bold red"), ": ", problem.render(report.source)))
    for problem in report.warnings:
        _say(Text.assemble(("warning", "bold yellow"), ": ", problem.render(report.source)))
    verdict = "has errors, the node will refuse it" if report.errors else "usable, but check the warnings"
    _say(Text.assemble((report.source, "bold"), f": {verdict}"))


@app.command("lint")
@friendly_errors
def lint(
    files: Annotated[list[Path], typer.Argument(help="Policy files to check.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
) -> None:
    """Check policy files: errors make a file unusable, warnings deserve a second look."""
    reports = [lint_policy(path) for path in files]
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for report in reports:
            _print_report(report)
    failed = any(r.errors for r in reports) or (strict and any(r.warnings for r in reports))
    if failed:
        raise typer.Exit(1)


@app.command("diff")
@friendly_errors
def diff(
    old: Annotated[Path, typer.Argument(help="The policy in force now.", show_default=False)],
    new: Annotated[Path, typer.Argument(help="The proposed policy.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON.")] = False,
    fail_if_looser: Annotated[
        bool, typer.Option("--fail-if-looser", help=f"Exit {EXIT_LOOSER} if any change is looser.")
    ] = False,
) -> None:
    """Show what changes from OLD to NEW, grouped as looser, stricter and neutral."""
    result = diff_policies(load_policy(old), load_policy(new))
    if as_json:
        payload = {"old": str(old), "new": str(new), **result.to_dict()}
        typer.echo(json.dumps(payload, indent=2))
    elif not result.changes:
        _say(Text(f"no changes: {old} and {new} say the same (hash {result.new_hash[:12]})"))
    else:
        table = Table(title=f"{old} -> {new}", show_lines=False)
        table.add_column("effect", no_wrap=True)
        table.add_column("change", overflow="fold")
        for direction in (Direction.LOOSER, Direction.STRICTER, Direction.NEUTRAL):
            for change in result.of(direction):
                text = change.message.removesuffix(f": {direction.value}")
                table.add_row(Text(direction.value, _STYLE[direction]), Text(text))
        console.print(table)
        counts = ", ".join(f"{len(result.of(d))} {d.value}" for d in Direction)
        _say(Text(f"{len(result.changes)} change(s): {counts}"))
    if fail_if_looser and result.looser:
        raise typer.Exit(EXIT_LOOSER)
