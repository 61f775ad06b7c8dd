"""Every step the reconciler plans says why (`Step.reason`), without being part of the step."""

from __future__ import annotations

from agent.backends.base import Observed, UnitRuntime
from agent.reconciler import Plan, Step, file_content, plan, sha256_text
from agent.store import AppliedUnit
from proto.messages import DesiredUnit
from proto.units import UnitOption, unit_hash


def unit(name: str, state: str = "launched", cmd: str = "sleep 100") -> DesiredUnit:
    section = "Container" if name.endswith(".container") else "Service"
    key = "Exec" if section == "Container" else "ExecStart"
    opts = [UnitOption(section, key, cmd)]
    if section == "Container":
        opts.append(UnitOption("Container", "Image", "busybox"))
    return DesiredUnit(name=name, options=opts, desired_state=state, hash=unit_hash(opts))  # type: ignore[arg-type]


def applied(u: DesiredUnit, state: str | None = None, container: bool = False) -> AppliedUnit:
    sha = "" if container else sha256_text(file_content(u))
    return AppliedUnit(u.hash, state or u.desired_state, sha)  # type: ignore[arg-type]


def reasons(p: Plan) -> list[tuple[str, str, str]]:
    return [(s.op, s.unit, s.reason) for s in p.steps]


def test_a_new_unit_is_written_because_it_is_new_and_started_because_it_is_desired() -> None:
    u = unit("web.service")
    assert reasons(plan({u.name: u}, {}, {}, repair=False)) == [
        ("write", "web.service", "new unit"),
        ("reload", "", "unit files were written or removed"),
        ("start", "web.service", "desired launched, found inactive"),
    ]


def test_a_changed_unit_is_stopped_and_started_again_because_its_file_changed() -> None:
    old, new = unit("web.service", cmd="sleep 1"), unit("web.service", cmd="sleep 2")
    running = Observed(
        sha256_text(file_content(old)), UnitRuntime(old.name, "loaded", "active", "running")
    )
    p = plan({new.name: new}, {old.name: applied(old)}, {old.name: running}, repair=False)
    assert reasons(p) == [
        ("stop", "web.service", "unit file changed, found active: replaced"),
        ("write", "web.service", "unit file changed"),
        ("reload", "", "unit files were written or removed"),
        ("start", "web.service", "started again after its unit file was replaced"),
    ]


def test_a_unit_no_longer_desired_is_stopped_and_removed_for_that_reason() -> None:
    u = unit("web.service")
    running = Observed(
        sha256_text(file_content(u)), UnitRuntime(u.name, "loaded", "active", "running")
    )
    p = plan({}, {u.name: applied(u)}, {u.name: running}, repair=False)
    assert [(s.op, s.reason) for s in p.steps if s.unit] == [
        ("stop", "no longer desired"),
        ("remove", "no longer desired"),
    ]


def test_repair_at_start_up_says_it_is_a_repair() -> None:
    u = unit("web.service")
    stopped = Observed(sha256_text(file_content(u)), UnitRuntime(u.name, "loaded", "inactive"))
    p = plan({u.name: u}, {u.name: applied(u)}, {u.name: stopped}, repair=True)
    assert reasons(p) == [("start", "web.service", "desired launched, found inactive (repair)")]


def test_container_steps_say_why() -> None:
    u = unit("db.container")
    p = plan({u.name: u}, {}, {}, repair=False)
    assert reasons(p) == [
        ("create", "db.container", "no container"),
        ("start", "db.container", "desired launched, found a new container"),
    ]
    gone = plan(
        {},
        {u.name: applied(u, container=True)},
        {u.name: Observed(None, UnitRuntime(u.name, "loaded", "active", "running"), u.hash)},
        repair=False,
    )
    assert reasons(gone) == [("remove", "db.container", "no longer desired")]


def test_a_reason_does_not_make_two_steps_differ() -> None:
    assert Step("reload", reason="unit files were written or removed") == Step("reload")
    assert Step("start", "a.service", reason="x") != Step("start", "b.service", reason="x")
