"""Secure aggregation (Bonawitz et al., CCS 2017; SecAgg+ graph of Bell et al., CCS 2020).

Pure kernel: bytes and numpy arrays in, bytes and numpy arrays out; no I/O, no transport.
Modules: ``prg`` (AES-256-CTR mask expansion), ``shamir`` (sharing over 2^127 - 1), ``keys``
(X25519, HKDF, signed advertisements), ``graph`` (who masks with whom), ``security`` (the
parameters a node derives itself, and the security argument), ``consistency`` (the signed
survivor set), ``messages`` and ``codec`` (typed messages and their wire form), ``protocol``
(epoch configuration, shared checks), ``client`` and ``server`` (the two state machines, one per
job epoch of one or more rounds), ``sessions`` (a node's live epochs), ``testing`` (in-memory
driver).
"""

from tessera.core.secagg.client import ClientState, SecAggClient
from tessera.core.secagg.codec import decode, encode
from tessera.core.secagg.graph import NeighbourGraph, choose_degree, complete_graph, sparse_graph
from tessera.core.secagg.messages import AggregateResult, Binding, BindingMismatch, RoundOutcome
from tessera.core.secagg.protocol import EpochConfig, RoundAborted, StageError
from tessera.core.secagg.security import SecurityParams, UnsafeParameters
from tessera.core.secagg.server import SecAggServer, ServerState
from tessera.core.secagg.sessions import EpochSessions, StaleEpoch

__all__ = [
    "AggregateResult",
    "Binding",
    "BindingMismatch",
    "ClientState",
    "EpochConfig",
    "EpochSessions",
    "NeighbourGraph",
    "RoundAborted",
    "RoundOutcome",
    "SecAggClient",
    "SecAggServer",
    "SecurityParams",
    "ServerState",
    "StageError",
    "StaleEpoch",
    "UnsafeParameters",
    "choose_degree",
    "complete_graph",
    "decode",
    "encode",
    "sparse_graph",
]
