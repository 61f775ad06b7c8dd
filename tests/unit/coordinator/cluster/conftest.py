"""The store fixtures on both engines (tests/unit/coordinator/store/conftest.py)."""

from tests.unit.coordinator.store.conftest import engine, new_database, new_store

__all__ = ["engine", "new_database", "new_store"]
