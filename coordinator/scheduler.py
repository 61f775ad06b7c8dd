"""Where units run: a pure function over a snapshot of units and machines.

Like Nomad's scheduler, it reads a snapshot and returns placements; storage and
pushing to agents happen elsewhere. The same input always gives the same output.

Rules (fleet's `[X-Fleet]` semantics):
* `MachineID` pins a unit; `MachineMetadata` (`k=v`, AND across keys, OR within a
  key) filters machines; `MachineOf=X` co-locates with X; `Conflicts=glob` keeps
  units apart (checked both ways); `Replaces=X` takes X's place and moves X away;
  `Global=true` runs on every matching machine.
* A unit stays where it is while its machine is not lost and still matches; new
  placements go only to connected machines that have the unit's backend
  (systemd or docker); among those the least loaded wins, ties by machine id.
* A unit that fits nowhere stays unplaced and is placed when a machine that fits
  appears. Units of lost machines are placed again; of disconnected ones, not.
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from coordinator.models import MachineState
from proto.units import UnitOption

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
}
_TRUE = {"1", "t", "T", "true", "TRUE", "True", "yes", "on"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False", "no", "off"}
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
        if key != "Global" and not value:
            raise XFleetError(f"[X-Fleet] {opt.name} needs a value")
        try:
            words = shlex.split(value)
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
            if value in _TRUE:
                is_global = True
            elif value in _FALSE or value == "":
                is_global = False
            else:
                raise XFleetError(f"[X-Fleet] Global={opt.value!r} is not a boolean")
            if not is_global:
                continue
        used.add(key)
    for a, b in _FORBIDDEN:
        if a in used and b in used:
            raise XFleetError(f"[X-Fleet] {a} cannot be combined with {b}")
    return XFleet(
        machine_id=machine_id,
        metadata={k: tuple(v) for k, v in sorted(metadata.items())},
        machine_of=tuple(machine_of),
        conflicts=tuple(conflicts),
        is_global=is_global,
        replaces=tuple(replaces),
    )


class MachineView(msgspec.Struct, frozen=True):
    id: str
    metadata: dict[str, str] = {}
    capabilities: tuple[str, ...] = ()
    state: MachineState = "connected"


class UnitView(msgspec.Struct, frozen=True):
    name: str
    xfleet: XFleet = XFleet()
    backend: str = "systemd"
    active: bool = True
    """False for desired state `inactive`: such a unit is on no machine."""
    machines: tuple[str, ...] = ()
    """Where it is placed now."""


def schedule(units: Sequence[UnitView], machines: Sequence[MachineView]) -> dict[str, list[str]]:
    """Placements for every unit (empty list: unplaced), deterministic for the input."""
    by_id = {m.id: m for m in machines}
    live = {m.id for m in machines if m.state != "lost"}
    fresh = sorted(m.id for m in machines if m.state == "connected")
    placed: dict[str, list[str]] = {u.name: [] for u in units}
    hosted: dict[str, set[str]] = {mid: set() for mid in by_id}

    def fits(unit: UnitView, mid: str) -> bool:
        machine = by_id[mid]
        x = unit.xfleet
        if unit.backend not in machine.capabilities:
            return False
        if x.machine_id and x.machine_id != mid:
            return False
        return all(machine.metadata.get(k) in allowed for k, allowed in x.metadata.items())

    def put(name: str, mid: str) -> None:
        placed[name].append(mid)
        hosted[mid].add(name)

    active = sorted((u for u in units if u.active), key=lambda u: u.name)
    by_name = {u.name: u for u in active}

    # Keep what still fits, so nothing moves without a reason.
    for unit in active:
        if unit.xfleet.is_global:
            continue
        for mid in unit.machines[:1]:
            if mid in live and fits(unit, mid):
                put(unit.name, mid)

    # Global units: every matching machine that is present.
    for unit in (u for u in active if u.xfleet.is_global):
        for mid in sorted(live):
            keep = mid in unit.machines
            if (
                (keep or mid in fresh)
                and fits(unit, mid)
                and not _conflicted(unit, mid, hosted, by_name)
            ):
                put(unit.name, mid)

    # Everything else that is unplaced; co-located units after their anchors.
    queue = [u for u in active if not u.xfleet.is_global and not placed[u.name]]
    queue.sort(key=lambda u: (bool(u.xfleet.machine_of), u.name))
    progress = True
    while queue and progress:
        progress = False
        waiting: list[UnitView] = []
        for unit in queue:
            if any(not placed.get(a) for a in unit.xfleet.machine_of if a in by_name):
                waiting.append(unit)
                continue
            target = _choose(unit, fresh, hosted, by_name, placed, fits)
            if target is None:
                continue
            put(unit.name, target)
            progress = True
            for evicted in sorted(_replaced_on(unit, target, hosted)):
                hosted[target].discard(evicted)
                placed[evicted] = []
                waiting.append(by_name[evicted])
        queue = sorted(waiting, key=lambda u: (bool(u.xfleet.machine_of), u.name))
    return {name: sorted(mids) for name, mids in placed.items()}


def _choose(
    unit: UnitView,
    fresh: Sequence[str],
    hosted: Mapping[str, set[str]],
    by_name: Mapping[str, UnitView],
    placed: Mapping[str, list[str]],
    fits: object,
) -> str | None:
    best: tuple[int, str] | None = None
    for mid in fresh:
        if not fits(unit, mid):  # type: ignore[operator]
            continue
        if any(mid not in placed.get(a, []) for a in unit.xfleet.machine_of):
            continue
        if _conflicted(unit, mid, hosted, by_name):
            continue
        if any(unit.name in by_name[o].xfleet.replaces for o in hosted[mid] if o in by_name):
            continue
        load = len(hosted[mid] - set(unit.xfleet.replaces))
        if best is None or (load, mid) < best:
            best = (load, mid)
    return best[1] if best else None


def _conflicted(
    unit: UnitView, mid: str, hosted: Mapping[str, set[str]], by_name: Mapping[str, UnitView]
) -> bool:
    for other in hosted[mid]:
        if other == unit.name or other in unit.xfleet.replaces:
            continue
        if any(fnmatch.fnmatchcase(other, g) for g in unit.xfleet.conflicts):
            return True
        theirs = by_name[other].xfleet.conflicts if other in by_name else ()
        if any(fnmatch.fnmatchcase(unit.name, g) for g in theirs):
            return True
    return False


def _replaced_on(unit: UnitView, mid: str, hosted: Mapping[str, set[str]]) -> set[str]:
    return {o for o in hosted[mid] if o in unit.xfleet.replaces and o != unit.name}
