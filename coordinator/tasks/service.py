"""The task domain: definitions, runs, scheduling and the agent side of runs.

One service behind the Flotilla API family (coordinator/api/tasks.py). Runs wait
QUEUED in order and are placed (`placement.place`, pure) on connected machines with
Docker and room; the machine's agent gets a TaskStart and answers with TaskUpdates
(PENDING, RUNNING, STOPPED) and TaskOutput chunks, which are stored (each byte once)
and acknowledged; once a run is STOPPED and its whole log is stored the agent gets
TaskAck(final=True) and forgets the run.

Durability: every change is committed before it is acted on or acknowledged, so a
coordinator killed with -9 comes back with every run; agents resend what they hold
after the next Welcome (updates, unacknowledged output) and the coordinator resends
TaskStart for runs it placed and never heard about.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable

import msgspec

from coordinator.deploy.groups import is_member
from coordinator.errors import Invalid, NotFound
from coordinator.events import EventBus
from coordinator.hub.sessions import Hub, Session
from coordinator.models import MachineGroup
from coordinator.store.fence import FENCE, Fence
from coordinator.store.ports import MachineStore, TaskStore
from coordinator.tasks import definitions as defs
from coordinator.tasks.logs import CursorError, LogSlice, decode_cursor, slice_log
from coordinator.tasks.placement import MachineRoom, RunNeed, place
from coordinator.tasks.records import (
    RunEvent,
    RunQuery,
    TaskDefinition,
    TaskRun,
)
from proto import messages as m

log = logging.getLogger(__name__)

DOCKER = "docker"
DEFAULT_CLUSTER = "default"
STOP_GRACE_S = 10.0
LOG_READ_MAX = 1 << 20
"""Most bytes one logs call returns (the UI asks again at once while the token changes)."""
_ORDER = {"QUEUED": 0, "PENDING": 1, "RUNNING": 2, "STOPPED": 3}


class _Machine(msgspec.Struct):
    capabilities: frozenset[str]
    memory_mb: int
    cpu_millis: int
    hostname: str
    runs_tasks: bool
    """The agent reported Resources: it knows the task messages (older agents do not)."""


def _newer(stored: TaskRun, cached: TaskRun) -> bool:
    """Whether the stored run says more than this coordinator's copy: further along, or
    asked to stop since. Pure."""
    if stored.stop_requested and not cached.stop_requested:
        return True
    return _ORDER.get(stored.status, 0) > _ORDER.get(cached.status, 0)


def cluster_key(tenant: str, cluster: str) -> str:
    """A cluster is a tenant's: the same group name in two tenants is two clusters. Pure."""
    return f"{tenant}/{cluster}"


