"""Application writes with a real store (SQLite, or PostgreSQL under
`MOORAGE_TEST_DATABASE=postgresql`), in process: the manifest's version
write runs in a thread, and what it reads, numbers and writes is one transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.deploy.deployments import NotFound
from coordinator.server import Coordinator
from proto.tokens import JOIN_KIND, parse_token
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


def _enrol(c: Coordinator, machine_id: str) -> None:
    made = c.tokens.create_join_tokens()
    token = parse_token(made.tokens[0], JOIN_KIND)
    c.storage.enroll(token.id, machine_id, serial=machine_id, not_after=1e12, now=1)


async def test_a_leader_dying_while_it_starts_a_batch_leaves_it_for_the_next(
    coordinator: Coordinator,
) -> None:
    """Starting a batch is several commits; a leader killed between them (here: the
    write pointing machines at the release never happens) must leave the batch for the
    next leader to start, not jobs running towards a release no machine was given."""
    service = coordinator.deployments
    for mid in ("m1", "m2"):
        _enrol(coordinator, mid)
    app, _ = await service.create_application("web", manifest("/bin/true"))
    d, _ = service.create_deployment("", app.id, "default")
    store = coordinator.storage
    point = store.set_targets

    def killed_here(deployment_id: str, changes: Mapping[str, str | None]) -> set[str]:
        raise SystemExit("the leader was killed before pointing machines at the release")

    store.set_targets = killed_here  # type: ignore[method-assign]
    try:
        with pytest.raises(SystemExit):
            await service.deploy(d.id)
    finally:
        store.set_targets = point  # type: ignore[method-assign]
    (release,) = service.releases(d.id)
    assert {j.status for j in service.jobs(release.id)} == {"Created"}

    await service.tick(time.time())  # the next leader's first pass
    assert store.targets(d.id) == {"m1": release.id}  # batches of one (the default)
    assert {j.machine_id: j.status for j in service.jobs(release.id)} == {
        "m1": "Running",
        "m2": "Created",
    }
    assert set(service.machine_units("m1")) == {"a.service"}


async def test_a_leader_dying_while_it_finishes_a_release_leaves_it_for_the_next(
    coordinator: Coordinator,
) -> None:
    """Finishing a release and the deployment's status are one transaction: a leader
    killed between the two writes leaves both as they were, and the next leader's pass
    finishes them (before, the deployment stayed Running with no release to finish)."""
    service = coordinator.deployments
    app, _ = await service.create_application("web", manifest("/bin/true"))
    d, _ = service.create_deployment("", app.id, "default")  # no machines: done at once
    store = coordinator.storage
    status_write = store.set_deployment_status

    def killed_here(*args: object, **kwargs: object) -> None:
        raise SystemExit("the leader was killed before the deployment's status was written")

    store.set_deployment_status = killed_here  # type: ignore[method-assign]
    try:
        with pytest.raises(SystemExit):
            await service.deploy(d.id)
    finally:
        store.set_deployment_status = status_write  # type: ignore[method-assign]
    (release,) = service.releases(d.id)
    assert release.status != "Success" and not release.finished_at  # rolled back with it

    await service.tick(time.time())  # the next leader's first pass
    (release,) = service.releases(d.id)
    assert release.status == "Success"
    deployment = store.get_deployment(d.id)
    assert deployment is not None and deployment.status == "Success"
