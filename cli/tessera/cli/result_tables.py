"""Readable tables of the segment analyses' results for `tessera job result` (and the demo).

One renderer per analysis — ``rfm_segments``, ``kmeans``, ``funnel``, ``cohort_retention`` —
each reading the released result document (the JSON that ``--json`` prints, intervals and all)
and printing to a rich console. Every number with a 95% interval shows it under the value, so
the tables stay readable at 80 columns; the cohort matrix is cut into month ranges that fit the
console's width.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from tessera.cli._common import console as default_console

Renderer = Callable[[Mapping[str, Any], Console], None]


def render(analysis: str, doc: Mapping[str, Any], console: Console | None = None) -> bool:
    """Print ``doc`` (the ``result`` of a job of ``analysis``) as tables; False when this module
    has no renderer for the analysis (the caller then prints it its own way)."""
    renderer = RENDERERS.get(analysis)
    if renderer is None or not doc:
        return False
    renderer(doc, console or default_console)
    return True


def _number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _with_interval(estimate: Any, *, digits: int = 0, scale: float = 1.0) -> str:
    """``value`` over ``low–high`` (one cell, two lines); ``-`` when nothing was released."""
    if not isinstance(estimate, Mapping):
        return "-"
    low, high = estimate["ci95"]
    value = _number(estimate["value"] * scale, digits)
    return f"{value}\n[dim]{_number(low * scale, digits)}–{_number(high * scale, digits)}[/]"


def _header(doc: Mapping[str, Any], console: Console, what: str) -> None:
    floor = doc.get("min_cohort_size")
    console.print(f"  {what} (ε {doc.get('epsilon', 0):g}, δ {doc.get('delta', 0):g})", highlight=False)
    suppressed = f"; cells under {floor} customers suppressed" if floor is not None else ""
    console.print(f"  [dim]95% intervals under the values{suppressed}[/]", highlight=False)


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(title=title, show_edge=False, pad_edge=False, show_lines=True)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


# rfm_segments --------------------------------------------------------------------------------


def render_rfm(doc: Mapping[str, Any], console: Console) -> None:
    """Segment x size, share, mean monetary and churn rate, one table per group."""
    model = doc.get("model") or {}
    _header(doc, console, f"rfm_segments of {doc.get('dataset')} as of {model.get('reference_date')}")
    bounds = model.get("boundaries") or {}
    if bounds:
        axes = ", ".join(
            f"{axis} {' / '.join(_number(b, 0 if axis != 'monetary' else 2) for b in bounds[axis])}"
            for axis in ("recency", "frequency", "monetary")
            if axis in bounds
        )
        console.print(f"  quintile boundaries: {axes}", highlight=False)
    cells = doc.get("segments") or []
    churn = any("churn_rate" in c for c in cells)
    groups = list(dict.fromkeys(c.get("group", "all") for c in cells))
    for group in groups:
        columns = ["segment", "customers", "share %", "mean monetary"] + (["churn %"] if churn else [])
        title = None if groups == ["all"] else f"{doc.get('group_by')} = {group}"
        table = _table(*columns, title=title)
        for cell in (c for c in cells if c.get("group", "all") == group):
            if cell.get("suppressed"):
                table.add_row(cell["segment"], "suppressed", *["-"] * (len(columns) - 2))
                continue
            row = [
                cell["segment"],
                _with_interval(cell.get("size")),
                _with_interval(cell.get("share"), digits=1, scale=100),
                _with_interval(cell.get("mean_monetary"), digits=2),
            ]
            if churn:
                row.append(_with_interval(cell.get("churn_rate"), digits=1, scale=100))
            table.add_row(*row)
        console.print(table)
    _split_line(doc.get("budget_split") or {}, console)


_RFM_PARTS = {
    "round1": "boundaries (round 1)",
    "count": "sizes",
    "monetary": "monetary sums",
    "churn": "churn labels",
}


def _split_line(split: Mapping[str, float], console: Console) -> None:
    if not split:
        return
    parts = ", ".join(f"{_RFM_PARTS.get(name, name)} {share:.0%}" for name, share in split.items())
    console.print(f"  budget (share of ρ): {parts}", highlight=False)


# kmeans --------------------------------------------------------------------------------------

_FEATURES_PER_TABLE = 4


def render_kmeans(doc: Mapping[str, Any], console: Console) -> None:
    """Centroids in original units and sizes with intervals; the budget of every round."""
    clusters = doc.get("clusters") or []
    _header(doc, console, f"kmeans of {doc.get('dataset')}: {doc.get('k')} clusters, {doc.get('init')} start")
    features: list[str] = list((doc.get("model") or {}).get("features") or [])
    if not features and clusters:
        features = list(clusters[0]["centroid"])
    chunks = [features[i : i + _FEATURES_PER_TABLE] for i in range(0, len(features), _FEATURES_PER_TABLE)]
    for n, chunk in enumerate(chunks or [[]]):
        table = _table("cluster", *(["customers"] if n == 0 else []), *(f.split(".")[-1] for f in chunk))
        digits = [_digits([(c.get("centroid") or {}).get(f) for c in clusters]) for f in chunk]
        for cluster in clusters:
            size = ["suppressed" if cluster.get("suppressed") else _with_interval(cluster.get("size"))]
            centre = cluster.get("centroid") or {}
            values = [_centroid_value(centre.get(f), d) for f, d in zip(chunk, digits, strict=True)]
            table.add_row(str(cluster["cluster"]), *(size if n == 0 else []), *values)
        console.print(table)
    if doc.get("sizes_from"):
        console.print(f"  sizes: {doc['sizes_from']}", highlight=False)
    budget = doc.get("budget_split") or {}
    if budget:
        rho = float(doc.get("rho") or 0.0) or 1.0
        rounds = [("statistics", budget.get("stats", 0.0)), ("grid start", budget.get("init", 0.0))]
        iterations = int(budget.get("iterations", 0))
        line = ", ".join(f"{name} {value / rho:.0%}" for name, value in rounds if value)
        each = float(budget.get("per_iteration", 0.0)) / rho
        console.print(
            f"  budget (share of ρ): {line}, {iterations} Lloyd iterations {each:.1%} each",
            highlight=False,
        )


def _digits(values: Sequence[Any]) -> int:
    """One precision per feature column: whole units from 100 up, else two decimals."""
    numbers = [abs(v) for v in values if isinstance(v, int | float)]
    return 0 if numbers and max(numbers) >= 100 else 2


def _centroid_value(value: Any, digits: int) -> str:
    return _number(value, digits) if isinstance(value, int | float) else "-"


# funnel --------------------------------------------------------------------------------------


def render_funnel(doc: Mapping[str, Any], console: Console) -> None:
    """Stage counts and conversion rates (from the first stage and from the previous one)."""
    cells = doc.get("cells") or []
    _header(doc, console, f"funnel of {doc.get('dataset')} within {doc.get('window_days', 0):g} days")
    truth = any("true" in c for c in cells)
    columns = ["stage", "customers", "from first %", "from previous %"] + (["true"] if truth else [])
    table = _table(*columns)
    for cell in cells:
        label = f"{cell['stage']}. {cell['event']}"
        if cell.get("suppressed"):
            row = [label, "suppressed", "-", "-"]
        else:
            row = [
                label,
                _with_interval(cell.get("count")),
                _with_interval(cell.get("conversion_from_first"), digits=1, scale=100),
                _with_interval(cell.get("conversion_from_previous"), digits=1, scale=100),
            ]
        if truth:
            true = (cell.get("true") or {}).get("count")
            row.append("-" if true is None else _number(true, 0))
        table.add_row(*row)
    console.print(table)
    _coverage(doc, console)


def _coverage(doc: Mapping[str, Any], console: Console) -> None:
    """The demo's check of its intervals against the true values it knows."""
    cov = doc.get("coverage")
    if isinstance(cov, Mapping):
        console.print(
            f"  {cov['inside_ci95']} of {cov['released']} released values lie inside their 95% interval",
            highlight=False,
        )


