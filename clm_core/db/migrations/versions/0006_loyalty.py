"""Loyalty: points ledger, per-customer status, tier transitions; points spent on an order.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('points_redeemed', sa.Integer(), nullable=True))
    op.create_table(
        "points_ledger",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_points_ledger_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
            name=op.f("fk_points_ledger_order_id_orders"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_points_ledger")),
        sa.UniqueConstraint("key", name=op.f("uq_points_ledger_key")),
    )
    op.create_index(op.f('ix_points_ledger_customer_id'), 'points_ledger', ['customer_id'])
    op.create_index(op.f('ix_points_ledger_order_id'), 'points_ledger', ['order_id'])
    op.create_index(op.f('ix_orders_status'), 'orders', ['status'])
    op.create_table('loyalty_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_watermark', sa.Integer(), nullable=False),
    sa.Column('pending_watermark', sa.Integer(), nullable=False),
    sa.Column('ledger_watermark', sa.Integer(), nullable=False),
    sa.Column('last_now', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_loyalty_state'))
    )
    op.create_table(
        "loyalty_status",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("points_balance", sa.Integer(), server_default="0", nullable=False),
        sa.Column("points_expiring_30d", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tier", sa.String(length=32), nullable=True),
        sa.Column("tier_since", sa.DateTime(), nullable=True),
        sa.Column("tier_grace_until", sa.DateTime(), nullable=True),
        sa.Column("points_to_next_tier", sa.Float(), nullable=True),
        sa.Column("qualifying", sa.Float(), nullable=True),
        sa.Column("next_expiry_at", sa.DateTime(), nullable=True),
        sa.Column("tier_review_at", sa.DateTime(), nullable=True),
        sa.Column("as_of", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_loyalty_status_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_loyalty_status")),
    )
    op.create_index(op.f('ix_loyalty_status_tier'), 'loyalty_status', ['tier'])
    op.create_index('ix_loyalty_status_next_expiry_at', 'loyalty_status', ['next_expiry_at'])
    op.create_table(
        "tier_transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("from_tier", sa.String(length=32), nullable=True),
        sa.Column("to_tier", sa.String(length=32), nullable=False),
        sa.Column("transitioned_at", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_tier_transitions_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tier_transitions")),
    )
    op.create_index(op.f('ix_tier_transitions_customer_id'), 'tier_transitions', ['customer_id'])


def downgrade() -> None:
    op.drop_table('tier_transitions')
    op.drop_table('loyalty_status')
    op.drop_table('loyalty_state')
    op.drop_table('points_ledger')
    op.drop_index(op.f('ix_orders_status'), table_name='orders')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('points_redeemed')