class TaskService:
    def __init__(
        self,
        store: TaskStore,
        machines: MachineStore,
        groups: Callable[[str], list[MachineGroup]],
        hub: Hub,
        events: EventBus,
        *,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.store = store
        self.machine_store = machines
        self.groups = groups
        self.hub = hub
        self.events = events
        self.stop_grace_s = stop_grace_s
        self._runs: dict[str, TaskRun] = {r.run_id: r for r in store.unfinished_runs()}
        """Runs still acted on (active, or stopped with their log incomplete)."""
        self._seq = store.max_run_seq()
        self._machines: dict[str, _Machine] = {}
        self._kick: asyncio.Event | None = None
        self._queue: list[
            tuple[list[TaskRun], list[RunEvent], Fence | None, asyncio.Future[None]]
        ] = []
        self._writing = False
        self._writers: set[asyncio.Task[None]] = set()
        hub.handlers.append(self._on_message)
        hub.on_connect.append(self._on_connect)
        hub.on_connected.append(self._on_connected)
        hub.on_state_change.append(self._on_state_change)
        hub.on_nudge.append(self._on_nudge)

    # --- definitions ------------------------------------------------------------------

    def create_definition(self, tenant: str, body: defs.DefinitionInput) -> TaskDefinition:
        defs.check(defs.definition_problems(body, create=True))
        group = body.group_name or defs.DEFAULT_GROUP
        definition = defs.new_definition(
            body, definition_id=f"{group}-{uuid.uuid4()}", tenant=tenant, now=time.time()
        )
        self.store.put_definition(definition)
        return definition

    def definition(self, tenant: str, definition_id: str) -> TaskDefinition:
        found = self.store.get_definition(tenant, definition_id)
        if found is None:
            raise NotFound(f"Definition with ID {definition_id} not found")
        return found

    def definition_by_alias(self, tenant: str, alias: str) -> TaskDefinition:
        found = self.store.definition_by_alias(tenant, alias)
        if found is None:
            raise NotFound(f"Definition with alias {alias} not found")
        return found

    def update_definition(
        self, tenant: str, definition_id: str, body: defs.DefinitionInput
    ) -> TaskDefinition:
        defs.check(defs.definition_problems(body, create=False))
        updated = defs.merged(self.definition(tenant, definition_id), body, time.time())
        self.store.put_definition(updated)
        return updated

    def delete_definition(self, tenant: str, definition_id: str) -> None:
        if not self.store.delete_definition(tenant, definition_id, time.time()):
            raise NotFound(f"Definition with ID {definition_id} not found")

    def list_definitions(
        self, tenant: str, query: defs.DefinitionQuery
    ) -> tuple[int, list[TaskDefinition]]:
        return defs.select_definitions(self.store.list_definitions(tenant), query)

    def group_names(self, tenant: str) -> list[str]:
        return sorted({d.group_name for d in self.store.list_definitions(tenant)})

    def tags(self, tenant: str) -> list[str]:
        return sorted({t for d in self.store.list_definitions(tenant) for t in d.tags})

    def clusters(self, tenant: str) -> list[str]:
        """`default` (every machine of the tenant) and the tenant's machine groups' names."""
        names = [g.name for g in self.groups(tenant) if not g.builtin and g.name != DEFAULT_CLUSTER]
        return [DEFAULT_CLUSTER, *sorted(names)]

    # --- runs -------------------------------------------------------------------------

    async def execute(
        self,
        tenant: str,
        definition: TaskDefinition,
        body: defs.ExecuteInput,
        *,
        require_owner: bool,
    ) -> TaskRun:
        defs.check(defs.execute_problems(body, require_owner=require_owner))
        cluster = body.cluster or DEFAULT_CLUSTER
        if cluster not in self.clusters(tenant):
            raise Invalid(f"cluster [{cluster}] does not exist")
        run_id = str(uuid.uuid4())
        now = time.time()
        self._seq += 1
        run = TaskRun(
            run_id=run_id,
            tenant=tenant,
            definition_id=definition.definition_id,
            alias=definition.alias,
            image=definition.image,
            group_name=definition.group_name,
            cluster=cluster,
            status="QUEUED",
            seq=self._seq,
            command=body.command if body.command else definition.command,
            memory=body.memory if body.memory else definition.memory,
            cpu=body.cpu if body.cpu else definition.cpu,
            env=defs.merged_env(definition.env, body.env or [], run_id),
            run_tags=dict(body.run_tags or {}),
            engine=body.engine or "docker",
            description=body.description or definition.alias,
            queued_at=now,
            retries=definition.retries if body.retries is None else body.retries,
        )
        await self._commit([run], [self._event(run, "Queued", f"queued on cluster {cluster}")])
        self._runs[run_id] = run
        self.kick()
        return run

    def run(self, tenant: str, run_id: str) -> TaskRun:
        found = self._runs.get(run_id) or self.store.get_run(run_id)
        if found is None or found.tenant != tenant:
            raise NotFound(f"Run with id {run_id} not found")
        return found

    def history(self, tenant: str, query: RunQuery) -> tuple[int, list[TaskRun]]:
        return self.store.list_runs(tenant, query)

    def run_events(self, tenant: str, run_id: str) -> list[RunEvent]:
        self.run(tenant, run_id)
        return self.store.run_events(run_id)

    def logs(self, tenant: str, run_id: str, last_seen: str) -> LogSlice:
        run = self.run(tenant, run_id)
        try:
            start = decode_cursor(last_seen)
        except CursorError as exc:
            raise Invalid(str(exc)) from None
        size = run.log_size
        if start > size:
            raise Invalid(f"last_seen {last_seen!r} is past the end of the log")
        data = self.store.read_log(run_id, start, LOG_READ_MAX) if start < size else b""
        capped = start + len(data) < size
        return slice_log(start, data, finished=run.status == "STOPPED" and not capped)

    def raw_log(self, tenant: str, run_id: str) -> bytes:
        run = self.run(tenant, run_id)
        return self.store.read_log(run_id, 0, max(run.log_size, 1))

    async def stop(self, tenant: str, run_id: str) -> None:
        """Stop a run: a queued one is just STOPPED; a placed one gets a TaskStop
        (now, or when its machine reconnects). A finished run: nothing to do."""
        run = self.run(tenant, run_id)
        if run.status == "QUEUED":
            now = time.time()
            stopped = msgspec.structs.replace(
                run,
                status="STOPPED",
                stop_requested=True,
                finished_at=now,
                exit_reason="stopped before it was placed",
            )
            self._runs.pop(run_id, None)
            await self._commit([stopped], [self._event(stopped, "Stopped", "stopped while queued")])
            self._finished(stopped)
            return
        if run.status not in ("PENDING", "RUNNING") or run.run_id not in self._runs:
            return
        if not run.stop_requested:
            run = msgspec.structs.replace(run, stop_requested=True)
            self._runs[run_id] = run
            await self._commit([run], [self._event(run, "Stopping", "stop requested")])
        await self._send(run.machine_id, m.TaskStop(run_id, self.stop_grace_s))

    # --- scheduling -------------------------------------------------------------------

    def kick(self) -> None:
        if self._kick is not None:
            self._kick.set()

    async def run_scheduler(self) -> None:
        """Place queued runs whenever something changed (execute, a run ended, a
        machine connected or reported new facts)."""
        self._kick = asyncio.Event()
        self._kick.set()
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self.schedule()
            except Exception:
                log.exception("task scheduling failed")
                await asyncio.sleep(1.0)
                self._kick.set()

    def rooms(self) -> list[MachineRoom]:
        """Connected machines with Docker, their clusters and what their runs use."""
        used: dict[str, list[int]] = {}
        for run in self._runs.values():
            if run.machine_id and run.status in ("PENDING", "RUNNING"):
                u = used.setdefault(run.machine_id, [0, 0])
                u[0] += run.memory
                u[1] += run.cpu
        groups: dict[str, list[MachineGroup]] = {}
        out: list[MachineRoom] = []
        for machine_id in list(self.hub.sessions):
            info = self._machines.get(machine_id)
            if info is None or not info.runs_tasks or DOCKER not in info.capabilities:
                continue
            machine = self.machine_store.get_machine(machine_id)
            if machine is None:
                continue
            tenant = machine.tenant
            if tenant not in groups:
                groups[tenant] = [g for g in self.groups(tenant) if not g.builtin]
            # A machine runs only its own tenant's runs: clusters are keyed by tenant.
            clusters = {cluster_key(tenant, DEFAULT_CLUSTER)}
            clusters |= {
                cluster_key(tenant, g.name) for g in groups[tenant] if is_member(g, machine)
            }
            u = used.get(machine_id, [0, 0])
            out.append(
                MachineRoom(
                    machine_id,
                    frozenset(clusters),
                    info.memory_mb,
                    info.cpu_millis,
                    memory_used=u[0],
                    cpu_used=u[1],
                )
            )
        return out

    async def schedule(self) -> int:
        """One placement pass: commit the placements, then send their TaskStarts."""
        waiting = sorted(
            (r for r in self._runs.values() if r.status == "QUEUED"), key=lambda r: r.seq
        )
        if not waiting:
            return 0
        needs = [
            RunNeed(r.run_id, cluster_key(r.tenant, r.cluster), r.memory, r.cpu) for r in waiting
        ]
        plan = place(needs, self.rooms())
        if not plan:
            return 0
        placed: list[TaskRun] = []
        events: list[RunEvent] = []
        for p in plan:
            info = self._machines.get(p.machine_id)
            run = msgspec.structs.replace(
                self._runs[p.run_id],
                status="PENDING",
                machine_id=p.machine_id,
                machine_host=info.hostname if info else "",
                acked=False,
            )
            placed.append(run)
            events.append(self._event(run, "Placed", f"placed on machine {p.machine_id}"))
        for run in placed:
            self._runs[run.run_id] = run
        await self._commit(placed, events)
        for run in placed:
            await self._send(run.machine_id, self._start_message(run))
            current = self._runs.get(run.run_id)
            if current is not None and current.stop_requested:  # stopped while committing
                await self._send(run.machine_id, m.TaskStop(run.run_id, self.stop_grace_s))
        return len(placed)

    @staticmethod
    def _start_message(run: TaskRun) -> m.TaskStart:
        return m.TaskStart(
            run_id=run.run_id,
            image=run.image,
            command=run.command,
            env={v.name: v.value for v in run.env},
            memory_mb=run.memory,
            cpu_millis=run.cpu,
        )

    # --- the agent link ---------------------------------------------------------------

    async def _send(self, machine_id: str, message: m.Message) -> bool:
        """Send to the machine's session here; without one, tell the other coordinators
        (its session may be on one of them): they derive the same message from the
        stored run (`_on_nudge`), which is committed before anything is sent."""
        session = self.hub.sessions.get(machine_id)
        if session is None:
            self.hub.announce([machine_id])
            return False
        try:
            await session.send(message)
        except (ConnectionError, RuntimeError) as exc:
            log.info("could not send %s to %s: %s", type(message).__name__, machine_id, exc)
            return False
        return True

    def _remember(
        self,
        machine_id: str,
        capabilities: Iterable[str],
        res: m.Resources | None,
        hostname: str | None = None,
    ) -> None:
        """Hello (with `hostname`) says everything; Facts without Resources keep them."""
        old = self._machines.get(machine_id) if hostname is None else None
        if res is None and old is not None:
            self._machines[machine_id] = msgspec.structs.replace(
                old, capabilities=frozenset(capabilities)
            )
            return
        self._machines[machine_id] = _Machine(
            capabilities=frozenset(capabilities),
            memory_mb=res.memory_mb if res is not None else 0,
            cpu_millis=res.cpu_millis if res is not None else 0,
            hostname=hostname if hostname is not None else (old.hostname if old else ""),
            runs_tasks=res is not None,
        )

    async def _on_connect(self, session: Session) -> None:
        hello = session.hello
        assert hello is not None
        self._remember(session.machine_id, hello.capabilities, hello.resources, hello.hostname)

    async def _on_connected(self, machine_ids: list[str]) -> None:
        """A wave of new sessions: what their agents must hold, one pass over the runs."""
        await self._resend(set(machine_ids), self._runs.values())
        self.kick()

    async def _resend(self, machine_ids: set[str], runs: Iterable[TaskRun]) -> None:
        """What the stored runs say these machines' agents must hold: the TaskStart of a
        placed run they never acknowledged, the TaskStop of a run asked to stop (an
        agent answers a repeat with the run's state)."""
        for run in sorted(runs, key=lambda r: r.seq):
            if run.machine_id not in machine_ids or run.machine_id not in self.hub.sessions:
                continue
            if run.status == "PENDING" and not run.acked:
                await self._send(run.machine_id, self._start_message(run))
            if run.stop_requested and run.status in ("PENDING", "RUNNING"):
                await self._send(run.machine_id, m.TaskStop(run.run_id, self.stop_grace_s))

    async def _on_nudge(self, machine_ids: list[str]) -> None:
        """Another coordinator placed or stopped runs on machines with a session here
        (#23): read their runs from the store, keep the ones this coordinator knew less
        of (its agents' updates then land on the current run), and send what they say."""
        wanted = set(machine_ids)
        stored = [
            r for r in await asyncio.to_thread(self.store.unfinished_runs) if r.machine_id in wanted
        ]
        for run in stored:
            cached = self._runs.get(run.run_id)
            if cached is None or _newer(run, cached):
                self._runs[run.run_id] = run
        await self._resend(wanted, [self._runs.get(r.run_id, r) for r in stored])

    async def _on_message(self, session: Session, message: m.Message) -> None:
        if isinstance(message, m.TaskOutput):
            await self._on_output(session, message)
        elif isinstance(message, m.TaskUpdate):
            await self._on_update(session, message)
        elif isinstance(message, m.Facts):
            self._remember(session.machine_id, message.capabilities, message.resources)
            self.kick()

    def _known(self, session: Session, run_id: str) -> TaskRun | None:
        run = self._runs.get(run_id) or self.store.get_run(run_id)
        if run is None or run.machine_id != session.machine_id:
            log.warning("machine %s reports run %s it was not given", session.machine_id, run_id)
            return None
        return run

    async def _unknown(self, session: Session, message: m.TaskUpdate | m.TaskOutput) -> None:
        """A run this coordinator never placed there (its database was restored, or
        the run was placed elsewhere): stopped, its output taken and dropped, and
        forgotten once stopped, so it neither runs nor waits on the machine forever."""
        if isinstance(message, m.TaskOutput):
            await session.send(m.TaskAck(message.run_id, message.offset + len(message.data)))
        elif message.state == "STOPPED":
            await session.send(m.TaskAck(message.run_id, message.log_bytes, final=True))
        else:
            await session.send(m.TaskStop(message.run_id, self.stop_grace_s))

    async def _on_output(self, session: Session, out: m.TaskOutput) -> None:
        run = self._known(session, out.run_id)
        if run is None:
            await self._unknown(session, out)
            return
        before = run.log_size
        size = await asyncio.to_thread(self.store.append_log, out.run_id, out.offset, out.data)
        cached = self._runs.get(out.run_id)
        if cached is not None and size != cached.log_size:
            cached = msgspec.structs.replace(cached, log_size=size)
            self._runs[out.run_id] = cached
            run = cached
        else:
            run = msgspec.structs.replace(run, log_size=size)
        if size != before:  # new bytes (a resent chunk is kept once, and told once)
            with contextlib.suppress(Exception):
                self.events.emit(
                    "task.run.output", tenant=run.tenant, subject=out.run_id, size=size
                )
        if self._complete(run):
            self._runs.pop(out.run_id, None)
            await session.send(m.TaskAck(out.run_id, size, final=True))
        else:
            await session.send(m.TaskAck(out.run_id, size))

    @staticmethod
    def _complete(run: TaskRun) -> bool:
        return run.status == "STOPPED" and 0 <= run.log_total <= run.log_size

    async def _on_update(self, session: Session, up: m.TaskUpdate) -> None:
        run = self._known(session, up.run_id)
        if run is None:
            await self._unknown(session, up)
            return
        now = time.time()
        at = up.at or now
        if run.status == "STOPPED":
            if self._complete(run):  # a resend after a lost final ack
                self._runs.pop(run.run_id, None)
                await session.send(m.TaskAck(run.run_id, run.log_size, final=True))
            return
        if run.status != "NEEDS_RETRY" and _ORDER[up.state] < _ORDER[run.status]:
            return  # an older state, resent
        changes: dict[str, object] = {"acked": True}
        events: list[RunEvent] = []
        if up.event:
            reason = {"PENDING": "Pending", "RUNNING": "Running", "STOPPED": "Exited"}[up.state]
            events.append(
                RunEvent(
                    run_id=run.run_id,
                    at=at,
                    reason=reason,
                    message=up.event,
                    source=session.machine_id,
                )
            )
        started = finished = False
        if up.state == run.status and run.acked and not events:
            return  # a resend of what is stored
        if up.state != run.status:
            changes["status"] = up.state
            if up.state in ("RUNNING", "STOPPED") and run.started_at is None:
                changes["started_at"] = at
                started = up.state == "RUNNING"
            if up.state == "RUNNING":
                events.append(
                    self._event(
                        run,
                        "Started",
                        f"started on {session.machine_id}",
                        at,
                        source=session.machine_id,
                    )
                )
            if up.state == "STOPPED":
                finished = True
                changes["finished_at"] = at
                changes["exit_code"] = up.exit_code
                changes["exit_reason"] = up.exit_reason or (
                    "stopped by request" if run.stop_requested else ""
                )
                changes["log_total"] = up.log_bytes
                code = "unknown" if up.exit_code is None else str(up.exit_code)
                events.append(
                    self._event(
                        run, "Exited", f"exited with code {code}", at, source=session.machine_id
                    )
                )
        new = msgspec.structs.replace(run, **changes)
        self._runs[new.run_id] = new
        await self._commit([new], events)
        if started:
            self._publish("task.run.started", new)
        if finished:
            self._publish("task.run.finished", new)
            self.kick()
            if self._complete(new):
                self._runs.pop(new.run_id, None)
                await session.send(m.TaskAck(new.run_id, new.log_size, final=True))

    async def _on_state_change(self, machine_id: str, state: str) -> None:
        """A lost machine's runs need a retry: NEEDS_RETRY, and run again once when
        their policy says so (as a new run, queued at the back)."""
        if state != "lost":
            return
        lost = [
            r
            for r in self._runs.values()
            if r.machine_id == machine_id and r.status in ("PENDING", "RUNNING")
        ]
        if not lost:
            return
        now = time.time()
        changed: list[TaskRun] = []
        events: list[RunEvent] = []
        for run in lost:
            old = msgspec.structs.replace(
                run, status="NEEDS_RETRY", exit_reason=f"machine {machine_id} was lost"
            )
            changed.append(old)
            events.append(
                self._event(old, "Lost", f"machine {machine_id} was lost", now, source=machine_id)
            )
            if run.retries > 0 and not run.stop_requested:
                self._seq += 1
                new_id = str(uuid.uuid4())
                retry = msgspec.structs.replace(
                    run,
                    run_id=new_id,
                    status="QUEUED",
                    seq=self._seq,
                    machine_id="",
                    machine_host="",
                    acked=False,
                    retries=run.retries - 1,
                    queued_at=now,
                    started_at=None,
                    finished_at=None,
                    exit_code=None,
                    exit_reason="",
                    log_size=0,
                    log_total=-1,
                    env=defs.merged_env(run.env, [], new_id),
                )
                changed.append(retry)
                events.append(self._event(old, "Retried", f"run again as {new_id}", now))
                events.append(self._event(retry, "Queued", f"retry of run {run.run_id}", now))
        for run in changed:
            if run.status == "NEEDS_RETRY":
                self._runs.pop(run.run_id, None)
            else:
                self._runs[run.run_id] = run
        await self._commit(changed, events)
        self.kick()

    # --- helpers ----------------------------------------------------------------------

    async def _commit(self, runs: list[TaskRun], events: list[RunEvent]) -> None:
        """Store runs and events durably; returns once committed. Group commit: what
        arrives while a transaction is being written goes into the next one, together
        (one fsync for many executes or agent updates), in arrival order.

        The writer is shared by every caller, so it runs in a clean context: started
        from fenced singleton work it would otherwise write the API's runs under that
        work's lease and refuse them once the lease is lost. Each caller's fence (its
        `FENCE`, usually none) is kept with its entry and applied to its own batch."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((runs, events, FENCE.get(), future))
        if not self._writing:
            self._writing = True
            task = asyncio.create_task(self._write_queue(), context=contextvars.Context())
            self._writers.add(task)
            task.add_done_callback(self._writers.discard)
        await future

    async def _write_queue(self) -> None:
        try:
            while self._queue:
                queued, self._queue = self._queue, []
                # consecutive entries under the same fence share a transaction
                for fence, group in itertools.groupby(queued, key=lambda q: q[2]):
                    await self._write_batch(fence, list(group))
        finally:
            self._writing = False

    async def _write_batch(
        self,
        fence: Fence | None,
        batch: list[tuple[list[TaskRun], list[RunEvent], Fence | None, asyncio.Future[None]]],
    ) -> None:
        runs = [r for b in batch for r in b[0]]
        events = [e for b in batch for e in b[1]]
        token = FENCE.set(fence)  # this writer task's own context, copied into the thread
        try:
            await asyncio.to_thread(self.store.put_runs, runs, events)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for *_, future in batch:
                if not future.done():
                    future.set_result(None)
        finally:
            FENCE.reset(token)

    @staticmethod
    def _event(
        run: TaskRun, reason: str, message: str, at: float | None = None, *, source: str = ""
    ) -> RunEvent:
        return RunEvent(
            run_id=run.run_id, at=at or time.time(), reason=reason, message=message, source=source
        )

    def _finished(self, run: TaskRun) -> None:
        self._publish("task.run.finished", run)
        self.kick()

    def _publish(self, kind: str, run: TaskRun) -> None:
        with contextlib.suppress(Exception):
            self.events.emit(
                kind,
                tenant=run.tenant,
                subject=run.run_id,
                definition_id=run.definition_id,
                alias=run.alias,
                status=run.status,
                exit_code=run.exit_code,
                machine=run.machine_id,
            )
