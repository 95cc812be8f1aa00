"""initial schema

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("response_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("from_status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("to_status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("origin", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_at"), ["at"], unique=False)
        batch_op.create_index("ix_events_response_id_id", ["response_id", "id"], unique=False)

    op.create_table(
        "heartbeat",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("beat_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "responses",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("account", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("background", sa.Boolean(), nullable=True),
        sa.Column("policy", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("policy_requested", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=True),
        sa.Column("tracked_at", sa.Float(), nullable=False),
        sa.Column("deadline_at", sa.Float(), nullable=True),
        sa.Column("deadline_kind", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("limits_hit", sa.JSON(), nullable=False),
        sa.Column("last_polled_at", sa.Float(), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("not_found", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", sa.Float(), nullable=True),
        sa.Column("poll_interval", sa.Float(), nullable=True),
        sa.Column("cancel_state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("cancel_requested_at", sa.Float(), nullable=True),
        sa.Column("cancel_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("cancel_attempts", sa.Integer(), nullable=False),
        sa.Column("confirm_until", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("incomplete_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=True),
        sa.Column("max_output_tokens", sa.Integer(), nullable=True),
        sa.Column("service_tier", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("cost_estimated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_responses_next_poll_at"), ["next_poll_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_responses_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_responses_status"))
        batch_op.drop_index(batch_op.f("ix_responses_next_poll_at"))

    op.drop_table("responses")
    op.drop_table("heartbeat")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_response_id_id")
        batch_op.drop_index(batch_op.f("ix_events_at"))

    op.drop_table("events")
