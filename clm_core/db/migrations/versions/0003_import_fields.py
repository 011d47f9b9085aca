"""Import fields: a customer's city, an order's coupon code.

Revision ID: 0003
Revises: 0001_foundation
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("city", sa.String(length=100), nullable=True))
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("coupon_code", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_orders_coupon_code"), ["coupon_code"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_coupon_code"))
        batch_op.drop_column("coupon_code")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("city")
