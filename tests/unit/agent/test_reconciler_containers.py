"""The reconcile rules for `.container` units, on plain values (systemd's are unchanged)."""

from __future__ import annotations

import msgspec

from agent.backends.base import UnitRuntime
from agent.reconciler import Observed, Plan, Step, file_content, plan, sha256_text
from agent.store import AppliedUnit
from proto.messages import DesiredUnit
from proto.units import UnitOption, unit_hash

NAME = "web.container"


def unit(name: str = NAME, state: str = "launched", cmd: str = "sleep 100") -> DesiredUnit:
    opts = [UnitOption("Container", "Image", "busybox"), UnitOption("Container", "Exec", cmd)]
    return DesiredUnit(name=name, options=opts, desired_state=state, hash=unit_hash(opts))  # type: ignore[arg-type]


def applied_for(u: DesiredUnit, state: str | None = None) -> AppliedUnit:
    return AppliedUnit(u.hash, state or u.desired_state, "")  # type: ignore[arg-type]


def seen(
    u: DesiredUnit | None,
    docker_state: str = "running",
    active: str | None = None,
    foreign: bool = False,
) -> Observed:
    """A container of unit ``u``'s hash (None: of some older hash) in a Docker state."""
    default = {"running": "active", "restarting": "activating", "paused": "active"}
    runtime = UnitRuntime(
        NAME,
        load_state="loaded",
        active_state=active or default.get(docker_state, "inactive"),
        sub_state=docker_state,
    )
    return Observed(None, runtime, container_hash=u.hash if u else "old", foreign=foreign)


def nothing() -> Observed:
    return Observed(None, UnitRuntime(NAME))


def ops(p: Plan) -> list[tuple[str, str]]:
    return [(s.op, s.unit) for s in p.steps]


def test_new_launched_container_is_created_then_started_without_reload() -> None:
    u = unit()
    p = plan({NAME: u}, {}, {NAME: nothing()}, repair=False)
    assert ops(p) == [("create", NAME), ("start", NAME)]
    assert p.applied[NAME] == applied_for(u)


def test_new_loaded_container_is_created_not_started() -> None:
    u = unit(state="loaded")
    assert ops(plan({NAME: u}, {}, {NAME: nothing()}, repair=False)) == [("create", NAME)]


def test_unchanged_running_container_is_left_alone_even_in_repair() -> None:
    u = unit()
    for repair in (False, True):
        p = plan({NAME: u}, {NAME: applied_for(u)}, {NAME: seen(u)}, repair=repair)
        assert p.steps == [] and p.applied[NAME] == applied_for(u)


def test_unhealthy_container_still_counts_as_running() -> None:
    u = unit()
    unhealthy = seen(u, "running", active="failed")
    assert plan({NAME: u}, {NAME: applied_for(u)}, {NAME: unhealthy}, repair=True).steps == []
    loaded = unit(state="loaded")
    p = plan({NAME: loaded}, {NAME: applied_for(u)}, {NAME: unhealthy}, repair=False)
    assert ops(p) == [("stop", NAME)]


def test_changed_hash_recreates_in_one_step_and_starts() -> None:
    old, new = unit(cmd="sleep 1"), unit(cmd="sleep 2")
    p = plan({NAME: new}, {NAME: applied_for(old)}, {NAME: seen(None)}, repair=False)
    assert ops(p) == [("create", NAME), ("start", NAME)]  # create replaces the old one


def test_container_left_from_a_crash_with_the_right_hash_is_adopted() -> None:
    u = unit()
    p = plan({NAME: u}, {}, {NAME: seen(u)}, repair=True)
    assert p.steps == [] and p.applied[NAME] == applied_for(u)


def test_launched_to_loaded_stops_and_keeps_the_container() -> None:
    u = unit(state="loaded")
    p = plan({NAME: u}, {NAME: applied_for(u, "launched")}, {NAME: seen(u)}, repair=False)
    assert ops(p) == [("stop", NAME)]
    assert p.applied[NAME].state == "loaded"


def test_loaded_to_launched_starts_the_same_container() -> None:
    u = unit()
    stopped = seen(u, "exited")
    p = plan({NAME: u}, {NAME: applied_for(u, "loaded")}, {NAME: stopped}, repair=False)
    assert ops(p) == [("start", NAME)]


