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

Drift and stickers (`agent.drift`, `agent.stickers`) are worked out by one
observation pass that runs after every state-report pass and every
`drift_interval_s` (a stat of each unit file; a file is hashed only when its stat
changed), always between reconcile passes (under the reconcile lock, never while a
reconcile is due), so the agent's own work in progress is never drift. Runtimes come
from what the report pass read; units that look drifted are read again before they
are reported. Drift is sent when it changes and in answer to a DriftRequest; units
with the `repair` policy are handed to the reconciler (`plan(repair_units=...)`),
with a growing delay between attempts on the same unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Collection, Coroutine, Iterable
from pathlib import Path
from typing import Any

from agent import __version__, drift, facts, isolation
from agent.backends.base import BackendUnavailable, UnitRuntime, unit_kind
from agent.backends.docker import DockerBackend, DockerError
from agent.backends.systemd import SystemdBackend, SystemdError
from agent.config import AgentConfig
from agent.identity import Identity
from agent.journal import JournalError, JournalReader
from agent.link import Link
from agent.metrics import AgentMetrics
from agent.reconciler import Observed, Plan, Step, plan, sha256_text
from agent.stickers import StickerStore, by_deployment, is_current, sticker_for
from agent.store import AgentState, StateStore
from agent.unitfiles import UnitFiles
from proto import messages as m
from proto.container import ContainerOptionError, parse_container
from proto.desired import apply_diff
from proto.files import write_public

log = logging.getLogger(__name__)


def is_container(name: str) -> bool:
    return unit_kind(name) == "docker"

