"""When a unit write needs a scheduling pass (pure): `UnitService.put` skips the pass,
which reads every unit, when the write cannot move anything (fleetctl submit)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.fleet.scheduler import (
    MachineView,
    UnitView,
    parse_xfleet,
    schedule,
    unplaced_reasons,
)
from coordinator.fleet.units import moves_placements
from coordinator.models import Unit
from proto.messages import DesiredState
from proto.units import UnitOption


def unit(
    state: DesiredState = "inactive", machines: tuple[str, ...] = (), pinned: bool = False
) -> Unit:
    return Unit(
        name="a.service",
        options=[],
        hash="h",
        desired_state=state,
        machines=list(machines),
        pinned=pinned,
    )


def test_a_new_or_still_inactive_unit_moves_nothing() -> None:
    assert not moves_placements(None, unit())
    assert not moves_placements(unit(), unit())


def test_anything_that_may_run_somewhere_needs_a_pass() -> None:
    assert moves_placements(None, unit("launched"))
    assert moves_placements(None, unit("loaded"))
    assert moves_placements(unit(), unit("launched"))
    assert moves_placements(unit("launched", ("m1",)), unit())  # stop: unplace it
    assert moves_placements(unit("loaded"), unit())
    assert moves_placements(unit(machines=("m1",)), unit(machines=("m1",)))
    assert moves_placements(None, unit(pinned=True, machines=("m1",)))


MACHINES = [
    MachineView("m1", {"r": "a"}, ("systemd",)),
    MachineView("m2", {"r": "b"}, ("systemd",)),
]
XFLEET = st.sampled_from(
    [
        [],
        [("Conflicts", "n*")],
        [("Conflicts", "new.service")],
        [("MachineOf", "new.service")],
        [("MachineOf", "u0.service")],
        [("Global", "true")],
        [("MachineMetadata", "r=a")],
        [("Replaces", "new.service")],
    ]
)


@settings(max_examples=200)
@given(
    st.lists(st.tuples(XFLEET, st.booleans()), max_size=6),
    XFLEET,
)
def test_adding_an_inactive_unit_changes_no_placement_and_no_reason(
    others: list[tuple[list[tuple[str, str]], bool]], new_pairs: list[tuple[str, str]]
) -> None:
    """The claim `moves_placements` rests on, checked against the scheduler itself."""
    views = [
        UnitView(
            f"u{i}.service",
            parse_xfleet([UnitOption("X-Fleet", k, v) for k, v in pairs]),
            active=active,
        )
        for i, (pairs, active) in enumerate(others)
    ]
    new = UnitView(
        "new.service",
        parse_xfleet([UnitOption("X-Fleet", k, v) for k, v in new_pairs]),
        active=False,
    )
    before = schedule(views, MACHINES)
    after = schedule([*views, new], MACHINES)
    assert not after.get("new.service")
    assert {k: v for k, v in after.items() if k != "new.service"} == {
        k: v for k, v in before.items() if k != "new.service"
    }
    assert unplaced_reasons(views, MACHINES, before) == unplaced_reasons(
        [*views, new], MACHINES, after
    )
