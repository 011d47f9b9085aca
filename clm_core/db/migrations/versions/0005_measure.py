"""Measurement: per-enrollment attribution, and the coupon code an order carried.

Revision ID: 0005
Revises: 0008 (orders.coupon_code comes with 0003)
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attributions",
        sa.Column("enrollment_id", sa.Integer(), nullable=False),
        sa.Column("journey", sa.String(length=100), nullable=False),
        sa.Column("journey_version", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("is_control", sa.Boolean(), nullable=False),
        sa.Column("global_control", sa.Boolean(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("entered_at", sa.DateTime(), nullable=False),
        sa.Column("window_end", sa.DateTime(), nullable=False),
        sa.Column("window_complete", sa.Boolean(), nullable=False),
        sa.Column("goal", sa.String(length=64), nullable=True),
        sa.Column("goal_at", sa.DateTime(), nullable=True),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("revenue", sa.Float(), nullable=False),
        sa.Column("pre_revenue", sa.Float(), nullable=False),
        sa.Column("messages_sent", sa.Integer(), nullable=False),
        sa.Column("coupons_issued", sa.Integer(), nullable=False),
        sa.Column("coupons_redeemed", sa.Integer(), nullable=False),
        sa.Column("coupon_cost", sa.Float(), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.Column("opened", sa.Integer(), nullable=False),
        sa.Column("clicked", sa.Integer(), nullable=False),
        sa.Column("last_touch_step", sa.String(length=64), nullable=True),
        sa.Column("last_touch_channel", sa.String(length=16), nullable=True),
        sa.Column("measured_at", sa.DateTime(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_attributions_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["enrollment_id"],
            ["journey_enrollments.id"],
            name=op.f("fk_attributions_enrollment_id_journey_enrollments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("enrollment_id", name=op.f("pk_attributions")),
    )
    with op.batch_alter_table("attributions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_attributions_customer_id"), ["customer_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_attributions_journey"), ["journey"], unique=False)


def downgrade() -> None:
    op.drop_table("attributions")
