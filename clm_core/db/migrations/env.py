"""Alembic environment: the engine comes from clm_core.db.migrate, never from an ini file."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from clm_core.db.tables import metadata

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        # Several workers may start at once: one migrates, the others wait, then find it done.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7421001)"))
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
