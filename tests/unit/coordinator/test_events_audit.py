"""Domain events published by the services on the one EventBus, and the audit log
that records them beside every write request, on a real store (the run's engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.api.audit import query_of
from coordinator.api.errors import ApiError
from coordinator.audit import AuditLog, check_query, event_entry, is_write
from coordinator.errors import Invalid
from coordinator.events import ACTOR, Event, EventBus
from coordinator.fleet.machines import MachineService
from coordinator.fleet.units import UnitService, unit_events
from coordinator.models import AuditQuery, Unit
from tests.unit.coordinator.test_api_services import SLEEP, Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.storage.close()


def test_unit_events_are_decided_from_before_and_after() -> None:
    old = Unit(name="a.service", options=SLEEP, hash="h1", desired_state="launched")
    assert unit_events(None, "h1", "launched") == ["unit.submitted", "unit.started"]
    assert unit_events(None, "h1", "inactive") == ["unit.submitted"]
    assert unit_events(old, "h1", "launched") == []
    assert unit_events(old, "h2", "launched") == ["unit.submitted"]
    assert unit_events(old, "h1", "loaded") == ["unit.stopped"]


async def test_services_publish_on_the_bus_and_the_audit_log_records_it(rig: Rig) -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append, ["unit.", "machine."])
    audit = AuditLog(rig.storage, bus)
    units = UnitService(rig.storage, rig.hub, events=bus)
    machines = MachineService(rig.storage, rig.storage, rig.hub, units, events=bus)
    token = ACTOR.set("token:ci")
    try:
        await units.put("w.service", SLEEP, "launched")
        await units.set_desired_state("w.service", "inactive")
        assert await units.destroy("w.service")
    finally:
        ACTOR.reset(token)
    await machines._on_state_change("m1", "lost")  # what the hub's liveness calls
    kinds = [(e.kind, e.subject, e.actor) for e in seen]
    assert kinds == [
        ("unit.submitted", "w.service", "token:ci"),
        ("unit.started", "w.service", "token:ci"),
        ("unit.stopped", "w.service", "token:ci"),
        ("unit.destroyed", "w.service", "token:ci"),
        ("machine.lost", "m1", ""),
    ]
    entries, cursor = await audit.query(AuditQuery(kind="event"))
    assert cursor is None
    assert [(e.event, e.principal_kind, e.principal) for e in reversed(entries)] == [
        ("unit.submitted", "token", "ci"),
        ("unit.started", "token", "ci"),
        ("unit.stopped", "token", "ci"),
        ("unit.destroyed", "token", "ci"),
        ("machine.lost", "", ""),
    ]
    assert entries[-1].data == {"desired_state": "launched"}
    only, _ = await audit.query(AuditQuery(event="unit.st"))
    assert only == []
    prefixed, _ = await audit.query(AuditQuery(event="unit."))
    assert len(prefixed) == 4


def test_queries_are_checked_and_parsed() -> None:
    with pytest.raises(Invalid, match="limit"):
        check_query(AuditQuery(limit=0))
    with pytest.raises(Invalid, match="kind"):
        check_query(AuditQuery(kind="other"))
    q = query_of({"principal": "token:ci", "since": "12.5", "cursor": "40", "limit": "5"})
    assert (q.principal, q.since, q.before, q.limit) == ("token:ci", 12.5, 40, 5)
    assert query_of({}).limit == 100
    assert query_of({"limit": "5000"}).limit == 1000
    with pytest.raises(ApiError, match="status must be a number"):
        query_of({"status": "abc"})
    with pytest.raises(ApiError, match="unknown query parameter"):
        query_of({"who": "x"})


def test_writes_and_event_lines() -> None:
    assert is_write("POST") and is_write("DELETE") and is_write("PATCH") and is_write("PUT")
    assert not is_write("GET") and not is_write("HEAD") and not is_write("OPTIONS")
    entry = event_entry(
        Event("deployment.failed", subject="web", actor="user:alice", at=5.0, data={"n": 2})
    )
    assert (entry.kind, entry.principal_kind, entry.principal, entry.event) == (
        "event",
        "user",
        "alice",
        "deployment.failed",
    )
    assert entry.data == {"n": "2"}
