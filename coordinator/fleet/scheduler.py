"""Where units run: a pure function over a snapshot of units and machines.

Like Nomad's scheduler, it reads a snapshot and returns placements; storage and
pushing to agents happen elsewhere. The same input always gives the same output.

Rules (fleet's `[X-Fleet]` semantics):
* `MachineID` pins a unit; `MachineMetadata` (`k=v`, AND across keys, OR within a
  key) filters machines; `MachineOf=X` co-locates with X; `Conflicts=glob` keeps
  units apart (checked both ways); `Replaces=X` takes X's place and moves X away;
  `Global=true` runs on every matching machine.
* A unit stays where it is while its machine is not lost and still matches (a backend
  that went away meanwhile, dockerd restarting, moves nothing); new placements go only
  to connected machines that have the unit's backend (systemd or docker); among those
  the least loaded wins, ties by machine id.
* A unit that fits nowhere stays unplaced and is placed when a machine that fits
  appears. Units of lost machines are placed again; of disconnected ones, not. Global
  units stay placed on a lost machine that had them (and go to no new lost machine),
  and so does a unit of a lost machine that fits on no other (pinned by `MachineID`).
* `StopWhenIsolated=true` units of a lost machine are placed again only once the
  machine no longer `holds_isolated` (its agent has stopped them by then).
"""

from __future__ import annotations

import fnmatch
import heapq
import re
import shlex
from collections.abc import Iterable, Sequence

import msgspec

from coordinator.models import MachineState
from proto.units import STOP_WHEN_ISOLATED, UnitOption, stops_when_isolated, xfleet_bool

XFLEET = "X-Fleet"
_ALIASES = {
    "MachineID": "MachineID",
    "X-ConditionMachineID": "MachineID",
    "MachineMetadata": "MachineMetadata",
    "X-ConditionMachineMetadata": "MachineMetadata",
    "MachineOf": "MachineOf",
    "X-ConditionMachineOf": "MachineOf",
    "Conflicts": "Conflicts",
    "X-Conflicts": "Conflicts",
    "Global": "Global",
    "Replaces": "Replaces",
    STOP_WHEN_ISOLATED: STOP_WHEN_ISOLATED,
}
_FORBIDDEN = (
    ("MachineID", "MachineOf"),
    ("MachineID", "Conflicts"),
    ("MachineID", "Global"),
    ("MachineID", "Replaces"),
    ("Global", "MachineOf"),
    ("Global", "Replaces"),
    ("Conflicts", "Replaces"),
)


class XFleetError(ValueError):
    pass


class XFleet(msgspec.Struct, frozen=True):
    machine_id: str = ""
    metadata: dict[str, tuple[str, ...]] = {}
    machine_of: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    is_global: bool = False
    replaces: tuple[str, ...] = ()
    stop_when_isolated: bool = False


NO_XFLEET = XFleet()
"""What a unit without scheduling options is given, one shared value: most units have
none, and the unit service keeps one per unit version (a new struct and an empty dict
each were ~150 bytes per unit). Frozen; its empty `metadata` is never written to."""


_SHELL_SPECIAL = frozenset("'\"\\")
_SHELL_SPACE = re.compile(r"[ \t\r\n]+")
"""shlex's whitespace: other Unicode spaces stay inside words, as shlex keeps them."""


def _words(value: str) -> list[str]:
    """shlex.split, without its cost where nothing is quoted or escaped (the usual case:
    100,000 units are parsed in one scheduling pass)."""
    if _SHELL_SPECIAL.isdisjoint(value):
        return [w for w in _SHELL_SPACE.split(value) if w]
    return shlex.split(value)


def glob_match(name: str, pattern: str) -> bool:
    """fnmatch.fnmatchcase, without compiling a regular expression for patterns made of
    literals and `*` (Conflicts=other@*.service): fnmatch's cache holds 32,768 patterns,
    and a fleet of 100,000 units with their own patterns thrashed it."""
    if "?" in pattern or "[" in pattern:
        return fnmatch.fnmatchcase(name, pattern)
    if "*" not in pattern:
        return name == pattern
    parts = pattern.split("*")
    first, last = parts[0], parts[-1]
    if len(name) < len(first) + len(last) or not name.startswith(first):
        return False
    if not name.endswith(last):
        return False
    pos, end = len(first), len(name) - len(last)
    for middle in parts[1:-1]:
        found = name.find(middle, pos, end)
        if found < 0:
            return False
        pos = found + len(middle)
    return True


