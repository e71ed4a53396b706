"""`tessera node merges|unmerge`: what One ID merged, and undoing a merge.

Split from ``vault_cmd`` (STYLE 14). Both print internal customer ids, match rules and row numbers —
never an identifier or any other value.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tessera.cli._common import console, friendly_errors
from tessera.cli.vault_cmd import AsJson, DbUrl, PolicyFile, StateDir, _json, _open
from tessera.client.vault import admin


@friendly_errors
def merges(
    state_dir: StateDir,
    policy: PolicyFile,
    customer: Annotated[
        int | None, typer.Option("--customer", help="Only merges into this customer.")
    ] = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """List One ID's merges: id, time, kept and merged customer, the rules that matched, rows."""
    state = _open(state_dir, policy, db_url)
    try:
        found = admin.merges(state, customer=customer)
    finally:
        state.close()
    if as_json:
        _json(
            [
                {
                    "merge": m.merge_id,
                    "time": m.time.isoformat(),
                    "kind": m.kind,
                    "kept": m.kept,
                    "merged": m.merged,
                    "matched_by": m.matched_by,
                    "rows": m.rows,
                    "undone": m.undone,
                }
                for m in found
            ]
        )
        return
    table = Table(
        "merge",
        "time (UTC)",
        "kind",
        "kept",
        "merged",
        "matched by",
        "rows",
        "undone",
        title=f"One ID merges: {len(found)}",
    )
    for m in found:
        table.add_row(
            str(m.merge_id),
            f"{m.time:%Y-%m-%d %H:%M}",
            m.kind,
            str(m.kept),
            str(m.merged) if m.merged else "(row)",
            m.matched_by,
            ", ".join(map(str, m.rows[:10])) + (" …" if len(m.rows) > 10 else ""),
            "yes" if m.undone else "",
        )
    console.print(table)


@friendly_errors
def unmerge(
    state_dir: StateDir,
    policy: PolicyFile,
    merge: Annotated[int, typer.Option("--merge", help="The merge to undo (see `tessera node merges`).")],
    db_url: DbUrl = None,
) -> None:
    """Undo one merge: what it brought becomes a customer of its own, never merged back."""
    state = _open(state_dir, policy, db_url)
    try:
        restored = admin.unmerge(state, merge)
    finally:
        state.close()
    console.print(
        f"merge {merge} undone: its identifiers are customer {restored} again; "
        "later ingests will not join the two"
    )


def register(app: typer.Typer) -> None:
    """Add `merges` and `unmerge` to `tessera node`."""
    app.command("merges")(merges)
    app.command("unmerge")(unmerge)
