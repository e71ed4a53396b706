"""`tessera analyses`: every analysis, what it computes, and its parameters with defaults and units —
read from each analysis module's ``PARAMS`` table, so it cannot drift from the code's own list."""

from __future__ import annotations

import json
import textwrap
from typing import Annotated, Any

import typer

from tessera.cli._common import console


def analysis_modules() -> list[Any]:
    """The analysis modules, in the order `tessera analyses` lists them (numpy is imported here)."""
    from tessera.core.analyses import (
        churn_model,
        inventory,
        kmeans,
        mean_descent,
        overlap,
        registry,
        rfm_segments,
    )

    modules = [inventory, *registry.VECTOR_ANALYSES.values(), mean_descent, rfm_segments, kmeans]
    return [*modules, churn_model, overlap]


def param_kinds(analysis: str) -> dict[str, str]:
    """Parameter name -> kind for ``analysis`` ({} for an unknown analysis: the coordinator says)."""
    for module in analysis_modules():
        if module.INFO.name == analysis:
            return {p.name: p.kind for p in getattr(module, "PARAMS", ())}
    return {}


def analyses(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the analyses, their parameters (--param NAME=VALUE), defaults and units."""
    doc = [
        {
            "analysis": m.INFO.name,
            "description": m.INFO.description,
            "differentially_private": m.INFO.differentially_private,
            "params": [
                {"name": p.name, "kind": p.kind, "default": p.default, "unit": p.unit, "help": p.help}
                for p in getattr(m, "PARAMS", ())
            ],
        }
        for m in analysis_modules()
    ]
    if as_json:
        console.print_json(json.dumps(doc))
        return
    width = max(console.width, 40)
    lines: list[str] = []
    for entry in doc:
        dp = "DP: needs --epsilon and --delta" if entry["differentially_private"] else "no DP release"
        head = f"{entry['analysis']}: {entry['description']} ({dp})"
        lines += textwrap.wrap(head, width, subsequent_indent="  ")
        if not entry["params"]:
            lines.append("    no parameters")
        for p in entry["params"]:
            extra = "optional" if p["default"] in ("-", "") else f"default {p['default']}"
            if p["default"].startswith("required"):
                extra = p["default"]
            unit = f", in {p['unit']}" if p["unit"] != "-" else ""
            text = f"{p['name']} ({p['kind']}; {extra}{unit}): {p['help']}"
            lines += textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="        ")
        lines.append("")
    lines.append("Give them as --param NAME=VALUE; a list is comma-separated,")
    lines.append("e.g. --param levels=0.25,0.5,0.75")
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
