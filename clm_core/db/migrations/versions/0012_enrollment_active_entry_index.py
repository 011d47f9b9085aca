"""Journey enrollments: an index on (status, journey, journey_version, entered_at), from which
each evaluation reads the earliest active entry of every journey version with one seek a
version instead of reading every active enrollment (a second at a million customers).

Revision ID: 0012
Revises: 0011
"""
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_journey_enrollments_active_entry", "journey_enrollments",
                    ["status", "journey", "journey_version", "entered_at"])


def downgrade() -> None:
    op.drop_index("ix_journey_enrollments_active_entry", table_name="journey_enrollments")
