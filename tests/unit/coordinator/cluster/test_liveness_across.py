"""Liveness across coordinators (#23), on both engines: the leader judges `lost` from
the stored state every coordinator writes, so a machine whose agent reconnected to
another coordinator is never lost, while one no coordinator holds is; sessions of a
coordinator whose heartbeat stopped end, and their machines become lost later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import sqlalchemy as sa

from coordinator.hub.sessions import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.store.sql import SqlStore, schema

M = schema.machines


def _hub(store: SqlStore, coordinator_id: str) -> Hub:
    return Hub(
        store,
        None,  # type: ignore[arg-type]  # no enrolment here
        CoordinatorMetrics(),
        heartbeat_s=1,
        lost_after_s=5,
        coordinator_id=coordinator_id,
    )


def _machines(store: SqlStore, **rows: dict[str, object]) -> None:
    with store.batch() as db:
        for mid, values in rows.items():
            db.execute(sa.insert(M).values(id=mid, enrolled_at=0.0, **values))


def _states(store: SqlStore) -> dict[str, str]:
    return {r[0]: r[1] for r in store._rows(sa.select(M.c.id, M.c.state))}


async def test_a_machine_connected_to_another_coordinator_is_never_lost(
    new_store: Callable[..., SqlStore], new_database: Callable[[], str]
) -> None:
    target = new_database()
    a, b = new_store(target), new_store(target)
    a.register_coordinator("A", "", "", 0.0)
    b.register_coordinator("B", "", "", 0.0)
    _machines(
        a,
        moved={"state": "connected", "state_since": 150.0, "session_owner": "B"},
        gone={"state": "disconnected", "state_since": 100.0},
        recent={"state": "disconnected", "state_since": 198.0},
    )
    leader = _hub(a, "A")
    lost: list[str] = []

    async def on_state(mid: str, state: str) -> None:
        lost.append(f"{mid}:{state}")

    leader.on_state_change.append(on_state)
    # A saw `moved` drop at 100 (its memory); the agent then connected to B
    leader.disconnected_since["moved"] = 100.0
    await leader.check_liveness(200.0)
    assert lost == ["gone:lost"]
    assert _states(a) == {"moved": "connected", "gone": "lost", "recent": "disconnected"}
    await leader.check_liveness(210.0)
    assert lost == ["gone:lost", "recent:lost"]
    assert _states(b)["moved"] == "connected"


async def test_the_sessions_of_a_coordinator_gone_silent_end_then_its_machines_are_lost(
    new_store: Callable[..., SqlStore], new_database: Callable[[], str]
) -> None:
    target = new_database()
    a, b = new_store(target), new_store(target)
    a.register_coordinator("A", "", "", 0.0)
    b.register_coordinator("B", "", "", 0.0)
    _machines(a, held={"state": "connected", "state_since": 1.0, "session_owner": "B"})
    leader = _hub(a, "A")
    now = time.time()
    leader.reap_orphans(now, 30.0)  # B's heartbeat is fresh: nothing ends
    await leader.check_lost(now + 100)
    assert _states(a) == {"held": "connected"}
    await asyncio.sleep(0.6)
    leader.reap_orphans(now, 0.5)  # B is silent for longer than that
    assert _states(a) == {"held": "disconnected"}
    await leader.check_lost(now + 4)
    assert _states(a) == {"held": "disconnected"}
    await leader.check_lost(now + 6)
    assert _states(a) == {"held": "lost"}
