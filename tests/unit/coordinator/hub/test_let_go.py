"""A coordinator cut off its database lets its agents go once it has been so for
`let_go_after_s` (the lease's TTL: when another coordinator takes their sessions over),
so they dial one that reaches it; never before, never on a database it reaches, never
with no other coordinator to go to (`let_go_after_s` infinite)."""

from __future__ import annotations

import asyncio
from typing import Any

from coordinator.hub.sessions import CLOSE_NO_DATABASE, Hub
from coordinator.metrics import CoordinatorMetrics


class _Session:
    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def _hub(lost_since: float | None, after_s: float) -> tuple[Hub, dict[str, _Session]]:
    hub = Hub(
        None,  # type: ignore[arg-type]  # no store is touched
        None,  # type: ignore[arg-type]
        CoordinatorMetrics(),
        heartbeat_s=1,
        lost_after_s=5,
    )
    hub.database_lost_since = lambda: lost_since
    hub.let_go_after_s = after_s
    sessions = {"m1": _Session(), "m2": _Session()}
    hub.sessions = sessions  # type: ignore[assignment]
    return hub, sessions


async def _settle(hub: Hub) -> None:
    tasks: set[Any] = set(hub._tasks)
    if tasks:
        await asyncio.wait(tasks)


async def test_agents_are_let_go_once_the_database_has_been_lost_for_long_enough() -> None:
    hub, sessions = _hub(lost_since=100.0, after_s=4.0)
    assert hub.let_go(103.9) == 0
    assert hub.let_go(104.0) == 2
    await _settle(hub)
    for s in sessions.values():
        assert s.closed is not None and s.closed[0] == CLOSE_NO_DATABASE
        assert "cannot reach its database" in s.closed[1]


async def test_agents_stay_while_the_database_answers_or_no_other_coordinator_exists() -> None:
    for hub, sessions in (_hub(None, 4.0), _hub(100.0, float("inf"))):
        assert hub.let_go(1e9) == 0
        await _settle(hub)
        assert all(s.closed is None for s in sessions.values())
