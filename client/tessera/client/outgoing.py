"""What leaves the node for one task, and the one path by which it leaves: the egress ledger.

Every message is recorded (hash-chained, with its privacy charge) before it is sent; a message
that carries a DP release is charged to the budget in the same transaction. Nothing else in the
node talks to the coordinator's round methods, so nothing can bypass the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Engine

from tessera.client.budget import BudgetLedger, Reservation
from tessera.client.egress import EgressLedger, EgressRecord, send_through_ledger
from tessera.core.policy import Policy
from tessera.v1 import node_pb2

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A round message or a veto (exactly one), what the ledger records of it, and its charge."""

    record: EgressRecord
    message: node_pb2.RoundMessage | None = None
    veto: node_pb2.VetoReport | None = None
    reservation: Reservation | None = None
    # Further messages answering the same task, sent in order after this one (a list in parts).
    more: tuple[Outgoing, ...] = ()

    @property
    def payload(self) -> bytes:
        body = self.message if self.message is not None else self.veto
        assert body is not None
        return body.SerializeToString()


@dataclass(frozen=True, slots=True)
class NodeLedgers:
    egress: EgressLedger
    budget: BudgetLedger

    def deliver(self, out: Outgoing, send: Callable[[bytes], T]) -> T:
        """Record (and charge) ``out``, then ``send`` its exact bytes; nothing is sent if recording fails."""
        payload = out.payload
        if out.reservation is not None:
            # A round's release: its ρ is charged to the job's reservation with its egress entry.
            return self.budget.charge_and_send(
                out.reservation,
                self.egress,
                out.record,
                payload,
                send,
                round_no=out.record.round,
                rho=out.record.rho,
            )
        return send_through_ledger(self.egress, out.record, payload, send)


def open_ledgers(engine: Engine, policy: Policy) -> NodeLedgers:
    """The node's egress and budget ledgers in its database (tables created if missing)."""
    egress = EgressLedger(engine)
    # Reservations and releases are chained into the egress ledger too (see ``BudgetLedger``).
    return NodeLedgers(
        egress=egress,
        budget=BudgetLedger(engine, limits=policy.privacy, policy_hash=policy.policy_hash, egress=egress),
    )
