"""The task store (definitions, runs, events, logs) and the environment store
(environments, freeze windows, target groups, targets, promotions) on both engines:
each test runs once on SQLite and once on PostgreSQL (the `store` fixture)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from coordinator.envs.model import Environment, FreezeWindow, Promotion, Target, TargetGroup
from coordinator.errors import Conflict
from coordinator.store.sql import SqlStore, schema
from coordinator.store.sql.core import unique_name
from coordinator.store.sql.migrate import head
from coordinator.store.sql.tasks import env_needle
from coordinator.tasks.records import EnvVar, RunEvent, RunQuery, TaskDefinition, TaskRun

# --- tasks: definitions ------------------------------------------------------------------


def _definition(definition_id: str, alias: str, tenant: str = "t1", **kw: object) -> TaskDefinition:
    values: dict[str, object] = {"image": "img", "tenant": tenant}
    values.update(kw)
    return TaskDefinition(definition_id=definition_id, alias=alias, **values)  # type: ignore[arg-type]


def test_definitions_are_replaced_scoped_by_tenant_and_listed_by_id(store: SqlStore) -> None:
    store.put_definition(_definition("g-2", "b", env=[EnvVar("A", "1")], tags=["x"], cpu=250))
    store.put_definition(_definition("g-1", "a"))
    store.put_definition(_definition("g-3", "a", tenant="t2"))
    store.put_definition(_definition("G-9", "c"))  # bytewise: upper case first
    assert [d.definition_id for d in store.list_definitions("t1")] == ["G-9", "g-1", "g-2"]
    assert store.get_definition("t1", "g-2") == _definition(
        "g-2", "b", env=[EnvVar("A", "1")], tags=["x"], cpu=250
    )
    assert store.get_definition("t2", "g-2") is None
    got = store.definition_by_alias("t2", "a")
    assert got is not None and got.definition_id == "g-3"
    store.put_definition(_definition("g-2", "b2", image="other", memory=512))
    assert store.get_definition("t1", "g-2") == _definition("g-2", "b2", image="other", memory=512)
    assert store.definition_by_alias("t1", "b") is None


def test_a_live_alias_is_a_conflict_and_a_deleted_one_is_free(store: SqlStore) -> None:
    store.put_definition(_definition("g-1", "a"))
    with pytest.raises(Conflict, match="alias a already exists"):
        store.put_definition(_definition("g-2", "a"))
    store.put_definition(_definition("g-2", "a", tenant="t2"))  # another tenant's: fine
    assert store.delete_definition("t2", "g-1", 5.0) is False  # not that tenant's
    assert store.delete_definition("t1", "g-1", 5.0) is True
    assert store.delete_definition("t1", "g-1", 6.0) is False
    assert store.get_definition("t1", "g-1") is None
    assert store.definition_by_alias("t1", "a") is None
    assert store.list_definitions("t1") == []
    store.put_definition(_definition("g-2", "a"))
    got = store.definition_by_alias("t1", "a")
    assert got is not None and got.definition_id == "g-2"
    store.put_definition(_definition("g-1", "z"))  # put again: live again
    assert [d.definition_id for d in store.list_definitions("t1")] == ["g-1", "g-2"]


# --- tasks: runs -------------------------------------------------------------------------


def _run(run_id: str, seq: int, **kw: object) -> TaskRun:
    values: dict[str, object] = {
        "definition_id": "g-1",
        "alias": "a",
        "image": "img",
        "tenant": "t1",
    }
    values.update(kw)
    return TaskRun(run_id=run_id, seq=seq, **values)  # type: ignore[arg-type]


def test_runs_are_upserted_with_their_events_and_keep_their_log_size(store: SqlStore) -> None:
    run = _run(
        "r1",
        1,
        env=[EnvVar("A", "1"), EnvVar("B", 'q"uote')],
        run_tags={"owner_id": "me"},
        acked=True,
        exit_code=None,
        started_at=None,
    )
    store.put_runs(
        [run, _run("r2", 2)], [RunEvent(run_id="r1", at=1.0, reason="Queued", message="q")]
    )
    assert store.get_run("r1") == run
    assert store.get_run("nope") is None
    assert store.append_log("r1", 0, b"abc") == 3
    later = _run(
        "r1", 1, status="STOPPED", exit_code=3, started_at=2.5, finished_at=3.5, stop_requested=True
    )
    store.put_runs(
        [later],
        [
            RunEvent(run_id="r1", at=2.0, reason="Started", message="s", source="m1"),
            RunEvent(run_id="r1", at=1.5, reason="Placed", message="p", source="m1"),
        ],
    )
    got = store.get_run("r1")
    assert got is not None
    assert got.status == "STOPPED" and got.exit_code == 3 and got.stop_requested is True
    assert got.env == [] and got.run_tags == {} and got.acked is False
    assert got.log_size == 3  # put_runs never writes the stored log size
    assert [(e.reason, e.source) for e in store.run_events("r1")] == [
        ("Queued", ""),
        ("Started", "m1"),
        ("Placed", "m1"),
    ]  # in the order they were appended
    assert store.run_events("r2") == []
    store.put_runs([], [])  # nothing: no error
    assert store.max_run_seq() == 2


def test_max_run_seq_of_no_runs_is_zero(store: SqlStore) -> None:
    assert store.max_run_seq() == 0
    store.put_runs([_run("r1", 41), _run("r2", 7)], [])
    assert store.max_run_seq() == 41


def test_unfinished_runs_are_active_or_stopped_with_their_log_incomplete(
    store: SqlStore,
) -> None:
    store.put_runs(
        [
            _run("queued", 5, status="QUEUED"),
            _run("pending", 2, status="PENDING", machine_id="m"),
            _run("running", 3, status="RUNNING", machine_id="m"),
            _run("retry", 1, status="NEEDS_RETRY"),
            _run("stopped-unknown-total", 4, status="STOPPED", machine_id="m"),
            _run("stopped-short", 6, status="STOPPED", machine_id="m", log_total=5),
            _run("stopped-whole", 7, status="STOPPED", machine_id="m", log_total=2),
            _run("stopped-empty", 8, status="STOPPED", machine_id="m", log_total=0),
            _run("stopped-never-placed", 9, status="STOPPED"),
        ],
        [],
    )
    assert store.append_log("stopped-short", 0, b"abc") == 3
    assert store.append_log("stopped-whole", 0, b"ab") == 2
    assert [r.run_id for r in store.unfinished_runs()] == [
        "pending",
        "running",
        "stopped-unknown-total",
        "queued",
        "stopped-short",
    ]


def test_history_filters_counts_sorts_and_pages(store: SqlStore) -> None:
    store.put_runs(
        [
            _run(
                "r1",
                1,
                alias="build-web",
                group_name="ci",
                image="py:3",
                started_at=30.0,
                env=[EnvVar("STAGE", "prod"), EnvVar("X", "1")],
            ),
            _run(
                "r2",
                2,
                alias="build-api",
                group_name="ci",
                image="go:1",
                started_at=10.0,
                status="RUNNING",
                cluster="eu",
                env=[EnvVar("STAGE", "dev")],
            ),
            _run(
                "r3",
                3,
                alias="test",
                group_name="qa",
                image="py:3",
                started_at=None,
                status="STOPPED",
                env=[EnvVar("X", '{"name":"STAGE","value":"prod"}')],
            ),
            _run("r4", 4, alias="deploy", definition_id="g-2", started_at=20.0),
            _run("r5", 5, alias="build-web", started_at=20.0),
            _run("other", 6, alias="build-web", tenant="t2", started_at=40.0),
        ],
        [],
    )

    def ids(**kw: object) -> tuple[int, list[str]]:
        total, runs = store.list_runs("t1", RunQuery(**kw))  # type: ignore[arg-type]
        return total, [r.run_id for r in runs]

    # started_at descending, ties by seq, never-started last
    assert ids() == (5, ["r1", "r5", "r4", "r2", "r3"])
    assert ids(order="asc") == (5, ["r2", "r4", "r5", "r1", "r3"])
    assert ids(limit=2, offset=1) == (5, ["r5", "r4"])
    assert ids(limit=2, offset=10) == (5, [])
    assert ids(sort_by="run_id", order="asc") == (5, ["r1", "r2", "r3", "r4", "r5"])
    assert ids(sort_by="unknown", order="asc")[1] == ["r2", "r4", "r5", "r1", "r3"]
    # one value: substring (case-sensitive); several: exact
    assert ids(alias=["build"]) == (3, ["r1", "r5", "r2"])
    assert ids(alias=["BUILD"]) == (0, [])
    assert ids(alias=["build", "test"]) == (1, ["r3"])
    assert ids(alias=["%"]) == (0, [])  # no wildcards
    assert ids(image=["py"], group_name=["ci"]) == (1, ["r1"])
    assert ids(status=["RUNNING", "STOPPED"]) == (2, ["r2", "r3"])
    assert ids(cluster=["eu"]) == (1, ["r2"])
    assert ids(definition_id=["g-2"]) == (1, ["r4"])
    assert ids(run_id=["r2", "other"]) == (1, ["r2"])
    # env: the very pair, not a value that merely contains its text
    assert ids(env=[("STAGE", "prod")]) == (1, ["r1"])
    assert ids(env=[("STAGE", "prod"), ("X", "1")]) == (1, ["r1"])
    assert ids(env=[("STAGE", "pro")]) == (0, [])
    assert ids(env=[("X", '{"name":"STAGE","value":"prod"}')]) == (1, ["r3"])


def test_env_needle_is_the_encoded_pair() -> None:
    assert env_needle("A", 'b"c') == '{"name":"A","value":"b\\"c"}'


# --- tasks: logs -------------------------------------------------------------------------


def test_logs_keep_each_byte_once_and_read_by_window(store: SqlStore) -> None:
    store.put_runs([_run("r1", 1)], [])
    assert store.append_log("nope", 0, b"x") == 0
    assert store.append_log("r1", 0, b"abc") == 3
    assert store.append_log("r1", 0, b"abcdef") == 6  # resent with more: each byte once
    assert store.append_log("r1", 2, b"cd") == 6  # all stored already
    assert store.append_log("r1", 9, b"gap") == 6  # a gap: not kept
    binary = bytes(range(256))
    assert store.append_log("r1", 6, binary) == 262
    assert store.read_log("r1", 0, 1000) == b"abcdef" + binary
    assert store.read_log("r1", 2, 3) == b"cde"
    assert store.read_log("r1", 5, 3) == b"f" + binary[:2]
    assert store.read_log("r1", 262, 10) == b""
    assert store.read_log("nope", 0, 10) == b""
    got = store.get_run("r1")
    assert got is not None and got.log_size == 262


def test_definitions_and_runs_outlive_the_store(
    new_store: Callable[..., SqlStore], new_database: Callable[[], str]
) -> None:
    """What the service commits is in the database: a reopened store (a restarted
    coordinator) has it, and the schema has every migration."""
    target = new_database()
    store = new_store(target)
    store.put_definition(TaskDefinition(definition_id="g-1", alias="a", image="i", tenant="t1"))
    run = TaskRun(
        run_id="r1",
        definition_id="g-1",
        alias="a",
        image="i",
        tenant="t1",
        seq=1,
        env=[EnvVar("A", "1")],
        run_tags={"owner_id": "me"},
    )
    store.put_runs([run], [RunEvent(run_id="r1", at=1.0, reason="Queued", message="q")])
    assert store.append_log("r1", 0, b"abc") == 3
    assert store.append_log("r1", 0, b"abcdef") == 6
    store.close()
    store = new_store(target)
    assert store.schema_version == head()
    assert store.get_definition("t1", "g-1") is not None
    assert store.get_definition("other", "g-1") is None
    got = store.get_run("r1")
    assert got is not None and got.env == [EnvVar("A", "1")] and got.log_size == 6
    assert store.read_log("r1", 0, 100) == b"abcdef"
    assert [r.run_id for r in store.unfinished_runs()] == ["r1"]


# --- environments ------------------------------------------------------------------------


def _env(env_id: str, name: str, order: int = 0, tenant: str = "t1") -> Environment:
    return Environment(id=env_id, name=name, order_index=order, tenant=tenant)


def test_environments_are_scoped_ordered_renamed_and_deleted(store: SqlStore) -> None:
    store.put_environment(_env("e3", "prod", 2))
    store.put_environment(_env("e2", "staging", 1))
    store.put_environment(_env("e1", "dev", 1))
    store.put_environment(_env("e4", "Dev", 1))  # bytewise: upper case first
    store.put_environment(_env("x1", "dev", 0, tenant="t2"))
    assert [e.id for e in store.list_environments(tenant="t1")] == ["e4", "e1", "e2", "e3"]
    assert store.get_environment("e1", tenant="t1") == _env("e1", "dev", 1)
    assert store.get_environment("e1", tenant="t2") is None
    with pytest.raises(Conflict, match=r"an environment named 'dev' already exists \(id e1\)"):
        store.put_environment(_env("e9", "dev"))
    store.put_environment(_env("e1", "develop", 5))  # rename and reorder itself
    assert [e.id for e in store.list_environments(tenant="t1")] == ["e4", "e2", "e3", "e1"]
    assert store.get_environment("e1", tenant="t1") == _env("e1", "develop", 5)
    assert store.delete_environment("e1") is True
    assert store.delete_environment("e1") is False
    assert store.get_environment("e1", tenant="t1") is None


def test_freeze_windows_are_replaced_filtered_and_go_with_their_environment(
    store: SqlStore,
) -> None:
    store.put_environment(_env("e1", "dev"))
    store.put_environment(_env("e2", "prod"))
    store.put_environment(_env("x1", "dev", tenant="t2"))
    w1 = FreezeWindow(id="w1", environment_id="e1", start=20.0, end=30.0, tenant="t1")
    w2 = FreezeWindow(id="w2", environment_id="e2", start=10.0, end=15.0, tenant="t1")
    w3 = FreezeWindow(id="w3", environment_id="x1", start=5.0, end=6.0, tenant="t2")
    w0 = FreezeWindow(id="w0", environment_id="e1", start=20.0, end=21.0, tenant="t1")
    for w in (w1, w2, w3, w0):
        store.put_freeze_window(w)
    assert store.freeze_windows(tenant="t1") == [w2, w0, w1]
    assert store.freeze_windows(tenant=None) == [w3, w2, w0, w1]
    assert store.freeze_windows(tenant="t1", environment_id="e1") == [w0, w1]
    assert store.freeze_windows(tenant=None, environment_id="x1") == [w3]
    moved = FreezeWindow(id="w1", environment_id="e2", start=1.0, end=2.0, reason="r", tenant="t1")
    store.put_freeze_window(moved)
    assert store.freeze_windows(tenant="t1", environment_id="e2") == [moved, w2]
    assert store.delete_freeze_window("w2") is True
    assert store.delete_freeze_window("w2") is False
    assert store.delete_environment("e2") is True
    assert store.freeze_windows(tenant="t1") == [w0]


def test_target_groups_are_unique_per_environment(store: SqlStore) -> None:
    store.put_environment(_env("e1", "dev"))
    store.put_environment(_env("e2", "prod"))
    g1 = TargetGroup(id="g1", environment_id="e1", name="web", tenant="t1")
    g2 = TargetGroup(id="g2", environment_id="e1", name="db", tenant="t1")
    g3 = TargetGroup(id="g3", environment_id="e2", name="web", tenant="t1")
    for g in (g1, g2, g3):
        store.put_target_group(g)
    assert store.target_groups("e1") == [g2, g1]
    assert store.get_target_group("g1", tenant="t1") == g1
    assert store.get_target_group("g1", tenant="t2") is None
    with pytest.raises(Conflict, match=r"already has a target group named 'web' \(id g1\)"):
        store.put_target_group(TargetGroup(id="g9", environment_id="e1", name="web", tenant="t1"))
    renamed = TargetGroup(id="g1", environment_id="e1", name="api", description="d", tenant="t1")
    store.put_target_group(renamed)
    assert store.target_groups("e1") == [renamed, g2]
    assert store.delete_target_group("g1") is True
    assert store.delete_target_group("g1") is False
    assert store.delete_environment("e1") is True
    assert store.target_groups("e1") == []
    assert store.target_groups("e2") == [g3]


def _target(
    target_id: str, name: str, env: str = "e1", tenant: str = "t1", machine: str = ""
) -> Target:
    return Target(
        id=target_id,
        environment_id=env,
        name=name,
        target_type="machine",
        machine_id=machine,
        tenant=tenant,
    )


def test_targets_are_unique_per_tenant_and_move_between_environments(store: SqlStore) -> None:
    store.put_environment(_env("e1", "dev"))
    store.put_environment(_env("e2", "prod"))
    store.put_environment(_env("x1", "dev", tenant="t2"))
    a, b = _target("a", "web-2", machine="m1"), _target("b", "web-1", env="e2")
    other = _target("c", "web-1", env="x1", tenant="t2")
    for t in (a, b, other):
        store.put_target(t)
    assert store.targets_of(tenant="t1") == [b, a]
    assert store.targets_of(tenant=None) == [b, other, a]
    assert store.targets_of(tenant="t1", environment_id="e1") == [a]
    assert store.get_target("c", tenant="t1") is None
    with pytest.raises(Conflict, match=r"a target named 'web-1' already exists \(id b\)"):
        store.put_target(_target("z", "web-1"))
    moved = _target("a", "web-0", env="e2", machine="m2")
    store.put_target(moved)
    assert store.targets_of(tenant="t1", environment_id="e2") == [moved, b]
    assert store.targets_of(tenant="t1", environment_id="e1") == []
    with pytest.raises(sa.exc.IntegrityError):  # no such environment: not a name conflict
        store.put_target(_target("d", "web-9", env="nope"))
    assert store.delete_target("a") is True
    assert store.delete_target("a") is False
    assert store.get_target("a", tenant="t1") is None


def test_a_name_taken_between_check_and_write_is_a_conflict(store: SqlStore) -> None:
    """Another coordinator's insert may commit between the check and the write: the
    unique constraint's error is the same Conflict; any other integrity error is not."""
    store.put_environment(_env("e1", "dev"))
    row = {"id": "e2", "tenant": "t1", "name": "dev", "order_index": 0, "body": "{}"}
    with pytest.raises(Conflict, match="taken"), unique_name("taken"), store._tx() as db:
        db.execute(sa.insert(schema.environments).values(row))
    target = {"id": "t", "tenant": "t1", "environment_id": "nope", "name": "n", "body": "{}"}
    with pytest.raises(sa.exc.IntegrityError), unique_name("taken"), store._tx() as db:
        db.execute(sa.insert(schema.env_targets).values(target))
    assert [e.id for e in store.list_environments(tenant="t1")] == ["e1"]


