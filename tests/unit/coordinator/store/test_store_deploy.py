"""Groups, applications, deployments, releases, jobs and targets on both engines
(SQLite and PostgreSQL): names unique per tenant (also when two coordinators race
for one), orders, revisions bumped exactly for the machines whose targets change."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from coordinator.models import (
    Application,
    ApplicationVersion,
    Deployment,
    MachineGroup,
    Release,
    ReleaseJob,
    ReleaseUnit,
)
from coordinator.store.ports import DEFAULT_GROUP, DEFAULT_GROUP_ID, Conflict, builtin_group_id
from coordinator.store.scope import TENANT_SCOPE
from coordinator.store.sql import SqlStore, schema
from coordinator.store.sql.core import IN_CHUNK
from coordinator.store.sql.deploy import target_changes

UNIT = ReleaseUnit(name="web.service", options=[], hash="h", sha256="s")


def machines(store: SqlStore, *ids: str, tenant: str = "default") -> None:
    """Machine rows as enrolment leaves them (written directly: this file tests the
    deploy module, not enrolment)."""
    with store.batch() as db:
        db.execute(
            sa.insert(schema.machines),
            [{"id": m, "enrolled_at": 2.0, "tenant": tenant} for m in ids],
        )


def revision(store: SqlStore, machine_id: str) -> int:
    m = schema.machines
    got = store._scalar(sa.select(m.c.desired_revision).where(m.c.id == machine_id))
    assert got is not None
    return int(got)


def version(app_id: str, number: int, label: str, config: str = "units: []") -> ApplicationVersion:
    return ApplicationVersion(
        application_id=app_id, number=number, label=label, source_config=config, digest=label
    )


def app_with_version(store: SqlStore, app_id: str = "a1", tenant: str = "default") -> Application:
    app = Application(id=app_id, name="web", created_at=1, updated_at=1, tenant=tenant)
    store.put_application(app, version(app_id, 1, "1", "units: []  # raw"))
    got = store.get_application(app_id)
    assert got is not None
    return got


def release(rid: str, deployment: str, seq: int, *, created_at: float = 1.0) -> Release:
    return Release(
        id=rid,
        deployment_id=deployment,
        seq=seq,
        application_id="a1",
        version="1",
        version_number=1,
        units=[UNIT],
        status="Running",
        batches=1,
        created_at=created_at,
        updated_at=created_at,
    )


def deployed(store: SqlStore, *ids: str) -> None:
    """Machines, the application `a1` and the deployment `d1` on the default group."""
    machines(store, *ids)
    app_with_version(store)
    store.put_deployment(
        Deployment(id="d1", name="web-default", application_id="a1", group_id=DEFAULT_GROUP_ID)
    )


def test_the_default_group_exists_after_migrating(store: SqlStore) -> None:
    (group,) = store.list_groups()
    assert (group.id, group.name, group.builtin) == (DEFAULT_GROUP_ID, DEFAULT_GROUP, True)
    assert not store.delete_group(DEFAULT_GROUP_ID)
    assert store.get_group(DEFAULT_GROUP_ID) == group == store.group_by_name(DEFAULT_GROUP)


def test_groups_list_builtin_first_then_bytewise_and_round_trip(store: SqlStore) -> None:
    for gid, name in (("g1", "b"), ("g2", "B"), ("g3", "a-b"), ("g4", "ab")):
        store.put_group(
            MachineGroup(
                id=gid,
                name=name,
                selector={"z": "1", "a": "2"},
                machines=["m2", "m1", "m2"],
                created_at=3,
                updated_at=4,
            )
        )
    names = [g.name for g in store.list_groups()]
    assert names == ["default", "B", "a-b", "ab", "b"]
    got = store.get_group("g1")
    assert got is not None
    assert (got.selector, got.machines, got.builtin, got.created_at, got.updated_at) == (
        {"a": "2", "z": "1"},
        ["m1", "m2"],
        False,
        3,
        4,
    )
    # replaced by id: the name may change, the creation time stays
    store.put_group(MachineGroup(id="g1", name="c", created_at=9, updated_at=10))
    got = store.get_group("g1")
    assert got is not None and (got.name, got.created_at, got.updated_at) == ("c", 3, 10)
    assert store.delete_group("g1") and not store.delete_group("g1")
    assert store.get_group("g1") is None


def test_versions_keep_the_text_and_labels_are_unique(store: SqlStore) -> None:
    app = app_with_version(store)
    assert (app.version, app.version_number, app.source_config) == ("1", 1, "units: []  # raw")
    with pytest.raises(Conflict, match="already has a version '1'"):
        store.put_application(app, version("a1", 2, "1", "x"))
    store.put_application(app, version("a1", 2, "2", "y"))
    assert [v.label for v in store.versions("a1")] == ["1", "2"]
    latest = store.get_application("a1")
    assert latest is not None and (latest.version, latest.version_number) == ("2", 2)
    assert latest.source_config == "y" and latest.digest == "2"
    got = store.version("a1", "1")
    assert got is not None and got.source_config == "units: []  # raw"
    assert store.version("a1", "3") is None
    with pytest.raises(Conflict, match="named 'web'"):
        store.put_application(Application(id="a2", name="web"), None)
    store.put_group(MachineGroup(id="g1", name="racks"))
    with pytest.raises(Conflict):
        store.put_group(MachineGroup(id="g2", name="racks"))


def test_applications_in_creation_order_and_deleted_with_their_versions(store: SqlStore) -> None:
    for app_id, name, created in (("b", "one", 2.0), ("a", "two", 2.0), ("c", "three", 1.0)):
        store.put_application(
            Application(id=app_id, name=name, created_at=created, updated_at=created),
            version(app_id, 1, "1"),
        )
    assert [a.id for a in store.list_applications()] == ["c", "a", "b"]
    by_name = store.application_by_name("two")
    assert by_name is not None and by_name.id == "a"
    # an update without a version keeps the latest version
    store.put_application(Application(id="a", name="two", description="new", updated_at=5), None)
    got = store.get_application("a")
    assert got is not None and (got.description, got.version, got.created_at) == ("new", "1", 2)
    assert store.delete_application("a") and not store.delete_application("a")
    assert store.get_application("a") is None and store.versions("a") == []


def test_deployments_statuses_and_names(store: SqlStore) -> None:
    app_with_version(store)
    for did, name, created in (("d2", "web-b", 1.0), ("d1", "web-a", 1.0), ("d0", "web-c", 2.0)):
        store.put_deployment(
            Deployment(
                id=did,
                name=name,
                application_id="a1",
                group_id=DEFAULT_GROUP_ID,
                created_at=created,
                updated_at=created,
            )
        )
    assert [d.id for d in store.list_deployments()] == ["d1", "d2", "d0"]
    with pytest.raises(Conflict, match="named 'web-a'"):
        store.put_deployment(
            Deployment(id="d9", name="web-a", application_id="a1", group_id=DEFAULT_GROUP_ID)
        )
    store.set_deployment_status("d1", "Running", 5, current_release="r1")
    store.set_deployment_status("d1", "Success", 6)  # the current release stays
    got = store.deployment_by_name("web-a")
    assert got is not None and (got.status, got.current_release, got.updated_at) == (
        "Success",
        "r1",
        6,
    )
    # a put changes what it describes, never the status a rollout set
    store.put_deployment(
        Deployment(
            id="d1",
            name="web-a2",
            application_id="a1",
            group_id=DEFAULT_GROUP_ID,
            application_version="1",
            status="Created",
            updated_at=7,
        )
    )
    got = store.get_deployment("d1")
    assert got is not None
    assert (got.name, got.application_version, got.status, got.current_release) == (
        "web-a2",
        "1",
        "Success",
        "r1",
    )
    assert [d.id for d in store.deployments_using(application_id="a1", group_id="x")] == []
    assert len(store.deployments_using(application_id="a1")) == 3
    assert store.delete_deployment("d1") == set() and store.delete_deployment("d1") is None


def test_releases_and_jobs(store: SqlStore) -> None:
    deployed(store, "m1", "m2", "m3")
    assert store.next_release_seq("d1") == 1
    jobs = [
        ReleaseJob(id="j3", release_id="r1", machine_id="m3", batch=0),
        ReleaseJob(id="j2", release_id="r1", machine_id="m2", batch=1),
        ReleaseJob(id="j1", release_id="r1", machine_id="m1", batch=1),
    ]
    store.create_release(release("r1", "d1", 1, created_at=3), jobs)
    store.set_deployment_status("d1", "Failed", 3)  # a new release only once r1 ended
    store.create_release(release("r2", "d1", 2, created_at=2), [])
    assert store.next_release_seq("d1") == 3
    deployment = store.get_deployment("d1")
    assert deployment is not None and (deployment.status, deployment.updated_at) == ("Running", 2)
    assert [r.id for r in store.list_releases("d1")] == ["r1", "r2"]
    assert [r.id for r in store.releases_with_status("Running")] == ["r2", "r1"]
    assert [(j.id, j.status) for j in store.jobs("r1")] == [
        ("j3", "Created"),
        ("j1", "Created"),
        ("j2", "Created"),
    ]
    store.update_jobs(
        [
            ReleaseJob(
                id="j1",
                release_id="r1",
                machine_id="m1",
                batch=1,
                status="Success",
                message="ok",
                started_at=4,
                healthy_since=5,
                finished_at=6,
            ),
            ReleaseJob(id="j2", release_id="r1", machine_id="m2", batch=1, status="Failed"),
        ]
    )
    store.update_jobs([])
    got = {j.id: j for j in store.jobs("r1")}
    assert (got["j1"].status, got["j1"].message, got["j1"].healthy_since) == ("Success", "ok", 5)
    assert (got["j2"].status, got["j3"].status) == ("Failed", "Created")
    store.update_release("r1", status="Running", batch=1, message="", now=7, rolled_back=True)
    store.update_release("r1", status="Failed", batch=1, message="m2: boom", now=8)
    r1 = store.get_release("r1")
    assert r1 is not None
    assert (r1.status, r1.message, r1.rolled_back, r1.finished_at, r1.units) == (
        "Failed",
        "m2: boom",
        True,  # once rolled back, a release stays so
        0,  # not finished
        [UNIT],
    )
    store.update_release("r1", status="Failed", batch=1, message="", now=9, finished=True)
    r1 = store.get_release("r1")
    assert r1 is not None and (r1.finished_at, r1.updated_at) == (9, 9)
    assert store.releases_with_status("Running") == [store.get_release("r2")]


def test_targets_bump_exactly_the_machines_that_change(store: SqlStore) -> None:
    deployed(store, "m1", "m2", "m3")
    store.create_release(release("r1", "d1", 1), [])
    store.set_deployment_status("d1", "Success", 1)
    store.create_release(release("r2", "d1", 2), [])
    before = {m: revision(store, m) for m in ("m1", "m2", "m3")}
    assert store.set_targets("d1", {"m1": "r1", "m2": "r1"}) == {"m1", "m2"}
    assert store.set_targets("d1", {"m1": "r1"}) == set()  # unchanged: no bump
    assert store.set_targets("d1", {"m3": None}) == set()  # not there: no bump
    assert store.set_targets("d1", {}) == set()
    assert store.set_targets("d1", {"m1": "r2", "m2": None, "m3": "r1"}) == {"m1", "m2", "m3"}
    assert store.targets("d1") == {"m1": "r2", "m3": "r1"}
    assert {m: revision(store, m) - before[m] for m in before} == {"m1": 2, "m2": 2, "m3": 1}
    assert store.machine_targets("m1") == [("web-default", "r2")]
    assert store.machine_targets("m2") == []
    assert store.delete_deployment("d1") == {"m1", "m3"}
    assert {m: revision(store, m) - before[m] for m in before} == {"m1": 3, "m2": 2, "m3": 2}
    assert store.machine_targets("m1") == [] and store.get_release("r1") is None
    assert store.targets("d1") == {}


def test_a_machine_runs_its_deployments_by_name_of_its_own_tenant(store: SqlStore) -> None:
    deployed(store, "m1")
    machines(store, "mx", tenant="x")
    store.put_deployment(
        Deployment(id="d2", name="a-first", application_id="a1", group_id=DEFAULT_GROUP_ID)
    )
    store.create_release(release("r1", "d1", 1), [])
    store.create_release(release("r2", "d2", 1), [])
    store.set_targets("d1", {"m1": "r1", "mx": "r1"})
    store.set_targets("d2", {"m1": "r2"})
    assert store.machine_targets("m1") == [("a-first", "r2"), ("web-default", "r1")]
    assert store.machine_targets("mx") == []  # a deployment of another tenant
    assert store.machine_targets("nowhere") == []


def test_many_targets_in_one_change(store: SqlStore) -> None:
    """More machines than one IN list holds: read, written and bumped in chunks."""
    ids = [f"m{i:05}" for i in range(2 * IN_CHUNK + 7)]
    deployed(store, *ids)
    store.create_release(release("r1", "d1", 1), [])
    store.set_deployment_status("d1", "Success", 1)
    store.create_release(release("r2", "d1", 2), [])
    assert store.set_targets("d1", dict.fromkeys(ids, "r1")) == set(ids)
    half = ids[::2]
    assert store.set_targets("d1", dict.fromkeys(ids, "r1") | dict.fromkeys(half, "r2")) == set(
        half
    )
    assert revision(store, ids[0]) == 2 and revision(store, ids[1]) == 1
    assert sorted(store.targets("d1").values()).count("r2") == len(half)


def test_target_changes_is_the_difference() -> None:
    current = {"m1": "r1", "m2": "r1"}
    point, remove = target_changes(current, {"m1": "r1", "m2": "r2", "m3": "r1", "m4": None})
    assert (point, remove) == ({"m2": "r2", "m3": "r1"}, set())
    assert target_changes(current, {"m1": None, "m2": "r1"}) == ({}, {"m1"})


def test_groups_applications_deployments_of_the_same_names_in_two_tenants(
    store: SqlStore,
) -> None:
    machines(store, "ma", tenant="a")
    machines(store, "mb", tenant="b")
    store.ensure_builtin_group("b", 1)
    store.ensure_builtin_group("b", 2)  # once
    builtin_b = store.get_group(builtin_group_id("b"), tenant="b")
    assert builtin_b is not None and builtin_b.builtin and builtin_b.name == "default"
    assert builtin_b.created_at == 1
    assert builtin_group_id("default") == DEFAULT_GROUP_ID != builtin_b.id
    assert store.get_group(builtin_b.id, tenant="default") is None
    for tenant in ("a", "b"):
        store.put_group(MachineGroup(id=f"g-{tenant}", name="g", tenant=tenant))
        app = Application(id=f"app-{tenant}", name="web", tenant=tenant)
        store.put_application(app, version(app.id, 1, "1"))
        store.put_deployment(
            Deployment(
                id=f"d-{tenant}",
                name="web-g",
                application_id=app.id,
                group_id=f"g-{tenant}",
                tenant=tenant,
            )
        )
    with pytest.raises(Conflict):
        store.put_group(MachineGroup(id="g-a2", name="g", tenant="a"))
    with pytest.raises(Conflict):
        store.put_deployment(
            Deployment(id="d-a2", name="web-g", application_id="app-a", group_id="g-a", tenant="a")
        )
    assert [g.name for g in store.list_groups(tenant="a")] == ["g"]
    assert [g.name for g in store.list_groups(tenant="b")] == ["default", "g"]
    assert store.group_by_name("g", tenant="a").id == "g-a"  # type: ignore[union-attr]
    assert store.group_by_name("g") is None
    assert store.get_group("g-a", tenant="b") is None
    assert store.application_by_name("web", tenant="b").id == "app-b"  # type: ignore[union-attr]
    assert store.get_application("app-a", tenant="b") is None
    assert [a.id for a in store.list_applications(tenant="a")] == ["app-a"]
    assert store.deployment_by_name("web-g", tenant="a").id == "d-a"  # type: ignore[union-attr]
    assert store.get_deployment("d-a", tenant="b") is None
    assert store.get_deployment("d-a") is not None  # None: any tenant (the rollout loop)
    assert [d.id for d in store.list_deployments(tenant="b")] == ["d-b"]
    assert store.deployments_using(group_id="g-a", tenant="b") == []
    # an update by id never moves a record into another tenant
    store.put_group(MachineGroup(id="g-a", name="stolen", tenant="b"))
    assert store.get_group("g-a", tenant="a").name == "g"  # type: ignore[union-attr]
    store.put_application(Application(id="app-a", name="stolen", tenant="b"), None)
    assert store.get_application("app-a", tenant="a").name == "web"  # type: ignore[union-attr]
    store.put_deployment(
        Deployment(id="d-a", name="stolen", application_id="app-b", group_id="g-b", tenant="b")
    )
    assert store.get_deployment("d-a", tenant="a").name == "web-g"  # type: ignore[union-attr]
    # releases are their deployment's tenant's
    store.create_release(
        release("r-a", "d-a", 1), [ReleaseJob(id="j", release_id="r-a", machine_id="ma", batch=0)]
    )
    assert store.get_release("r-a", tenant="a") is not None
    assert store.get_release("r-a", tenant="b") is None
    # a machine runs only its own tenant's deployments
    store.set_targets("d-a", {"ma": "r-a"})
    assert store.machine_targets("ma") == [("web-g", "r-a")]


def test_a_missing_reference_is_an_integrity_error_not_a_conflict(store: SqlStore) -> None:
    app_with_version(store)
    with pytest.raises(sa.exc.IntegrityError):
        store.put_deployment(
            Deployment(id="d1", name="web", application_id="a1", group_id="no-such-group")
        )
    assert store.list_deployments() == []


def _waiting_on_a_lock(store: SqlStore) -> bool:
    """Whether a PostgreSQL session of this database waits for a lock (a row or key
    another transaction holds)."""
    activity = sa.table("pg_stat_activity", sa.column("wait_event_type"), sa.column("datname"))
    waiting = store._scalar(
        sa.select(sa.func.count())
        .select_from(activity)
        .where(
            activity.c.wait_event_type == "Lock",
            activity.c.datname == sa.func.current_database(),
        )
    )
    return bool(waiting)


@pytest.mark.parametrize(
    "put",
    [
        pytest.param(lambda s, i: s.put_group(MachineGroup(id=f"g{i}", name="racks")), id="group"),
        pytest.param(
            lambda s, i: s.put_application(Application(id=f"a{i}", name="racks"), None),
            id="application",
        ),
    ],
)
def test_a_name_another_coordinator_takes_meanwhile_is_a_conflict(
    new_store: Callable[..., SqlStore],
    new_database: Callable[[], str],
    put: Callable[[SqlStore, int], None],
) -> None:
    """Two coordinators on one database put the same name at once: one wins, the other
    gets the Conflict (on PostgreSQL its read saw no such name, its insert then waits
    for the winner's transaction and breaks the unique key)."""
    target = new_database()
    first, second = new_store(target), new_store(target)
    outcome: list[BaseException | None] = []

    def other() -> None:
        try:
            put(second, 2)
            outcome.append(None)
        except BaseException as error:  # reported to the test's thread
            outcome.append(error)

    thread = threading.Thread(target=other)
    with first.batch():
        put(first, 1)
        thread.start()
        if first.dialect == "postgresql":  # wait until the other's insert waits on ours
            deadline = time.monotonic() + 10
            while not _waiting_on_a_lock(first) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _waiting_on_a_lock(first)
        else:  # SQLite: the other waits for the write lock (BEGIN IMMEDIATE)
            time.sleep(0.2)
    thread.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    assert "'racks' already exists" in str(outcome[0])


def test_machine_targets_another_coordinator_set_are_seen(
    new_store: Callable[..., SqlStore], new_database: Callable[[], str], engine: str
) -> None:
    """Coordinators sharing PostgreSQL: a machine another one points at a release
    runs it here too (no cache of "machines with no deployment" hides it)."""
    if engine == "sqlite":
        pytest.skip("one coordinator per SQLite file")
    target = new_database()
    here, there = new_store(target), new_store(target)
    deployed(there, "m1")
    there.create_release(release("r1", "d1", 1), [])
    assert here.machine_targets("m1") == []
    there.set_targets("d1", {"m1": "r1"})
    assert here.machine_targets("m1") == [("web-default", "r1")]


def test_a_request_scoped_to_a_tenant_deploys_within_it(engine: str, store: SqlStore) -> None:
    """On PostgreSQL the database's own wall (row-level security) holds behind the
    module's tenant filters: a scoped request's reads of "any tenant" see its tenant
    only, and what it deploys still reaches its machines."""
    if engine != "postgresql":
        pytest.skip("row-level security is PostgreSQL's")
    machines(store, "ma", tenant="a")
    machines(store, "mb", tenant="b")
    for tenant in ("a", "b"):
        store.put_group(MachineGroup(id=f"g-{tenant}", name="g", tenant=tenant))
        app = Application(id=f"app-{tenant}", name="web", tenant=tenant)
        store.put_application(app, version(app.id, 1, "1"))
    token = TENANT_SCOPE.set("a")
    try:
        assert [g.id for g in store.list_groups()] == ["g-a"]
        assert [a.id for a in store.list_applications()] == ["app-a"]
        assert store.get_application("app-b") is None and store.versions("app-a") != []
        store.put_deployment(
            Deployment(id="d-a", name="web-g", application_id="app-a", group_id="g-a", tenant="a")
        )
        store.create_release(release("r-a", "d-a", 1), [])
        assert store.set_targets("d-a", {"ma": "r-a"}) == {"ma"}
        assert store.machine_targets("ma") == [("web-g", "r-a")]
        assert store.get_release("r-a", tenant="a") is not None
        assert store.delete_group("g-b") is False  # not there for this request
        with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
            store.put_group(MachineGroup(id="g-x", name="x", tenant="b"))
    finally:
        TENANT_SCOPE.reset(token)
    assert {g.id for g in store.list_groups()} >= {"g-a", "g-b"}
    assert revision(store, "ma") == 1 and revision(store, "mb") == 0


def test_a_second_release_while_one_runs_is_a_conflict_decided_by_the_database(
    store: SqlStore,
) -> None:
    """Two coordinators may take a deploy of one deployment at once: the service's lock
    is per process, so the store's transaction decides, and only one release starts."""
    deployed(store, "m1")
    store.create_release(release("r1", "d1", 1), [])
    with pytest.raises(Conflict, match="already has a release running"):
        store.create_release(release("r2", "d1", 2), [])
    assert [r.id for r in store.list_releases("d1")] == ["r1"]  # nothing of r2 stored
    store.set_deployment_status("d1", "Success", 2)
    store.create_release(release("r2", "d1", 2), [])
    with pytest.raises(Conflict, match="already has a release running"):
        store.create_release(release("r3", "d1", 2), [])  # r2's number, and d1 Running
