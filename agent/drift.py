"""Drift: how the machine differs from what the agent was told, as a pure function.

The agent owns what it wrote (`applied`) and what it was told (`desired`); drift is
the difference between those and what the machine shows (`Observed`):

* ``file_changed``: a systemd unit's file is not the bytes the agent wrote (expected
  and actual are SHA-256; "unreadable" when it cannot be read).
* ``missing``: a desired unit's file, or a container unit's container, is gone.
* ``extra``: something the agent owns that is not desired: a unit it applied that
  is no longer wanted, or a container labelled ``moorage.unit`` that no desired unit
  accounts for.
* ``image_differs``: a container unit pinned to ``image_digest`` runs another image.
* ``state_differs``: a launched unit is not active/activating/reloading (stopped by
  hand, failed, never created), or a loaded one runs.

Only *settled* units are judged: ones the agent has applied at the desired hash and
state. A unit whose change the agent has not carried out yet is not drift, it is
work in progress; the caller also computes drift only between reconcile passes.
Units the agent could not apply (`problems`: a foreign file or container, a failed
create, a missing backend) are reported as ``state_differs`` with the reason; of
those, only the ones in `retried` (a create that failed) can be repaired.

``repairing`` is set on entries of units whose ``drift`` label is ``repair`` when the
agent can restore them (the reconciler rules): every kind but ``extra``, and for
``state_differs`` only a unit that was stopped (plainly inactive), that runs while
it should not, or whose container could not be made (tried again later). A unit
that failed on its own is reported, never restarted in a loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from agent.backends.base import Observed, UnitRuntime, unit_kind
from agent.store import AppliedUnit
from proto.container import container_name
from proto.messages import LABEL_DEPLOYMENT, LABEL_DRIFT, DesiredUnit, DriftEntry, DriftKind

ACTIVE = frozenset({"active", "activating", "reloading"})
"""What a launched unit may be in without being drift."""

POLICY_REPAIR = "repair"


def policy(unit: DesiredUnit | None) -> str:
    """The unit's drift policy: "repair" or "report" (the default, also for unknown values)."""
    if unit is not None and unit.labels.get(LABEL_DRIFT) == POLICY_REPAIR:
        return POLICY_REPAIR
    return "report"


def settled(unit: DesiredUnit, applied: AppliedUnit | None) -> bool:
    """The agent has carried out the unit's current version and state."""
    return applied is not None and applied.hash == unit.hash and applied.state == unit.desired_state


def compute(
    desired: Mapping[str, DesiredUnit],
    applied: Mapping[str, AppliedUnit],
    observed: Mapping[str, Observed],
    *,
    owned: Collection[str] = (),
    problems: Mapping[str, str] | None = None,
    retried: Collection[str] = (),
) -> list[DriftEntry]:
    """Every drift entry of the machine, sorted by (unit, kind) (module rules).

    ``owned`` names the units of every container labelled ``moorage.unit``;
    ``problems`` maps units the agent could not apply to the reason, ``retried`` names
    those of them that another try may fix.
    """
    problems = problems or {}
    wanted = {n: u for n, u in desired.items() if u.desired_state != "inactive"}
    entries: list[DriftEntry] = []
    for name, unit in wanted.items():
        if name in problems:
            entries.append(
                _entry(
                    unit,
                    name,
                    "state_differs",
                    _want(unit),
                    "failed",
                    problems[name],
                    repairable=name in retried,
                )
            )
            continue
        done = applied.get(name)
        if done is None or not settled(unit, done):
            continue
        seen = observed.get(name) or Observed(None, UnitRuntime(name))
        entries.extend(_SETTLED[unit_kind(name)](name, unit, done, seen))
    for name in sorted((set(applied) | set(owned)) - set(wanted)):
        seen = observed.get(name) or Observed(None, UnitRuntime(name))
        entry = _EXTRA[unit_kind(name)](name, desired.get(name), seen, name in owned)
        if entry is not None:
            entries.append(entry)
    return sorted(entries, key=lambda e: (e.unit, e.kind))


def _systemd_extra(
    name: str, left: DesiredUnit | None, seen: Observed, owned: bool
) -> DriftEntry | None:
    if seen.file_sha256 is not None or seen.runtime.active_state in ACTIVE:
        return _entry(left, name, "extra", "", "unit", f"unit {name} is no longer desired")
    return None


