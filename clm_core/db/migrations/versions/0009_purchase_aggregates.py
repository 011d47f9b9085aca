"""Purchase aggregates: per-customer orders, purchase days, first/last purchase and spend,
kept in step with the orders; filled here from the orders already stored.

Revision ID: 0009
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_purchase_aggregates",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("n_orders", sa.Integer(), nullable=False),
        sa.Column("purchase_days", sa.Integer(), nullable=False),
        sa.Column("first_order_at", sa.DateTime(), nullable=False),
        sa.Column("last_order_at", sa.DateTime(), nullable=False),
        sa.Column("total_spend", sa.Numeric(14, 2), nullable=False),
        sa.Column("first_day_spend", sa.Numeric(14, 2), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_purchase_aggregates_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_purchase_aggregates")),
    )
    op.create_index(op.f("ix_customer_purchase_aggregates_last_order_at"),
                    "customer_purchase_aggregates", ["last_order_at"])
    op.create_table(
        "purchase_aggregates_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("max_order_id", sa.Integer(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(), server_default=sa.func.current_timestamp(),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purchase_aggregates_state")),
    )
    # Existing stores start in step: one pass over their orders (``clm db rebuild-aggregates``
    # does the same later, e.g. after orders were written by a script).
    from clm_core.lifecycle.aggregates import rebuild

    rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_table("purchase_aggregates_state")
    op.drop_index(op.f("ix_customer_purchase_aggregates_last_order_at"),
                  table_name="customer_purchase_aggregates")
    op.drop_table("customer_purchase_aggregates")
