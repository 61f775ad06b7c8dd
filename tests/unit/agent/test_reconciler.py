"""The agent's reconcile rules, on plain values."""

from __future__ import annotations

from agent.backends.base import UnitRuntime
from agent.reconciler import Observed, Step, file_content, plan, sha256_text
from agent.store import AppliedUnit
from proto.messages import DesiredUnit
from proto.units import UnitOption, unit_hash


def unit(
    name: str = "web.service", state: str = "launched", cmd: str = "/bin/sleep 100"
) -> DesiredUnit:
    opts = [UnitOption("Service", "ExecStart", cmd), UnitOption("X-Fleet", "MachineID", "m1")]
    return DesiredUnit(name=name, options=opts, desired_state=state, hash=unit_hash(opts))  # type: ignore[arg-type]


def applied_for(u: DesiredUnit, state: str | None = None) -> AppliedUnit:
    return AppliedUnit(u.hash, state or u.desired_state, sha256_text(file_content(u)))  # type: ignore[arg-type]


def seen(
    u: DesiredUnit | None, active: str = "active", load: str = "loaded", sha: str | None = "same"
) -> Observed:
    file_sha = sha256_text(file_content(u)) if (u is not None and sha == "same") else sha
    return Observed(file_sha, UnitRuntime("x", load_state=load, active_state=active))


def ops(p: object) -> list[tuple[str, str]]:
    return [(s.op, s.unit) for s in p.steps]  # type: ignore[attr-defined]


def test_new_launched_unit_is_written_reloaded_and_started() -> None:
    u = unit()
    p = plan({u.name: u}, {}, {}, repair=False)
    assert ops(p) == [("write", "web.service"), ("reload", ""), ("start", "web.service")]
    assert (
        "[X-Fleet]" not in p.steps[0].content and "ExecStart=/bin/sleep 100" in p.steps[0].content
    )
    assert p.applied[u.name] == applied_for(u)


def test_unchanged_running_unit_is_left_alone_even_in_repair() -> None:
    u = unit()
    for repair in (False, True):
        p = plan({u.name: u}, {u.name: applied_for(u)}, {u.name: seen(u)}, repair=repair)
        assert p.steps == []


def test_changed_unit_is_replaced() -> None:
    old, new = unit(cmd="/bin/sleep 1"), unit(cmd="/bin/sleep 2")
    p = plan({new.name: new}, {old.name: applied_for(old)}, {old.name: seen(old)}, repair=False)
    assert ops(p) == [
        ("stop", "web.service"),
        ("write", "web.service"),
        ("reload", ""),
        ("start", "web.service"),
    ]


def test_unit_no_longer_desired_is_stopped_and_removed() -> None:
    u = unit()
    p = plan({}, {u.name: applied_for(u)}, {u.name: seen(u)}, repair=False)
    assert ops(p) == [("stop", "web.service"), ("remove", "web.service"), ("reload", "")]
    assert p.applied == {}


def test_inactive_desired_state_means_not_on_the_machine() -> None:
    u = unit(state="inactive")
    p = plan({u.name: u}, {u.name: applied_for(unit())}, {u.name: seen(u)}, repair=False)
    assert ("remove", "web.service") in ops(p)


def test_launched_to_loaded_stops_and_keeps_the_file() -> None:
    u = unit(state="loaded")
    p = plan({u.name: u}, {u.name: applied_for(u, "launched")}, {u.name: seen(u)}, repair=False)
    assert ops(p) == [("stop", "web.service")]
    assert p.applied[u.name].state == "loaded"


def test_foreign_file_is_never_overwritten() -> None:
    u = unit()
    p = plan({u.name: u}, {}, {u.name: seen(u, sha="f" * 64)}, repair=True)
    assert p.steps == []
    assert "did not write" in p.conflicts[u.name]
    assert u.name not in p.applied


def test_identical_file_left_by_a_crash_is_adopted() -> None:
    u = unit()
    p = plan({u.name: u}, {}, {u.name: seen(u, active="active")}, repair=True)
    assert p.steps == [] and p.applied[u.name] == applied_for(u)