REPORT_COALESCE_S = 0.05
ISOLATION_CHECK_S = 1.0
SYSTEMD_RETRY_S = 30.0
REPAIR_MAX_DELAY_S = 60.0
"""Longest wait between two repairs of a unit that stays drifted (the first is at once)."""


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
        # drift and stickers (see the module docstring)
        self.sticker_store = StickerStore(config.resolved_sticker_dir())
        self.stickers: dict[str, m.Sticker] = self.sticker_store.load()
        self._stickers_sent: list[m.Sticker] | None = None
        self.files = UnitFiles(self.unit_dir)
        self._runtimes: dict[str, UnitRuntime] = {}
        self._container_hashes: dict[str, str | None] = {}
        self._owned: set[str] = set()
        self._owned_stale = True
        self._files_stale = True
        self._last_file_scan = 0.0
        self.drift: list[m.DriftEntry] = []
        self._drift_checked_at = 0.0
        self._drift_sent: list[m.DriftEntry] | None = None
        self._drift_wake = asyncio.Event()
        self._drift_requests: list[str] = []
        self._repair_units: set[str] = set()
        self._repair_tries: dict[str, tuple[int, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
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
            on_welcome=self._on_welcome,
        )
        self.link.last_contact = isolation.isolation_clock(
            contact_at=self.state.contact_at,
            in_session=self.state.in_session,
            now_wall=time.time(),
            now_mono=time.monotonic(),
        )
        self.systemd.on_change(self._on_unit_change)
        self.systemd.on_disconnect(self._on_systemd_lost)
        self.docker.on_change(self._on_container_change)
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
            asyncio.create_task(self._drift_loop()),
            asyncio.create_task(self._isolation_loop()),
        ]
        await stop.wait()
        log.info("stopping (units keep running)")
        for task in [*tasks, *self._log_tasks.values(), *self._tasks]:
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
        self._owned_stale = True
        self._mark_dirty(n for n in self.state.desired if is_container(n))
        self._reconcile_wake.set()

    def _on_docker_lost(self) -> None:
        self.docker_error = self.docker.last_error
        self._mark_dirty(n for n in self.state.desired if is_container(n))

    def _on_unit_change(self, name: str) -> None:
        if name in self.state.desired or name in self.state.applied:
            self._mark_dirty([name])

    def _on_container_change(self, name: str) -> None:
        """Every labelled container's events come here: ours, or an extra one (drift)."""
        if name in self.state.desired or name in self.state.applied:
            self._mark_dirty([name])
        else:
            self._owned_stale = True
            self._drift_wake.set()

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
        elif isinstance(message, m.DriftRequest):
            self._drift_requests.append(message.request_id)
            self._drift_wake.set()
        elif isinstance(message, m.ImageResolve):
            self._background(self._resolve_images(message))

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
                self.create_failed.pop(name, None)  # a changed unit gets a fresh try
        self.state.desired = desired
        self.state.revision = message.revision
        if self.state.isolated and self.link.connected.is_set():
            self._end_isolation("the coordinator's desired state arrived")
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
        stickers = self._sticker_list()
        self._stickers_sent = stickers
        self._drift_sent = None  # this session's coordinator gets the whole drift again
        self._drift_wake.set()
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
            stickers=stickers,
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

    # --- isolation (StopWhenIsolated, see agent.isolation) ----------------------------------

    async def _on_welcome(self, welcome: m.Welcome) -> None:
        if welcome.lost_after_s > 0:
            self.state.lost_after_s = welcome.lost_after_s
        self.state.in_session = True
        if self.state.isolated and welcome.desired_revision == self.state.revision:
            self._end_isolation("the coordinator has this machine's desired state unchanged")
        self.store.save(self.state)

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
            repair_containers, retry = self._repair_containers, self._retry_creates
            self._repair_containers = self._retry_creates = False
            repair_units, self._repair_units = self._repair_units, set()
            try:
                await self.reconcile(
                    repair=False,
                    repair_containers=repair_containers,
                    retry=retry,
                    repair_units=repair_units,
                )
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
        self,
        *,
        repair: bool,
        repair_containers: bool | None = None,
        retry: bool = False,
        repair_units: Collection[str] = (),
    ) -> None:
        """Plan and run the steps for the units of every connected backend.

        ``repair_containers`` (default: ``repair``) repairs containers alone; ``retry``
        (and any repair of containers) tries again to create containers that failed;
        ``repair_units`` are units whose drift is to be repaired (their policy).
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
                        if n in self.state.desired
                        and self.state.desired[n].hash == unit_hash
                        and n not in repair_units  # a drift repair (with its own backoff)
                    }
                result = plan(
                    {n: u for n, u in self._planned_desired().items() if n in planned},
                    {n: a for n, a in self.state.applied.items() if n in planned},
                    observed,
                    repair=repair,
                    repair_containers=repair_c,
                    blocked=blocked,
                    repair_units={n for n in repair_units if n in planned},
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
            self._files_stale = self._owned_stale = True
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
        runtimes, hashes = await self._read_runtimes(units, containers, (SystemdError,))
        self._runtimes.update(runtimes)
        return [self._status(n, runtimes.get(n), hashes.get(n)) for n in wanted]

    async def _read_runtimes(
        self,
        units: list[str],
        containers: list[str],
        systemd_errors: tuple[type[Exception], ...],
    ) -> tuple[dict[str, UnitRuntime], dict[str, str]]:
        """What systemd and Docker show now for these units, and the hash label of each
        of our containers (remembered for drift). A backend's failure is logged and its
        units left out; ``systemd_errors`` are the systemd failures handled so."""
        runtimes: dict[str, UnitRuntime] = {}
        hashes: dict[str, str] = {}
        if units and self.systemd.connected:
            try:
                runtimes.update(await self.systemd.states(units))
            except systemd_errors as exc:
                log.warning("reading unit states failed: %s", exc)
        if containers and self.docker.connected:
            try:
                infos = await self.docker.inspect(containers)
            except (BackendUnavailable, DockerError) as exc:
                log.warning("reading container states failed: %s", exc)
            else:
                runtimes.update({n: self.docker.runtime(n, i) for n, i in infos.items()})
                hashes = {n: i.hash for n, i in infos.items() if i is not None and i.owned}
                self._container_hashes.update({n: hashes.get(n) for n in infos})
        return runtimes, hashes

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
            self._drift_wake.set()

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

    # --- drift and stickers ---------------------------------------------------------------

    async def _drift_loop(self) -> None:
        """Observation passes: woken by state reports, requests and container events, and
        every `drift_interval_s` for the unit-file check."""
        interval = self.config.drift_interval_s
        while True:
            await self._wait_drift(interval)
            woken = self._drift_wake.is_set()
            self._drift_wake.clear()
            try:
                await self._observe_pass(woken)
            except Exception:
                log.exception("drift check failed")

    async def _wait_drift(self, period_s: float) -> None:
        """Until woken or ``period_s`` passed; or the link came up while a report waits for it."""
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._drift_wake.wait())}
        if self._unsent() and not self.link.connected.is_set():
            waits.add(asyncio.ensure_future(self.link.connected.wait()))
        try:
            await asyncio.wait(waits, timeout=period_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def _unsent(self) -> bool:
        return self._drift_sent != self.drift or self._stickers_sent != self._sticker_list()

    async def _observe_pass(self, woken: bool) -> None:
        """Work out drift and stickers between reconcile passes; send what changed."""
        async with self._reconcile_lock:
            requests, self._drift_requests = self._drift_requests, []
            if self._reconcile_wake.is_set() and not requests:
                return  # a reconcile is due; the report pass after it wakes us again
            now = time.monotonic()
            changed: set[str] = set()
            if (
                requests
                or self._files_stale
                or now - self._last_file_scan >= (self.config.drift_interval_s)
            ):
                self._files_stale, self._last_file_scan = False, now
                changed = self.files.scan(self._systemd_names(), prune=True)
            if woken or changed or requests or self._repair_tries:
                await self._check(fresh=bool(requests))
        await self._send_observations(requests)
        self._schedule_repairs()

    def _systemd_names(self) -> set[str]:
        names = set(self.state.applied) | {
            n for n, u in self.state.desired.items() if u.desired_state != "inactive"
        }
        return {n for n in names if not is_container(n)}

    async def _check(self, *, fresh: bool) -> None:
        """Drift and stickers from what was last read; what looks drifted (and, with
        ``fresh``, everything) is read again first, so a stale read is never reported."""
        if self._owned_stale and self.docker.connected:
            try:
                self._owned = set(await self.docker.list_owned())
                self._owned_stale = False
            except (BackendUnavailable, DockerError) as exc:
                log.warning("listing containers failed: %s", exc)
        names = set(self.state.desired) | set(self.state.applied) | self._owned
        if fresh:
            await self._read_again(names)
        entries = self._drift_entries(names)
        suspects = {e.unit for e in entries if e.kind != "file_changed"}
        if suspects and not fresh:
            await self._read_again(suspects)
            entries = self._drift_entries(names)
        if entries != self.drift:
            if entries:
                log.info(
                    "drift: %s",
                    "; ".join(
                        f"{e.unit} {e.kind}{' (repairing)' if e.repairing else ''}" for e in entries
                    ),
                )
            else:
                log.info("no drift")
        self.drift = entries
        self._drift_checked_at = time.time()
        await self._update_stickers()

    def _drift_entries(self, names: set[str]) -> list[m.DriftEntry]:
        return drift.compute(
            self.state.desired,
            self.state.applied,
            self._observed_view(names),
            owned=self._owned,
            problems=self._problems(),
            retried={n for n in self.create_failed if self.docker.connected},
        )

    def _observed_view(self, names: Iterable[str]) -> dict[str, Observed]:
        out: dict[str, Observed] = {}
        for name in names:
            rt = self._runtimes.get(name) or UnitRuntime(name)
            if is_container(name):
                out[name] = Observed(None, rt, container_hash=self._container_hashes.get(name))
            else:
                out[name] = Observed(self.files.sha(name), rt)
        return out

    def _problems(self) -> dict[str, str]:
        """Units the agent could not apply, and why (reported as state_differs)."""
        out = dict(self.conflicts)
        for name, (unit_hash, why) in self.create_failed.items():
            unit = self.state.desired.get(name)
            if unit is not None and unit.hash == unit_hash:
                out.setdefault(name, why)
        for name in self.state.desired:
            if is_container(name) and not self.docker.connected:
                reason = self.docker.last_error or self.docker_error
                out.setdefault(name, f"docker is not available on this machine: {reason}")
            elif not is_container(name) and not self.systemd.connected:
                out.setdefault(
                    name, f"systemd is not available on this machine: {self.systemd_error}"
                )
        return out

    async def _read_again(self, names: Iterable[str]) -> None:
        """Re-read units (files too); what differs from the last read is reported again."""
        wanted = set(names)
        units = [n for n in wanted if not is_container(n)]
        containers = [n for n in wanted if is_container(n)]
        self.files.scan(units)
        fresh, _ = await self._read_runtimes(units, containers, (SystemdError, BackendUnavailable))
        stale = {n for n, rt in fresh.items() if self._runtimes.get(n) != rt}
        self._runtimes.update(fresh)
        if stale:
            self._mark_dirty(stale & set(self.state.desired))

    async def _update_stickers(self) -> None:
        """Write the sticker of each deployment whose release is newly complete; remove
        those of deployments that left (once the agent has been told anything)."""
        groups = by_deployment(self.state.desired)
        for deployment, units in groups.items():
            current = self.stickers.get(deployment)
            if current is not None and is_current(current, units):
                continue
            names = [u.name for u in units]
            if sticker_for(deployment, units, self.state.applied, self._observed_view(names), 0):
                await self._read_again(names)  # written only from a fresh read
                sticker = sticker_for(
                    deployment,
                    units,
                    self.state.applied,
                    self._observed_view(names),
                    time.time(),
                )
                if sticker is None:
                    continue
                try:
                    self.sticker_store.write(sticker)
                except OSError as exc:
                    log.warning("writing the sticker of %s failed: %s", deployment, exc)
                    continue
                self.stickers[deployment] = sticker
                log.info("sticker: %s runs release %s", deployment, sticker.release)
        if self.state.revision <= 0:
            return
        for deployment in [d for d in self.stickers if d not in groups]:
            try:
                self.sticker_store.delete(deployment)
            except OSError as exc:
                log.warning("removing the sticker of %s failed: %s", deployment, exc)
                continue
            del self.stickers[deployment]
            log.info("sticker of %s removed (the deployment left this machine)", deployment)

    def _sticker_list(self) -> list[m.Sticker]:
        return [self.stickers[d] for d in sorted(self.stickers)]

    async def _send_observations(self, requests: list[str]) -> None:
        if not self.link.connected.is_set():
            return
        stickers = self._sticker_list()
        if stickers != self._stickers_sent and await self.link.send(m.Stickers(stickers)):
            self._stickers_sent = stickers
        entries, checked_at = self.drift, self._drift_checked_at
        for request_id in requests:
            report = m.DriftReport(entries, request_id=request_id, checked_at=checked_at)
            if await self.link.send(report):
                self._drift_sent = entries
        if entries != self._drift_sent and await self.link.send(
            m.DriftReport(entries, checked_at=checked_at)
        ):
            self._drift_sent = entries

    def _schedule_repairs(self) -> None:
        """Hand units with the `repair` policy to the reconciler: at once the first time,
        then after 2, 4, 8... s (up to a minute) while the same unit stays drifted."""
        names = drift.repair_names(self.drift)
        for name in [n for n in self._repair_tries if n not in names]:
            del self._repair_tries[name]
        now = time.monotonic()
        due: set[str] = set()
        for name in sorted(names):
            tries, last = self._repair_tries.get(name, (0, 0.0))
            if tries == 0 or now - last >= min(2.0**tries, REPAIR_MAX_DELAY_S):
                due.add(name)
                self._repair_tries[name] = (tries + 1, now)
        if due:
            log.info("repairing drift of %s", ", ".join(sorted(due)))
            self._repair_units |= due
            self._reconcile_wake.set()

    # --- images -------------------------------------------------------------------------

    async def _resolve_images(self, req: m.ImageResolve) -> None:
        """`ImageResolve`: each reference's digest and a reference naming exactly it."""
        digests: dict[str, str] = {}
        references: dict[str, str] = {}
        errors: dict[str, str] = {}

        async def one(image: str) -> None:
            if not self.docker.connected:
                reason = self.docker.last_error or self.docker_error
                errors[image] = f"docker is not available on this machine: {reason}"
                return
            try:
                digests[image], references[image] = await self.docker.resolve_image(image)
            except (DockerError, BackendUnavailable) as exc:
                errors[image] = str(exc)

        await asyncio.gather(*(one(i) for i in dict.fromkeys(req.images)))
        await self.link.send(m.ImageResolved(req.request_id, digests, references, errors))

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
