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
