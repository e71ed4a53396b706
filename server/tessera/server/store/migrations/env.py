"""Alembic environment: always driven programmatically with an open connection (see migrate.py)."""

from __future__ import annotations

from alembic import context

from tessera.server.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