def parse_xfleet(options: Iterable[UnitOption]) -> XFleet:
    """The scheduling options of a unit, or XFleetError naming the bad option."""
    used: set[str] = set()
    machine_id = ""
    metadata: dict[str, list[str]] = {}
    machine_of: list[str] = []
    conflicts: list[str] = []
    replaces: list[str] = []
    is_global = False
    for opt in options:
        if opt.section != XFLEET:
            continue
        key = _ALIASES.get(opt.name)
        if key is None:
            raise XFleetError(f"unknown [X-Fleet] option {opt.name!r}")
        value = opt.value.strip()
        if key == STOP_WHEN_ISOLATED:
            continue  # a boolean, read (and checked) below
        if key != "Global" and not value:
            raise XFleetError(f"[X-Fleet] {opt.name} needs a value")
        try:
            words = _words(value)
        except ValueError as exc:
            raise XFleetError(f"[X-Fleet] {opt.name}: {exc}") from None
        if key == "MachineID":
            if len(words) != 1 or (machine_id and machine_id != words[0]):
                raise XFleetError("[X-Fleet] MachineID takes exactly one machine id")
            machine_id = words[0]
        elif key == "MachineMetadata":
            for word in words:
                k, sep, v = word.partition("=")
                if not sep or not k:
                    raise XFleetError(f"[X-Fleet] MachineMetadata {word!r} must be KEY=VALUE")
                metadata.setdefault(k, []).append(v)
        elif key == "MachineOf":
            machine_of += words
        elif key == "Conflicts":
            conflicts += words
        elif key == "Replaces":
            replaces += words
        else:
            try:
                is_global = xfleet_bool(opt.value, "Global")
            except ValueError as exc:
                raise XFleetError(str(exc)) from None
            if not is_global:
                continue
        used.add(key)
    for a, b in _FORBIDDEN:
        if a in used and b in used:
            raise XFleetError(f"[X-Fleet] {a} cannot be combined with {b}")
    try:
        stop_when_isolated = stops_when_isolated(options)
    except ValueError as exc:
        raise XFleetError(str(exc)) from None
    parsed = XFleet(
        stop_when_isolated=stop_when_isolated,
        machine_id=machine_id,
        metadata={k: tuple(v) for k, v in sorted(metadata.items())},
        machine_of=tuple(machine_of),
        conflicts=tuple(conflicts),
        is_global=is_global,
        replaces=tuple(replaces),
    )
    return NO_XFLEET if parsed == NO_XFLEET else parsed


class MachineView(msgspec.Struct, frozen=True):
    id: str
    metadata: dict[str, str] = {}
    capabilities: tuple[str, ...] = ()
    state: MachineState = "connected"
    holds_isolated: bool = False
    """Lost, but maybe still running its StopWhenIsolated units (its agent stops them
    after lost_after; see `coordinator.liveness.holds_isolated`): they stay placed."""


class UnitView(msgspec.Struct, frozen=True):
    name: str
    xfleet: XFleet = XFleet()
    backend: str = "systemd"
    active: bool = True
    """False for desired state `inactive`: such a unit is on no machine."""
    machines: tuple[str, ...] = ()
    """Where it is placed now."""


def schedule(units: Sequence[UnitView], machines: Sequence[MachineView]) -> dict[str, list[str]]:
    """Placements for every unit (empty list: unplaced), deterministic for the input.

    Cost is O(units · log machines) for ordinary units: candidate machines sit in
    heaps keyed by (load, id), one heap per distinct set of static constraints, with
    stale entries dropped lazily; only units with conflicts look past the first fit.
    """
    state = _State(units, machines)
    active = state.active

    # Keep what still fits, so nothing moves without a reason.
    for unit in active:
        if unit.xfleet.is_global:
            continue
        for mid in unit.machines[:1]:
            if (mid in state.live or state.held(unit, mid)) and state.still_fits(unit, mid):
                state.put(unit.name, mid)

    # Global units: every matching machine that is present. A lost machine keeps the
    # global units it had: they have nowhere else to go, its agent runs them on, and
    # dropping them would have it stop and start them again the moment it is back
    # (found by the fault suite, tests/chaos: partition past lost_after).
    for unit in (u for u in active if u.xfleet.is_global):
        for mid in sorted(state.by_id):
            keep = mid in unit.machines
            if mid not in state.live and not keep:
                continue
            fits = state.still_fits(unit, mid) if keep else state.fits(unit, mid)
            if (keep or mid in state.fresh) and fits and not state.conflicted(unit, mid):
                state.put(unit.name, mid)

    # Everything else that is unplaced; co-located units after their anchors.
    order = lambda u: (bool(u.xfleet.machine_of), u.name)  # noqa: E731
    queue = sorted(
        (u for u in active if not u.xfleet.is_global and not state.placed[u.name]), key=order
    )
    progress = True
    while queue and progress:
        progress = False
        waiting: list[UnitView] = []
        for unit in queue:
            if any(not state.placed.get(a) for a in unit.xfleet.machine_of if a in state.by_name):
                waiting.append(unit)
                continue
            target = state.choose(unit)
            if target is None:
                continue
            state.put(unit.name, target)
            progress = True
            for evicted in sorted(state.replaced_on(unit, target)):
                state.evict(evicted, target)
                waiting.append(state.by_name[evicted])
        queue = sorted(waiting, key=order)

    # A unit of a lost machine that fits on no other (pinned there by MachineID, say)
    # stays placed on it: its agent runs it on, and unplacing it would have the agent
    # stop it the moment the machine is back (found by the fault suite).
    for unit in active:
        if unit.xfleet.is_global or state.placed[unit.name]:
            continue
        for mid in unit.machines[:1]:
            if mid in state.by_id and mid not in state.live and state.still_fits(unit, mid):
                state.put(unit.name, mid)
    return {name: sorted(mids) for name, mids in state.placed.items()}


