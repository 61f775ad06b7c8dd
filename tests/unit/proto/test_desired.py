from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from coordinator.fleet.desired import machine_desired
from coordinator.models import Unit
from coordinator.store.sql import SqlStore as Storage
from proto.desired import apply_diff, diff
from proto.messages import DesiredUnit
from proto.tokens import hash_secret
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


def test_put_unit_bumps_old_and_new_machines(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    for i, mid in enumerate(["m1", "m2"]):
        db.create_join_token(f"t{i}", hash_secret("s"), now=0, ttl_s=1e9)
        db.enroll(f"t{i}", mid, serial=f"0{i}", not_after=1e9, now=1)
    opts = [UnitOption("Service", "ExecStart", "x")]
    unit = Unit(
        name="a.service",
        options=opts,
        hash=unit_hash(opts),
        desired_state="launched",
        machines=["m1"],
    )
    assert db.put_unit(unit, now=2) == {"m1"}
    moved = Unit(
        name="a.service", options=opts, hash=unit.hash, desired_state="launched", machines=["m2"]
    )
    assert db.put_unit(moved, now=3) == {"m1", "m2"}
    revs = {m.id: m.desired_revision for m in db.list_machines()}
    assert revs == {"m1": 2, "m2": 1}
    assert db.get_unit("a.service") is not None and db.get_unit("a.service").machines == ["m2"]  # type: ignore[union-attr]
    assert [u.name for u in db.list_units(machine_id="m2")] == ["a.service"]
    assert db.list_units(machine_id="m1") == []
    assert db.delete_unit("a.service") == {"m2"}
    assert db.delete_unit("a.service") is None
