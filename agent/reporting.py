"""What the agent tells the coordinator about the machine: state reports, drift, stickers.

`Reporter`: units whose state may have changed are marked dirty; bursts of changes
are coalesced into one StateReport of what differs from what was last sent. Each
backend is read for its own units; a backend's failure is logged and its units are
reported from what is known (a missing backend makes them failed, with the reason).

`Observer`: drift and stickers (`agent.drift`, `agent.stickers`) are worked out by
one observation pass that runs after every state-report pass and every
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
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent import drift, facts
from agent.backends.base import BackendError, BackendUnavailable, Observed, Registry, UnitRuntime
from agent.executor import Executor
from agent.link import Link
from agent.metrics import AgentMetrics
from agent.stickers import StickerStore, by_deployment, is_current, sticker_for
from agent.store import AgentState
from proto import messages as m

log = logging.getLogger(__name__)

REPORT_COALESCE_S = 0.05
REPAIR_MAX_DELAY_S = 60.0
"""Longest wait between two repairs of a unit that stays drifted (the first is at once)."""


class Reporter:
    """State reports and the facts (capabilities) announced after Hello."""

    def __init__(
        self,
        state: AgentState,
        registry: Registry,
        executor: Executor,
        link: Link,
        metrics: AgentMetrics,
        after_pass: Callable[[], None],
        *,
        task_memory_mb: int = 0,
    ) -> None:
        self.state, self.registry, self.executor = state, registry, executor
        self.task_memory_mb = task_memory_mb
        self.link, self.metrics, self._after_pass = link, metrics, after_pass
        self.reported: dict[str, m.UnitStatus] = {}
        self.runtimes: dict[str, UnitRuntime] = {}
        """The last runtime read of each unit (drift and stickers work from these)."""
        self.versions: dict[str, str | None] = {}
        """The version a backend's runtime object carries (a container's hash label)."""
        self.sent_caps: list[str] = []
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def mark_dirty(self, names: Iterable[str]) -> None:
        self._dirty.update(names)
        self._wake.set()

    def capabilities(self) -> list[str]:
        return [b.kind for b in self.registry if b.available]

    async def statuses(self, names: Iterable[str]) -> list[m.UnitStatus]:
        wanted = sorted(n for n in names if n in self.state.desired)
        runtimes, hashes = await self.read(n for n in wanted if n not in self.executor.conflicts)
        self.runtimes.update(runtimes)
        return [self.status(n, runtimes.get(n), hashes.get(n)) for n in wanted]

    async def read(self, names: Iterable[str]) -> tuple[dict[str, UnitRuntime], dict[str, str]]:
        """What each unit's backend shows now, and the version label of each unit's
        runtime object (remembered for drift). A backend's failure is logged and its
        units left out."""
        runtimes: dict[str, UnitRuntime] = {}
        hashes: dict[str, str] = {}
        for kind, wanted in self.registry.split(names).items():
            backend = self.registry.get(kind)
            if not wanted or not backend.available:
                continue
            try:
                reading = await backend.read(sorted(wanted))
            except (BackendError, BackendUnavailable) as exc:
                log.warning("reading %s states failed: %s", kind, exc)
                continue
            runtimes.update(reading.runtimes)
            self.versions.update(reading.hashes)
            hashes.update({n: h for n, h in reading.hashes.items() if h is not None})
        return runtimes, hashes

    def status(
        self, name: str, rt: UnitRuntime | None, running_hash: str | None = None
    ) -> m.UnitStatus:
        """One unit's report. ``running_hash`` is the version label of the unit's runtime
        object (a container's hash): reported instead of the desired hash, so while an
        old container is being replaced the report says so (and fleet's currentState
        waits for the new)."""
        unit = self.state.desired[name]
        done = self.state.applied.get(name)
        target = done.state if done is not None and done.hash == unit.hash else ""
        backend = self.registry.of(name)
        reason = (
            self.executor.conflicts.get(name)
            or unavailable(backend.kind, backend.unavailable_reason, backend.available)
            or self.executor.problem(name, unit)
        )
        if reason or rt is None:
            return m.UnitStatus(
                name=name,
                hash=unit.hash,
                load_state="error",
                active_state="failed",
                sub_state="failed",
                message=reason or f"no state reported by {backend.kind}",
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
            message=self.executor.errors.get(name, rt.message),
            target_state=target,
        )

    async def loop(self) -> None:
        """Coalesce bursts of changes into one StateReport, sent within ~200 ms."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(REPORT_COALESCE_S)
            self._wake.clear()
            names, self._dirty = self._dirty, set()
            try:
                await self.announce_facts()
                await self.report(names)
            except Exception:
                log.exception("state report failed")
            self._after_pass()

    async def report(self, names: set[str]) -> None:
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

    async def announce_facts(self) -> None:
        """Tell the coordinator when a backend appeared or went away after Hello."""
        caps = self.capabilities()
        if caps != self.sent_caps and await self.link.send(
            m.Facts(caps, resources=facts.resources(memory_cap_mb=self.task_memory_mb))
        ):
            self.sent_caps = caps


def unavailable(kind: str, reason: str, available: bool) -> str:
    """The report of a unit whose backend is missing ("" when it is there)."""
    return "" if available else f"{kind} is not available on this machine: {reason}"


class Observer:
    """Drift and stickers (module docstring): observation passes and what they send."""

    def __init__(
        self,
        *,
        interval_s: float,
        state: AgentState,
        registry: Registry,
        executor: Executor,
        reporter: Reporter,
        link: Link,
        sticker_store: StickerStore,
        reconcile_lock: asyncio.Lock,
        reconcile_due: asyncio.Event,
        repair: Callable[[set[str]], None],
    ) -> None:
        self.interval_s = interval_s
        self.state, self.registry, self.executor = state, registry, executor
        self.reporter, self.link = reporter, link
        self.sticker_store = sticker_store
        self.stickers: dict[str, m.Sticker] = sticker_store.load()
        self.stickers_sent: list[m.Sticker] | None = None
        self._lock, self._reconcile_due, self._repair = reconcile_lock, reconcile_due, repair
        self.owned: dict[str, set[str]] = {}
        """Per labelling backend, the units of everything it finds labelled as ours."""
        self.owned_stale = True
        self.files_stale = True
        self._last_file_scan = 0.0
        self.drift: list[m.DriftEntry] = []
        self._checked_at = 0.0
        self.drift_sent: list[m.DriftEntry] | None = None
        self.wake = asyncio.Event()
        self._requests: list[str] = []
        self._repair_tries: dict[str, tuple[int, float]] = {}

    def request(self, request_id: str) -> None:
        """A DriftRequest: answered by the next pass, from a fresh read."""
        self._requests.append(request_id)
        self.wake.set()

    def new_session(self) -> list[m.Sticker]:
        """Hello: the stickers it carries; this session's coordinator gets the whole drift."""
        stickers = self.sticker_list()
        self.stickers_sent = stickers
        self.drift_sent = None
        self.wake.set()
        return stickers

    async def loop(self) -> None:
        """Observation passes: woken by state reports, requests and backend events, and
        every `interval_s` for the unit-file check."""
        while True:
            await self._wait(self.interval_s)
            woken = self.wake.is_set()
            self.wake.clear()
            try:
                await self.observe(woken)
            except Exception:
                log.exception("drift check failed")

    async def _wait(self, period_s: float) -> None:
        """Until woken or ``period_s`` passed; or the link came up while a report waits for it."""
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self.wake.wait())}
        if self._unsent() and not self.link.connected.is_set():
            waits.add(asyncio.ensure_future(self.link.connected.wait()))
        try:
            await asyncio.wait(waits, timeout=period_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def _unsent(self) -> bool:
        return self.drift_sent != self.drift or self.stickers_sent != self.sticker_list()

    async def observe(self, woken: bool) -> None:
        """Work out drift and stickers between reconcile passes; send what changed."""
        async with self._lock:
            requests, self._requests = self._requests, []
            if self._reconcile_due.is_set() and not requests:
                return  # a reconcile is due; the report pass after it wakes us again
            now = time.monotonic()
            changed: set[str] = set()
            if requests or self.files_stale or now - self._last_file_scan >= self.interval_s:
                self.files_stale, self._last_file_scan = False, now
                names = set(self.state.applied) | {
                    n for n, u in self.state.desired.items() if u.desired_state != "inactive"
                }
                for kind, mine in self.registry.split(names).items():
                    changed |= self.registry.get(kind).scan_files(mine, prune=True)
            if woken or changed or requests or self._repair_tries:
                await self._check(fresh=bool(requests))
        await self._send(requests)
        self._schedule_repairs()

    async def _check(self, *, fresh: bool) -> None:
        """Drift and stickers from what was last read; what looks drifted (and, with
        ``fresh``, everything) is read again first, so a stale read is never reported."""
        if self.owned_stale:
            complete = True
            for backend in self.registry:
                if not backend.labels:
                    continue
                if not backend.available:
                    complete = False
                    continue
                try:
                    self.owned[backend.kind] = await backend.owned_extras()
                except (BackendError, BackendUnavailable) as exc:
                    log.warning("listing %s units failed: %s", backend.kind, exc)
                    complete = False
            self.owned_stale = not complete
        owned = set().union(*self.owned.values())
        names = set(self.state.desired) | set(self.state.applied) | owned
        if fresh:
            await self.read_again(names)
        entries = self._entries(names, owned)
        suspects = {e.unit for e in entries if e.kind != "file_changed"}
        if suspects and not fresh:
            await self.read_again(suspects)
            entries = self._entries(names, owned)
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
        self._checked_at = time.time()
        await self._update_stickers()

    def _entries(self, names: set[str], owned: set[str]) -> list[m.DriftEntry]:
        return drift.compute(
            self.state.desired,
            self.state.applied,
            self._observed(names),
            owned=owned,
            problems=self._problems(),
            retried={n for n in self.executor.create_failed if self.registry.of(n).available},
        )

    def _observed(self, names: Iterable[str]) -> dict[str, Observed]:
        runtimes, versions = self.reporter.runtimes, self.reporter.versions
        return {
            n: self.registry.of(n).observed(n, runtimes.get(n) or UnitRuntime(n), versions.get(n))
            for n in names
        }

    def _problems(self) -> dict[str, str]:
        """Units the agent could not apply, and why (reported as state_differs)."""
        out = dict(self.executor.conflicts)
        for name, (unit_hash, why) in self.executor.create_failed.items():
            unit = self.state.desired.get(name)
            if unit is not None and unit.hash == unit_hash:
                out.setdefault(name, why)
        for name in self.state.desired:
            backend = self.registry.of(name)
            if not backend.available:
                out.setdefault(name, unavailable(backend.kind, backend.unavailable_reason, False))
        return out

    async def read_again(self, names: Iterable[str]) -> None:
        """Re-read units (files too); what differs from the last read is reported again."""
        wanted = set(names)
        for kind, mine in self.registry.split(wanted).items():
            self.registry.get(kind).scan_files(mine)
        fresh, _ = await self.reporter.read(wanted)
        stale = {n for n, rt in fresh.items() if self.reporter.runtimes.get(n) != rt}
        self.reporter.runtimes.update(fresh)
        if stale:
            self.reporter.mark_dirty(stale & set(self.state.desired))

    async def _update_stickers(self) -> None:
        """Write the sticker of each deployment whose release is newly complete; remove
        those of deployments that left (once the agent has been told anything)."""
        groups = by_deployment(self.state.desired)
        for deployment, units in groups.items():
            current = self.stickers.get(deployment)
            if current is not None and is_current(current, units):
                continue
            names = [u.name for u in units]
            if sticker_for(deployment, units, self.state.applied, self._observed(names), 0):
                await self.read_again(names)  # written only from a fresh read
                sticker = sticker_for(
                    deployment, units, self.state.applied, self._observed(names), time.time()
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

    def sticker_list(self) -> list[m.Sticker]:
        return [self.stickers[d] for d in sorted(self.stickers)]

    async def _send(self, requests: list[str]) -> None:
        if not self.link.connected.is_set():
            return
        stickers = self.sticker_list()
        if stickers != self.stickers_sent and await self.link.send(m.Stickers(stickers)):
            self.stickers_sent = stickers
        entries, checked_at = self.drift, self._checked_at
        for request_id in requests:
            report = m.DriftReport(entries, request_id=request_id, checked_at=checked_at)
            if await self.link.send(report):
                self.drift_sent = entries
        if entries != self.drift_sent and await self.link.send(
            m.DriftReport(entries, checked_at=checked_at)
        ):
            self.drift_sent = entries

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
            self._repair(due)
