"""responses.tracked_at indexed: `tether ls` reads newest first without sorting the table

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_responses_tracked_at", "responses", ["tracked_at"])


def downgrade() -> None:
    op.drop_index("ix_responses_tracked_at", table_name="responses")
