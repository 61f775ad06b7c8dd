"""The WebOps tests' coordinators run on the run's engine (`MOORAGE_TEST_DATABASE`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.databases import coordinator_database_url


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """`CoordinatorConfig.database_url` for a test's coordinator: "" (its state
    directory's SQLite file) by default, a new PostgreSQL database with
    `MOORAGE_TEST_DATABASE=postgresql`."""
    return coordinator_database_url(tmp_path / "db")