def test_inactive_or_removed_means_the_container_is_removed() -> None:
    u = unit()
    for desired in ({NAME: unit(state="inactive")}, {}):
        p = plan(desired, {NAME: applied_for(u)}, {NAME: seen(u)}, repair=False)
        assert ops(p) == [("remove", NAME)]
        assert p.applied == {}


def test_removed_unit_without_a_container_needs_nothing() -> None:
    u = unit()
    assert plan({}, {NAME: applied_for(u)}, {NAME: nothing()}, repair=False).steps == []


def test_foreign_container_is_never_touched() -> None:
    u = unit()
    foreign = Observed(None, UnitRuntime(NAME, sub_state="running"), foreign=True)
    p = plan({NAME: u}, {}, {NAME: foreign}, repair=True)
    assert p.steps == []
    assert "did not create" in p.conflicts[NAME] and "moorage-web" in p.conflicts[NAME]
    assert NAME not in p.applied
    # ... not even when the unit goes away
    assert plan({}, {NAME: applied_for(u)}, {NAME: foreign}, repair=True).steps == []


def test_repair_starts_plainly_inactive_containers() -> None:
    u = unit()
    for docker_state in ("created", "exited"):  # exited 0, or stopped by SIGTERM/SIGKILL
        observed = {NAME: seen(u, docker_state, active="inactive")}
        assert ops(plan({NAME: u}, {NAME: applied_for(u)}, observed, repair=True)) == [
            ("start", NAME)
        ]
        # without repair the agent does not second-guess Docker
        assert plan({NAME: u}, {NAME: applied_for(u)}, observed, repair=False).steps == []


def test_failed_container_is_not_restarted_by_repair() -> None:
    u = unit()
    observed = {NAME: seen(u, "exited", active="failed")}
    assert plan({NAME: u}, {NAME: applied_for(u)}, observed, repair=True).steps == []


def test_loaded_container_is_not_started_by_repair() -> None:
    u = unit(state="loaded")
    observed = {NAME: seen(u, "exited", active="inactive")}
    assert plan({NAME: u}, {NAME: applied_for(u)}, observed, repair=True).steps == []


def test_missing_container_is_recreated_and_started_in_repair_only() -> None:
    u = unit()
    applied = {NAME: applied_for(u)}
    assert ops(plan({NAME: u}, applied, {NAME: nothing()}, repair=True)) == [
        ("create", NAME),
        ("start", NAME),
    ]
    assert ops(plan({NAME: u}, applied, {NAME: nothing()}, repair=False)) == [("create", NAME)]


def test_blocked_create_is_not_retried_nor_started() -> None:
    u = unit()
    p = plan({NAME: u}, {NAME: applied_for(u)}, {NAME: nothing()}, repair=True, blocked={NAME})
    assert p.steps == [] and p.applied[NAME] == applied_for(u)
    # blocking concerns creation only: an existing container of this hash is handled
    stopped = {NAME: seen(u, "exited", active="inactive")}
    assert ops(plan({NAME: u}, {}, stopped, repair=False, blocked={NAME})) == [("start", NAME)]


def test_repair_containers_alone_after_a_dockerd_restart() -> None:
    c = unit()
    s_opts = [UnitOption("Service", "ExecStart", "/bin/sleep 100")]
    s = DesiredUnit("web.service", s_opts, hash=unit_hash(s_opts))
    desired = {NAME: c, s.name: s}
    applied = {
        NAME: applied_for(c),
        s.name: AppliedUnit(s.hash, "launched", sha256_text(file_content(s))),
    }
    observed = {
        NAME: seen(c, "exited", active="inactive"),
        s.name: Observed(
            sha256_text(file_content(s)),
            UnitRuntime(s.name, load_state="loaded", active_state="inactive"),
        ),
    }
    p = plan(desired, applied, observed, repair=False, repair_containers=True)
    assert ops(p) == [("start", NAME)]  # the systemd unit is not repaired
    p = plan(desired, applied, observed, repair=True, repair_containers=False)
    assert ops(p) == [("start", "web.service")]


