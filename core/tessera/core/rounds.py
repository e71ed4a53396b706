"""The public set-up of one secure-aggregation epoch, as the coordinator sends it to every node.

It travels as the stage input of the ADVERTISE_KEYS task (opaque bytes on the wire, JSON inside)
and carries what a node needs to build the epoch's ``EpochConfig``, plus the SHA-256 fingerprint
of each participant's certificate so that nodes can verify advertised keys themselves: the
coordinator relays certificates but cannot forge one, so it cannot substitute a node's keys. A
node fetches the certificates it has not seen (``PeerCertificates``) and keeps the verified ones
for its lifetime: sending every certificate to every node in every epoch made the set-up grow as
n^2 (746 KB per node at 1,000 nodes, against 87 KB with fingerprints).

The coordinator only *proposes*: a node builds the masking graph itself from the public seed with
a degree of at least its own minimum (``SecurityParams.graph``), ignores a ``max_dropout`` below
its own assumption, and refuses a threshold below its policy (``secagg.unsafe_parameters``).
Nodes that disagree on the result sign different parameter digests and stop at SHARE_KEYS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from tessera.core.errors import InvalidRequest
from tessera.core.secagg import EpochConfig, SecurityParams
from tessera.core.types import JobSpec

# Job parameters that shape the round rather than the analysis; analyses never see them.
ROUND_PARAMS = frozenset({"max_dropouts", "max_customers"})

# Above this many nodes the SecAgg+ sparse graph replaces the complete one (Bell et al. 2020):
# each node then masks with O(log n) neighbours instead of n - 1.
SPARSE_FROM = 20

# What the coordinator assumes of nodes when it derives the graph itself (``degree`` 0): the
# policy default collusion tolerance. Nodes with a stricter policy need a larger ``degree``.
COORDINATOR_VIEW = SecurityParams(min_participants=2, collusion_tolerance=1)


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 (hex) of a certificate as its PEM text: how a round set-up names it."""
    return hashlib.sha256(pem.encode()).hexdigest()


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
    fingerprints: tuple[tuple[str, str], ...]  # (node id, certificate_fingerprint), by node id
    graph_seed: str = ""  # hex; empty means the complete graph
    max_dropout: float = 0.1  # a proposal: it can raise a node's degree, never lower it
    epoch: int = 0
    degree: int = 0  # proposed sparse-graph degree; 0 = each party derives its own minimum
    # Noise shares are sized so any threshold - collusion honest shares carry the full noise.
    collusion: int = 0
    # The per-node population the modulus was sized for; a node holding more vetoes (never wraps).
    max_customers: int = 0

    def config(self, security: SecurityParams | None = None) -> EpochConfig:
        """The epoch as a node with ``security`` builds it (``None``: as the coordinator does,
        with :data:`COORDINATOR_VIEW`). ``round_no`` is the epoch's first round."""
        view = COORDINATOR_VIEW if security is None else security
        nodes = tuple(sorted(self.participants))
        try:
            seed = bytes.fromhex(self.graph_seed) if self.graph_seed else None
            graph = view.graph(
                nodes,
                threshold=self.threshold,
                seed=seed,
                proposed_degree=self.degree,
                dropout=self.max_dropout,
            )
        except ValueError:
            raise InvalidRequest("the round set-up from the coordinator has an unusable graph") from None
        return EpochConfig(
            job_id=self.job_id,
            epoch=self.epoch,
            first_round=self.round_no,
            participants=nodes,
            threshold=self.threshold,
            bits=self.bits,
            length=self.length,
            graph=graph,
        )

    def to_bytes(self) -> bytes:
        doc = {
            "v": 2,
            "job_id": self.job_id,
            "round_no": self.round_no,
            "participants": list(self.participants),
            "threshold": self.threshold,
            "bits": self.bits,
            "length": self.length,
            "fingerprints": [list(pair) for pair in self.fingerprints],
            "graph_seed": self.graph_seed,
            "max_dropout": self.max_dropout,
            "epoch": self.epoch,
            "degree": self.degree,
            "collusion": self.collusion,
            "max_customers": self.max_customers,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundSetup:
        try:
            doc = json.loads(data)
            if doc.pop("v") != 2:
                raise ValueError
            return cls(
                job_id=str(doc["job_id"]),
                round_no=int(doc["round_no"]),
                participants=tuple(str(p) for p in doc["participants"]),
                threshold=int(doc["threshold"]),
                bits=int(doc["bits"]),
                length=int(doc["length"]),
                fingerprints=tuple((str(n), str(fp)) for n, fp in doc["fingerprints"]),
                graph_seed=str(doc["graph_seed"]),
                max_dropout=float(doc["max_dropout"]),
                epoch=int(doc.get("epoch", 0)),
                degree=int(doc.get("degree", 0)),
                collusion=int(doc.get("collusion", 0)),
                max_customers=int(doc.get("max_customers", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidRequest("the round set-up from the coordinator is malformed") from None
