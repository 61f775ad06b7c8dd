"""The composition root's one decision: which store engine the coordinator runs on.

Everything else receives the store through its ports (`coordinator.store.ports`);
a second engine (PostgreSQL) is chosen here and nowhere else.
"""

from __future__ import annotations

from coordinator.config import CoordinatorConfig
from coordinator.store.ports import Store
from coordinator.store.sql import SqlStore


def open_store(config: CoordinatorConfig) -> Store:
    """Open (creating and migrating) the coordinator's store for this configuration."""
    return SqlStore(config.database)
