"""Several coordinators on one database (#23), on both engines: two stores opened on
ONE database act as two coordinators. One holds the lease at a time; expiry hands it
over with a higher epoch; a fenced write of the old holder is refused; hub sessions
are owned, released and reaped per coordinator."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from coordinator.store.fence import FENCE, Fence, LeaseLost
from coordinator.store.ports import ClusterStore, StorageError, StorageUnavailable
from coordinator.store.sql import SqlStore, schema

TTL = 0.6
Pair = tuple[SqlStore, SqlStore]


@pytest.fixture
def pair(new_store: Callable[..., SqlStore], new_database: Callable[[], str]) -> Pair:
    target = new_database()
    return new_store(target), new_store(target)


def _enrol(store: SqlStore, *mids: str) -> None:
    with store.batch() as db:
        for mid in mids:
            db.execute(sa.insert(schema.machines).values(id=mid, enrolled_at=0.0))


def _set(store: SqlStore, mid: str, **values: object) -> None:
    """What the hub's writes (machines.py, converted by others) leave in the row."""
    with store.batch() as db:
        db.execute(sa.update(schema.machines).where(schema.machines.c.id == mid).values(**values))


def _machine(store: SqlStore, mid: str) -> tuple[str, str, float]:
    row = store._first(
        sa.select(
            schema.machines.c.state, schema.machines.c.session_owner, schema.machines.c.state_since
        ).where(schema.machines.c.id == mid)
    )
    assert row is not None
    return row["state"], row["session_owner"], row["state_since"]


def _fenced_write(store: SqlStore, fence: Fence, name: str) -> None:
    token = FENCE.set(fence)
    try:
        with store.batch() as db:
            db.execute(sa.insert(schema.tenants).values(name=name, created_at=1.0))
    finally:
        FENCE.reset(token)


def _tenants(store: SqlStore) -> set[str]:
    return {r[0] for r in store._rows(sa.select(schema.tenants.c.name))}


def test_the_store_is_a_cluster_store(store: SqlStore) -> None:
    assert isinstance(store, ClusterStore)


def test_the_schema_matches_its_migrations(store: SqlStore) -> None:
    """schema.py and the Alembic revisions describe the same tables (0003 included)."""
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    assert diff == []


def test_only_one_coordinator_holds_the_lease(pair: Pair) -> None:
    a, b = pair
    first = a.try_acquire("leader", "A", 30.0)
    assert first is not None
    assert b.try_acquire("leader", "B", 30.0) is None
    assert a.renew("leader", "A", first, 30.0)
    assert not b.renew("leader", "B", first, 30.0)
    held = b.lease("leader")
    assert held is not None and held.holder == "A" and held.epoch == first
    assert 29.0 < held.remaining_s <= 30.0


def test_expiry_hands_the_lease_over_with_a_higher_epoch(pair: Pair) -> None:
    a, b = pair
    first = a.try_acquire("leader", "A", TTL)
    assert first is not None
    assert b.try_acquire("leader", "B", TTL) is None
    time.sleep(TTL + 0.2)  # A is paused: it does not renew
    second = b.try_acquire("leader", "B", 30.0)
    assert second is not None and second > first
    assert not a.renew("leader", "A", first, 30.0)  # the paused holder lost it
    assert a.try_acquire("leader", "A", 30.0) is None


def test_a_fenced_write_of_the_old_holder_is_refused(pair: Pair) -> None:
    a, b = pair
    first = a.try_acquire("leader", "A", TTL)
    assert first is not None
    old = Fence("leader", "A", first)
    _fenced_write(a, old, "while-leading")
    time.sleep(TTL + 0.2)
    # expired, not yet taken: refused already (the holder may not know it is over)
    with pytest.raises(LeaseLost):
        _fenced_write(a, old, "expired")
    second = b.try_acquire("leader", "B", 30.0)
    assert second is not None
    with pytest.raises(LeaseLost) as caught:
        _fenced_write(a, old, "after-takeover")
    assert isinstance(caught.value, StorageUnavailable) and isinstance(caught.value, StorageError)
    _fenced_write(b, Fence("leader", "B", second), "new-leader")
    a.try_acquire("leader", "A", 30.0)  # refused: changes nothing
    with pytest.raises(LeaseLost):
        _fenced_write(a, Fence("leader", "A", second), "forged-epoch")
    # unfenced writes (API requests) are never refused
    with a.batch() as db:
        db.execute(sa.insert(schema.tenants).values(name="request", created_at=1.0))
    names = _tenants(a)
    assert {"while-leading", "new-leader", "request"} <= names
    assert not names & {"expired", "after-takeover", "forged-epoch"}


