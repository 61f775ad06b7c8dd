"""The composition root's one decision: which database the coordinator's store opens.

Everything else receives the store through its ports (`coordinator.store.ports`). The
store is one implementation on SQLAlchemy Core (`coordinator.store.sql`): an SQLite file
in the state directory by default, PostgreSQL when `database_url` names one.
"""

from __future__ import annotations

from coordinator.config import CoordinatorConfig
from coordinator.store.ports import Store
from coordinator.store.sql import SqlStore, describe, status
from coordinator.store.sql.move import move_database as move_database


def open_store(config: CoordinatorConfig) -> Store:
    """Open (creating and migrating) the coordinator's store for this configuration."""
    return SqlStore(config.database)


def schema_status(config: CoordinatorConfig) -> tuple[str | None, str]:
    """(the database's schema revision or None if empty, this coordinator's newest),
    without changing anything."""
    return status(config.database)


def describe_database(config: CoordinatorConfig) -> str:
    """The database for people: the SQLite file, or the URL without its password."""
    return describe(config.database)


def describe_database_url(target: str) -> str:
    """A database URL for people (without its password)."""
    return describe(target)
