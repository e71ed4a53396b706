"""Create the budget tables, or upgrade a version-1 ledger (one budget per dataset) in place.

Version 1, made by earlier Tesseras, kept one budget per dataset: ``budget_datasets`` (a lock row
per dataset) and ``budget_entries`` (one row per (dataset, job), spent in one piece). Version 2
keeps one budget per node (``_schema``). The upgrade, run by the first process that opens the
database with this code:

* copies every version-1 entry, verbatim, into ``budget_reservations`` with the same id (the
  dataset stays as an attribute; a job id seen on two datasets keeps it on its first entry and
  becomes ``job@dataset`` on the others, so nothing merges) and every spent entry into
  ``budget_charges`` as that job's round 1, charged when it was settled — all of them now count
  against the one budget;
* renames the version-1 tables to ``budget_v1_entries`` / ``budget_v1_datasets`` (kept untouched
  for audit) and puts the tombstone in place of ``budget_datasets``;
* writes the node's lock row with the schema version.

All of it runs in ONE transaction that first takes a migration lock (SQLite: ``BEGIN IMMEDIATE``,
the database write lock; PostgreSQL: a transaction-scoped advisory lock for the current schema)
and then looks at the version again, so processes starting together queue, the first upgrades,
the others find version 2 and do nothing; a failure leaves the version-1 tables as they were.
Both SQLite and PostgreSQL run DDL transactionally. Opening an up-to-date database costs one
catalogue lookup and one read, without any lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import cast

import sqlalchemy as sa

from tessera.client.budget._schema import NODE_ROW_ID, SCHEMA_VERSION, TOMBSTONE, BudgetBase, BudgetNodeRow
from tessera.core.errors import StoreError

V1_ENTRIES, V1_DATASETS = "budget_entries", "budget_datasets"
ARCHIVE_ENTRIES, ARCHIVE_DATASETS = "budget_v1_entries", "budget_v1_datasets"
_TOMBSTONE_NOTE = "budget_node (schema 2): one budget per node"

# Literal SQL (fixed table names, no input): copied verbatim, so no value passes through Python.
_COPY_RESERVATIONS = """
INSERT INTO budget_reservations (id, job_id, dataset, state, rho, epsilon, delta, rounds, policy_hash,
                                 created_at, expires_at, settled_at)
SELECT e.id,
       CASE WHEN e.id = (SELECT min(f.id) FROM budget_entries f WHERE f.job_id = e.job_id)
            THEN e.job_id ELSE e.job_id || '@' || e.dataset END,
       e.dataset, e.state, e.rho, e.epsilon, e.delta, 1, e.policy_hash,
       e.created_at, e.expires_at, e.settled_at
FROM budget_entries e
"""
_COPY_CHARGES = """
INSERT INTO budget_charges (reservation_id, round_no, rho, epsilon, charged_at, egress_seq, attempts)
SELECT e.id, 1, e.rho, e.epsilon, e.settled_at, e.egress_seq, 1
FROM budget_entries e WHERE e.state = 'spent'
"""

_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tessera.budget.schema'), hashtext(current_schema()))"
_PG_SEQUENCES = (
    "SELECT setval(pg_get_serial_sequence('budget_reservations', 'id'), "
    "COALESCE((SELECT max(id) FROM budget_reservations), 0) + 1, false)",
    "SELECT setval(pg_get_serial_sequence('budget_charges', 'id'), "
    "COALESCE((SELECT max(id) FROM budget_charges), 0) + 1, false)",
)


def ensure_schema(engine: sa.Engine, *, now: datetime) -> None:
    """Make the database hold budget schema version 2 (idempotent; see the module docstring)."""
    with engine.connect() as conn:
        if _version(conn) == SCHEMA_VERSION:
            return
    with _migration_lock(engine) as conn:
        version = _version(conn)
        if version == SCHEMA_VERSION:
            return  # a rival process upgraded it while we waited for the lock
        if version is not None:
            raise StoreError(
                f"this node's budget ledger has schema version {version}, which this Tessera does not "
                f"know (it knows {SCHEMA_VERSION}); run the Tessera release that made it"
            )
        _upgrade(conn, now)


def _version(conn: sa.Connection) -> int | None:
    if not sa.inspect(conn).has_table(BudgetNodeRow.__tablename__):
        return None
    node = cast(sa.Table, BudgetNodeRow.__table__)
    found = conn.execute(sa.select(node.c.schema_version).where(node.c.id == NODE_ROW_ID)).scalar()
    if found is None:
        raise StoreError("the budget ledger has no node row; its tables are damaged")
    return int(found)


@contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One transaction holding the migration lock from its first statement; commits on success."""
    with engine.connect() as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            # pysqlite would only open a (deferred) transaction at the first INSERT; open it
            # ourselves, as a writer at once, so the DDL below is inside it and rivals queue here.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            conn.execute(sa.text(_PG_LOCK))
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _upgrade(conn: sa.Connection, now: datetime) -> None:
    inspector = sa.inspect(conn)
    has_v1 = inspector.has_table(V1_ENTRIES)
    if inspector.has_table(V1_DATASETS):
        columns = {c["name"] for c in inspector.get_columns(V1_DATASETS)}
        if "dataset" in columns:
            conn.execute(sa.text(f"ALTER TABLE {V1_DATASETS} RENAME TO {ARCHIVE_DATASETS}"))
    BudgetBase.metadata.create_all(conn)  # the version-2 tables and the tombstone; existing ones stay
    if has_v1:
        conn.execute(sa.text(_COPY_RESERVATIONS))
        conn.execute(sa.text(_COPY_CHARGES))
        conn.execute(sa.text(f"ALTER TABLE budget_entries RENAME TO {ARCHIVE_ENTRIES}"))
        if conn.dialect.name == "postgresql":
            # Ids were copied explicitly; move the sequences past them.
            for statement in _PG_SEQUENCES:
                conn.execute(sa.text(statement))
    if conn.execute(sa.select(sa.func.count()).select_from(TOMBSTONE)).scalar() == 0:
        conn.execute(sa.insert(TOMBSTONE).values(superseded_by=_TOMBSTONE_NOTE))
    conn.execute(
        sa.insert(cast(sa.Table, BudgetNodeRow.__table__)).values(
            id=NODE_ROW_ID, schema_version=SCHEMA_VERSION, created_at=now, writes=0
        )
    )
