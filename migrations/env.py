"""Alembic environment: wakeful runs migrations itself at start, on its own connection."""

from __future__ import annotations

from alembic import context

from services.database import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "wakeful applies its migrations at start; run `python server.py` instead of alembic"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
