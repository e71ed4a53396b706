"""Batched, resumable re-encryption of protected columns under a new data key.

Progress lives in ``vault_rotation`` (one row per column) and is updated in the *same* transaction
as the batch of values it describes, so a crash loses at most the batch in flight and that batch
is simply redone. Rows are walked in row-key order (keyset pagination: ``row_key > last``), which
needs a row-key column with a total order (text or integer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.vault._schema import VaultRotationRow
from tessera.client.vault.crypto import (
    DataKey,
    FieldContext,
    Keyring,
    decrypt_field,
    encrypt_field,
    token_key_id,
)
from tessera.core.errors import StoreError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


@dataclass(frozen=True, slots=True)
class ProtectedColumn:
    """A column of encrypted tokens whose associated data is (table, column, str(row key))."""

    table: str
    column: str
    row_key_column: str

    def __post_init__(self) -> None:
        for name in ("table", "column", "row_key_column"):
            if not _IDENTIFIER.fullmatch(getattr(self, name)):
                raise ValueError(f"ProtectedColumn.{name} must be a plain SQL identifier")


@dataclass(frozen=True, slots=True)
class RotationProgress:
    table: str
    column: str
    rows_done: int
    finished: bool


def pending_key_id(session: Session) -> str | None:
    """The new key id of an unfinished re-encryption, if one was interrupted."""
    return session.scalars(
        sa.select(VaultRotationRow.new_key_id).where(VaultRotationRow.finished.is_(False)).limit(1)
    ).first()


def register_columns(
    session: Session, key_id: str, columns: Sequence[ProtectedColumn], *, now: datetime
) -> None:
    known = {
        (r.table_name, r.column_name)
        for r in session.scalars(sa.select(VaultRotationRow).where(VaultRotationRow.new_key_id == key_id))
    }
    for col in columns:
        if (col.table, col.column) not in known:
            session.add(
                VaultRotationRow(
                    new_key_id=key_id,
                    table_name=col.table,
                    column_name=col.column,
                    row_key_column=col.row_key_column,
                    last_row_key=None,
                    rows_done=0,
                    finished=False,
                    started_at=now,
                )
            )
            known.add((col.table, col.column))


def run(
    sessions: sessionmaker[Session],
    keyring: Keyring,
    new_key_id: bytes,
    *,
    batch_size: int,
    on_batch: Callable[[RotationProgress], None] | None,
) -> int:
    """Re-encrypt until every registered column of this rotation is finished; returns values moved."""
    new_key = keyring.get(new_key_id)
    if new_key is None:
        raise StoreError("the new data key of the rotation is missing")
    total = 0
    while True:
        with sessions.begin() as session:
            progress = session.scalars(
                sa.select(VaultRotationRow)
                .where(VaultRotationRow.new_key_id == new_key_id.hex(), VaultRotationRow.finished.is_(False))
                .order_by(VaultRotationRow.id)
                .limit(1)
                .with_for_update()
            ).first()
            if progress is None:
                return total
            moved = _one_batch(session, progress, keyring, new_key, batch_size)
            snapshot = RotationProgress(
                progress.table_name, progress.column_name, progress.rows_done, progress.finished
            )
        total += moved
        if on_batch is not None:
            on_batch(snapshot)


def _one_batch(
    session: Session, progress: VaultRotationRow, keyring: Keyring, new_key: DataKey, batch_size: int
) -> int:
    rk_name, col_name = progress.row_key_column, progress.column_name
    # A throwaway Table (not reflected): only the two columns we touch, names validated on entry.
    table = sa.Table(
        progress.table_name, sa.MetaData(), sa.Column(rk_name), sa.Column(col_name, sa.LargeBinary)
    )
    rk, col = table.c[rk_name], table.c[col_name]
    query = sa.select(rk, col).order_by(rk).limit(batch_size)
    if progress.last_row_key is not None:
        query = query.where(rk > json.loads(progress.last_row_key))
    rows = session.execute(query).all()
    updates: list[dict[str, Any]] = []
    for row_key, token in rows:
        if token is None or token_key_id(bytes(token)) == new_key.key_id:
            continue
        context = FieldContext(progress.table_name, col_name, str(row_key))
        fresh = encrypt_field(new_key, decrypt_field(keyring, bytes(token), context=context), context=context)
        updates.append({"_t_rk": row_key, "_t_old": token, "_t_new": fresh})
    moved = 0
    if updates:
        # Compare-and-set: a value rewritten meanwhile (already under the new key) is left alone.
        # One executemany per batch; both supported dialects report a summed rowcount for it.
        statement = (
            sa.update(table)
            .where(rk == sa.bindparam("_t_rk"), col == sa.bindparam("_t_old"))
            .values({col_name: sa.bindparam("_t_new")})
        )
        moved = cast(sa.CursorResult[Any], session.execute(statement, updates)).rowcount
    if rows:
        last = rows[-1][0]
        if not isinstance(last, str | int) or isinstance(last, bool):
            raise StoreError("a protected table's row key must be text or an integer")
        progress.last_row_key = json.dumps(last)
    progress.rows_done += moved
    progress.finished = len(rows) < batch_size
    return moved
