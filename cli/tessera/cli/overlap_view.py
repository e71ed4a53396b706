"""The overlap table: one row per pair of partners, released, refused or failed."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from tessera.cli._common import console


def render_overlap(doc: dict[str, Any]) -> None:
    """Shared customers per pair with the 95% interval (and, in the demo, the true count)."""
    filters = ", ".join(f"{k}: {v}" for k, v in doc.get("filters", {}).items())
    console.print(
        f"  customers shared, matched on {doc['identifier']}: "
        f"ε={doc['epsilon']:g}, δ={doc['delta']:g} per node" + (f"; filters {filters}" if filters else ""),
        highlight=False,
    )
    with_truth = any("true" in p for p in doc["pairs"])
    table = Table(show_edge=False, pad_edge=False)
    for column in ("partner", "partner", "shared [95% interval]", *(("true",) if with_truth else ())):
        table.add_column(column, justify="right" if column != "partner" else "left")
    for pair in doc["pairs"]:
        if pair["status"] == "released":
            low, high = pair["interval"]
            shown = f"{pair['estimate']:,.0f} [{low:,}, {high:,}]"
        else:
            shown = f"{pair['status']}: {pair.get('reason', '')}"
        row = [pair["a"], pair["b"], shown]
        if with_truth:
            row.append("-" if "true" not in pair else f"{pair['true']:,}")
        table.add_row(*row)
    console.print(table)
    if doc.get("coverage"):
        console.print(f"  {doc['coverage']}", highlight=False)
