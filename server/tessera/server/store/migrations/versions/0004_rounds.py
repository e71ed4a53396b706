"""Jobs of many rounds: each round's release and the driver's state persist; tasks carry their epoch.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("driver_state", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("round_input", sa.LargeBinary(), nullable=False, server_default=""))
    op.create_table(
        "job_rounds",
        sa.Column("job_id", sa.String(length=32), sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("round", sa.Integer(), primary_key=True),
        sa.Column("rho", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("survivors", sa.Text(), nullable=False, server_default=""),
        sa.Column("dropped", sa.Text(), nullable=False, server_default=""),
        sa.Column("metric_json", sa.Text(), nullable=False, server_default=""),
        sa.Column("result_json", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_job_rounds_started_at", "job_rounds", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_job_rounds_started_at", table_name="job_rounds")
    op.drop_table("job_rounds")
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_column("round_input")
        batch_op.drop_column("epoch")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("driver_state")