_PoolKey = tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]


class _State:
    """The scheduler's working set for one pass."""

    def __init__(self, units: Sequence[UnitView], machines: Sequence[MachineView]) -> None:
        self.by_id = {m.id: m for m in machines}
        self.live = {m.id for m in machines if m.state != "lost"}
        self.fresh = {m.id for m in machines if m.state == "connected"}
        self.placed: dict[str, list[str]] = {u.name: [] for u in units}
        self.hosted: dict[str, set[str]] = {mid: set() for mid in self.by_id}
        self.active = sorted((u for u in units if u.active), key=lambda u: u.name)
        self.by_name = {u.name: u for u in self.active}
        self._pools: dict[_PoolKey, list[tuple[int, str]]] = {}
        self._members: dict[_PoolKey, set[str]] = {}
        self.conflict_hosts: set[str] = set()
        """Machines hosting a unit that declares Conflicts (the only ones to check)."""

    def held(self, unit: UnitView, mid: str) -> bool:
        machine = self.by_id.get(mid)
        return unit.xfleet.stop_when_isolated and machine is not None and machine.holds_isolated

    def fits(self, unit: UnitView, mid: str) -> bool:
        """Whether `unit` may be placed on `mid`: its backend there, and its constraints."""
        return unit.backend in self.by_id[mid].capabilities and self.still_fits(unit, mid)

    def still_fits(self, unit: UnitView, mid: str) -> bool:
        """Whether `unit`, already on `mid`, may stay: its constraints, not its backend. A
        backend that went away (dockerd restarting: the agent's `Facts` lack "docker" for
        a few seconds) must not move or drop what runs there; only a lost machine does
        (found by the fault suite's dockerd-kill scenario)."""
        machine = self.by_id[mid]
        x = unit.xfleet
        if x.machine_id and x.machine_id != mid:
            return False
        return all(machine.metadata.get(k) in allowed for k, allowed in x.metadata.items())

    def load(self, mid: str) -> int:
        return len(self.hosted[mid])

    def put(self, name: str, mid: str) -> None:
        self.placed[name].append(mid)
        self.hosted[mid].add(name)
        unit = self.by_name.get(name)
        if unit is not None and unit.xfleet.conflicts:
            self.conflict_hosts.add(mid)
        self._reheap(mid)

    def evict(self, name: str, mid: str) -> None:
        self.hosted[mid].discard(name)
        self.placed[name] = []
        self._reheap(mid)

    def _reheap(self, mid: str) -> None:
        """Push the machine's new load; its older entries go stale and are skipped."""
        for key, pool in self._pools.items():
            if mid in self._members[key]:
                heapq.heappush(pool, (self.load(mid), mid))

    def _pool(self, unit: UnitView) -> list[tuple[int, str]]:
        key = (unit.backend, tuple(sorted(unit.xfleet.metadata.items())))
        pool = self._pools.get(key)
        if pool is None:
            probe = UnitView(unit.name, XFleet(metadata=unit.xfleet.metadata), unit.backend)
            members = {mid for mid in self.fresh if self.fits(probe, mid)}
            pool = [(self.load(mid), mid) for mid in members]
            heapq.heapify(pool)
            self._pools[key] = pool
            self._members[key] = members
        return pool

    def choose(self, unit: UnitView) -> str | None:
        x = unit.xfleet
        if x.machine_id:
            mid = x.machine_id
            ok = mid in self.fresh and self.fits(unit, mid) and self.allowed(unit, mid)
            return mid if ok else None
        if x.machine_of:
            anchors = {m for a in x.machine_of for m in self.placed.get(a, [])}
            fitting = sorted(
                (self.load(m), m)
                for m in anchors
                if m in self.fresh
                and self.fits(unit, m)
                and self.allowed(unit, m)
                and all(m in self.placed.get(a, []) for a in x.machine_of)
            )
            return fitting[0][1] if fitting else None
        pool = self._pool(unit)
        rejected: list[tuple[int, str]] = []
        found: str | None = None
        while pool:
            load, mid = heapq.heappop(pool)
            if load != self.load(mid):
                continue  # stale entry: a fresher one is in the heap
            rejected.append((load, mid))
            if self.allowed(unit, mid):
                found = mid
                break
        for entry in rejected:
            heapq.heappush(pool, entry)
        return found

    def allowed(self, unit: UnitView, mid: str) -> bool:
        if self.conflicted(unit, mid):
            return False
        return not any(
            unit.name in self.by_name[o].xfleet.replaces
            for o in self.hosted[mid]
            if o in self.by_name
        )

    def conflicted(self, unit: UnitView, mid: str) -> bool:
        if not unit.xfleet.conflicts and mid not in self.conflict_hosts:
            return False  # the common case: nobody involved declares Conflicts
        for other in self.hosted[mid]:
            if other == unit.name or other in unit.xfleet.replaces:
                continue
            if any(glob_match(other, g) for g in unit.xfleet.conflicts):
                return True
            theirs = self.by_name[other].xfleet.conflicts if other in self.by_name else ()
            if any(glob_match(unit.name, g) for g in theirs):
                return True
        return False

    def replaced_on(self, unit: UnitView, mid: str) -> set[str]:
        return {o for o in self.hosted[mid] if o in unit.xfleet.replaces and o != unit.name}


