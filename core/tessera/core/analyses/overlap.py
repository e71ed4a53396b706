"""``overlap``: how many customers each pair of partners shares, never who (DESIGN §8, One ID).

Not a vector sum: every pair of participants runs the PSI-cardinality protocol of
``tessera.core.psi.protocol`` through the coordinator, and the result is the pairwise table of
noisy counts with exact 95% intervals. Parameters:

* ``identifier``: ``email`` (default), ``phone`` or ``national_id`` — which normalised identifier
  is matched (each node's policy says which it allows, per partner);
* ``filter``: optional list of ``FIELD=VALUE`` (every node) or ``NODE:FIELD=VALUE`` (that node
  only): a node counts only its customers whose label ``FIELD`` (a ``non_sensitive`` field or a
  label derived at home, e.g. ``rfm_segment``) equals ``VALUE``.

Costs: ε and δ are each node's total for the job, over all of its pairs. This module holds what
both sides need: parameter parsing, the pairs, the task input, the result document.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.errors import InvalidRequest
from tessera.core.types import JobSpec, Stage

IDENTIFIERS = ("email", "phone", "national_id")
DATASET = "customers"  # identifiers and labels are the customers' own

INFO = AnalysisInfo(
    name="overlap",
    description="Pairwise count of shared customers (PSI cardinality over normalised identifiers, DP)",
    differentially_private=True,
    resumable=False,  # the lists live in the coordinator's memory only
    stages=(Stage.PSI,),
    min_nodes=2,
)


PARAMS = (
    _docs.ParamDoc("identifier", "choice", "email", "-", "what is matched: email, phone or national_id"),
    _docs.ParamDoc(
        "filter",
        "texts",
        "-",
        "-",
        "FIELD=VALUE (every node) or NODE:FIELD=VALUE: count only customers with that label",
    ),
)


@dataclass(frozen=True, slots=True)
class Label:
    """Count only customers whose ``field`` equals ``value``."""

    field: str
    value: str

    def text(self) -> str:
        return f"{self.field}={self.value}"


@dataclass(frozen=True, slots=True)
class OverlapParams:
    identifier: str
    filters: Mapping[str, Label]  # node -> its filter ("*" for every node without its own)

    def label_for(self, node: str) -> Label | None:
        return self.filters.get(node) or self.filters.get("*")


def parse(spec: JobSpec) -> OverlapParams:
    """The job's parameters, checked (a bad one is refused before the job exists)."""
    unknown = set(spec.params) - {"identifier", "filter"}
    if unknown:
        raise InvalidRequest(
            f"overlap takes the parameters identifier and filter, not {', '.join(sorted(unknown))}"
        )
    identifier = spec.params.get("identifier", "email")
    if identifier not in IDENTIFIERS:
        raise InvalidRequest(f"parameter 'identifier' must be one of {', '.join(IDENTIFIERS)}")
    raw = spec.params.get("filter", ())
    if isinstance(raw, str):
        raw = (raw,)
    if not isinstance(raw, tuple) or not all(isinstance(i, str) for i in raw):
        raise InvalidRequest("parameter 'filter' is a list of FIELD=VALUE or NODE:FIELD=VALUE")
    items = [str(i) for i in raw]
    filters: dict[str, Label] = {}
    for item in items:
        scope, _, rest = item.rpartition(":") if ":" in item.partition("=")[0] else ("*", "", item)
        field, sep, value = rest.partition("=")
        if not sep or not field.strip() or not value.strip():
            raise InvalidRequest("each filter is FIELD=VALUE or NODE:FIELD=VALUE")
        if scope in filters:
            raise InvalidRequest(f"two filters are given for {'every node' if scope == '*' else scope}")
        filters[scope] = Label(field.strip(), value.strip())
    if spec.epsilon <= 0 or spec.delta <= 0:
        raise InvalidRequest(
            "an overlap job needs epsilon > 0 and delta > 0 (the dummies' noise is truncated)"
        )
    return OverlapParams(identifier=str(identifier), filters=filters)


def pairs_of(nodes: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of distinct nodes, in a fixed order (the pair index is its place)."""
    return list(itertools.combinations(sorted(nodes), 2))


def blind_input(pairs: Sequence[tuple[str, str]], node: str) -> bytes:
    """The stage-1 task input of ``node``: its pairs, by index, with the partner's name."""
    mine = [{"pair": i, "partner": b if a == node else a} for i, (a, b) in enumerate(pairs) if node in (a, b)]
    return json.dumps({"pairs": mine}, sort_keys=True).encode()


def read_blind_input(data: bytes) -> dict[int, str]:
    """``pair index -> partner`` from a stage-1 task input."""
    try:
        doc = json.loads(data)
        return {int(p["pair"]): str(p["partner"]) for p in doc["pairs"]}
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest("the overlap task input is not a list of pairs") from None


def pair_row(
    a: str,
    b: str,
    *,
    status: str,
    reason: str = "",
    estimate: float | None = None,
    low: int = 0,
    high: int = 0,
) -> dict[str, Any]:
    row: dict[str, Any] = {"a": a, "b": b, "status": status}
    if status == "released":
        row |= {"estimate": estimate, "interval": [low, high]}
    if reason:
        row["reason"] = reason
    return row
