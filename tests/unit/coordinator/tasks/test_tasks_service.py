"""TaskService in-process on real SQLite, the agent side driven through the hub's hooks
with a recording session (the link itself is tests/integration/test_tasks.py)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.errors import Conflict, NotFound
from coordinator.events import Event
from coordinator.hub.sessions import Session
from coordinator.server import Coordinator
from coordinator.store.fence import FENCE, Fence, LeaseLost
from coordinator.tasks import definitions as defs
from coordinator.tasks.records import RunQuery, TaskRun
from proto import messages as m
from proto.tokens import JOIN_KIND, parse_token
from tests.harness.databases import coordinator_database_url


class RecordingSession:
    def __init__(self, machine_id: str, memory_mb: int = 1024, *, tasks: bool = True) -> None:
        self.machine_id = machine_id
        self.hello = m.Hello(
            proto=m.PROTO_VERSION,
            machine_id=machine_id,
            hostname=f"{machine_id}.test",
            capabilities=["docker"],
            resources=m.Resources(memory_mb, 2000) if tasks else None,
        )
        self.sent: list[m.Message] = []

    async def send(self, message: m.Message) -> None:
        self.sent.append(message)


def last(session: RecordingSession) -> m.Message:
    return session.sent[-1]


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(
        CoordinatorConfig(
            state_dir=str(tmp_path / "state"),
            # MOORAGE_TEST_DATABASE=postgresql: the run's PostgreSQL, else <state>/moorage.db
            database_url=coordinator_database_url(tmp_path / "db"),
        )
    )
    try:
        yield c
    finally:
        c.storage.close()


def enrol(c: Coordinator, machine_id: str, tenant: str) -> None:
    """As the tenant's join token would: the machine belongs to `tenant`."""
    if c.storage.get_machine(machine_id) is not None:
        return
    made = c.tokens.create_join_tokens(tenant=tenant)
    token = parse_token(made.tokens[0], JOIN_KIND)
    c.storage.enroll(token.id, machine_id, serial=machine_id, not_after=1e12, now=1)


async def connect(
    c: Coordinator,
    machine_id: str,
    memory_mb: int = 1024,
    *,
    tasks: bool = True,
    tenant: str = "default",
) -> RecordingSession:
    enrol(c, machine_id, tenant)
    session = RecordingSession(machine_id, memory_mb, tasks=tasks)
    c.hub.sessions[machine_id] = cast(Session, session)
    await c.tasks._on_connect(cast(Session, session))
    await c.tasks._on_connected([machine_id])
    return session


async def test_definitions_and_runs_are_scoped_by_tenant(coordinator: Coordinator) -> None:
    tasks = coordinator.tasks
    made = tasks.create_definition("a", defs.DefinitionInput(alias="x", image="alpine"))
    with pytest.raises(NotFound):
        tasks.definition("b", made.definition_id)
    with pytest.raises(NotFound):
        tasks.definition_by_alias("b", "x")
    # The same alias in another tenant is another definition; in the same one, a conflict.
    tasks.create_definition("b", defs.DefinitionInput(alias="x", image="alpine"))
    with pytest.raises(Conflict):
        tasks.create_definition("a", defs.DefinitionInput(alias="x", image="busybox"))
    run = await tasks.execute("a", made, defs.ExecuteInput(), require_owner=False)
    with pytest.raises(NotFound):
        tasks.run("b", run.run_id)
    assert tasks.history("b", tasks_query())[0] == 0
    assert tasks.history("a", tasks_query())[0] == 1
    # A deleted definition is gone; its runs stay readable.
    tasks.delete_definition("a", made.definition_id)
    with pytest.raises(NotFound):
        tasks.definition("a", made.definition_id)
    assert tasks.run("a", run.run_id).definition_id == made.definition_id


def tasks_query() -> RunQuery:
    return RunQuery()


async def test_runs_are_placed_started_and_finished_with_events_on_the_bus(
    coordinator: Coordinator,
) -> None:
    tasks = coordinator.tasks
    seen: list[Event] = []
    coordinator.events.subscribe(seen.append, ["task.run."])
    definition = tasks.create_definition(
        "default", defs.DefinitionInput(alias="job", image="alpine", command="true", memory=600)
    )
    session = await connect(coordinator, "m1", memory_mb=1000)
    first = await tasks.execute("default", definition, defs.ExecuteInput(), require_owner=False)
    second = await tasks.execute("default", definition, defs.ExecuteInput(), require_owner=False)
    assert await tasks.schedule() == 1  # 600 + 600 > 1000: strict FIFO, one at a time
    start = session.sent[-1]
    assert isinstance(start, m.TaskStart) and start.run_id == first.run_id
    assert start.memory_mb == 600 and start.env["FLOTILLA_RUN_ID"] == first.run_id
    s = cast(Session, session)
    await tasks._on_message(s, m.TaskUpdate(first.run_id, "RUNNING", at=10.0))
    await tasks._on_message(s, m.TaskOutput(first.run_id, 0, b"hello\n"))
    assert session.sent[-1] == m.TaskAck(first.run_id, 6)
    await tasks._on_message(s, m.TaskOutput(first.run_id, 0, b"hello\n"))  # resent: kept once
    assert session.sent[-1] == m.TaskAck(first.run_id, 6)
    await tasks._on_message(
        s, m.TaskUpdate(first.run_id, "STOPPED", exit_code=0, at=11.0, log_bytes=6)
    )
    assert session.sent[-1] == m.TaskAck(first.run_id, 6, final=True)
    done = tasks.run("default", first.run_id)
    assert (done.status, done.exit_code, done.started_at, done.finished_at) == (
        "STOPPED",
        0,
        10.0,
        11.0,
    )
    assert [(e.kind, e.subject) for e in seen] == [
        ("task.run.started", first.run_id),
        ("task.run.output", first.run_id),  # once: the resent chunk added nothing
        ("task.run.finished", first.run_id),
    ]
    assert seen[1].data["size"] == 6
    assert seen[2].data["exit_code"] == 0
    assert await tasks.schedule() == 1
    assert tasks.run("default", second.run_id).status == "PENDING"
    # A start never acknowledged is sent again when the machine reconnects.
    session.sent.clear()
    await connect(coordinator, "m1", memory_mb=1000)
    again = coordinator.hub.sessions["m1"]
    assert [x.run_id for x in cast(RecordingSession, again).sent if isinstance(x, m.TaskStart)] == [
        second.run_id
    ]