def unplaced_reasons(
    units: Sequence[UnitView],
    machines: Sequence[MachineView],
    placements: dict[str, list[str]],
) -> dict[str, str]:
    """Why each active unit that `schedule` left on no machine fits nowhere, in the
    operator's words; units that are placed, or meant to be inactive, are not listed.

    Only unplaced units are examined, and the machine filters they share (backend,
    metadata) are worked out once, so a pass that places everything costs one loop.
    """
    by_id = {m.id: m for m in machines}
    connected = [m for m in machines if m.state == "connected"]
    with_backend: dict[str, list[MachineView]] = {}
    matching: dict[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], bool] = {}
    reasons: dict[str, str] = {}
    for unit in units:
        if not unit.active or placements.get(unit.name):
            continue
        x = unit.xfleet
        kind = f"{unit.backend} units"
        if x.machine_id:
            reasons[unit.name] = _pinned_reason(unit, by_id.get(x.machine_id))
            continue
        if not connected:
            reasons[unit.name] = "no machine is connected"
            continue
        able = with_backend.get(unit.backend)
        if able is None:
            able = [m for m in connected if unit.backend in m.capabilities]
            with_backend[unit.backend] = able
        if not able:
            reasons[unit.name] = (
                f"no connected machine can run {kind} (none reports {unit.backend})"
            )
            continue
        key = (unit.backend, tuple(sorted(x.metadata.items())))
        if key not in matching:
            matching[key] = any(_metadata_fits(m, x) for m in able)
        if not matching[key]:
            wanted = " ".join(f"{k}={v}" for k, vs in sorted(x.metadata.items()) for v in vs)
            reasons[unit.name] = (
                f"no connected machine that can run {kind} has MachineMetadata {wanted}"
            )
            continue
        unplaced = [a for a in x.machine_of if not placements.get(a)]
        if unplaced:
            reasons[unit.name] = f"MachineOf={unplaced[0]}, which is not scheduled"
        elif x.machine_of:
            reasons[unit.name] = "the machine of its MachineOf unit(s) cannot take it"
        elif x.is_global:
            reasons[unit.name] = "no machine matches (Global)"
        else:
            reasons[unit.name] = (
                "every machine that could take it runs a unit it conflicts with "
                "(Conflicts) or that replaces it"
            )
    return reasons


def _metadata_fits(machine: MachineView, x: XFleet) -> bool:
    return all(machine.metadata.get(k) in allowed for k, allowed in x.metadata.items())


def _pinned_reason(unit: UnitView, machine: MachineView | None) -> str:
    mid = unit.xfleet.machine_id
    if machine is None:
        return f"MachineID={mid}: no such machine"
    if machine.state != "connected":
        return f"MachineID={mid}: the machine is {machine.state}"
    if unit.backend not in machine.capabilities:
        return f"MachineID={mid}: the machine cannot run {unit.backend} units"
    if not _metadata_fits(machine, unit.xfleet):
        return f"MachineID={mid}: the machine does not match MachineMetadata"
    return f"MachineID={mid}: the machine runs a unit it conflicts with"
