"""The public set-up of one secure-aggregation round, as the coordinator sends it to every node.

It travels as the stage input of the ADVERTISE_KEYS task (opaque bytes on the wire, JSON inside)
and carries everything a node needs to build the same ``RoundConfig`` as the coordinator, plus
each participant's certificate so that nodes can verify advertised keys themselves: the
coordinator relays certificates but cannot forge one, so it cannot substitute a node's keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from tessera.core.errors import InvalidRequest
from tessera.core.secagg import RoundConfig, complete_graph, sparse_graph
from tessera.core.types import JobSpec

# Job parameters that shape the round rather than the analysis; analyses never see them.
ROUND_PARAMS = frozenset({"max_dropouts", "max_customers"})

# Above this many nodes the SecAgg+ sparse graph replaces the complete one (Bell et al. 2020):
# each node then masks with O(log n) neighbours instead of n - 1.
SPARSE_FROM = 20


def round_param(spec: JobSpec, name: str, default: int) -> int:
    """A whole-number round parameter (``max_dropouts``, ``max_customers``) of ``spec``."""
    value = spec.params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"parameter {name!r} must be a whole number of at least 0")
    return value


def analysis_spec(spec: JobSpec) -> JobSpec:
    """``spec`` without the round-level parameters (what an analysis plans from)."""
    return replace(spec, params={k: v for k, v in spec.params.items() if k not in ROUND_PARAMS})


@dataclass(frozen=True, slots=True)
class RoundSetup:
    job_id: str
    round_no: int
    participants: tuple[str, ...]
    threshold: int
    bits: int
    length: int
    certificates: tuple[tuple[str, str], ...]  # (node id, certificate PEM), sorted by node id
    graph_seed: str = ""  # hex; empty means the complete graph
    max_dropout: float = 0.1

    def config(self) -> RoundConfig:
        nodes = tuple(sorted(self.participants))
        graph = (
            sparse_graph(nodes, seed=bytes.fromhex(self.graph_seed), dropout=self.max_dropout)
            if self.graph_seed
            else complete_graph(nodes)
        )
        return RoundConfig(
            job_id=self.job_id,
            round_no=self.round_no,
            participants=nodes,
            threshold=self.threshold,
            bits=self.bits,
            length=self.length,
            graph=graph,
        )

    def to_bytes(self) -> bytes:
        doc = {
            "v": 1,
            "job_id": self.job_id,
            "round_no": self.round_no,
            "participants": list(self.participants),
            "threshold": self.threshold,
            "bits": self.bits,
            "length": self.length,
            "certificates": [list(pair) for pair in self.certificates],
            "graph_seed": self.graph_seed,
            "max_dropout": self.max_dropout,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundSetup:
        try:
            doc = json.loads(data)
            if doc.pop("v") != 1:
                raise ValueError
            return cls(
                job_id=str(doc["job_id"]),
                round_no=int(doc["round_no"]),
                participants=tuple(str(p) for p in doc["participants"]),
                threshold=int(doc["threshold"]),
                bits=int(doc["bits"]),
                length=int(doc["length"]),
                certificates=tuple((str(n), str(pem)) for n, pem in doc["certificates"]),
                graph_seed=str(doc["graph_seed"]),
                max_dropout=float(doc["max_dropout"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidRequest("the round set-up from the coordinator is malformed") from None
