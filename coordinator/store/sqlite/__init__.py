"""The SQLite engine: one module per aggregate over one connection (`core`), and the
schema's single history (`migrations`). Nothing outside `coordinator.store` imports it
except the composition root (`coordinator.app`) and the engine's own tests."""

from __future__ import annotations

from coordinator.store.sqlite.core import SqliteCore, row_record, storage_fault
from coordinator.store.sqlite.deploy import DeploySql
from coordinator.store.sqlite.envs import EnvsSql
from coordinator.store.sqlite.machines import MachinesSql
from coordinator.store.sqlite.migrations import MIGRATIONS
from coordinator.store.sqlite.platform import PlatformSql
from coordinator.store.sqlite.reports import ReportsSql
from coordinator.store.sqlite.tasks import TasksSql
from coordinator.store.sqlite.tokens import TokensSql
from coordinator.store.sqlite.units import UnitsSql
from coordinator.store.sqlite.users import UsersSql
from coordinator.store.sqlite.webops import WebOpsSql

__all__ = ["MIGRATIONS", "SqliteStore", "row_record", "storage_fault"]


class SqliteStore(
    MachinesSql,
    UnitsSql,
    TokensSql,
    UsersSql,
    DeploySql,
    ReportsSql,
    TasksSql,
    EnvsSql,
    WebOpsSql,
    PlatformSql,
    SqliteCore,
):
    """Every port (`coordinator.store.ports.Store`) over one SQLite database file."""
