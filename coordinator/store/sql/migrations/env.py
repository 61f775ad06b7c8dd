"""Alembic's environment: always run by `coordinator.store.sql.migrate` with the
connection it opened (and locked), never with a URL of its own."""

from __future__ import annotations

from alembic import context

from coordinator.store.sql.schema import metadata


def run() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite changes a table by copying it: Alembic's batch mode does it
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
