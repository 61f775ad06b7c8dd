"""The store on SQLAlchemy Core, one implementation for SQLite and PostgreSQL: one
module per aggregate over one core (`core`), the schema once (`schema`), its history
in Alembic (`migrate`, `migrations/`). Nothing outside `coordinator.store` imports it
except the composition root (`coordinator.app`) and the engine's own tests."""

from __future__ import annotations

from coordinator.store.sql.core import (
    SqlCore,
    database_url,
    describe,
    row_record,
    status,
    storage_fault,
)
from coordinator.store.sql.deploy import DeploySql
from coordinator.store.sql.envs import EnvsSql
from coordinator.store.sql.machines import MachinesSql
from coordinator.store.sql.notify import NotifySql
from coordinator.store.sql.platform import PlatformSql
from coordinator.store.sql.reports import ReportsSql
from coordinator.store.sql.tasks import TasksSql
from coordinator.store.sql.tokens import TokensSql
from coordinator.store.sql.units import UnitsSql
from coordinator.store.sql.users import UsersSql
from coordinator.store.sql.webops import WebOpsSql

__all__ = [
    "SqlStore",
    "database_url",
    "describe",
    "row_record",
    "status",
    "storage_fault",
]


class SqlStore(
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
    NotifySql,
    SqlCore,
):
    """Every port (`coordinator.store.ports.Store`, and `ChangeFeed`) over one database:
    an SQLite file (a path) or PostgreSQL (a `postgresql://` URL)."""
