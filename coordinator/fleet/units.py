"""The unit domain service: define units, schedule them, keep machines in sync.

Every API adapter (fleet v1, v1-alpha, moorctl's routes) goes through this one
service. A change is committed first (with the affected machines' revisions bumped
in the same transaction), then pushed to the live sessions as revisioned diffs.
Machines that are offline catch up from their Hello: the coordinator compares the
revision they acknowledged with its own and sends the full state when they differ.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import msgspec

from coordinator.errors import Conflict, Invalid, NotFound
from coordinator.events import EventBus
from coordinator.fleet.desired import machine_desired
from coordinator.fleet.scheduler import (
    MachineView,
    UnitView,
    XFleet,
    parse_xfleet,
    schedule,
    unplaced_reasons,
)
from coordinator.fleet.validation import UnitInvalid, validate_unit
from coordinator.hub.liveness import ISOLATION_MARGIN_S, holds_isolated
from coordinator.hub.sessions import Hub, Session
from coordinator.metrics import CoordinatorMetrics
from coordinator.models import DEFAULT_TENANT, Machine, Unit, UnitCopy, UnitHead, UnitState
from coordinator.store.ports import FleetStore
from proto import messages as m
from proto.desired import diff
from proto.messages import DesiredState, DesiredUnit
from proto.units import UnitOption, backend_for, is_template, unit_hash

log = logging.getLogger(__name__)

RESCHEDULE_DELAY_S = 0.25

XFLEET_CACHE_SLACK = 256
"""Stale entries (versions no unit has any more: replaced, destroyed) the parsed
[X-Fleet] cache may hold beyond twice its live ones before a pass prunes it."""


class Sent(msgspec.Struct):
    """What the current session of a machine was last told (the base of the next diff)."""

    session_id: str
    revision: int
    units: dict[str, DesiredUnit] | None
    """None: the agent said at its Hello that it holds `revision`, and what that is was
    not computed (a reconnect wave would pay for it on every machine); the next change
    is then sent in full."""


class BatchWritten(msgspec.Struct):
    """What a batch did, by unit name."""

    created: list[str] = msgspec.field(default_factory=list)
    replaced: list[str] = msgspec.field(default_factory=list)
    kept: list[str] = msgspec.field(default_factory=list)


def unit_events(before: Unit | None, after_hash: str, after_state: DesiredState) -> list[str]:
    """The domain events of a unit's put: submitted (new or changed contents), started
    (now launched), stopped (no longer launched). Pure."""
    kinds = []
    if before is None or before.hash != after_hash:
        kinds.append("unit.submitted")
    was = before.desired_state if before is not None else "inactive"
    if after_state == "launched" and was != "launched":
        kinds.append("unit.started")
    elif was == "launched" and after_state != "launched":
        kinds.append("unit.stopped")
    return kinds


def current_state(unit: Unit, states: Iterable[UnitState]) -> str:
    """fleet's currentState: what the target machine reports having done for this
    version of the unit; `inactive` while unplaced or unreported."""
    if len(unit.machines) != 1:
        return "inactive"
    for s in states:
        if s.machine_id == unit.machines[0] and s.hash == unit.hash and s.target_state:
            return s.target_state
    return "inactive"


def unit_copies(
    states: Iterable[UnitState], machines: Mapping[str, Machine], *, now: float
) -> list[UnitCopy]:
    """Every copy machines last reported, those of machines without a session marked
    stale with their age: during a partition the old copy of a rescheduled unit may
    still run, and must stay visible until its machine reports it gone."""
    out: list[UnitCopy] = []
    for s in states:
        machine = machines.get(s.machine_id)
        stale = machine is None or machine.state != "connected"
        heard = max(s.updated_at, machine.last_seen if machine is not None else 0.0)
        out.append(
            UnitCopy(
                **msgspec.structs.asdict(s),
                stale=stale,
                age_s=round(max(0.0, now - heard), 1) if stale else 0.0,
            )
        )
    return out


def batch_records(
    existing: dict[str, UnitHead],
    units: list[tuple[str, list[UnitOption], DesiredState]],
    *,
    keep_existing: bool,
) -> tuple[list[Unit], BatchWritten]:
    """The units a batch writes, given what exists, and what it does to each name; a
    replaced unit keeps the machines the scheduler gave it, a pinned one does not."""
    records = []
    written = BatchWritten()
    for name, options, state in units:
        old = existing.get(name)
        if old is None:
            written.created.append(name)
        elif keep_existing:
            written.kept.append(name)
            continue
        else:
            written.replaced.append(name)
        records.append(
            Unit(
                name=name,
                options=list(options),
                hash=unit_hash(options),
                desired_state=state,
                machines=list(old.machines) if old and not old.pinned else [],
            )
        )
    return records, written


PutAction = Literal["create", "replace", "set_state"]


def put_plan(
    name: str, existing: Unit | None, options: list[UnitOption], desired: DesiredState | None
) -> tuple[PutAction, DesiredState]:
    """What a PUT of a unit does, by fleet's rules: options create a unit or replace one
    whose hash differs; otherwise only the desired state changes, which must be given.
    Templates are never active. Invalid or Conflict name the problem. Pure."""
    action: PutAction
    if existing is None:
        if not options:
            raise Conflict("unit does not exist and options field empty")
        _check(name, options)
        action, state = "create", desired or "inactive"
    elif options and unit_hash(options) != existing.hash:
        _check(name, options)
        action, state = "replace", desired or existing.desired_state
    else:
        if desired is None:
            raise Conflict("must provide DesiredState to update existing unit")
        action, state = "set_state", desired
    if is_template(name) and state != "inactive":
        raise Invalid(f"cannot activate template {name!r}")
    return action, state


def moves_placements(old: Unit | UnitHead | None, new: Unit) -> bool:
    """Whether writing `new` over `old` can change where any unit runs, i.e. whether a
    scheduling pass must follow. A free unit that stays `inactive` (a new one, or one
    that was inactive and on no machine) runs nowhere before and after, and no other
    unit's placement depends on it: `MachineOf` and `Conflicts` only see placed units,
    and `Replaces` only active ones. `fleetctl submit` is exactly this case, 1,000 times
    in a row, and a pass reads every unit. Pure."""
    if new.pinned or new.desired_state != "inactive" or new.machines:
        return True
    return old is not None and (old.desired_state != "inactive" or bool(old.machines))


def _check(name: str, options: list[UnitOption]) -> None:
    try:
        validate_unit(name, options)
    except UnitInvalid as exc:
        raise Invalid(str(exc)) from None


class UnitService:
    def __init__(
        self,
        storage: FleetStore,
        hub: Hub,
        metrics: CoordinatorMetrics | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.storage = storage
        self.hub = hub
        self.metrics = metrics
        self.events = events if events is not None else EventBus()
        self._sent: dict[str, Sent] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._schedule_lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None
        self._xfleet: dict[str, XFleet] = {}
        self.unschedulable: dict[tuple[str, str], str] = {}
        """Why each unit ((tenant, name)) the last scheduling pass left unplaced fits
        nowhere among its tenant's machines."""
        self.desired_sources: list[Callable[[str], dict[str, DesiredUnit]]] = []
        """Other producers of a machine's units (deployments' releases); fleet units
        come first and a source never replaces one of them."""
        hub.on_connect.append(self._on_connect)
        hub.on_connected.append(self._on_connected)
        hub.on_state_change.append(self._on_machine_state)
        hub.handlers.append(self._on_message)

    # --- commands ---------------------------------------------------------------------

    async def put(
        self,
        name: str,
        options: list[UnitOption],
        desired_state: DesiredState,
        *,
        machines: Iterable[str] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Unit:
        """Create or replace a unit of `tenant`. `machines` pins it (operator placement,
        only onto the tenant's machines: another tenant's are not found); without it
        the scheduler places it, keeping its current machine while that fits."""
        if machines is not None:
            machines = list(machines)
            foreign = self.foreign_machines(machines, tenant=tenant)
            if foreign:
                raise NotFound(f"machine {foreign[0]!r} does not exist")
        existing = self.storage.get_unit(name, tenant=tenant)
        unit = await self._write(name, options, desired_state, machines, existing, tenant)
        return self.get(name, tenant=tenant) or unit

    async def _write(
        self,
        name: str,
        options: list[UnitOption],
        desired_state: DesiredState,
        machines: Iterable[str] | None,
        existing: Unit | None,
        tenant: str,
    ) -> Unit:
        """`put` given what exists, read by the caller with no await since (so nothing
        else wrote in between): the unit as written, without reading it back."""
        pinned = machines is not None
        unit = Unit(
            name=name,
            options=list(options),
            hash=unit_hash(options),
            desired_state=desired_state,
            pinned=pinned,
            machines=sorted(set(machines))
            if machines is not None
            else (list(existing.machines) if existing and not existing.pinned else []),
            created_at=existing.created_at if existing else 0.0,
        )
        affected = self.storage.put_unit(unit, time.time(), tenant=tenant)
        for kind in unit_events(existing, unit.hash, desired_state):
            self.events.emit(kind, tenant=tenant, subject=name, desired_state=desired_state)
        await self.push(affected)
        if moves_placements(existing, unit):
            await self.reschedule()
        else:
            self.unschedulable.pop((tenant, name), None)
        return unit

    def foreign_machines(self, machine_ids: Iterable[str], *, tenant: str) -> list[str]:
        """Those of these ids that are not machines of `tenant` (revoked ones are)."""
        out = []
        for mid in machine_ids:
            machine = self.storage.get_machine(mid)
            if machine is None or machine.tenant != tenant:
                out.append(mid)
        return out

    async def put_many(
        self,
        units: list[tuple[str, list[UnitOption], DesiredState]],
        *,
        keep_existing: bool = False,
        tenant: str = DEFAULT_TENANT,
    ) -> BatchWritten:
        """Create or replace many units at once: one transaction, one scheduling pass.
        With `keep_existing`, units that already exist are left untouched (fleetctl
        submit's rule). Reading what exists and writing are one transaction, run in a
        thread (a big batch and its fsync stay off the event loop), so no other write
        interleaves."""

        def write() -> tuple[BatchWritten, set[str], bool]:
            with self.storage.batch():
                existing = {u.name: u for u in self.storage.unit_heads(tenant=tenant)}
                records, written = batch_records(existing, units, keep_existing=keep_existing)
                if not records:
                    return written, set(), False
                moves = any(moves_placements(existing.get(r.name), r) for r in records)
                return (
                    written,
                    self.storage.put_units(records, time.time(), tenant=tenant),
                    moves,
                )

        written, affected, moves = await asyncio.to_thread(write)
        for name in (*written.created, *written.replaced):
            self.events.emit("unit.submitted", tenant=tenant, subject=name)
        if written.created or written.replaced:
            await self.push(affected)
            if moves:
                await self.reschedule()
            else:
                for name in (*written.created, *written.replaced):
                    self.unschedulable.pop((tenant, name), None)
        return written

    async def apply(
        self,
        name: str,
        options: list[UnitOption],
        desired: DesiredState | None,
        *,
        tenant: str = DEFAULT_TENANT,
    ) -> PutAction:
        """A PUT by fleet's rules (`put_plan`): create, replace (keeping an operator's
        pinning) or change the desired state; says which it did. One read of the unit,
        one write (a PUT from fleetctl is one of a thousand in a row)."""
        existing = self.storage.get_unit(name, tenant=tenant)
        action, state = put_plan(name, existing, options, desired)
        pinned = existing.machines if existing is not None and existing.pinned else None
        if action == "set_state":
            assert existing is not None  # put_plan: only an existing unit changes state
            if existing.desired_state != state:
                await self._write(name, existing.options, state, pinned, existing, tenant)
        else:
            await self._write(name, options, state, pinned, existing, tenant)
        return action

    async def set_desired_state(
        self, name: str, desired_state: DesiredState, *, tenant: str = DEFAULT_TENANT
    ) -> Unit | None:
        unit = self.storage.get_unit(name, tenant=tenant)
        if unit is None:
            return None
        if unit.desired_state == desired_state:
            return unit
        return await self.put(
            name,
            unit.options,
            desired_state,
            machines=unit.machines if unit.pinned else None,
            tenant=tenant,
        )

    async def destroy(self, name: str, *, tenant: str = DEFAULT_TENANT) -> bool:
        placed = self.storage.delete_unit(name, tenant=tenant)
        if placed is None:
            return False
        self.events.emit("unit.destroyed", tenant=tenant, subject=name)
        await self.push(placed)
        await self.reschedule()
        return True

    def copies(
        self,
        *,
        machine_id: str | None = None,
        name: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[UnitCopy]:
        """What `tenant`'s machines reported, ordered by (name, machine), stale copies
        marked."""
        states = self.storage.unit_states(machine_id=machine_id, name=name, tenant=tenant)
        machines = {
            mach.id: mach
            for mach in self.storage.list_machines(include_revoked=True, tenant=tenant)
        }
        return unit_copies(states, machines, now=time.time())

    # --- queries ----------------------------------------------------------------------

    def get(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Unit | None:
        """A unit of `tenant` with the scheduler's reason when it is on no machine."""
        unit = self.storage.get_unit(name, tenant=tenant)
        return None if unit is None else self._explained(unit, tenant)

    def unit(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Unit:
        """Like `get`, but a unit that does not exist (in `tenant`) is a NotFound."""
        unit = self.get(name, tenant=tenant)
        if unit is None:
            raise NotFound(f"unit {name!r} does not exist")
        return unit

    def list_units(self, *, tenant: str = DEFAULT_TENANT) -> list[Unit]:
        return [self._explained(u, tenant) for u in self.storage.list_units(tenant=tenant)]

    def list_units_slice(
        self, start: int, stop: int, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[Unit], int]:
        """`tenant`'s units `start:stop` in name order, and how many there are: fleet's
        pages decode the options of one page only (every page of `list-unit-files` used
        to decode all units)."""
        units, total = self.storage.unit_page(start, max(0, stop - start), tenant=tenant)
        return [self._explained(u, tenant) for u in units], total

    def unit_names(self, *, tenant: str = DEFAULT_TENANT) -> set[str]:
        return {h.name for h in self.storage.unit_heads(tenant=tenant)}

    def states(self, *, name: str | None = None, tenant: str = DEFAULT_TENANT) -> list[UnitState]:
        """What `tenant`'s machines last reported, as stored (no staleness marks)."""
        return self.storage.unit_states(name=name, tenant=tenant)

    def missing(self, names: Iterable[str], *, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Those of these unit names no unit of `tenant` has."""
        return [n for n in names if self.storage.get_unit(n, tenant=tenant) is None]

    def _explained(self, unit: Unit, tenant: str) -> Unit:
        reason = "" if unit.machines else self.unschedulable.get((tenant, unit.name), "")
        return msgspec.structs.replace(unit, unschedulable=reason) if reason else unit

    # --- scheduling -------------------------------------------------------------------

    async def reschedule(self) -> None:
        """Run the scheduler over the current snapshot and store what moved, at once.
        Each tenant's units are placed only onto that tenant's machines (one pure
        `schedule` call per tenant, one transaction for every tenant's changes)."""
        async with self._schedule_lock:
            started = time.perf_counter()
            free: dict[str, list[UnitHead]] = {}
            for u in self.storage.unit_heads():
                if not u.pinned:
                    free.setdefault(u.tenant, []).append(u)
            if not free:
                self.unschedulable = {}
                return
            for tenant, heads in free.items():
                unseen = {u.name: u.hash for u in heads if u.hash not in self._xfleet}
                for name, options in self.storage.unit_options(
                    sorted(unseen), tenant=tenant
                ).items():
                    self._xfleet[unseen[name]] = parse_xfleet(options)
            live = {u.hash for heads in free.values() for u in heads}
            if len(self._xfleet) > 2 * len(live) + XFLEET_CACHE_SLACK:
                # Bounded by what exists: every replace or destroy leaves a version behind.
                self._xfleet = {h: x for h, x in self._xfleet.items() if h in live}
            now = time.time()
            machines: dict[str, list[MachineView]] = {}
            for mach in self.storage.list_machines():
                machines.setdefault(mach.tenant, []).append(_machine_view(mach, now))
            unschedulable: dict[tuple[str, str], str] = {}
            changes: dict[str, dict[str, list[str]]] = {}
            for tenant, heads in sorted(free.items()):
                views = [self._view(u) for u in heads]
                mine = machines.get(tenant, [])
                placements = schedule(views, mine)
                for name, why in unplaced_reasons(views, mine, placements).items():
                    unschedulable[(tenant, name)] = why
                current = {u.name: u.machines for u in heads}
                moved = {n: mids for n, mids in placements.items() if mids != current.get(n)}
                if moved:
                    changes[tenant] = moved
            self.unschedulable = unschedulable
            if not changes:
                return
            affected: set[str] = set()
            with self.storage.batch():
                for tenant, moved in changes.items():
                    affected |= self.storage.set_placements(moved, tenant=tenant)
            count = sum(len(moved) for moved in changes.values())
            if self.metrics is not None:
                self.metrics.schedule_seconds.observe(time.perf_counter() - started)
                self.metrics.placements.inc(
                    sum(len(v) for moved in changes.values() for v in moved.values())
                )
            log.info("scheduler moved %d unit(s) across %d machine(s)", count, len(affected))
        await self.push(affected)

    def _view(self, unit: UnitHead) -> UnitView:
        """Scheduling view of a unit; its parsed [X-Fleet] is cached by hash (filled by
        `reschedule` for hashes it has not seen)."""
        return UnitView(
            name=unit.name,
            xfleet=self._xfleet[unit.hash],
            backend=backend_for(unit.name),
            active=unit.desired_state != "inactive",
            machines=tuple(unit.machines),
        )

    def reschedule_soon(self) -> None:
        """Coalesce bursts (many machines connecting) into one scheduling pass."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._delayed_reschedule())

    async def _delayed_reschedule(self) -> None:
        await asyncio.sleep(RESCHEDULE_DELAY_S)
        try:
            await self.reschedule()
        except Exception:
            log.exception("scheduling failed")

    def start(self) -> None:
        """After a restart, machines lost just before it may still hold StopWhenIsolated
        units: one pass once the margin is over places them (agents connecting trigger
        passes too, but maybe none connects)."""
        asyncio.get_running_loop().call_later(ISOLATION_MARGIN_S + 0.1, self.reschedule_soon)

    async def _on_machine_state(self, machine_id: str, state: str) -> None:
        if state == "lost":
            self.reschedule_soon()
            # Its StopWhenIsolated units move only after the margin: one more pass then.
            asyncio.get_running_loop().call_later(ISOLATION_MARGIN_S + 0.1, self.reschedule_soon)

    # --- distribution -----------------------------------------------------------------

    async def push(self, machine_ids: Iterable[str]) -> None:
        await asyncio.gather(*(self._push_one(mid) for mid in machine_ids))

    async def _push_one(self, machine_id: str, *, full: bool = False) -> None:
        session = self.hub.sessions.get(machine_id)
        if session is None:
            return
        lock = self._locks.setdefault(machine_id, asyncio.Lock())
        async with lock:
            machine = self.storage.get_machine(machine_id)
            if machine is None:
                return
            sent = self._sent.get(machine_id)
            base: tuple[int, dict[str, DesiredUnit]] | None = None
            if not full and sent is not None and sent.session_id == session.id:
                if sent.revision == machine.desired_revision:
                    return
                if sent.units is not None:
                    base = (sent.revision, sent.units)
            desired = self.desired_for(machine_id)
            if base is None:
                message = m.Desired(
                    revision=machine.desired_revision,
                    full=True,
                    upserts=list(desired.values()),
                )
            else:
                upserts, removes = diff(base[1], desired)
                message = m.Desired(
                    revision=machine.desired_revision,
                    base_revision=base[0],
                    upserts=upserts,
                    removes=removes,
                )
            try:
                await session.send(message)
            except ConnectionError:
                return
            self._sent[machine_id] = Sent(session.id, machine.desired_revision, desired)

    def desired_for(self, machine_id: str) -> dict[str, DesiredUnit]:
        """Everything one machine must run: its fleet units, then every other source's."""
        desired = machine_desired(self.storage.list_units(machine_id=machine_id))
        for source in self.desired_sources:
            for name, unit in source(machine_id).items():
                desired.setdefault(name, unit)
        return desired

    async def _on_connect(self, session: Session) -> None:
        hello = session.hello
        assert hello is not None
        self.hub.buffer.add(
            functools.partial(
                self.storage.record_unit_states,
                session.machine_id,
                list(hello.snapshot),
                [],
                time.time(),
                replace_all=True,
            )
        )

    async def _on_connected(self, machine_ids: list[str]) -> None:
        """A wave of new sessions: their stored desired revisions in one read; an agent
        that already holds its revision is sent nothing now, the others their whole
        desired state."""
        revisions = await asyncio.to_thread(self.storage.desired_revisions, machine_ids)
        stale: list[str] = []
        for mid in machine_ids:
            session = self.hub.sessions.get(mid)
            if session is None or session.hello is None or mid not in revisions:
                continue
            sent = self._sent.get(mid)
            if sent is not None and sent.session_id == session.id:
                continue  # a push reached this session first
            if session.hello.applied_revision == revisions[mid]:
                self._sent[mid] = Sent(session.id, revisions[mid], None)
            else:
                stale.append(mid)
        await asyncio.gather(*(self._push_one(mid, full=True) for mid in stale))
        self.reschedule_soon()

    async def _on_message(self, session: Session, message: m.Message) -> None:
        if isinstance(message, m.StateReport):
            self.hub.buffer.add(
                functools.partial(
                    self.storage.record_unit_states,
                    session.machine_id,
                    list(message.changes),
                    list(message.removed),
                    time.time(),
                )
            )
            if message.changes:
                machine = self.storage.get_machine(session.machine_id)
                self.events.emit(
                    "unit.reported",
                    tenant=machine.tenant if machine is not None else DEFAULT_TENANT,
                    subject=session.machine_id,
                    units={c.name: c.active_state for c in message.changes},
                )
        elif isinstance(message, m.Applied):
            self.hub.buffer.add(
                functools.partial(
                    self.storage.set_applied_revision, session.machine_id, message.revision
                )
            )
        elif isinstance(message, m.Facts):
            self.storage.set_capabilities(session.machine_id, list(message.capabilities))
            self.reschedule_soon()  # a machine that gained docker can now take containers
        elif isinstance(message, m.Error) and message.code == "resync":
            log.info("machine %s asked for a full resync: %s", session.machine_id, message.message)
            await self._push_one(session.machine_id, full=True)


def _machine_view(machine: Machine, now: float) -> MachineView:
    return MachineView(
        id=machine.id,
        metadata=dict(machine.metadata),
        capabilities=tuple(machine.capabilities),
        state=machine.state,
        holds_isolated=holds_isolated(machine.state, machine.state_since, now=now),
    )
