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
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Literal

import msgspec

from agent.backends.base import UnitRuntime
from agent.store import AppliedUnit
from proto.messages import DesiredUnit
from proto.units import render_unit_file

RUNNING = frozenset({"active", "activating", "reloading", "deactivating"})

Op = Literal["stop", "write", "remove", "reload", "load", "start"]
ORDER: dict[str, int] = {"stop": 0, "remove": 1, "write": 1, "reload": 2, "load": 3, "start": 4}


class Observed(msgspec.Struct, frozen=True):
    file_sha256: str | None
    runtime: UnitRuntime


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
    text = render_unit_file(unit.options)
    return text if text.endswith("\n") or not text else text + "\n"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def plan(
    desired: Mapping[str, DesiredUnit],
    applied: Mapping[str, AppliedUnit],
    observed: Mapping[str, Observed],
    *,
    repair: bool,
) -> Plan:
    steps: list[Step] = []
    new_applied: dict[str, AppliedUnit] = {}
    conflicts: dict[str, str] = {}
    wanted = {n: u for n, u in desired.items() if u.desired_state != "inactive"}

    for name in sorted(set(wanted) | set(applied)):
        d, a = wanted.get(name), applied.get(name)
        o = observed.get(name) or Observed(None, UnitRuntime(name))
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
        if content_changed and running:
            steps.append(Step("stop", name))
            running = False
        write = o.file_sha256 != sha and (changed or repair or o.file_sha256 is None)
        if write:
            steps.append(Step("write", name, content))
        new_applied[name] = AppliedUnit(d.hash, d.desired_state, sha)
        needs_load = write or o.runtime.load_state != "loaded"

        state_changed = changed or a is None or a.state != d.desired_state
        if d.desired_state == "launched":
            plain_inactive = o.runtime.active_state == "inactive"
            if not running and (state_changed or (repair and plain_inactive)):
                steps.append(Step("start", name))
            elif needs_load:
                steps.append(Step("load", name))
        else:
            if running and state_changed:
                steps.append(Step("stop", name))
            if needs_load:
                steps.append(Step("load", name))

    if any(s.op in ("write", "remove") for s in steps):
        steps.append(Step("reload"))
    steps.sort(key=lambda s: ORDER[s.op])
    return Plan(steps, new_applied, conflicts)
