"""Bulk inserts for ingestion: ``executemany`` on SQLite, ``COPY`` on PostgreSQL.

Ingest writes several rows per customer, so this is most of its database cost. Both paths skip
SQLAlchemy's per-row statement machinery but keep each column type's bind processor, so values are
stored exactly as the ORM would store them. On PostgreSQL one ``executemany`` is still a statement
per row; ``COPY ... FROM STDIN`` streams the whole batch in one command inside the caller's
transaction (a failed batch rolls back like any statement). Rows that may already exist are copied
into a temporary table dropped at commit and moved with ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING``, so the count of rows really written stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session


def _params(dialect: sa.Dialect, table: sa.Table, names: list[str], rows: list[dict[str, Any]]) -> list[Any]:
    """Row tuples in ``names`` order, each value passed through its column's bind processor."""
    pick = itemgetter(*names)
    params: list[Any] = [pick(row) for row in rows] if len(names) > 1 else [(row[names[0]],) for row in rows]
    converted: list[tuple[int, Callable[[Any], Any], dict[tuple[type, Any], Any]]] = []
    for i, name in enumerate(names):
        column_type = table.c[name].type
        # Both drivers bind ``bytes`` as a BLOB/bytea as they are; the binary processor only wraps
        # them (a memoryview on SQLite), a call per encrypted token that changes nothing stored.
        if isinstance(column_type, sa.LargeBinary):
            continue
        process = column_type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            converted.append((i, process, {}))
    if not converted:
        return params
    fixed = []
    for values in params:
        row_values = list(values)
        for i, convert, memo in converted:
            value = row_values[i]
            if value is not None:
                # Processors are pure; a batch repeats values (its own timestamp, common dates).
                key = (value.__class__, value)  # 1, 1.0 and True are equal keys otherwise
                out = memo.get(key)
                if out is None:
                    out = memo[key] = convert(value)
                row_values[i] = out
        fixed.append(tuple(row_values))
    return fixed


def bulk_insert(
    session: Session, table: sa.Table, rows: list[dict[str, Any]], *, skip_conflicts: str | None = None
) -> int:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in the session's transaction.

    ``skip_conflicts`` names a unique column: rows whose value is already stored are skipped.
    Returns the number of rows inserted."""
    if not rows:
        return 0
    connection = session.connection()
    dialect = connection.dialect
    names = [c.name for c in table.columns if c.name in rows[0]]
    params = _params(dialect, table, names, rows)
    preparer = dialect.identifier_preparer
    columns = ", ".join(preparer.quote(n) for n in names)
    target = preparer.format_table(table)
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        return _copy(connection, target, columns, params, skip_conflicts and preparer.quote(skip_conflicts))
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    statement = f"INSERT INTO {target} ({columns}) VALUES ({', '.join([marker] * len(names))})"  # noqa: S608 - identifiers from our own Table, values bound
    if skip_conflicts is not None:  # same syntax on PostgreSQL and SQLite >= 3.24
        statement += f" ON CONFLICT ({preparer.quote(skip_conflicts)}) DO NOTHING"
    result = connection.exec_driver_sql(statement, params)
    # Both drivers report the summed row count of an executemany; skipped conflicts count 0.
    return int(result.rowcount)


def _copy(
    connection: sa.Connection, target: str, columns: str, params: list[Any], conflict: str | None
) -> int:
    cursor = connection.connection.cursor()  # the psycopg cursor of this transaction's connection
    try:
        into = target
        if conflict is not None:
            into = "tessera_ingest_stage"
            cursor.execute(
                f"CREATE TEMPORARY TABLE {into} ON COMMIT DROP AS SELECT {columns} FROM {target} WITH NO DATA"  # noqa: S608 - identifiers from our own Table
            )
        with cursor.copy(f"COPY {into} ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for values in params:
                copy.write_row(values)
        if conflict is None:
            return len(params)
        move = f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {into}"  # noqa: S608 - our identifiers
        cursor.execute(f"{move} ON CONFLICT ({conflict}) DO NOTHING")
        written = int(cursor.rowcount)
        cursor.execute(f"DROP TABLE {into}")
        return written
    finally:
        cursor.close()


WAL_CHECKPOINT_PAGES = 16384  # 64 MB of 4 KB pages between WAL checkpoints during an ingest


@contextmanager
def bulk_load(connection: sa.Connection) -> Iterator[None]:
    """Tune ``connection`` for the write pass of an ingest; restores it afterwards.

    SQLite in WAL mode copies the log into the database (and fsyncs) every 1,000 pages by default:
    with several rows per customer that is a checkpoint every few batches, each rewriting the same
    index pages. Checkpointing every ``WAL_CHECKPOINT_PAGES`` instead changes no guarantee: each
    batch still commits atomically with its checkpoint row, and a commit is as durable as before
    (``synchronous`` is untouched); the log is only bounded at 64 MB instead of 4 MB. A final
    passive checkpoint leaves the log as the default setting would. Other databases: no change."""
    if connection.dialect.name != "sqlite":
        yield
        return
    previous = int(connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() or 1000)
    connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={max(previous, WAL_CHECKPOINT_PAGES)}")
    connection.commit()  # leave no transaction open: each batch's session begins and commits its own
    try:
        yield
    finally:
        connection.rollback()
        connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={previous}")
        connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        connection.commit()
