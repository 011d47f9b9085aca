"""One clock: logical times in the rows, the wall clock only in ``recorded_at``.

Stage transitions, enrollments and messages keep the run's as-of/now in their own time columns
and gain ``recorded_at`` (when the row was written, by the wall clock). The wall-clock columns
of scores and fits are renamed to ``recorded_at``. A transition also keeps the day its new
stage began (``stage_since``), which is not always the scoring day (a comeback purchase starts
``reactivated``), so a rerun of the same as-of date can restore it.

Revision ID: 0002
Revises: 0001_foundation
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

# table -> the column whose (wall-clock) value existing rows take as recorded_at
NEW_RECORDED_AT = {"stage_transitions": "transitioned_at", "journey_enrollments": "entered_at",
                   "messages": "created_at"}
RENAMED = {"customer_scores": "scored_at", "model_fits": "fitted_at"}


def upgrade() -> None:
    for table, source in NEW_RECORDED_AT.items():
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("recorded_at", sa.DateTime(), nullable=True))
        op.execute(f"UPDATE {table} SET recorded_at = {source}")
        with op.batch_alter_table(table) as batch:
            batch.alter_column("recorded_at", existing_type=sa.DateTime(), nullable=False,
                               server_default=sa.func.current_timestamp())
    with op.batch_alter_table("stage_transitions") as batch:
        batch.add_column(sa.Column("stage_since", sa.DateTime(), nullable=True))
    for table, old in RENAMED.items():
        with op.batch_alter_table(table) as batch:
            batch.alter_column(old, new_column_name="recorded_at", existing_type=sa.DateTime(),
                               existing_nullable=False)


def downgrade() -> None:
    for table, old in RENAMED.items():
        with op.batch_alter_table(table) as batch:
            batch.alter_column("recorded_at", new_column_name=old, existing_type=sa.DateTime(),
                               existing_nullable=False)
    with op.batch_alter_table("stage_transitions") as batch:
        batch.drop_column("stage_since")
    for table in NEW_RECORDED_AT:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("recorded_at")
