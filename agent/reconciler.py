"""From desired state and what the machine shows, the steps to take: a pure function.

Rules (fleet's semantics, plus Moorage's promises):
* The agent owns only unit files it wrote (`applied`); a foreign file of the same
  name is never overwritten: the unit is reported failed with the reason instead.
* A changed unit is replaced: stopped if running, rewritten, reloaded, started again.
* Act on *changes* of desired state, not on what systemd does by itself: a unit that
  stopped or failed is reported, not restarted behind the operator's back. `repair`
  (agent start-up, or a repair drift policy) also starts desired units that are
  plainly inactive, such as after a reboot - never units that failed on their own.
* Nothing is ever stopped because the agent restarted or the coordinator is away.

`.container` units (`proto.units.backend_for` says "docker") follow the same rules,
with a container in place of the unit file:
* The agent owns only containers labelled with their unit (`Observed.foreign` is a
  container of the unit's name without that label: reported, never touched).
* A container whose `moorage.hash` label differs from the desired hash, or a missing
  one, gets a `create` step (the backend replaces the old container in that step,
  only once the new one can be made); an unchanged container is left running.
* `loaded` means the container exists but is not running; `inactive` or removal from
  the desired state removes the container (`remove`). No reload is ever needed.
* A container runs when its Docker state (`sub_state`) is running, restarting or
  paused, whatever `active_state` says (an unhealthy container is "failed" but runs).
* Repair starts plainly inactive containers: created, exited 0, or stopped by a
  signal (which is how dockerd's own shutdown leaves them) - never failed ones.
  `repair_containers` lets the agent repair containers alone, after dockerd restarts.
* `blocked` names containers whose creation already failed for the current hash
  (e.g. a missing image): no create and no start until the unit changes or a retry
  pass comes, so a missing image is a reported failure, not a loop.

`repair_units` names units whose drift is to be repaired (their `drift` label is
`repair`, see `agent.drift`). Beyond what `repair` does, for them alone:
* a unit file changed on the machine is rewritten and, if the unit runs, the unit is
  restarted (stop, write, reload, start), so what runs is what was released;
* a container whose image is not the unit's pinned `image_digest` is recreated (the
  backend checks the pinned image before it removes the old container);
* a `loaded` unit found running is stopped.
Units that failed on their own are still not restarted; `blocked` still holds.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Mapping
from typing import Literal

import msgspec

from agent.backends.base import UnitRuntime
from agent.store import AppliedUnit
from proto.container import container_name
from proto.messages import DesiredUnit
from proto.units import UnitNameError, backend_for, unit_file_text

RUNNING = frozenset({"active", "activating", "reloading", "deactivating"})
CONTAINER_RUNNING = frozenset({"running", "restarting", "paused"})
"""Docker states (a container unit's `sub_state`) in which the container runs."""

Op = Literal["stop", "write", "remove", "reload", "load", "create", "start"]
ORDER: dict[str, int] = {
    "stop": 0,
    "remove": 1,
    "write": 1,
    "create": 1,
    "reload": 2,
    "load": 3,
    "start": 4,
}


class Observed(msgspec.Struct, frozen=True):
    """What the machine shows for one unit.

    systemd units: the SHA-256 of the unit file (None: no file) and systemd's state.
    Container units: ``file_sha256`` is None; ``container_hash`` is the ``moorage.hash``
    label of the unit's container (None: no container) and ``foreign`` says a container
    of that name exists without the unit's ``moorage.unit`` label.
    """

    file_sha256: str | None
    runtime: UnitRuntime
    container_hash: str | None = None
    foreign: bool = False


class Step(msgspec.Struct, frozen=True):
    op: Op
    unit: str = ""
    content: str = ""


class Plan(msgspec.Struct, frozen=True):
    steps: list[Step]
    applied: dict[str, AppliedUnit]
    conflicts: dict[str, str]


def file_content(unit: DesiredUnit) -> str:
    """The bytes written to disk: the unit without [X-Fleet], newline-terminated."""
    return unit_file_text(unit.options)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=8192)
def is_container(name: str) -> bool:
    """Whether the Docker backend runs ``name`` (names of no known type go to systemd)."""
    try:
        return backend_for(name) == "docker"
    except UnitNameError:
        return False


