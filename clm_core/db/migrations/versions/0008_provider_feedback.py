"""Provider feedback: callback events, message delivery status, persistent channel halts.

Revision ID: 0008
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON_ = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("delivery_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("content_digest", sa.String(length=64), nullable=True))
    op.create_index("ix_messages_sent_at", "messages", ["sent_at"])
    op.create_table(
        "provider_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(length=254), nullable=True),
        sa.Column("permanent", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("machine", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("detail", JSON_, nullable=True),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"],
                                name=op.f("fk_provider_events_message_id_messages"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                name=op.f("fk_provider_events_customer_id_customers"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_events")),
        sa.UniqueConstraint("provider", "event_id",
                            name=op.f("uq_provider_events_provider_event_id")),
    )
    op.create_index("ix_provider_events_message_id", "provider_events", ["message_id"])
    op.create_index("ix_provider_events_kind_time", "provider_events", ["kind", "occurred_at"])
    op.create_index("ix_provider_events_address_kind", "provider_events", ["address", "kind"])
    op.create_table(
        "channel_halts",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("halted_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("channel", name=op.f("pk_channel_halts")),
    )


def downgrade() -> None:
    op.drop_table("channel_halts")
    op.drop_index("ix_provider_events_address_kind", table_name="provider_events")
    op.drop_index("ix_provider_events_kind_time", table_name="provider_events")
    op.drop_index("ix_provider_events_message_id", table_name="provider_events")
    op.drop_table("provider_events")
    op.drop_index("ix_messages_sent_at", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("content_digest")
        batch_op.drop_column("delivery_at")
        batch_op.drop_column("delivery_status")
