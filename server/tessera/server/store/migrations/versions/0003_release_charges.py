"""Keep each DP release's dataset, rho and charged nodes beside the job, apart from its result.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("dataset", sa.String(length=128), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("released_rho", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("charged_nodes", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("charged_nodes")
        batch_op.drop_column("released_rho")
        batch_op.drop_column("dataset")
