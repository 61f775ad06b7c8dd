from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.fleet.desired import machine_desired
from coordinator.models import Unit
from proto.desired import apply_diff, diff
from proto.messages import DesiredUnit
from proto.units import UnitOption, unit_hash


def du(name: str, cmd: str = "x", state: str = "launched") -> DesiredUnit:
    opts = [UnitOption("Service", "ExecStart", cmd)]
    return DesiredUnit(name=name, options=opts, desired_state=state, hash=unit_hash(opts))  # type: ignore[arg-type]


maps = st.dictionaries(
    st.sampled_from(["a.service", "b.service", "c.service", "d.service"]),
    st.tuples(st.sampled_from(["x", "y"]), st.sampled_from(["loaded", "launched"])),
)


@given(maps, maps)
def test_apply_of_diff_reaches_the_new_state(old_spec: dict, new_spec: dict) -> None:  # type: ignore[type-arg]
    old = {n: du(n, c, s) for n, (c, s) in old_spec.items()}
    new = {n: du(n, c, s) for n, (c, s) in new_spec.items()}
    upserts, removes = diff(old, new)
    assert apply_diff(old, upserts, removes) == new
    assert all(old.get(u.name) != u for u in upserts)


def test_unchanged_state_has_an_empty_diff() -> None:
    state = {"a.service": du("a.service")}
    assert diff(state, dict(state)) == ([], [])


def test_inactive_units_are_not_sent_to_machines() -> None:
    opts = [UnitOption("Service", "ExecStart", "x")]
    units = [
        Unit(name="on.service", options=opts, hash=unit_hash(opts), desired_state="launched"),
        Unit(name="off.service", options=opts, hash=unit_hash(opts), desired_state="inactive"),
    ]
    assert list(machine_desired(units)) == ["on.service"]
