"""Erasure stays erased (issue 12, item 2): a keyed, PII-free tombstone of the erased customer's match
keys makes the next ingest refuse (count and list) rows of that customer — customers and facts."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from test_vault_one_id import _csv, _ingest, state  # noqa: F401 - the fixture

from tessera.client.vault._model import ErasedIndex, Identifier, Transaction
from tessera.client.vault.admin import erase, lookup
from tessera.client.vault.state import NodeState
from tessera.core.errors import NotFound

HEADER = "customer_id,name,email,region\n"


def test_an_erased_customer_is_not_brought_back(state: NodeState, tmp_path: Path) -> None:  # noqa: F811
    _ingest(
        state, _csv(tmp_path, HEADER + "C1,Ann,ann@example.com,north\nC2,Bo,bo@example.com,south\n", "a.csv")
    )
    with state.engine.connect() as conn:
        indexes = set(conn.scalars(sa.select(Identifier.index).where(Identifier.customer_id == 1)))
    assert erase(state, "email", "ANN@example.com") > 0
    with state.engine.connect() as conn:
        digests = set(conn.scalars(sa.select(ErasedIndex.digest)))
    assert len(digests) == 2 and not digests & indexes  # keyed again: nothing to join on

    # The next export still holds her (now found by her customer id only): refused and counted.
    report = _ingest(state, _csv(tmp_path, HEADER + "C2,Bo,bo@example.com,south\nC1,Ann,,north\n", "b.csv"))
    # Bo is held already and unchanged: nothing of his is written again.
    assert (report.rows_erased, report.erased_rows, report.rows_written, report.rows_unchanged) == (
        1,
        [2],
        0,
        1,
    )
    with pytest.raises(NotFound):
        lookup(state, "customer_id", "C1")
    facts = _ingest(
        state,
        _csv(tmp_path, "customer_id,time,amount\nC1,2024-03-01,5\nC2,2024-03-02,6\n", "t.csv"),
        "transactions",
    )
    assert (facts.status, facts.rows_erased, facts.erased_rows, facts.rows_written) == ("done", 1, [1], 1)
    with state.engine.connect() as conn:
        assert conn.scalars(sa.select(Transaction.customer_id)).all() == [2]