def test_a_released_lease_is_taken_at_once_with_a_higher_epoch(pair: Pair) -> None:
    a, b = pair
    first = a.try_acquire("leader", "A", 30.0)
    assert first is not None
    a.release("leader", "B", first)  # not B's: nothing happens
    assert b.try_acquire("leader", "B", 30.0) is None
    a.release("leader", "A", first)
    second = b.try_acquire("leader", "B", 30.0)
    assert second == first + 1
    with pytest.raises(LeaseLost):
        _fenced_write(a, Fence("leader", "A", first), "late")


def test_leases_are_independent(pair: Pair) -> None:
    a, b = pair
    assert a.try_acquire("leader", "A", 30.0) == 1
    assert b.try_acquire("other", "B", 30.0) == 1
    assert a.lease("nothing") is None


def test_live_coordinators_and_heartbeats(pair: Pair) -> None:
    a, b = pair
    a.register_coordinator("A", "https://a:7440", "wss://a:7443/agent/v1/connect", 1.0)
    b.register_coordinator("B", "https://b:7440", "wss://b:7443/agent/v1/connect", 2.0)
    assert [c.id for c in a.live_coordinators(30.0)] == ["A", "B"]
    assert a.heartbeat_coordinator("A")
    assert not a.heartbeat_coordinator("nobody")
    time.sleep(TTL + 0.2)
    assert b.heartbeat_coordinator("B")
    live = a.live_coordinators(TTL)
    assert [c.id for c in live] == ["B"] and live[0].api_url == "https://b:7440"
    b.register_coordinator("B", "https://b2:7440", "", 3.0)  # a restart updates the row
    assert [c.api_url for c in a.live_coordinators(30.0)] == ["https://a:7440", "https://b2:7440"]


def test_sessions_are_owned_released_and_reaped_per_coordinator(pair: Pair) -> None:
    a, b = pair
    _enrol(a, "m1", "m2", "m3")
    a.register_coordinator("A", "", "", 0.0)
    b.register_coordinator("B", "", "", 0.0)
    for store, mid, owner in ((a, "m1", "A"), (b, "m2", "B"), (b, "m3", "B")):
        _set(store, mid, state="connected", state_since=10.0)
        _set(store, mid, session_owner=owner)
    # A restarts: only its own sessions end
    assert a.release_sessions("A", 20.0, unowned=True) == 1
    assert _machine(a, "m1") == ("disconnected", "", 20.0)
    assert _machine(a, "m2") == ("connected", "B", 10.0)
    # m3 failed over to A (its Hello claims the session in the same write); B's late
    # "session ended" must not undo that
    a.record_hello(
        "m3",
        hostname="m3",
        primary_ip="",
        metadata={},
        capabilities=[],
        agent_version="",
        now=10.0,
        session_owner="A",
    )
    assert not b.drop_session("m3", "B", 21.0, last_seen=21.0)
    assert _machine(a, "m3") == ("connected", "A", 10.0)
    assert b.drop_session("m2", "B", 22.0, last_seen=22.0)
    assert _machine(a, "m2") == ("disconnected", "", 22.0)
    # B is killed while holding m2 again: once its heartbeat is stale, the leader reaps it
    _set(b, "m2", session_owner="B")
    _set(a, "m2", state="connected", state_since=23.0)
    assert a.disconnect_orphans(24.0, 30.0) == []
    time.sleep(TTL + 0.2)
    a.heartbeat_coordinator("A")
    assert a.disconnect_orphans(25.0, TTL) == ["m2"]
    assert _machine(a, "m2") == ("disconnected", "", 25.0)
    assert _machine(a, "m3") == ("connected", "A", 10.0)
    assert a.unowned_disconnected() == [("m1", 20.0), ("m2", 25.0)]
    assert a.unowned_disconnected(before=24.9) == [("m1", 20.0)]  # only the long gone
    assert a.unowned_disconnected(before=25.0) == [("m1", 20.0), ("m2", 25.0)]


