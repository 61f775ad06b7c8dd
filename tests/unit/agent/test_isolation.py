"""StopWhenIsolated and stale copies: the decisions, as pure functions."""

from __future__ import annotations

import pytest

from agent.isolation import held, is_isolated, isolation_clock, opted_in
from coordinator.fleet.scheduler import MachineView, UnitView, XFleetError, parse_xfleet, schedule
from coordinator.fleet.units import unit_copies
from coordinator.fleet.validation import UnitInvalid, validate_unit
from coordinator.hub.liveness import ISOLATION_MARGIN_S, holds_isolated
from coordinator.models import Machine, UnitState
from proto.messages import DesiredUnit
from proto.units import UnitOption


def opt(value: str) -> UnitOption:
    return UnitOption("X-Fleet", "StopWhenIsolated", value)


def test_the_option_is_a_validated_boolean() -> None:
    assert parse_xfleet([opt("true")]).stop_when_isolated
    assert not parse_xfleet([opt("no")]).stop_when_isolated
    assert parse_xfleet([opt("false"), opt("yes")]).stop_when_isolated  # the last one wins
    assert not parse_xfleet([]).stop_when_isolated
    with pytest.raises(XFleetError, match="StopWhenIsolated='maybe' is not a boolean"):
        parse_xfleet([opt("maybe")])
    validate_unit("db.service", [UnitOption("Service", "ExecStart", "/bin/true"), opt("true")])
    with pytest.raises(UnitInvalid, match="StopWhenIsolated"):
        validate_unit("db.service", [opt("2")])


def test_the_agent_is_isolated_after_lost_after_without_contact() -> None:
    assert not is_isolated(connected=False, since_contact=59, lost_after=60)
    assert is_isolated(connected=False, since_contact=60, lost_after=60)
    assert not is_isolated(connected=True, since_contact=600, lost_after=60)
    assert not is_isolated(connected=False, since_contact=600, lost_after=0), "never told"


def test_the_isolation_clock_survives_a_reboot_but_not_a_kill_in_session() -> None:
    # the session ended 40 s before this start: 40 s of isolation already counted
    assert isolation_clock(contact_at=960, in_session=False, now_wall=1000, now_mono=50) == 10
    # killed inside a session: unknown, counts from now (no stop on a mere restart)
    assert isolation_clock(contact_at=960, in_session=True, now_wall=1000, now_mono=50) == 50
    assert isolation_clock(contact_at=0, in_session=False, now_wall=1000, now_mono=50) == 50


def test_only_opted_in_launched_units_are_held_stopped() -> None:
    run = [UnitOption("Service", "ExecStart", "/bin/sleep 1000")]
    desired = {
        "db.service": DesiredUnit("db.service", [*run, opt("true")]),
        "web.service": DesiredUnit("web.service", run),
        "off.service": DesiredUnit("off.service", [*run, opt("true")], desired_state="loaded"),
    }
    out = held(desired)
    assert out["db.service"].desired_state == "loaded"
    assert out["db.service"].hash == desired["db.service"].hash
    assert out["web.service"] == desired["web.service"]
    assert out["off.service"] == desired["off.service"]
    assert opted_in(desired) == ["db.service", "off.service"]


def test_singletons_stay_on_a_lost_machine_for_the_margin_then_move() -> None:
    assert holds_isolated("lost", 100, now=100 + ISOLATION_MARGIN_S - 0.1)
    assert not holds_isolated("lost", 100, now=100 + ISOLATION_MARGIN_S)
    assert not holds_isolated("disconnected", 100, now=101)
    single = UnitView("db.service", parse_xfleet([opt("true")]), machines=("a",))
    plain = UnitView("web.service", machines=("a",))
    caps = ("systemd",)
    during = [MachineView("a", capabilities=caps, state="lost", holds_isolated=True)]
    during.append(MachineView("b", capabilities=caps))
    assert schedule([single, plain], during) == {"db.service": ["a"], "web.service": ["b"]}
    after = [MachineView("a", capabilities=caps, state="lost"), during[1]]
    assert schedule([single, plain], after) == {"db.service": ["b"], "web.service": ["b"]}


def test_copies_of_machines_without_a_session_are_stale_with_their_age() -> None:
    machines = {
        "a": Machine(id="a", enrolled_at=0, state="lost", last_seen=900),
        "b": Machine(id="b", enrolled_at=0, state="connected", last_seen=990),
    }
    states = [
        UnitState(name="web.service", machine_id="a", active_state="active", updated_at=500),
        UnitState(name="web.service", machine_id="b", active_state="active", updated_at=995),
        UnitState(name="web.service", machine_id="gone", updated_at=10),
    ]
    a, b, gone = unit_copies(states, machines, now=1000)
    assert (a.stale, a.age_s, a.active_state) == (True, 100.0, "active")
    assert (b.stale, b.age_s) == (False, 0.0)
    assert (gone.stale, gone.age_s) == (True, 990.0)
