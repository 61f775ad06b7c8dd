"""Application writes with a real store (SQLite, or PostgreSQL under
`MOORAGE_TEST_DATABASE=postgresql`), in process: the manifest's version
write runs in a thread, and what it reads, numbers and writes is one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.deploy.deployments import NotFound
from coordinator.server import Coordinator
from tests.harness.databases import default_engine, fresh_database


def manifest(command: str) -> str:
    return (
        "units:\n  - name: a.service\n    contents: |\n      [Service]\n"
        f"      ExecStart={command}\n"
    )


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    database = fresh_database(tmp_path / "db") if default_engine() == "postgresql" else ""
    made = Coordinator(CoordinatorConfig(state_dir=str(tmp_path), database_url=database))
    yield made
    made.storage.close()


async def test_concurrent_updates_get_consecutive_versions(coordinator: Coordinator) -> None:
    service = coordinator.deployments
    app, created = await service.create_application("web", manifest("/bin/true"))
    assert created and app.version_number == 1
    await asyncio.gather(
        service.update_application(app.id, source_config=manifest("/bin/sleep 1")),
        service.update_application(app.id, source_config=manifest("/bin/sleep 2")),
    )
    versions = coordinator.storage.versions(app.id)
    assert [v.number for v in versions] == [1, 2, 3]
    assert len({v.digest for v in versions}) == 3
    assert service.application(app.id).version_number == 3


async def test_an_update_racing_a_delete_does_not_bring_the_application_back(
    coordinator: Coordinator,
) -> None:
    service = coordinator.deployments
    app, _ = await service.create_application("web", manifest("/bin/true"))
    update = asyncio.create_task(
        service.update_application(app.id, source_config=manifest("/bin/sleep 1"))
    )
    await asyncio.sleep(0)  # the update is parsing its manifest
    service.delete_application(app.id)
    with pytest.raises(NotFound):
        await update
    assert coordinator.storage.get_application(app.id) is None
    assert coordinator.storage.versions(app.id) == []
