"""SQLAlchemy tables of the vault's key hierarchy (own metadata; ``create_tables`` is idempotent)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class VaultBase(DeclarativeBase):
    """Declarative base of the vault's key tables; the node may create them beside its own."""


class VaultKeyRow(VaultBase):
    """A data key or the blind-index key, wrapped under the KEK. Key material never appears plain."""

    __tablename__ = "vault_keys"

    key_id: Mapped[str] = mapped_column(sa.String(16), primary_key=True)  # 8 bytes, hex
    purpose: Mapped[str] = mapped_column(sa.String(16))  # "data" or "blind_index"
    status: Mapped[str] = mapped_column(sa.String(16))  # "active" or "retired"
    wrapped: Mapped[bytes] = mapped_column(sa.LargeBinary)
    kek_id: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class VaultMetaRow(VaultBase):
    """Named vault-wide values; ``kek_check`` is a constant wrapped under the KEK."""

    __tablename__ = "vault_meta"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(sa.LargeBinary)


class VaultRotationRow(VaultBase):
    """Progress of a re-encryption, one row per protected column; committed with each batch."""

    __tablename__ = "vault_rotation"
    __table_args__ = (sa.UniqueConstraint("new_key_id", "table_name", "column_name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    new_key_id: Mapped[str] = mapped_column(sa.String(16))
    table_name: Mapped[str] = mapped_column(sa.String(128))
    column_name: Mapped[str] = mapped_column(sa.String(128))
    row_key_column: Mapped[str] = mapped_column(sa.String(128))
    # JSON of the last row key done (keeps int keys ints); NULL = not started.
    last_row_key: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    rows_done: Mapped[int] = mapped_column(sa.Integer, default=0)
    finished: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


def create_tables(engine: sa.Engine) -> None:
    """Create the vault key tables if missing (no-op when they exist)."""
    VaultBase.metadata.create_all(engine)
