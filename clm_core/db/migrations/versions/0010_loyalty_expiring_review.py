"""Loyalty: when a customer's points next enter the 30-day expiring window, so the daily
evaluation refreshes ``points_expiring_30d`` then (not only when points expire).

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loyalty_status") as batch:
        batch.add_column(sa.Column("expiring_review_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("loyalty_status") as batch:
        batch.drop_column("expiring_review_at")
