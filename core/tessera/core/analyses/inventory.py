"""``inventory``: each node reports its policy summary and its datasets' schemas.

Never values and never row counts: only field names, types and tiers, so the job needs no privacy
budget. Both halves live here: ``local_report`` runs on a node, ``combine`` on the coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.types import DatasetSchema, PolicySummary, Stage, Veto

INFO = AnalysisInfo(
    name="inventory",
    description="each node's policy summary and dataset schemas (names, types, tiers)",
    differentially_private=False,
    resumable=True,
    stages=(Stage.LOCAL_REPORT,),
)

# Parameters, for `tessera analyses`: inventory takes none.
PARAMS: tuple[_docs.ParamDoc, ...] = ()


@dataclass(frozen=True, slots=True)
class InventoryReport:
    policy: PolicySummary
    datasets: tuple[DatasetSchema, ...]
    node_version: str


def local_report(
    *, policy: PolicySummary, datasets: Sequence[DatasetSchema], node_version: str, dataset: str = ""
) -> InventoryReport:
    """The node's half. With ``dataset`` set, only that dataset's schema is reported."""
    chosen = tuple(d for d in datasets if not dataset or d.name == dataset)
    return InventoryReport(policy=policy, datasets=chosen, node_version=node_version)


def combine(reports: Mapping[str, InventoryReport], vetoes: Sequence[Veto]) -> dict[str, Any]:
    """The coordinator's half: one JSON-ready document, nodes sorted by id."""
    nodes: dict[str, Any] = {}
    for node_id in sorted(reports):
        report = reports[node_id]
        nodes[node_id] = {
            "node_version": report.node_version,
            "policy": asdict(report.policy),
            "datasets": [
                {
                    "name": d.name,
                    "fields": [{"name": f.name, "type": f.type, "tier": f.tier.value} for f in d.fields],
                }
                for d in report.datasets
            ],
        }
    return {
        "nodes": nodes,
        "vetoes": [asdict(v) for v in sorted(vetoes, key=lambda v: v.node_id)],
    }
