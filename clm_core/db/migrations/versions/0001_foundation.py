"""Foundation schema: store data, lifecycle, journeys, delivery and run tables.

Revision ID: 0001_foundation
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001_foundation'
down_revision = None
branch_labels = None
depends_on = None

# Migrations keep their own types: later changes to clm_core.db.tables must not rewrite history.
JSON_ = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("phone", sa.String(length=16), nullable=True),
        sa.Column("locale", sa.String(length=16), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("consent_email", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("consent_email_at", sa.DateTime(), nullable=True),
        sa.Column("consent_sms", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("consent_sms_at", sa.DateTime(), nullable=True),
        sa.Column("attributes", JSON_, nullable=True),
        sa.Column("signed_up_at", sa.DateTime(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(), server_default=sa.func.current_timestamp(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(), server_default=sa.func.current_timestamp(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("external_id", name=op.f("uq_customers_external_id")),
    )
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customers_email'), ['email'], unique=False)
        batch_op.create_index(batch_op.f('ix_customers_phone'), ['phone'], unique=False)

    op.create_table('journey_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('journey', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('definition', JSON_, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journey_versions')),
    sa.UniqueConstraint('journey', 'version', name=op.f('uq_journey_versions_journey_version'))
    )
    op.create_table('model_fits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=32), nullable=False),
    sa.Column('params', JSON_, nullable=False),
    sa.Column('log_likelihood', sa.Float(), nullable=True),
    sa.Column('penalizer', sa.Float(), server_default='0', nullable=False),
    sa.Column('time_unit', sa.String(length=8), nullable=False),
    sa.Column('window_start', sa.DateTime(), nullable=True),
    sa.Column('window_end', sa.DateTime(), nullable=False),
    sa.Column('holdout_end', sa.DateTime(), nullable=True),
    sa.Column('n_customers', sa.Integer(), nullable=False),
    sa.Column('diagnostics', JSON_, nullable=True),
    sa.Column('fitted_at', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_fits'))
    )
    op.create_table('runs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('summary', JSON_, nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    op.create_table(
        "customer_scores",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("fit_id", sa.Integer(), nullable=True),
        sa.Column("n_orders", sa.Integer(), server_default="0", nullable=False),
        sa.Column("purchase_days", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_order_at", sa.DateTime(), nullable=True),
        sa.Column("last_order_at", sa.DateTime(), nullable=True),
        sa.Column("total_spend", sa.Float(), server_default="0", nullable=False),
        sa.Column("avg_order_value", sa.Float(), nullable=True),
        sa.Column("days_since_last_order", sa.Float(), nullable=True),
        sa.Column("frequency", sa.Float(), nullable=True),
        sa.Column("recency", sa.Float(), nullable=True),
        sa.Column("T", sa.Float(), nullable=True),
        sa.Column("monetary_value", sa.Float(), nullable=True),
        sa.Column("p_alive", sa.Float(), nullable=True),
        sa.Column("expected_purchases_30d", sa.Float(), nullable=True),
        sa.Column("expected_purchases_90d", sa.Float(), nullable=True),
        sa.Column("expected_aov", sa.Float(), nullable=True),
        sa.Column("clv_12m", sa.Float(), nullable=True),
        sa.Column("r_score", sa.SmallInteger(), nullable=True),
        sa.Column("f_score", sa.SmallInteger(), nullable=True),
        sa.Column("m_score", sa.SmallInteger(), nullable=True),
        sa.Column("rfm_segment", sa.String(length=32), nullable=True),
        sa.Column("stage", sa.String(length=32), nullable=True),
        sa.Column("stage_since", sa.DateTime(), nullable=True),
        sa.Column("scored_at", sa.DateTime(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_scores_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["fit_id"],
            ["model_fits.id"],
            name=op.f("fk_customer_scores_fit_id_model_fits"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_scores")),
    )
    with op.batch_alter_table('customer_scores', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customer_scores_rfm_segment"), ["rfm_segment"], unique=False
        )
        batch_op.create_index(batch_op.f('ix_customer_scores_stage'), ['stage'], unique=False)

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("properties", JSON_, nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_events_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("external_id", name=op.f("uq_events_external_id")),
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index('ix_events_type_time', ['event_type', 'occurred_at'], unique=False)

    op.create_table(
        "journey_enrollments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("journey", sa.String(length=100), nullable=False),
        sa.Column("journey_version", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("entry_seq", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_control", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("current_step", sa.String(length=64), nullable=True),
        sa.Column("step_due_at", sa.DateTime(), nullable=True),
        sa.Column("entered_at", sa.DateTime(), nullable=False),
        sa.Column("exited_at", sa.DateTime(), nullable=True),
        sa.Column("exit_reason", sa.String(length=64), nullable=True),
        sa.Column("converted_at", sa.DateTime(), nullable=True),
        sa.Column("goal", sa.String(length=64), nullable=True),
        sa.Column("state", JSON_, nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_journey_enrollments_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_enrollments")),
        sa.UniqueConstraint(
            "journey",
            "customer_id",
            "entry_seq",
            name=op.f("uq_journey_enrollments_journey_customer_id_entry_seq"),
        ),
    )
    with op.batch_alter_table('journey_enrollments', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_journey_enrollments_customer_id"), ["customer_id"], unique=False
        )
        batch_op.create_index(
            "ix_journey_enrollments_status_due", ["status", "step_due_at"], unique=False
        )

    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("ordered_at", sa.DateTime(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="completed", nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_orders_amount_non_negative")),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_orders_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("external_id", name=op.f("uq_orders_external_id")),
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index(
            "ix_orders_customer_ordered", ["customer_id", "ordered_at"], unique=False
        )
        batch_op.create_index(batch_op.f('ix_orders_ordered_at'), ['ordered_at'], unique=False)

    op.create_table(
        "stage_transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("from_stage", sa.String(length=32), nullable=True),
        sa.Column("to_stage", sa.String(length=32), nullable=False),
        sa.Column("transitioned_at", sa.DateTime(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_stage_transitions_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_transitions")),
    )
    with op.batch_alter_table('stage_transitions', schema=None) as batch_op:
        batch_op.create_index('ix_stage_transitions_as_of_to', ['as_of', 'to_stage'], unique=False)
        batch_op.create_index(
            batch_op.f("ix_stage_transitions_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=254), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_suppressions_customer_id_customers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
        sa.UniqueConstraint("channel", "address", name=op.f("uq_suppressions_channel_address")),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("enrollment_id", sa.Integer(), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("journey", sa.String(length=100), nullable=True),
        sa.Column("journey_version", sa.Integer(), nullable=True),
        sa.Column("step_id", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("template", sa.String(length=200), nullable=True),
        sa.Column("coupon", JSON_, nullable=True),
        sa.Column("tags", JSON_, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("send_after", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("provider_message_id", sa.String(length=128), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_messages_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["enrollment_id"],
            ["journey_enrollments.id"],
            name=op.f("fk_messages_enrollment_id_journey_enrollments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_messages_idempotency_key")),
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_messages_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index(
            batch_op.f("ix_messages_enrollment_id"), ["enrollment_id"], unique=False
        )
        batch_op.create_index(
            "ix_messages_status_send_after", ["status", "send_after"], unique=False
        )

    op.create_table(
        "order_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("product_name", sa.String(length=200), nullable=True),
        sa.Column("quantity", sa.Integer(), server_default="1", nullable=False),
        sa.Column("unit_price", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
            name=op.f("fk_order_items_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_items")),
        sa.UniqueConstraint("order_id", "line_no", name=op.f("uq_order_items_order_id_line_no")),
    )
    with op.batch_alter_table('order_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_order_items_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_order_items_sku'), ['sku'], unique=False)

    op.create_table(
        "coupons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_ref", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_coupons_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_coupons_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupons")),
        sa.UniqueConstraint("code", name=op.f("uq_coupons_code")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_coupons_idempotency_key")),
    )
    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_coupons_customer_id'), ['customer_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_coupons_customer_id'))

    op.drop_table('coupons')
    with op.batch_alter_table('order_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_items_sku'))
        batch_op.drop_index(batch_op.f('ix_order_items_order_id'))

    op.drop_table('order_items')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_status_send_after')
        batch_op.drop_index(batch_op.f('ix_messages_enrollment_id'))
        batch_op.drop_index(batch_op.f('ix_messages_customer_id'))

    op.drop_table('messages')
    op.drop_table('suppressions')
    with op.batch_alter_table('stage_transitions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stage_transitions_customer_id'))
        batch_op.drop_index('ix_stage_transitions_as_of_to')

    op.drop_table('stage_transitions')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_ordered_at'))
        batch_op.drop_index('ix_orders_customer_ordered')
        batch_op.drop_index(batch_op.f('ix_orders_customer_id'))

    op.drop_table('orders')
    with op.batch_alter_table('journey_enrollments', schema=None) as batch_op:
        batch_op.drop_index('ix_journey_enrollments_status_due')
        batch_op.drop_index(batch_op.f('ix_journey_enrollments_customer_id'))

    op.drop_table('journey_enrollments')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_type_time')
        batch_op.drop_index(batch_op.f('ix_events_customer_id'))

    op.drop_table('events')
    with op.batch_alter_table('customer_scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_scores_stage'))
        batch_op.drop_index(batch_op.f('ix_customer_scores_rfm_segment'))

    op.drop_table('customer_scores')
    op.drop_table('runs')
    op.drop_table('model_fits')
    op.drop_table('journey_versions')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customers_phone'))
        batch_op.drop_index(batch_op.f('ix_customers_email'))

    op.drop_table('customers')