def plan(
    desired: Mapping[str, DesiredUnit],
    applied: Mapping[str, AppliedUnit],
    observed: Mapping[str, Observed],
    *,
    repair: bool,
    repair_containers: bool | None = None,
    blocked: Collection[str] = (),
    repair_units: Collection[str] = (),
) -> Plan:
    """The steps that take the machine from ``observed`` to ``desired`` (module rules).

    ``repair_containers`` defaults to ``repair``; ``blocked`` only concerns containers;
    ``repair_units`` are repaired (drift policy `repair`) whatever ``repair`` says.
    """
    steps: list[Step] = []
    new_applied: dict[str, AppliedUnit] = {}
    conflicts: dict[str, str] = {}
    wanted = {n: u for n, u in desired.items() if u.desired_state != "inactive"}
    repair_c = repair if repair_containers is None else repair_containers

    for name in sorted(set(wanted) | set(applied)):
        d, a = wanted.get(name), applied.get(name)
        o = observed.get(name) or Observed(None, UnitRuntime(name))
        fix = name in repair_units
        if is_container(name):
            _plan_container(
                name, d, a, o, repair_c or fix, fix, name in blocked, steps, new_applied, conflicts
            )
            continue
        running = o.runtime.active_state in RUNNING
        if d is None:
            assert a is not None
            if running:
                steps.append(Step("stop", name))
            if o.file_sha256 is not None:
                steps.append(Step("remove", name))
            continue

        content = file_content(d)
        sha = sha256_text(content)
        if a is None and o.file_sha256 is not None and o.file_sha256 != sha:
            conflicts[name] = (
                f"a unit file named {name} exists that Moorage did not write; "
                "it is left alone (remove it or rename the unit)"
            )
            continue
        changed = a is None or a.hash != d.hash
        content_changed = a is not None and a.file_sha256 != sha
        edited = fix and o.file_sha256 is not None and o.file_sha256 != sha
        restart = False
        if (content_changed or edited) and running:
            steps.append(Step("stop", name))
            running, restart = False, True
        write = o.file_sha256 != sha and (changed or repair or fix or o.file_sha256 is None)
        if write:
            steps.append(Step("write", name, content))
        new_applied[name] = AppliedUnit(d.hash, d.desired_state, sha)
        needs_load = write or o.runtime.load_state != "loaded"

        state_changed = changed or a is None or a.state != d.desired_state
        if d.desired_state == "launched":
            plain_inactive = o.runtime.active_state == "inactive"
            if not running and (state_changed or restart or ((repair or fix) and plain_inactive)):
                steps.append(Step("start", name))
            elif needs_load:
                steps.append(Step("load", name))
        else:
            if running and (state_changed or fix):
                steps.append(Step("stop", name))
            if needs_load:
                steps.append(Step("load", name))

    if any(s.op in ("write", "remove") and not is_container(s.unit) for s in steps):
        steps.append(Step("reload"))
    steps.sort(key=lambda s: ORDER[s.op])
    return Plan(steps, new_applied, conflicts)


def _plan_container(
    name: str,
    d: DesiredUnit | None,
    a: AppliedUnit | None,
    o: Observed,
    repair: bool,
    fix: bool,
    blocked: bool,
    steps: list[Step],
    new_applied: dict[str, AppliedUnit],
    conflicts: dict[str, str],
) -> None:
    """The container-unit half of `plan` (see the module rules); ``fix``: drift repair."""
    exists = o.container_hash is not None
    running = exists and o.runtime.sub_state in CONTAINER_RUNNING
    if d is None:
        if exists and not o.foreign:
            steps.append(Step("remove", name))
        return
    if o.foreign:
        conflicts[name] = (
            f"a container named {container_name(name)} exists that Moorage did not create;"
            " it is left alone (remove it or rename the unit)"
        )
        return
    new_applied[name] = AppliedUnit(d.hash, d.desired_state, "")
    changed = a is None or a.hash != d.hash
    state_changed = changed or a is None or a.state != d.desired_state
    other_image = (
        fix and exists and bool(d.image_digest) and o.runtime.image_digest != d.image_digest
    )
    if o.container_hash != d.hash or other_image:
        if blocked:
            return
        steps.append(Step("create", name))
        running, plain_inactive = False, True
        state_changed = state_changed or other_image
    else:
        plain_inactive = o.runtime.active_state == "inactive"
    if d.desired_state == "launched":
        if not running and (state_changed or (repair and plain_inactive)):
            steps.append(Step("start", name))
    elif running and (state_changed or fix):
        steps.append(Step("stop", name))
