"""What a batch of units does to each name (pure): `UnitService.put_many` runs it inside
the transaction that reads what exists and writes the batch."""

from __future__ import annotations

from coordinator.fleet.units import batch_records
from coordinator.models import UnitHead
from proto.messages import DesiredState
from proto.units import UnitOption


def test_a_batch_creates_replaces_or_keeps_and_replaced_units_stay_placed() -> None:
    existing = {
        "a.service": UnitHead(
            name="a.service", hash="h", desired_state="launched", pinned=False, machines=["m1"]
        ),
        "p.service": UnitHead(
            name="p.service", hash="h", desired_state="launched", pinned=True, machines=["m2"]
        ),
    }
    state: DesiredState = "launched"
    options: list[UnitOption] = []
    batch = [(n, options, state) for n in ("a.service", "p.service", "new.service")]
    records, written = batch_records(existing, batch, keep_existing=False)
    assert (written.created, written.replaced, written.kept) == (
        ["new.service"],
        ["a.service", "p.service"],
        [],
    )
    assert {r.name: r.machines for r in records} == {
        "a.service": ["m1"],
        "p.service": [],
        "new.service": [],
    }
    records, written = batch_records(existing, batch, keep_existing=True)
    assert [r.name for r in records] == ["new.service"]
    assert written.kept == ["a.service", "p.service"]
