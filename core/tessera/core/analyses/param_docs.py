"""What each analysis' parameters mean — for people (``tessera analyses``) and for the CLI's parsing
of ``--param`` (a ``numbers`` parameter given as ``0.25,0.5`` is a list of numbers).

Documentation only: each analysis module lists its parameters in a ``PARAMS`` table of
:class:`ParamDoc`; what a module accepts is still decided by its own checks.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("text", "field", "number", "integer", "numbers", "texts", "choice")


@dataclass(frozen=True, slots=True)
class ParamDoc:
    name: str
    kind: str  # one of KINDS
    default: str  # "required", "-" (optional, no default) or the default as written on the command line
    unit: str  # "field units", "customers", "rows", ... or "-"
    help: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")


GROUPS = (
    ParamDoc("group_by", "field", "-", "-", "a non_sensitive field to group by (public groups only)"),
    ParamDoc("groups", "texts", "required with group_by", "-", "the public list of groups, e.g. north,south"),
)
BOUNDS = (
    ParamDoc("field", "field", "required", "-", "the numeric field to read"),
    ParamDoc(
        "lower", "number", "required", "field units", "clip bound: each customer's value is raised to it"
    ),
    ParamDoc(
        "upper", "number", "required", "field units", "clip bound: each customer's value is lowered to it"
    ),
)
PER_CUSTOMER = ParamDoc(
    "per_customer",
    "choice",
    "sum",
    "-",
    "how a customer's rows in a group become one value: sum, count or mean",
)
MAX_GROUPS = ParamDoc(
    "max_groups_per_customer", "integer", "1", "groups", "groups one customer is counted in (its first ones)"
)
MAX_ROWS = ParamDoc(
    "max_rows_per_customer", "integer", "-", "rows", "count rows instead of customers: at most this many each"
)
CONTRIBUTION = (PER_CUSTOMER, MAX_GROUPS, MAX_ROWS)