async def test_stop_sends_a_task_stop_to_a_placed_run(coordinator: Coordinator) -> None:
    tasks = coordinator.tasks
    definition = tasks.create_definition("default", defs.DefinitionInput(alias="j", image="i"))
    session = await connect(coordinator, "m1")
    run = await tasks.execute("default", definition, defs.ExecuteInput(), require_owner=False)
    await tasks.schedule()
    await tasks.stop("default", run.run_id)
    assert session.sent[-1] == m.TaskStop(run.run_id, tasks.stop_grace_s)
    assert tasks.run("default", run.run_id).stop_requested


async def test_agents_without_task_support_get_no_runs(coordinator: Coordinator) -> None:
    tasks = coordinator.tasks
    definition = tasks.create_definition("default", defs.DefinitionInput(alias="j", image="i"))
    old = await connect(coordinator, "old", tasks=False)
    run = await tasks.execute("default", definition, defs.ExecuteInput(), require_owner=False)
    assert await tasks.schedule() == 0
    # Facts without Resources change nothing; with them, the machine takes runs.
    s = cast(Session, old)
    await tasks._on_message(s, m.Facts(["docker"]))
    assert await tasks.schedule() == 0
    await tasks._on_message(s, m.Facts(["docker"], m.Resources(512, 1000)))
    assert await tasks.schedule() == 1
    assert tasks.run("default", run.run_id).machine_id == "old"


async def test_runs_the_coordinator_never_placed_are_stopped_and_forgotten(
    coordinator: Coordinator,
) -> None:
    session = await connect(coordinator, "m1")
    s = cast(Session, session)
    await coordinator.tasks._on_message(s, m.TaskUpdate("stray", "RUNNING"))
    assert last(session) == m.TaskStop("stray", coordinator.tasks.stop_grace_s)
    await coordinator.tasks._on_message(s, m.TaskOutput("stray", 0, b"abc"))
    assert last(session) == m.TaskAck("stray", 3)
    await coordinator.tasks._on_message(s, m.TaskUpdate("stray", "STOPPED", log_bytes=3))
    assert last(session) == m.TaskAck("stray", 3, final=True)


async def test_a_tenants_runs_go_only_to_its_own_machines(coordinator: Coordinator) -> None:
    tasks = coordinator.tasks
    in_b = await connect(coordinator, "mb", memory_mb=4000, tenant="b")
    definition = tasks.create_definition("a", defs.DefinitionInput(alias="job", image="alpine"))
    run = await tasks.execute("a", definition, defs.ExecuteInput(), require_owner=False)
    assert await tasks.schedule() == 0  # only tenant b's machine is connected
    assert tasks.run("a", run.run_id).status == "QUEUED"
    assert not [x for x in in_b.sent if isinstance(x, m.TaskStart)]
    in_a = await connect(coordinator, "ma", memory_mb=1000, tenant="a")
    assert await tasks.schedule() == 1
    assert tasks.run("a", run.run_id).machine_id == "ma"
    assert isinstance(last(in_a), m.TaskStart)
    assert tasks.clusters("b") == ["default"]


async def test_group_commit_writes_each_callers_runs_under_its_own_fence(
    coordinator: Coordinator,
) -> None:
    """The shared writer of runs may be started by fenced singleton work (the leader's
    scheduler) whose lease is lost: the API's runs queued behind it are still written,
    unfenced; and a fenced caller queued behind an unfenced one is still refused."""
    tasks = coordinator.tasks
    definition = tasks.create_definition("default", defs.DefinitionInput(alias="j", image="a"))
    stale = contextvars.copy_context()
    stale.run(FENCE.set, Fence("leader", "a-coordinator-gone", 7))  # no such lease held

    def execute(context: contextvars.Context | None = None) -> asyncio.Task[object]:
        go = tasks.execute("default", definition, defs.ExecuteInput(), require_owner=False)
        return asyncio.create_task(go, context=context)

    fenced = execute(stale)
    await asyncio.sleep(0)  # it queues its run and starts the writer, under its fence
    unfenced = execute()
    with pytest.raises(LeaseLost):
        await fenced
    run = cast(TaskRun, await unfenced)
    assert coordinator.storage.get_run(run.run_id) is not None

    unfenced, fenced = execute(), execute(stale)
    run = cast(TaskRun, await unfenced)
    with pytest.raises(LeaseLost):
        await fenced
    assert tasks.history("default", tasks_query())[0] == 2
