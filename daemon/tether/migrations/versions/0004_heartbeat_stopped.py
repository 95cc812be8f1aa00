"""heartbeat.stopped_at: when the daemon stopped cleanly (None while it runs), for `tether check`

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("heartbeat", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stopped_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("heartbeat", schema=None) as batch_op:
        batch_op.drop_column("stopped_at")
