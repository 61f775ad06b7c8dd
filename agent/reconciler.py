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
* Every step says why (`Step.reason`: "unit file changed", "desired launched, found
  inactive", "no longer desired"...): the executor logs it and reports it with a failure.
* Each backend kind has its planner (`PLANNERS`, keyed by `unit_kind`): a new kind of
  unit is one more planner, not a branch here.

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
  `repair_kinds` (or `repair_containers`) lets the agent repair the units of one
  backend alone, e.g. containers after dockerd restarts.
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

import hashlib
from collections.abc import Callable, Collection, Mapping

import msgspec

from agent.backends.base import Observed, Op, Step, UnitRuntime, unit_kind
from agent.store import AppliedUnit
from proto.container import container_name
from proto.messages import DesiredUnit
from proto.units import unit_file_text

__all__ = ["ORDER", "Observed", "Op", "Plan", "Step", "file_content", "plan", "sha256_text"]

RUNNING = frozenset({"active", "activating", "reloading", "deactivating"})
CONTAINER_RUNNING = frozenset({"running", "restarting", "paused"})
"""Docker states (a container unit's `sub_state`) in which the container runs."""

ORDER: dict[str, int] = {
    "stop": 0,
    "remove": 1,
    "write": 1,
    "create": 1,
    "reload": 2,
    "load": 3,
    "start": 4,
}


class Plan(msgspec.Struct, frozen=True):
    steps: list[Step]
    applied: dict[str, AppliedUnit]
    conflicts: dict[str, str]


def file_content(unit: DesiredUnit) -> str:
    """The bytes written to disk: the unit without [X-Fleet], newline-terminated."""
    return unit_file_text(unit.options)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _Pass:
    """One planning pass: its options, and what the planners of each kind add to it."""

    def __init__(
        self, repair: Mapping[str, bool], blocked: Collection[str], fix: Collection[str]
    ) -> None:
        self.repair, self.blocked, self.fix = repair, blocked, fix
        self.steps: list[Step] = []
        self.applied: dict[str, AppliedUnit] = {}
        self.conflicts: dict[str, str] = {}
        self.reload = False
        """A unit file was written or removed: the manager reloads once, after them."""


Planner = Callable[[str, DesiredUnit | None, AppliedUnit | None, Observed, _Pass], None]


def plan(
    desired: Mapping[str, DesiredUnit],
    applied: Mapping[str, AppliedUnit],
    observed: Mapping[str, Observed],
    *,
    repair: bool,
    repair_containers: bool | None = None,
    repair_kinds: Collection[str] = (),
    blocked: Collection[str] = (),
    repair_units: Collection[str] = (),
) -> Plan:
    """The steps that take the machine from ``observed`` to ``desired`` (module rules),
    each with its reason.

    ``repair_kinds`` also repairs the units of those backend kinds (one that came back
    by itself); ``repair_containers`` (default: ``repair``) says it for containers
    alone. ``blocked`` only concerns containers; ``repair_units`` are repaired (drift
    policy `repair`) whatever ``repair`` says.
    """
    wanted = {n: u for n, u in desired.items() if u.desired_state != "inactive"}
    repair_of = {kind: repair or kind in repair_kinds for kind in PLANNERS}
    if repair_containers is not None:
        repair_of["docker"] = repair_containers or "docker" in repair_kinds
    run = _Pass(repair_of, blocked, repair_units)
    for name in sorted(set(wanted) | set(applied)):
        o = observed.get(name) or Observed(None, UnitRuntime(name))
        PLANNERS[unit_kind(name)](name, wanted.get(name), applied.get(name), o, run)
    if run.reload:
        run.steps.append(Step("reload", reason="unit files were written or removed"))
    run.steps.sort(key=lambda s: ORDER[s.op])
    return Plan(run.steps, run.applied, run.conflicts)


def _plan_unit(
    name: str, d: DesiredUnit | None, a: AppliedUnit | None, o: Observed, run: _Pass
) -> None:
    """A systemd unit (see the module rules)."""
    steps, fix, repair = run.steps, name in run.fix, run.repair["systemd"]
    active = o.runtime.active_state
    running = active in RUNNING
    if d is None:
        assert a is not None
        if running:
            steps.append(Step("stop", name, reason="no longer desired"))
        if o.file_sha256 is not None:
            steps.append(Step("remove", name, reason="no longer desired"))
            run.reload = True
        return

    content = file_content(d)
    sha = sha256_text(content)
    if a is None and o.file_sha256 is not None and o.file_sha256 != sha:
        run.conflicts[name] = (
            f"a unit file named {name} exists that Moorage did not write; "
            "it is left alone (remove it or rename the unit)"
        )
        return
    changed = a is None or a.hash != d.hash
    content_changed = a is not None and a.file_sha256 != sha
    edited = fix and o.file_sha256 is not None and o.file_sha256 != sha
    why_file = "unit file changed" if content_changed else "unit file was changed on the machine"
    restart = False
    if (content_changed or edited) and running:
        steps.append(Step("stop", name, reason=f"{why_file}, found {active}: replaced"))
        running, restart = False, True
    write = o.file_sha256 != sha and (changed or repair or fix or o.file_sha256 is None)
    if write:
        if o.file_sha256 is None:
            why = "new unit" if a is None else "unit file is missing"
        elif changed:
            why = "unit file changed"
        else:
            why = "unit file differs from the one written"
        steps.append(Step("write", name, content, reason=why))
        run.reload = True
    run.applied[name] = AppliedUnit(d.hash, d.desired_state, sha)
    needs_load = write or o.runtime.load_state != "loaded"
    why_load = "unit file written" if write else f"found {o.runtime.load_state}"

    state_changed = changed or a is None or a.state != d.desired_state
    if d.desired_state == "launched":
        plain_inactive = active == "inactive"
        if not running and (state_changed or restart or ((repair or fix) and plain_inactive)):
            if restart:
                why = "started again after its unit file was replaced"
            elif state_changed:
                why = f"desired launched, found {active}"
            else:
                why = f"desired launched, found {active} (repair)"
            steps.append(Step("start", name, reason=why))
        elif needs_load:
            steps.append(Step("load", name, reason=f"desired launched, {why_load}"))
    else:
        if running and (state_changed or fix):
            steps.append(Step("stop", name, reason=f"desired loaded, found {active}"))
        if needs_load:
            steps.append(Step("load", name, reason=f"desired loaded, {why_load}"))


def _plan_container(
    name: str, d: DesiredUnit | None, a: AppliedUnit | None, o: Observed, run: _Pass
) -> None:
    """A container unit (see the module rules); ``fix``: drift repair."""
    steps, fix = run.steps, name in run.fix
    repair = run.repair["docker"] or fix
    exists = o.container_hash is not None
    docker_state = o.runtime.sub_state if exists else "no container"
    running = exists and o.runtime.sub_state in CONTAINER_RUNNING
    if d is None:
        if exists and not o.foreign:
            steps.append(Step("remove", name, reason="no longer desired"))
        return
    if o.foreign:
        run.conflicts[name] = (
            f"a container named {container_name(name)} exists that Moorage did not create;"
            " it is left alone (remove it or rename the unit)"
        )
        return
    run.applied[name] = AppliedUnit(d.hash, d.desired_state, "")
    changed = a is None or a.hash != d.hash
    state_changed = changed or a is None or a.state != d.desired_state
    other_image = (
        fix and exists and bool(d.image_digest) and o.runtime.image_digest != d.image_digest
    )
    if o.container_hash != d.hash or other_image:
        if name in run.blocked:
            return
        if not exists:
            why = "no container"
        elif o.container_hash != d.hash:
            why = "container is of another version of the unit"
        else:
            why = f"container runs another image than {d.image_digest}"
        steps.append(Step("create", name, reason=why))
        running, plain_inactive, docker_state = False, True, "a new container"
        state_changed = state_changed or other_image
    else:
        plain_inactive = o.runtime.active_state == "inactive"
    if d.desired_state == "launched":
        if not running and (state_changed or (repair and plain_inactive)):
            why = f"desired launched, found {docker_state}"
            steps.append(Step("start", name, reason=why if state_changed else f"{why} (repair)"))
    elif running and (state_changed or fix):
        steps.append(Step("stop", name, reason=f"desired loaded, found {docker_state}"))


PLANNERS: dict[str, Planner] = {"systemd": _plan_unit, "docker": _plan_container}
"""Backend kind (`agent.backends.base.unit_kind`) -> how its units are planned."""
