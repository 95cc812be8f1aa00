"""budgets: budget events, threshold marks, start of run, finished_at index

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_marks",
        sa.Column("budget", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("mark", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("budget", "window_start", "mark"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.alter_column("response_id", existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        batch_op.add_column(sa.Column("budget", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_at", sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f("ix_responses_finished_at"), ["finished_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_responses_finished_at"))
        batch_op.drop_column("started_at")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("budget")
        batch_op.alter_column("response_id", existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=False)
    op.drop_table("budget_marks")