def test_a_live_coordinator_is_never_its_own_orphan_and_claims_back_what_was_reaped(
    pair: Pair,
) -> None:
    """A storage outage kept A from writing its heartbeat: its own reap must spare its
    sessions, another's reap is set right by A's next claim (never one B holds)."""
    a, b = pair
    _enrol(a, "m1", "m2", "m3")
    _set(a, "m1", state="connected", state_since=1.0, session_owner="A")
    _set(a, "m2", state="connected", state_since=1.0, session_owner="A")
    _set(a, "m3", state="connected", state_since=1.0, session_owner="B")
    time.sleep(TTL + 0.2)  # neither heartbeat is fresh
    assert a.disconnect_orphans(5.0, TTL, alive="A") == ["m3"]
    assert _machine(a, "m1") == ("connected", "A", 1.0)
    assert b.disconnect_orphans(6.0, TTL, alive="B") == ["m1", "m2"]
    assert _machine(a, "m1") == ("disconnected", "", 6.0)
    _set(a, "m3", state="connected", state_since=7.0, session_owner="B")  # m3 moved to B
    # A still holds m1, m2 (and an old session of m3 about to end)
    assert a.claim_sessions("A", ["m1", "m2", "m3"], 8.0, seen_at=7.5) == 2
    assert _machine(a, "m1") == ("connected", "A", 8.0)
    assert _machine(a, "m3") == ("connected", "B", 7.0)
    # nothing to set right: nothing written; a session that ended after A looked stays ended
    assert a.claim_sessions("A", ["m1", "m2"], 9.0, seen_at=8.5) == 0
    assert b.drop_session("m3", "B", 10.0, last_seen=10.0)
    assert a.claim_sessions("A", ["m3"], 11.0, seen_at=9.5) == 0
    assert _machine(a, "m3") == ("disconnected", "", 10.0)


def test_lost_only_if_nothing_changed_since_it_was_judged(pair: Pair) -> None:
    a, b = pair
    _enrol(a, "m1", "m2")
    _set(a, "m1", state="disconnected", state_since=5.0)
    _set(a, "m2", state="disconnected", state_since=5.0)
    _set(b, "m2", session_owner="B")  # m2 reconnected to B meanwhile
    assert a.unowned_disconnected() == [("m1", 5.0)]
    assert not a.mark_lost("m1", 70.0, 4.0)  # it changed since (another disconnect)
    assert a.mark_lost("m1", 70.0, 5.0)
    assert not a.mark_lost("m2", 70.0, 5.0)
    assert _machine(a, "m1") == ("lost", "", 70.0)
    assert _machine(a, "m2")[0] == "disconnected"


def test_no_lease_write_while_the_store_reports_a_fault(store: SqlStore) -> None:
    """A lease's tiny write may fit on a nearly full disk: it must not tell /readyz the
    storage is fine (the state buffer's probe ends the fault)."""
    epoch = store.try_acquire("leader", "A", 30.0)
    assert epoch is not None
    store.health.failed("full", "no space left on device")
    calls: list[Callable[[], object]] = [
        lambda: store.renew("leader", "A", epoch, 30.0),
        lambda: store.try_acquire("leader", "A", 30.0),
        lambda: store.heartbeat_coordinator("A"),
        lambda: store.register_coordinator("A", "", "", 0.0),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailable):
            call()
    assert store.health.fault == "full"
    assert store.probe() and not store.health.fault
    assert store.renew("leader", "A", epoch, 30.0)
