"""The agent process: persisted desired state, reconcile, state reports, logs, link.

Start-up order is the promise: load the persisted desired state, connect to systemd,
re-adopt what runs and reconcile (repair mode) - all before, and without, reaching
the coordinator. Stopping the agent stops nothing but the agent.
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
from agent.backends.systemd import SystemdBackend, SystemdError
from agent.config import AgentConfig
from agent.identity import Identity
from agent.journal import JournalError, JournalReader
from agent.link import Link
from agent.reconciler import Observed, Plan, Step, plan, sha256_text
from agent.store import AgentState, StateStore
from coordinator import pki
from coordinator.desired import apply_diff
from proto import messages as m

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
        self.conflicts: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.reported: dict[str, m.UnitStatus] = {}
        self.acked_revision = -1
        self._dirty: set[str] = set()
        self._report_wake = asyncio.Event()
        self._reconcile_wake = asyncio.Event()
        self._reconcile_lock = asyncio.Lock()
        self._log_tasks: dict[str, asyncio.Task[None]] = {}
        self.link = Link(
            self.identity,
            make_hello=self.hello,
            on_message=self.on_message,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            renew_fraction=config.renew_fraction,
            hub_url=config.hub_url,
        )

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
        await self.reconcile(repair=True)
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
        self.systemd.on_change(self._on_unit_change)
        self.systemd.on_disconnect(self._on_systemd_lost)
        log.info("connected to the systemd %s manager", self.config.systemd_scope)
        return True

    def _on_systemd_lost(self) -> None:
        self.systemd_error = "the connection to systemd was lost"
        log.warning("lost the connection to systemd; will reconnect")
        self._mark_dirty(self.state.desired)

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
        self.state.desired = desired
        self.state.revision = message.revision
        self.store.save(self.state)  # persisted before anything is acknowledged
        for name in removed:
            self.conflicts.pop(name, None)
            self.errors.pop(name, None)
        self._mark_dirty(removed)
        self._reconcile_wake.set()

    async def hello(self, hub_url: str) -> m.Hello:
        snapshot = await self.statuses(self.state.desired)
        self.reported = {s.name: s for s in snapshot}
        self.acked_revision = self.state.revision
        return m.Hello(
            proto=m.PROTO_VERSION,
            machine_id=self.machine_id,
            hostname=facts.hostname(),
            primary_ip=facts.primary_ip(hub_url),
            metadata=dict(self.config.metadata),
            capabilities=self.capabilities(),
            applied_revision=self.state.revision,
            snapshot=snapshot,
            agent_version=__version__,
        )

    def capabilities(self) -> list[str]:
        return ["systemd"] if self.systemd.connected else []

    # --- reconcile ----------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wake.wait()
            self._reconcile_wake.clear()
            try:
                await self.reconcile(repair=False)
            except Exception:
                log.exception("reconcile failed")

    async def _periodic_loop(self) -> None:
        """The safety net: reconnect systemd, re-read every unit, reconcile."""
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            if await self.connect_systemd():
                self._reconcile_wake.set()
            self._mark_dirty(self.state.desired)

    async def reconcile(self, *, repair: bool) -> None:
        async with self._reconcile_lock:
            started = time.perf_counter()
            if self.systemd.connected:
                names = set(self.state.desired) | set(self.state.applied)
                observed = await self._observe(names)
                result = plan(self.state.desired, self.state.applied, observed, repair=repair)
                await self._execute(result)
                self.conflicts = dict(result.conflicts)
                self.state.applied = result.applied
                self.store.save(self.state)
                if result.steps:
                    log.info(
                        "reconciled %d step(s) in %.0f ms",
                        len(result.steps),
                        (time.perf_counter() - started) * 1000,
                    )
            self._mark_dirty(set(self.state.desired) | set(self.reported))
            revision = self.state.revision
            if self.acked_revision != revision and await self.link.send(m.Applied(revision)):
                self.acked_revision = revision

    async def _observe(self, names: set[str]) -> dict[str, Observed]:
        runtimes = await self.systemd.states(names)
        return {n: Observed(self._file_sha(n), runtimes.get(n) or UnitRuntime(n)) for n in names}

    def _file_sha(self, name: str) -> str | None:
        try:
            return sha256_text((self.unit_dir / name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return "unreadable"

    async def _execute(self, result: Plan) -> None:
        """Run the steps in order; steps of one kind run concurrently (one job each)."""
        for op in ("stop", "remove", "write", "reload", "load", "start"):
            batch = [s for s in result.steps if s.op == op]
            if batch:
                await asyncio.gather(*(self._step(s) for s in batch))

    async def _step(self, step: Step) -> None:
        try:
            if step.op == "write":
                self.unit_dir.mkdir(parents=True, exist_ok=True)
                pki.write_public(self.unit_dir / step.unit, step.content.encode())
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

    # --- state reports ------------------------------------------------------------------

    async def statuses(self, names: Iterable[str]) -> list[m.UnitStatus]:
        wanted = sorted(n for n in names if n in self.state.desired)
        runtimes: dict[str, UnitRuntime] = {}
        if self.systemd.connected:
            try:
                runtimes = await self.systemd.states([n for n in wanted if n not in self.conflicts])
            except SystemdError as exc:
                log.warning("reading unit states failed: %s", exc)
        return [self._status(n, runtimes.get(n)) for n in wanted]

    def _status(self, name: str, rt: UnitRuntime | None) -> m.UnitStatus:
        unit = self.state.desired[name]
        done = self.state.applied.get(name)
        target = done.state if done is not None and done.hash == unit.hash else ""
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
                message=reason or "no state reported by systemd",
                target_state=target,
            )
        return m.UnitStatus(
            name=name,
            hash=unit.hash,
            load_state=rt.load_state,
            active_state=rt.active_state,
            sub_state=rt.sub_state,
            main_pid=rt.main_pid,
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