def test_repair_starts_plainly_inactive_units_after_a_reboot() -> None:
    u = unit()
    observed = {u.name: seen(u, active="inactive", load="not-found")}
    assert ops(plan({u.name: u}, {u.name: applied_for(u)}, observed, repair=True)) == [
        ("start", "web.service")
    ]
    # without repair the agent does not second-guess systemd
    assert ops(plan({u.name: u}, {u.name: applied_for(u)}, observed, repair=False)) == [
        ("load", "web.service")
    ]


def test_failed_unit_is_not_restarted_by_repair() -> None:
    u = unit()
    observed = {u.name: seen(u, active="failed")}
    assert plan({u.name: u}, {u.name: applied_for(u)}, observed, repair=True).steps == []


def test_missing_file_is_rewritten_in_repair() -> None:
    u = unit()
    observed = {u.name: seen(u, active="inactive", load="not-found", sha=None)}
    assert ops(plan({u.name: u}, {u.name: applied_for(u)}, observed, repair=True)) == [
        ("write", "web.service"),
        ("reload", ""),
        ("start", "web.service"),
    ]


def test_one_reload_for_many_writes() -> None:
    units = {f"u{i}.service": unit(f"u{i}.service") for i in range(5)}
    p = plan(units, {}, {}, repair=False)
    assert [s.op for s in p.steps].count("reload") == 1
    assert p.steps.index(Step("reload")) == 5


# --- drift repair (repair_units: units whose drift policy is `repair`) -----------------


def test_repair_unit_with_an_edited_file_is_rewritten_and_restarted() -> None:
    u = unit()
    observed = {u.name: seen(u, sha="f" * 64)}
    p = plan({u.name: u}, {u.name: applied_for(u)}, observed, repair=False, repair_units={u.name})
    assert ops(p) == [
        ("stop", "web.service"),
        ("write", "web.service"),
        ("reload", ""),
        ("start", "web.service"),
    ]
    assert p.steps[1].content == file_content(u)


def test_edited_file_of_a_report_unit_is_left_alone() -> None:
    u = unit()
    observed = {u.name: seen(u, sha="f" * 64)}
    assert plan({u.name: u}, {u.name: applied_for(u)}, observed, repair=False).steps == []


def test_agent_start_repair_rewrites_an_edited_file_without_a_restart() -> None:
    """Restarting the agent never stops a unit: start-up repair does not restart."""
    u = unit()
    observed = {u.name: seen(u, sha="f" * 64)}
    p = plan({u.name: u}, {u.name: applied_for(u)}, observed, repair=True)
    assert ops(p) == [("write", "web.service"), ("reload", ""), ("load", "web.service")]


def test_repair_unit_stopped_by_hand_is_started_but_a_failed_one_is_not() -> None:
    u = unit()
    applied = {u.name: applied_for(u)}
    stopped = {u.name: seen(u, active="inactive")}
    assert ops(plan({u.name: u}, applied, stopped, repair=False, repair_units={u.name})) == [
        ("start", "web.service")
    ]
    assert plan({u.name: u}, applied, stopped, repair=False).steps == []
    failed = {u.name: seen(u, active="failed")}
    assert plan({u.name: u}, applied, failed, repair=False, repair_units={u.name}).steps == []


def test_repair_unit_whose_file_is_gone_is_rewritten_and_started() -> None:
    u = unit()
    observed = {u.name: seen(u, active="inactive", load="not-found", sha=None)}
    p = plan({u.name: u}, {u.name: applied_for(u)}, observed, repair=False, repair_units={u.name})
    assert ops(p) == [("write", "web.service"), ("reload", ""), ("start", "web.service")]


def test_repair_unit_that_should_be_loaded_but_runs_is_stopped() -> None:
    u = unit(state="loaded")
    observed = {u.name: seen(u, active="active")}
    applied = {u.name: applied_for(u)}
    assert ops(plan({u.name: u}, applied, observed, repair=False, repair_units={u.name})) == [
        ("stop", "web.service")
    ]
    assert plan({u.name: u}, applied, observed, repair=True).steps == []  # not at start-up


def test_repair_units_concern_only_the_units_named() -> None:
    a, b = unit("a.service"), unit("b.service")
    desired = {a.name: a, b.name: b}
    applied = {a.name: applied_for(a), b.name: applied_for(b)}
    observed = {a.name: seen(a, active="inactive"), b.name: seen(b, active="inactive")}
    p = plan(desired, applied, observed, repair=False, repair_units={"b.service"})
    assert ops(p) == [("start", "b.service")]