# cohort_retention ----------------------------------------------------------------------------

_LABEL_WIDTH = 9  # "1997-01" and the column gap
_CELL_WIDTH = 7  # "100.0" and the column gap


def render_cohort(doc: Mapping[str, Any], console: Console) -> None:
    """The retention matrix (% of each cohort active m months after its first), then cohort sizes
    with intervals; the months are cut into ranges that fit the console."""
    cells = doc.get("cells") or []
    _header(doc, console, f"cohort_retention of {doc.get('dataset')}")
    cohorts = list(dict.fromkeys(c["cohort"] for c in cells))
    months = max((int(c["months_since"]) for c in cells), default=-1) + 1
    at = {(c["cohort"], int(c["months_since"])): c for c in cells}
    per_table = max(1, (console.width - _LABEL_WIDTH) // _CELL_WIDTH)
    console.print("  retention % by months since the first (- : suppressed)", highlight=False)
    for start in range(0, months, per_table):
        span = range(start, min(months, start + per_table))
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("cohort")
        for m in span:
            table.add_column(f"+{m}", justify="right")
        for cohort in cohorts:
            row = [cohort]
            for m in span:
                rate = (at.get((cohort, m)) or {}).get("retention")
                row.append("-" if not isinstance(rate, Mapping) else f"{rate['value'] * 100:.1f}")
            table.add_row(*row)
        console.print(table)
    _cohort_sizes(cohorts, at, console)
    _coverage(doc, console)


def _cohort_sizes(cohorts: Sequence[str], at: Mapping[tuple[str, int], Any], console: Console) -> None:
    truth = any("true" in (at.get((c, 0)) or {}) for c in cohorts)
    table = _table("cohort", "customers", *(["true"] if truth else []))
    for cohort in cohorts:
        first = at.get((cohort, 0)) or {}
        row = [cohort, "suppressed" if first.get("suppressed") else _with_interval(first.get("count"))]
        if truth:
            true = (first.get("true") or {}).get("count")
            row.append("-" if true is None else _number(true, 0))
        table.add_row(*row)
    console.print(table)


RENDERERS: dict[str, Renderer] = {
    "rfm_segments": render_rfm,
    "kmeans": render_kmeans,
    "funnel": render_funnel,
    "cohort_retention": render_cohort,
}