def _promotion(pid: str, at: float, **kw: object) -> Promotion:
    values: dict[str, object] = {
        "environment_id": "e1",
        "application_id": "app",
        "version": "1",
        "tenant": "t1",
    }
    values.update(kw)
    return Promotion(id=pid, created_at=at, **values)  # type: ignore[arg-type]


def test_promotions_are_replaced_filtered_and_newest_first(store: SqlStore) -> None:
    p1 = _promotion("p1", 1.0)
    p2 = _promotion("p2", 2.0, status="deploying", release_id="rel-1")
    p3 = _promotion("p3", 2.0, environment_id="e2")
    p4 = _promotion("p4", 3.0, tenant="t2")
    for p in (p1, p2, p3, p4):
        store.put_promotion(p)
    assert store.promotions(tenant="t1") == [p2, p3, p1]
    assert store.promotions(tenant=None) == [p4, p2, p3, p1]
    assert store.promotions(tenant="t1", environment_id="e1") == [p2, p1]
    assert store.promotions(tenant="t1", status="deploying") == [p2]
    assert store.promotions(tenant=None, release_id="rel-1") == [p2]
    assert store.promotions(tenant="t1", environment_id="e1", status="completed") == []
    assert store.get_promotion("p4", tenant=None) == p4
    assert store.get_promotion("p4", tenant="t1") is None
    done = _promotion("p2", 2.0, status="completed", release_id="rel-1", message="ok")
    store.put_promotion(done)
    assert store.get_promotion("p2", tenant="t1") == done
    assert store.promotions(tenant="t1", status="deploying") == []
