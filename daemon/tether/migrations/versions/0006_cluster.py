"""Several daemons on one PostgreSQL store: the `daemons` table, and events.instance (which daemon wrote an event)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daemons",
        sa.Column("instance", sa.String(), primary_key=True),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("member", sa.Integer(), nullable=False),
        sa.Column("lock_pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("takeover", sa.Float(), nullable=False),
        sa.Column("shards", sa.JSON(), nullable=False),
        sa.Column("budgets", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("stopped_at", sa.Float(), nullable=True),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("instance")
    op.drop_table("daemons")
