"""Messages: an index on the provider's message id, by which provider callbacks that carry
no key of ours (Twilio's status callbacks, a bounce without its custom args) and the
reconciliation of unknown sends find their message.

Revision ID: 0011
Revises: 0010
"""
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_provider_message_id", "messages", ["provider_message_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_provider_message_id", table_name="messages")