def test_container_steps_never_cause_a_systemd_reload() -> None:
    c, gone = unit(), unit("gone.container")
    p = plan(
        {NAME: c},
        {gone.name: applied_for(gone)},
        {NAME: nothing(), gone.name: seen(gone)},
        repair=False,
    )
    assert Step("reload") not in p.steps
    assert ops(p) == [("remove", "gone.container"), ("create", NAME), ("start", NAME)]


def test_mixed_plan_orders_steps_and_reloads_for_systemd_only() -> None:
    c = unit()
    s_opts = [UnitOption("Service", "ExecStart", "/bin/sleep 100")]
    s = DesiredUnit("web.service", s_opts, hash=unit_hash(s_opts))
    p = plan({NAME: c, s.name: s}, {}, {}, repair=False)
    assert ops(p) == [
        ("create", NAME),
        ("write", "web.service"),
        ("reload", ""),
        ("start", NAME),
        ("start", "web.service"),
    ]


# --- drift repair (repair_units) and image pinning ----------------------------------------

PINNED = "sha256:" + "a" * 64


def pinned(state: str = "launched") -> DesiredUnit:
    return msgspec.structs.replace(unit(state=state), image_digest=PINNED)


def with_image(o: Observed, digest: str) -> Observed:
    return msgspec.structs.replace(
        o, runtime=msgspec.structs.replace(o.runtime, image_digest=digest)
    )


def test_repair_unit_running_another_image_is_recreated_and_started() -> None:
    u = pinned()
    observed = {NAME: with_image(seen(u), "sha256:" + "b" * 64)}
    applied = {NAME: applied_for(u)}
    p = plan({NAME: u}, applied, observed, repair=False, repair_units={NAME})
    assert ops(p) == [("create", NAME), ("start", NAME)]
    # report policy (and start-up repair) leave it running: nothing behind the operator's back
    assert plan({NAME: u}, applied, observed, repair=False).steps == []
    assert plan({NAME: u}, applied, observed, repair=True).steps == []


def test_repair_unit_of_a_loaded_container_of_another_image_is_recreated_not_started() -> None:
    u = pinned(state="loaded")
    observed = {NAME: with_image(seen(u, "exited", active="inactive"), "sha256:" + "b" * 64)}
    p = plan({NAME: u}, {NAME: applied_for(u)}, observed, repair=False, repair_units={NAME})
    assert ops(p) == [("create", NAME)]


def test_repair_unit_on_the_pinned_image_is_left_alone() -> None:
    u = pinned()
    observed = {NAME: with_image(seen(u), PINNED)}
    assert (
        plan({NAME: u}, {NAME: applied_for(u)}, observed, repair=False, repair_units={NAME}).steps
        == []
    )


def test_repair_unit_whose_container_is_gone_or_stopped_is_restored() -> None:
    u = pinned()
    applied = {NAME: applied_for(u)}
    gone = plan({NAME: u}, applied, {NAME: nothing()}, repair=False, repair_units={NAME})
    assert ops(gone) == [("create", NAME), ("start", NAME)]
    stopped = {NAME: with_image(seen(u, "exited", active="inactive"), PINNED)}
    assert ops(plan({NAME: u}, applied, stopped, repair=False, repair_units={NAME})) == [
        ("start", NAME)
    ]
    failed = {NAME: with_image(seen(u, "exited", active="failed"), PINNED)}
    assert plan({NAME: u}, applied, failed, repair=False, repair_units={NAME}).steps == []


def test_repair_unit_that_should_be_loaded_but_runs_is_stopped() -> None:
    u = pinned(state="loaded")
    observed = {NAME: with_image(seen(u), PINNED)}
    assert ops(
        plan({NAME: u}, {NAME: applied_for(u)}, observed, repair=False, repair_units={NAME})
    ) == [("stop", NAME)]


def test_blocked_create_stays_blocked_for_repair_units() -> None:
    u = pinned()
    p = plan(
        {NAME: u},
        {NAME: applied_for(u)},
        {NAME: nothing()},
        repair=False,
        blocked={NAME},
        repair_units={NAME},
    )
    assert p.steps == []