def _container_extra(
    name: str, left: DesiredUnit | None, seen: Observed, owned: bool
) -> DriftEntry | None:
    if owned or seen.container_hash is not None:
        message = f"container {container_name(name)} is labelled as this unit's"
        return _entry(left, name, "extra", "", "container", message)
    return None


def repair_names(entries: Iterable[DriftEntry]) -> set[str]:
    """The units the agent is to restore (entries marked ``repairing``)."""
    return {e.unit for e in entries if e.repairing}


def _want(unit: DesiredUnit) -> str:
    return "active" if unit.desired_state == "launched" else "inactive"


def _systemd(name: str, unit: DesiredUnit, done: AppliedUnit, seen: Observed) -> list[DriftEntry]:
    if seen.file_sha256 is None:
        message = f"the unit file of {name} is gone"
        return [_entry(unit, name, "missing", done.file_sha256, "", message)]
    out = []
    if seen.file_sha256 != done.file_sha256:
        message = f"the unit file of {name} was changed on the machine"
        out.append(_entry(unit, name, "file_changed", done.file_sha256, seen.file_sha256, message))
    state = _state(name, unit, seen.runtime)
    if state is not None:
        out.append(state)
    return out


def _container(name: str, unit: DesiredUnit, done: AppliedUnit, seen: Observed) -> list[DriftEntry]:
    if seen.container_hash is None:
        message = f"container {container_name(name)} is gone"
        return [_entry(unit, name, "missing", container_name(name), "", message)]
    if seen.container_hash != unit.hash:
        message = f"container {container_name(name)} belongs to another version of the unit"
        return [_entry(unit, name, "state_differs", unit.hash, seen.container_hash, message)]
    out = []
    digest = seen.runtime.image_digest
    if unit.image_digest and digest != unit.image_digest:
        message = f"container {container_name(name)} runs another image than the release pinned"
        out.append(_entry(unit, name, "image_differs", unit.image_digest, digest, message))
    state = _state(name, unit, seen.runtime)
    if state is not None:
        out.append(state)
    return out


_SETTLED: dict[str, Callable[[str, DesiredUnit, AppliedUnit, Observed], list[DriftEntry]]] = {
    "systemd": _systemd,
    "docker": _container,
}
"""Backend kind -> the drift of one of its settled units."""
_EXTRA: dict[str, Callable[[str, DesiredUnit | None, Observed, bool], DriftEntry | None]] = {
    "systemd": _systemd_extra,
    "docker": _container_extra,
}
"""Backend kind -> the ``extra`` entry of a unit no longer desired (None: nothing left)."""


def _state(name: str, unit: DesiredUnit, rt: UnitRuntime) -> DriftEntry | None:
    running = rt.active_state in ACTIVE
    if running == (unit.desired_state == "launched"):
        return None
    detail = f"{rt.load_state}/{rt.active_state}/{rt.sub_state}"
    message = f"{name} is {detail}" + (f": {rt.message}" if rt.message else "")
    return _entry(unit, name, "state_differs", _want(unit), rt.active_state, message)


def _repairable(unit: DesiredUnit, kind: DriftKind, actual: str) -> bool:
    """Whether the reconciler restores this (see the module rules)."""
    if kind in ("file_changed", "missing", "image_differs"):
        return True
    if kind != "state_differs":
        return False
    if unit.desired_state == "launched":
        return actual == "inactive"
    return actual in ACTIVE


def _entry(
    unit: DesiredUnit | None,
    name: str,
    kind: DriftKind,
    expected: str,
    actual: str,
    message: str,
    *,
    repairable: bool | None = None,
) -> DriftEntry:
    repairing = (
        unit is not None
        and unit.desired_state != "inactive"
        and policy(unit) == POLICY_REPAIR
        and (_repairable(unit, kind, actual) if repairable is None else repairable)
    )
    return DriftEntry(
        unit=name,
        kind=kind,
        expected=expected,
        actual=actual,
        deployment=unit.labels.get(LABEL_DEPLOYMENT, "") if unit is not None else "",
        message=message,
        repairing=repairing,
    )
