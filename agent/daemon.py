"""The agent process: the wiring of link, store, reconcile, executor and reporting.

Start-up order is the promise: load the persisted desired state, connect the
backends, re-adopt what runs and reconcile (repair mode) - all before, and without,
reaching the coordinator. Stopping the agent stops nothing but the agent.

Units go to a backend by name through one `Registry` (`proto.units.backend_for`:
`.container` units to Docker, everything else to systemd). Each backend is planned
only while it is available; the units of a missing backend are reported failed with
the reason and their applied state is kept untouched. When a backend comes back by
itself (the Docker event stream: dockerd restarted, or started after the agent) its
units alone get a repair pass: the containers dockerd's shutdown stopped are started
again, with the same container.

Reconcile is `agent.reconciler.plan` (pure, each step with its reason) run by
`agent.executor.Executor`; state reports, drift and stickers are `agent.reporting`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, Collection, Coroutine
from pathlib import Path
from typing import Any

from agent import __version__, facts, hoststats, isolation
from agent.backends.base import Backend, BackendError, BackendUnavailable, Observed, Registry
from agent.backends.docker import DockerBackend
from agent.backends.systemd import SystemdBackend
from agent.config import AgentConfig
from agent.executor import Executor
from agent.identity import Identity
from agent.journal import JournalReader
from agent.link import Link
from agent.metrics import AgentMetrics
from agent.reconciler import plan
from agent.reporting import Observer, Reporter, unavailable
from agent.stickers import StickerStore
from agent.store import AgentState, StateStore
from agent.tasks import TaskRunner
from agent.webops import WebOps, cgroup_usage
from proto import messages as m
from proto.desired import apply_diff

log = logging.getLogger(__name__)

ISOLATION_CHECK_S = 1.0


class Agent:
    def __init__(self, config: AgentConfig, machine_id: str) -> None:
        self.config = config
        self.machine_id = machine_id
        self.identity = Identity(config.state_path)
        self.store = StateStore(config.state_path)
        self.state: AgentState = self.store.load()
        self.unit_dir = Path(config.resolved_unit_dir())
        journal = JournalReader(scope=config.systemd_scope, journal_dir=config.journal_dir or None)
        systemd = SystemdBackend(
            scope=config.systemd_scope,
            bus_address=self._bus_address(),
            unit_dir=self.unit_dir,
            journal=journal,
        )
        docker = DockerBackend(docker_host=config.docker_host)
        self.backends = Registry([systemd, docker])
        self.executor = Executor(self.backends)
        self._repair_kinds: set[str] = set()
        """Backends that came back by themselves: their units get a repair pass."""
        self._retry_creates = False
        self.acked_revision = -1
        self._reconcile_wake = asyncio.Event()
        self._reconcile_lock = asyncio.Lock()
        self._repair_units: set[str] = set()
        self._log_tasks: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics = AgentMetrics()
        self.link = Link(
            self.identity,
            make_hello=self.hello,
            on_message=self.on_message,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            renew_fraction=config.renew_fraction,
            hub_urls=config.configured_hub_urls(),
            metrics=self.metrics,
            on_welcome=self._on_welcome,
        )
        self.tasks = TaskRunner(
            docker, config.state_path, self.link.send, network=config.task_network
        )
        """Batch task runs (#19): one-shot containers beside the units, not units."""
        self.webops = WebOps(
            config.state_path,
            self.link.send,
            self._restart_unit,
            usage=self._unit_usage,
            desired=lambda: self.state.desired.keys(),
            proxy_listen=config.webops_proxy_listen,
            nginx=config.webops_nginx,
            docker_host=config.docker_host,
            follow=self._follow_log,
            start_proxy=self._start_proxy,
        )
        """WebOps builds, env files, the agent's nginx and health checks (#20)."""
        self.link.last_contact = isolation.isolation_clock(
            contact_at=self.state.contact_at,
            in_session=self.state.in_session,
            now_wall=time.time(),
            now_mono=time.monotonic(),
        )
        self.reporter = Reporter(
            self.state,
            self.backends,
            self.executor,
            self.link,
            self.metrics,
            after_pass=lambda: self.observer.wake.set(),
            task_memory_mb=config.task_memory_mb,
        )
        self.observer = Observer(
            interval_s=config.drift_interval_s,
            state=self.state,
            registry=self.backends,
            executor=self.executor,
            reporter=self.reporter,
            link=self.link,
            sticker_store=StickerStore(config.resolved_sticker_dir()),
            reconcile_lock=self._reconcile_lock,
            reconcile_due=self._reconcile_wake,
            repair=self._repair,
        )
        for backend in self.backends:
            backend.subscribe(self)

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
        for backend in self.backends:
            await backend.open()
        await self.reconcile(repair=True)
        await self.tasks.open()
        metrics_server = await self.metrics.serve(self.config.metrics_listen)
        tasks = [
            asyncio.create_task(self.link.run()),
            asyncio.create_task(self._reconcile_loop()),
            asyncio.create_task(self.reporter.loop()),
            asyncio.create_task(self._periodic_loop()),
            asyncio.create_task(self.observer.loop()),
            asyncio.create_task(self._isolation_loop()),
            asyncio.create_task(self.webops.health_loop()),
            asyncio.create_task(hoststats.loop(self.link.send, self.config.state_path)),
        ]
        await stop.wait()
        log.info("stopping (units keep running)")
        for task in [*tasks, *self._log_tasks.values(), *self._tasks]:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.tasks.close()
        await self.webops.close()
        for backend in self.backends:
            await backend.close()
        if metrics_server is not None:
            await metrics_server.cleanup()

    # --- backend events (agent.backends.base.BackendEvents) ------------------------------

    def changed(self, backend: Backend, name: str) -> None:
        """A unit's state may have changed; for a labelling backend, an unknown name is
        something labelled as ours that is not desired (drift)."""
        if name in self.state.desired or name in self.state.applied:
            self.reporter.mark_dirty([name])
        elif backend.labels:
            self.observer.owned_stale = True
            self.observer.wake.set()

    def up(self, backend: Backend) -> None:
        """The backend came back by itself: what its restart stopped is repaired, failed
        creates are retried."""
        self._repair_kinds.add(backend.kind)
        if backend is self.tasks.docker:
            self._background(self.tasks.open())
        self._retry_creates = True
        self.observer.owned_stale = True
        self.reporter.mark_dirty(n for n in self.state.desired if backend.owns(n))
        self._reconcile_wake.set()

    def down(self, backend: Backend) -> None:
        self.reporter.mark_dirty(n for n in self.state.desired if backend.owns(n))

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
        elif isinstance(message, m.DriftRequest):
            self.observer.request(message.request_id)
        elif isinstance(message, m.ImageResolve):
            self._background(self._resolve_images(message))
        elif isinstance(message, m.HealthCheck):
            self._background(self._health(message))
        elif isinstance(message, m.TaskStart | m.TaskStop | m.TaskAck):
            await self.tasks.on_message(message)
        elif isinstance(message, m.WebBuild | m.WebEnv | m.WebAction):
            await self.webops.on_message(message)

    def _follow_log(
        self, unit: str, cursor: str, lines: int
    ) -> AsyncGenerator[list[m.LogLine], None]:
        """A unit's log as it comes (WebOps' runtime output), from its backend."""
        return self.backends.of(unit).log_follow(unit, after_cursor=cursor, lines=lines)

    async def _unit_usage(self, unit: str) -> tuple[int, int]:
        """(memory bytes, CPU ns) of a unit: a container's from dockerd's stats; a
        service's cgroup from systemd's accounting, else read from the cgroup's
        processes (`agent.webops.cgroup_usage`)."""
        backend = self.backends.of(unit)
        if isinstance(backend, DockerBackend):
            return await backend.usage(unit)
        if not isinstance(backend, SystemdBackend):
            return 0, 0
        memory, cpu, cgroup = await backend.usage(unit)
        if (not memory or not cpu) and cgroup:
            return await asyncio.to_thread(cgroup_usage, cgroup)
        return memory, cpu

    async def _start_proxy(self, unit: str, argv: list[str]) -> bool:
        """The agent's nginx as a transient service of its systemd manager (False:
        no manager connected; WebOps then runs nginx itself)."""
        backend = self.backends.get("systemd")
        if not isinstance(backend, SystemdBackend) or not backend.connected:
            return False
        result = await backend.start_transient(
            unit, argv, description="Moorage WebOps proxy (the agent's nginx)"
        )
        if result != "done":
            raise RuntimeError(f"its start job ended {result!r}")
        return True

    async def _restart_unit(self, unit: str) -> None:
        """A WebOps restart: the unit's own backend restarts it (systemd's restart job,
        or a container stopped and started again)."""
        backend = self.backends.of(unit)
        if isinstance(backend, SystemdBackend):
            await backend.restart(unit)
        elif isinstance(backend, DockerBackend):
            await backend.stop(unit)
            await backend.start(unit)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Long requests (image pulls) must not hold up the messages behind them."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                self.executor.changed(name)  # a changed unit gets a fresh try
        self.state.desired = desired
        self.state.revision = message.revision
        if self.state.isolated and self.link.connected.is_set():
            self._end_isolation("the coordinator's desired state arrived")
        self.store.save(self.state)  # persisted before anything is acknowledged
        self.executor.forget(removed)
        self.reporter.mark_dirty(removed)
        self._reconcile_wake.set()

    async def hello(self, hub_url: str) -> m.Hello:
        snapshot = await self.reporter.statuses(self.state.desired)
        self.reporter.reported = {s.name: s for s in snapshot}
        self.acked_revision = self.state.revision
        self.reporter.sent_caps = self.reporter.capabilities()
        return m.Hello(
            proto=m.PROTO_VERSION,
            machine_id=self.machine_id,
            hostname=facts.hostname(),
            primary_ip=facts.primary_ip(hub_url),
            metadata=dict(self.config.metadata),
            capabilities=self.reporter.sent_caps,
            applied_revision=self.state.revision,
            snapshot=snapshot,
            agent_version=__version__,
            stickers=self.observer.new_session(),
            resources=facts.resources(memory_cap_mb=self.config.task_memory_mb),
        )

    # --- isolation (StopWhenIsolated, see agent.isolation) ----------------------------------

    async def _on_welcome(self, welcome: m.Welcome) -> None:
        if welcome.lost_after_s > 0:
            self.state.lost_after_s = welcome.lost_after_s
        self.state.in_session = True
        if self.state.isolated and welcome.desired_revision == self.state.revision:
            self._end_isolation("the coordinator has this machine's desired state unchanged")
        self.store.save(self.state)
        await self.tasks.open()
        await self.tasks.on_welcome()

    def _end_isolation(self, why: str) -> None:
        self.state.isolated = False
        log.info("back in touch with the coordinator (%s): held units are released", why)
        self._reconcile_wake.set()

    async def _isolation_loop(self) -> None:
        while True:
            await asyncio.sleep(ISOLATION_CHECK_S)
            self.check_isolation(time.monotonic())

    def check_isolation(self, now_mono: float) -> None:
        connected = self.link.connected.is_set()
        since_contact = now_mono - self.link.last_contact
        if not connected and self.state.in_session:
            self.state.in_session = False  # the session ended: remember when we last heard
            self.state.contact_at = time.time() - since_contact
            self.store.save(self.state)
        if self.state.isolated or not isolation.is_isolated(
            connected=connected, since_contact=since_contact, lost_after=self.state.lost_after_s
        ):
            return
        self.state.isolated = True
        self.store.save(self.state)
        names = isolation.opted_in(self.state.desired)
        log.warning(
            "cut off from the coordinator for %.0f s (its lost_after is %.0f s): stopping "
            "the units marked StopWhenIsolated before it may start them elsewhere: %s",
            since_contact,
            self.state.lost_after_s,
            ", ".join(names) or "none",
        )
        self._reconcile_wake.set()

    def _planned_desired(self) -> dict[str, m.DesiredUnit]:
        """What reconcile works towards: the desired state, singletons held if isolated."""
        if self.state.isolated:
            return isolation.held(self.state.desired)
        return self.state.desired

    # --- reconcile ----------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wake.wait()
            self._reconcile_wake.clear()
            repair_kinds, retry = self._repair_kinds, self._retry_creates
            self._repair_kinds, self._retry_creates = set(), False
            repair_units, self._repair_units = self._repair_units, set()
            try:
                await self.reconcile(
                    repair=False, repair_kinds=repair_kinds, retry=retry, repair_units=repair_units
                )
            except Exception:
                log.exception("reconcile failed")

    def _repair(self, names: set[str]) -> None:
        """Units whose drift is to be repaired (their policy): the next reconcile does."""
        self._repair_units |= names
        self._reconcile_wake.set()

    async def _periodic_loop(self) -> None:
        """The safety net: reconnect the backends, re-read every unit, reconcile (and
        retry creates that failed, e.g. for an image that was missing)."""
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            opened = [await backend.open() for backend in self.backends]
            await self.tasks.open()
            if any(opened):
                self._retry_creates = True
                self._reconcile_wake.set()
            self.reporter.mark_dirty(self.state.desired)

    async def reconcile(
        self,
        *,
        repair: bool,
        repair_kinds: Collection[str] = (),
        retry: bool = False,
        repair_units: Collection[str] = (),
    ) -> None:
        """Plan and run the steps for the units of every available backend.

        ``repair_kinds`` repairs the units of those backends alone; ``retry`` (and any
        repair) tries again the creates that failed; ``repair_units`` are units whose
        drift is to be repaired (their policy). A backend whose units cannot be read is
        left out of this pass (if it is the only one with units, the pass fails).
        """
        async with self._reconcile_lock:
            started = time.perf_counter()
            names = set(self.state.desired) | set(self.state.applied)
            observed: dict[str, Observed] = {}
            planned: set[str] = set()
            failures: list[Exception] = []
            for kind, mine in self.backends.split(names).items():
                backend = self.backends.get(kind)
                if not mine or not backend.available:
                    continue
                try:
                    observed.update(await backend.observe(mine))
                except (BackendError, BackendUnavailable) as exc:
                    log.warning("reading %s states failed: %s", kind, exc)
                    failures.append(exc)
                    continue
                planned |= mine
            if failures and not planned:
                raise failures[0]
            if planned:
                blocked = set()
                if not (retry or repair or repair_kinds):
                    blocked = self.executor.blocked(self.state.desired, repair_units)
                result = plan(
                    {n: u for n, u in self._planned_desired().items() if n in planned},
                    {n: a for n, a in self.state.applied.items() if n in planned},
                    observed,
                    repair=repair,
                    repair_kinds=repair_kinds,
                    blocked=blocked,
                    repair_units={n for n in repair_units if n in planned},
                )
                await self.executor.run(result, self.state.desired)
                self.executor.record(result, planned)
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
            self.observer.files_stale = self.observer.owned_stale = True
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
            self.metrics.units.set(len(self.state.desired))
            self.reporter.mark_dirty(set(self.state.desired) | set(self.reporter.reported))
            revision = self.state.revision
            if self.acked_revision != revision and await self.link.send(m.Applied(revision)):
                self.acked_revision = revision

    # --- images -------------------------------------------------------------------------

    async def _resolve_images(self, req: m.ImageResolve) -> None:
        """`ImageResolve`: each reference's digest and a reference naming exactly it."""
        digests: dict[str, str] = {}
        references: dict[str, str] = {}
        errors: dict[str, str] = {}
        images = self.backends.images()

        async def one(image: str) -> None:
            if images is None:
                errors[image] = "no backend on this machine runs images"
                return
            if not images.available:
                errors[image] = unavailable(images.kind, images.unavailable_reason, False)
                return
            try:
                digests[image], references[image] = await images.resolve_image(image)
            except (BackendError, BackendUnavailable) as exc:
                errors[image] = str(exc)

        await asyncio.gather(*(one(i) for i in dict.fromkeys(req.images)))
        await self.link.send(m.ImageResolved(req.request_id, digests, references, errors))

    async def _health(self, req: m.HealthCheck) -> None:
        """`HealthCheck`: ask each backend now (systemd over D-Bus, dockerd over its API)
        for the named units; a backend that cannot answer says why."""
        backends: dict[str, str] = {}
        units: dict[str, str] = {}
        wanted = self.backends.split(req.units)
        for backend in self.backends:
            if not backend.available:
                backends[backend.kind] = backend.unavailable_reason or "not available"
                continue
            try:
                async with asyncio.timeout(5.0):
                    reading = await backend.read(sorted(wanted[backend.kind]))
            except (BackendError, BackendUnavailable, TimeoutError) as exc:
                backends[backend.kind] = str(exc) or "did not answer in 5 s"
                continue
            backends[backend.kind] = ""
            for name in wanted[backend.kind]:
                runtime = reading.runtimes.get(name)
                units[name] = runtime.active_state if runtime is not None else "not-found"
        await self.link.send(m.HealthReport(req.request_id, backends, units, time.time()))

    # --- logs ---------------------------------------------------------------------------

    def _start_log(self, req: m.LogRequest) -> None:
        task = asyncio.create_task(self._serve_log(req))
        self._log_tasks[req.request_id] = task
        task.add_done_callback(lambda _: self._log_tasks.pop(req.request_id, None))

    async def _serve_log(self, req: m.LogRequest) -> None:
        """`LogRequest`: the unit's backend's log (journal, `docker logs`) in chunks."""
        backend = self.backends.of(req.unit)
        try:
            if not req.follow:
                lines = await backend.log_tail(req.unit, req.lines, after_cursor=req.cursor)
                await self.link.send(m.LogChunk(req.request_id, lines=lines, done=True))
                return
            follow = backend.log_follow(req.unit, after_cursor=req.cursor, lines=req.lines)
            async with contextlib.aclosing(follow) as batches:
                async for batch in batches:
                    if not await self.link.send(m.LogChunk(req.request_id, lines=batch)):
                        return
        except (BackendError, BackendUnavailable) as exc:
            await self.link.send(m.LogChunk(req.request_id, done=True, error=str(exc)))
