"""Stage transitions: an index on (customer_id, as_of, id), from which scoring an as-of day
again reads each customer's latest transition before that day with one seek. Without it
PostgreSQL chose to walk the as_of index back through every earlier transition for each
customer: at a million customers the rerun of a night's scoring ran for more than eleven
minutes before it was stopped.

Revision ID: 0013
Revises: 0012
"""
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_stage_transitions_customer_as_of", "stage_transitions",
                    ["customer_id", "as_of", "id"])


def downgrade() -> None:
    op.drop_index("ix_stage_transitions_customer_as_of", table_name="stage_transitions")
