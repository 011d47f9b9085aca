"""Consent ledger: every change of consent or suppression, append-only.

Revision ID: 0004
Revises: 0001_foundation
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON_ = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "consent_ledger",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("address", sa.String(length=254), nullable=True),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("evidence_key", sa.String(length=200), nullable=False),
        sa.Column("evidence", JSON_, nullable=True),
        sa.Column("wording_version", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                name=op.f("fk_consent_ledger_customer_id_customers"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_ledger")),
        sa.UniqueConstraint("evidence_key", name=op.f("uq_consent_ledger_evidence_key")),
    )
    with op.batch_alter_table("consent_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consent_ledger_customer_id"), ["customer_id"],
                              unique=False)
        batch_op.create_index("ix_consent_ledger_subject",
                              ["customer_id", "channel", "topic", "occurred_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("consent_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_ledger_subject")
        batch_op.drop_index(batch_op.f("ix_consent_ledger_customer_id"))
    op.drop_table("consent_ledger")
