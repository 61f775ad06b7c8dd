"""The agent process: persisted desired state, reconcile, state reports, logs, link.

Start-up order is the promise: load the persisted desired state, connect to systemd
and Docker, re-adopt what runs and reconcile (repair mode) - all before, and without,
reaching the coordinator. Stopping the agent stops nothing but the agent.

Units go to a backend by name (`proto.units.backend_for`): `.container` units to
Docker, everything else to systemd. Each backend is planned only while it is
connected; the units of a missing backend are reported failed with the reason and
their applied state is kept untouched. When the Docker event stream comes back
(dockerd restarted, or started after the agent) containers alone get a repair pass:
the ones dockerd's shutdown stopped are started again, with the same container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from agent import __version__, facts
from agent.backends.base import BackendUnavailable, UnitRuntime
from agent.backends.docker import DockerBackend, DockerError
from agent.backends.systemd import SystemdBackend, SystemdError
from agent.config import AgentConfig
from agent.identity import Identity
from agent.journal import JournalError, JournalReader
from agent.link import Link
from agent.metrics import AgentMetrics
from agent.reconciler import Observed, Plan, Step, is_container, plan, sha256_text
from agent.store import AgentState, StateStore
from coordinator.desired import apply_diff
from coordinator.files import write_public
from proto import messages as m
from proto.container import ContainerOptionError, parse_container

log = logging.getLogger(__name__)

REPORT_COALESCE_S = 0.05
SYSTEMD_RETRY_S = 30.0


class Agent:
    def __init__(self, config: AgentConfig, machine_id: str) -> None:
        self.config = config
        self.machine_id = machine_id
        self.identity = Identity(config.state_path)
        self.store = StateStore(config.state_path)
        self.state: AgentState = self.store.load()
        self.unit_dir = Path(config.resolved_unit_dir())
        self.systemd = SystemdBackend(scope=config.systemd_scope, bus_address=self._bus_address())
        self.systemd_error = "not connected yet"
        self.journal = JournalReader(
            scope=config.systemd_scope, journal_dir=config.journal_dir or None
        )
        self.docker = DockerBackend(docker_host=config.docker_host)
        self.docker_error = "not connected yet"
        self.conflicts: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.create_failed: dict[str, tuple[str, str]] = {}
        """Container units whose container could not be made: name -> (hash, why)."""
        self._repair_containers = False
        self._retry_creates = False
        self.reported: dict[str, m.UnitStatus] = {}
        self.acked_revision = -1
        self._dirty: set[str] = set()
        self._report_wake = asyncio.Event()
        self._reconcile_wake = asyncio.Event()
        self._reconcile_lock = asyncio.Lock()
        self._log_tasks: dict[str, asyncio.Task[None]] = {}
        self._sent_caps: list[str] = []
        self.metrics = AgentMetrics()
        self.link = Link(
            self.identity,
            make_hello=self.hello,
            on_message=self.on_message,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            renew_fraction=config.renew_fraction,
            hub_url=config.hub_url,
            metrics=self.metrics,
        )
        self.systemd.on_change(self._on_unit_change)
        self.systemd.on_disconnect(self._on_systemd_lost)
        self.docker.on_change(self._on_unit_change)
        self.docker.on_connect(self._on_docker_back)
        self.docker.on_disconnect(self._on_docker_lost)

    def _bus_address(self) -> str | None:
        if self.config.bus_address:
            return self.config.bus_address
        if self.config.systemd_scope == "user":
            return os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        return None

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.connect_systemd()
        await self.connect_docker()
        await self.reconcile(repair=True)
        metrics_server = await self.metrics.serve(self.config.metrics_listen)
        tasks = [
            asyncio.create_task(self.link.run()),
            asyncio.create_task(self._reconcile_loop()),
            asyncio.create_task(self._report_loop()),
            asyncio.create_task(self._periodic_loop()),
        ]
        await stop.wait()
        log.info("stopping (units keep running)")
        for task in [*tasks, *self._log_tasks.values()]:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.systemd.close()
        await self.docker.close()
        if metrics_server is not None:
            await metrics_server.cleanup()

    async def connect_systemd(self) -> bool:
        if self.systemd.connected:
            return True
        try:
            await self.systemd.connect()
        except BackendUnavailable as exc:
            if self.systemd_error != str(exc):
                log.warning("systemd is not reachable: %s", exc)
            self.systemd_error = str(exc)
            return False
        self.systemd_error = ""
        log.info("connected to the systemd %s manager", self.config.systemd_scope)
        return True

    def _on_systemd_lost(self) -> None:
        self.systemd_error = "the connection to systemd was lost"
        log.warning("lost the connection to systemd; will reconnect")
        self._mark_dirty(self.state.desired)

    async def connect_docker(self) -> bool:
        """Connect once; after a failure the backend keeps trying by itself and
        `_on_docker_back` runs when it gets through."""
        if self.docker.connected:
            return True
        try:
            await self.docker.connect()
        except BackendUnavailable as exc:
            self.docker_error = str(exc)  # the backend logged it
            return False
        self.docker_error = ""
        return True

    def _on_docker_back(self) -> None:
        """dockerd (re)appeared: what its restart stopped is repaired, failed creates retried."""
        self.docker_error = ""
        self._repair_containers = True
        self._retry_creates = True
        self._mark_dirty(n for n in self.state.desired if is_container(n))
        self._reconcile_wake.set()

    def _on_docker_lost(self) -> None:
        self.docker_error = self.docker.last_error
        self._mark_dirty(n for n in self.state.desired if is_container(n))

    def _on_unit_change(self, name: str) -> None:
        if name in self.state.desired or name in self.state.applied:
            self._mark_dirty([name])

    def _mark_dirty(self, names: Iterable[str]) -> None:
        self._dirty.update(names)
        self._report_wake.set()

    # --- messages from the coordinator --------------------------------------------------

    async def on_message(self, message: m.Message) -> None:
        if isinstance(message, m.Desired):
            await self._on_desired(message)
        elif isinstance(message, m.LogRequest):
            self._start_log(message)
        elif isinstance(message, m.LogCancel):
            task = self._log_tasks.pop(message.request_id, None)
            if task is not None:
                task.cancel()

    async def _on_desired(self, message: m.Desired) -> None:
        if message.full:
            desired = {u.name: u for u in message.upserts}
        elif message.base_revision != self.state.revision:
            await self.link.send(
                m.Error(
                    "resync",
                    f"diff is based on revision {message.base_revision}, "
                    f"this machine has {self.state.revision}",
                )
            )
            return
        else:
            desired = apply_diff(self.state.desired, message.upserts, message.removes)
        removed = set(self.state.desired) - set(desired)
        for name, unit in desired.items():
            if self.state.desired.get(name) != unit:
                self.create_failed.pop(name, None)  # a changed unit gets a fresh try
        self.state.desired = desired
        self.state.revision = message.revision
        self.store.save(self.state)  # persisted before anything is acknowledged
        for name in removed:
            self.conflicts.pop(name, None)
            self.errors.pop(name, None)
            self.create_failed.pop(name, None)
        self._mark_dirty(removed)
        self._reconcile_wake.set()

    async def hello(self, hub_url: str) -> m.Hello:
        snapshot = await self.statuses(self.state.desired)
        self.reported = {s.name: s for s in snapshot}
        self.acked_revision = self.state.revision
        self._sent_caps = self.capabilities()
        return m.Hello(
            proto=m.PROTO_VERSION,
            machine_id=self.machine_id,
            hostname=facts.hostname(),
            primary_ip=facts.primary_ip(hub_url),
            metadata=dict(self.config.metadata),
            capabilities=self._sent_caps,
            applied_revision=self.state.revision,
            snapshot=snapshot,
            agent_version=__version__,
        )

    async def _announce_facts(self) -> None:
        """Tell the coordinator when a backend appeared or went away after Hello."""
        caps = self.capabilities()
        if caps != self._sent_caps and await self.link.send(m.Facts(caps)):
            self._sent_caps = caps

    def capabilities(self) -> list[str]:
        return [
            name
            for name, up in (("systemd", self.systemd.connected), ("docker", self.docker.connected))
            if up
        ]

    # --- reconcile ----------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wake.wait()
            self._reconcile_wake.clear()
            repair_containers, retry = self._repair_containers, self._retry_creates
            self._repair_containers = self._retry_creates = False
            try:
                await self.reconcile(repair=False, repair_containers=repair_containers, retry=retry)
            except Exception:
                log.exception("reconcile failed")

    async def _periodic_loop(self) -> None:
        """The safety net: reconnect systemd, re-read every unit, reconcile (and retry
        containers that could not be created, e.g. for an image that was missing)."""
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            if await self.connect_systemd() or self.docker.connected:
                self._retry_creates = True
                self._reconcile_wake.set()
            self._mark_dirty(self.state.desired)

    async def reconcile(
        self, *, repair: bool, repair_containers: bool | None = None, retry: bool = False
    ) -> None:
        """Plan and run the steps for the units of every connected backend.

        ``repair_containers`` (default: ``repair``) repairs containers alone; ``retry``
        (and any repair of containers) tries again to create containers that failed.
        """
        async with self._reconcile_lock:
            started = time.perf_counter()
            names = set(self.state.desired) | set(self.state.applied)
            units = {n for n in names if not is_container(n)} if self.systemd.connected else set()
            containers = {n for n in names if is_container(n)} if self.docker.connected else set()
            observed: dict[str, Observed] = {}
            if units:
                try:
                    observed.update(await self._observe(units))
                except (SystemdError, BackendUnavailable) as exc:
                    if not containers:
                        raise
                    log.warning("reading unit states failed: %s", exc)  # containers go on
                    units = set()
            if containers:
                try:
                    observed.update(await self._observe_containers(containers))
                except (BackendUnavailable, DockerError) as exc:
                    log.warning("reading container states failed: %s", exc)
                    containers = set()
            planned = units | containers
            if planned:
                repair_c = repair if repair_containers is None else repair_containers
                blocked = set()
                if not (retry or repair_c):
                    blocked = {
                        n
                        for n, (unit_hash, _) in self.create_failed.items()
                        if n in self.state.desired and self.state.desired[n].hash == unit_hash
                    }
                result = plan(
                    {n: u for n, u in self.state.desired.items() if n in planned},
                    {n: a for n, a in self.state.applied.items() if n in planned},
                    observed,
                    repair=repair,
                    repair_containers=repair_c,
                    blocked=blocked,
                )
                await self._execute(result)
                self.conflicts = {
                    n: c for n, c in self.conflicts.items() if n not in planned
                } | result.conflicts
                self.state.applied = {
                    n: a for n, a in self.state.applied.items() if n not in planned
                } | result.applied
                self.store.save(self.state)
                if result.steps:
                    log.info(
                        "reconciled %d step(s) in %.0f ms",
                        len(result.steps),
                        (time.perf_counter() - started) * 1000,
                    )
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
            self.metrics.units.set(len(self.state.desired))
            self._mark_dirty(set(self.state.desired) | set(self.reported))
            revision = self.state.revision
            if self.acked_revision != revision and await self.link.send(m.Applied(revision)):
                self.acked_revision = revision

    async def _observe(self, names: set[str]) -> dict[str, Observed]:
        runtimes = await self.systemd.states(names)
        return {n: Observed(self._file_sha(n), runtimes.get(n) or UnitRuntime(n)) for n in names}

    async def _observe_containers(self, names: set[str]) -> dict[str, Observed]:
        infos = await self.docker.inspect(names)
        out: dict[str, Observed] = {}
        for name, info in infos.items():
            if info is None:
                out[name] = Observed(None, UnitRuntime(name))
            elif not info.owned:
                out[name] = Observed(None, info.runtime, foreign=True)
            else:
                out[name] = Observed(None, info.runtime, container_hash=info.hash)
        return out

    def _file_sha(self, name: str) -> str | None:
        try:
            return sha256_text((self.unit_dir / name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return "unreadable"

    async def _execute(self, result: Plan) -> None:
        """Run the steps in order; steps of one kind run concurrently (one job each)."""
        for op in ("stop", "remove", "write", "create", "reload", "load", "start"):
            batch = [s for s in result.steps if s.op == op]
            if batch:
                await asyncio.gather(*(self._step(s) for s in batch))

    async def _step(self, step: Step) -> None:
        if step.unit and is_container(step.unit):
            await self._container_step(step)
            return
        try:
            if step.op == "write":
                self.unit_dir.mkdir(parents=True, exist_ok=True)
                write_public(self.unit_dir / step.unit, step.content.encode())
            elif step.op == "remove":
                (self.unit_dir / step.unit).unlink(missing_ok=True)
            elif step.op == "reload":
                await self.systemd.reload()
            elif step.op == "load":
                await self.systemd.state(step.unit)
            elif step.op in ("start", "stop"):
                call = self.systemd.start if step.op == "start" else self.systemd.stop
                outcome = await call(step.unit)
                if outcome != "done":
                    self.errors[step.unit] = f"{step.op} job finished with result '{outcome}'"
                else:
                    self.errors.pop(step.unit, None)
        except (SystemdError, OSError) as exc:
            log.warning("%s %s failed: %s", step.op, step.unit or "", exc)
            if step.unit:
                self.errors[step.unit] = f"{step.op} failed: {exc}"

    async def _container_step(self, step: Step) -> None:
        """One step for a container unit; failures are remembered and reported, not raised."""
        name = step.unit
        unit = self.state.desired.get(name)
        try:
            if step.op == "create":
                assert unit is not None
                try:
                    spec = parse_container(unit.options)
                except ContainerOptionError as exc:
                    raise DockerError(f"invalid unit: {exc}") from None
                await self.docker.ensure(unit, spec)
                self.create_failed.pop(name, None)
                self.errors.pop(name, None)
            elif step.op == "start":
                failed = self.create_failed.get(name)
                if failed is not None and unit is not None and failed[0] == unit.hash:
                    return  # its container could not be made; that is what is reported
                await self.docker.start(name)
                self.errors.pop(name, None)
            elif step.op == "stop":
                await self.docker.stop(name)
                self.errors.pop(name, None)
            elif step.op == "remove":
                await self.docker.remove(name)
                self.errors.pop(name, None)
                self.create_failed.pop(name, None)
        except (DockerError, BackendUnavailable) as exc:
            log.warning("%s %s failed: %s", step.op, name, exc)
            if step.op == "create" and unit is not None:
                self.create_failed[name] = (unit.hash, f"cannot create the container: {exc}")
            else:
                self.errors[name] = f"{step.op} failed: {exc}"

    # --- state reports ------------------------------------------------------------------

    async def statuses(self, names: Iterable[str]) -> list[m.UnitStatus]:
        wanted = sorted(n for n in names if n in self.state.desired)
        units = [n for n in wanted if not is_container(n) and n not in self.conflicts]
        containers = [n for n in wanted if is_container(n) and n not in self.conflicts]
        runtimes: dict[str, UnitRuntime] = {}
        hashes: dict[str, str] = {}
        if self.systemd.connected and units:
            try:
                runtimes.update(await self.systemd.states(units))
            except SystemdError as exc:
                log.warning("reading unit states failed: %s", exc)
        if self.docker.connected and containers:
            try:
                infos = await self.docker.inspect(containers)
            except (BackendUnavailable, DockerError) as exc:
                log.warning("reading container states failed: %s", exc)
            else:
                runtimes.update({n: self.docker.runtime(n, i) for n, i in infos.items()})
                hashes = {n: i.hash for n, i in infos.items() if i is not None and i.owned}
        return [self._status(n, runtimes.get(n), hashes.get(n)) for n in wanted]

    def _status(
        self, name: str, rt: UnitRuntime | None, running_hash: str | None = None
    ) -> m.UnitStatus:
        """One unit's report. ``running_hash`` is the hash label of a container unit's
        container: reported instead of the desired hash, so while an old container is
        being replaced the report says so (and fleet's currentState waits for the new)."""
        unit = self.state.desired[name]
        done = self.state.applied.get(name)
        target = done.state if done is not None and done.hash == unit.hash else ""
        if is_container(name):
            backend = "docker"
            failed = self.create_failed.get(name)
            reason = (
                self.conflicts.get(name)
                or (
                    "docker is not available on this machine: "
                    f"{self.docker.last_error or self.docker_error}"
                    if not self.docker.connected
                    else ""
                )
                or (failed[1] if failed is not None and failed[0] == unit.hash else "")
            )
        else:
            backend = "systemd"
            reason = self.conflicts.get(name) or (
                f"systemd is not available on this machine: {self.systemd_error}"
                if not self.systemd.connected
                else ""
            )
        if reason or rt is None:
            return m.UnitStatus(
                name=name,
                hash=unit.hash,
                load_state="error",
                active_state="failed",
                sub_state="failed",
                message=reason or f"no state reported by {backend}",
                target_state=target,
            )
        return m.UnitStatus(
            name=name,
            hash=running_hash or unit.hash,
            load_state=rt.load_state,
            active_state=rt.active_state,
            sub_state=rt.sub_state,
            main_pid=rt.main_pid,
            image_digest=rt.image_digest,
            message=self.errors.get(name, rt.message),
            target_state=target,
        )

    async def _report_loop(self) -> None:
        """Coalesce bursts of changes into one StateReport, sent within ~200 ms."""
        while True:
            await self._report_wake.wait()
            await asyncio.sleep(REPORT_COALESCE_S)
            self._report_wake.clear()
            names, self._dirty = self._dirty, set()
            try:
                await self._announce_facts()
                await self._report(names)
            except Exception:
                log.exception("state report failed")

    async def _report(self, names: set[str]) -> None:
        statuses = await self.statuses(names)
        changes = [s for s in statuses if self.reported.get(s.name) != s]
        removed = sorted(n for n in names if n not in self.state.desired and n in self.reported)
        if not changes and not removed:
            return
        if await self.link.send(m.StateReport(changes=changes, removed=removed)):
            self.metrics.reports.inc()
            for s in changes:
                self.reported[s.name] = s
            for n in removed:
                self.reported.pop(n, None)

    # --- logs ---------------------------------------------------------------------------

    def _start_log(self, req: m.LogRequest) -> None:
        task = asyncio.create_task(self._serve_log(req))
        self._log_tasks[req.request_id] = task
        task.add_done_callback(lambda _: self._log_tasks.pop(req.request_id, None))

    async def _serve_log(self, req: m.LogRequest) -> None:
        if is_container(req.unit):
            await self._serve_container_log(req)
            return
        try:
            if not req.follow:
                lines = await self.journal.tail(req.unit, req.lines, after_cursor=req.cursor)
                await self.link.send(m.LogChunk(req.request_id, lines=lines, done=True))
                return
            async for batch in self.journal.follow(
                req.unit, after_cursor=req.cursor, lines=req.lines
            ):
                if not await self.link.send(m.LogChunk(req.request_id, lines=batch)):
                    return
        except JournalError as exc:
            await self.link.send(m.LogChunk(req.request_id, done=True, error=str(exc)))

    async def _serve_container_log(self, req: m.LogRequest) -> None:
        """`LogRequest` for a `.container` unit: the same chunks, from `docker logs`."""
        try:
            if not self.docker.connected:
                raise DockerError(
                    "docker is not available on this machine: "
                    f"{self.docker.last_error or self.docker_error}"
                )
            if not req.follow:
                lines = await self.docker.logs(req.unit, req.lines, after_cursor=req.cursor)
                await self.link.send(m.LogChunk(req.request_id, lines=lines, done=True))
                return
            follow = self.docker.follow_logs(req.unit, after_cursor=req.cursor, lines=req.lines)
            async with contextlib.aclosing(follow) as batches:
                async for batch in batches:
                    if not await self.link.send(m.LogChunk(req.request_id, lines=batch)):
                        return
        except (DockerError, BackendUnavailable) as exc:
            await self.link.send(m.LogChunk(req.request_id, done=True, error=str(exc)))
