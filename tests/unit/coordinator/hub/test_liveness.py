from __future__ import annotations

from coordinator.hub.liveness import LivenessView, Transition, transitions


def view(state: str, *, since: float = 0, seen: float = 0, session: bool = False) -> LivenessView:
    return LivenessView("m1", state, since, seen, session)  # type: ignore[arg-type]


def run(v: LivenessView, now: float) -> list[Transition]:
    return transitions([v], now=now, lost_after=60, heartbeat_timeout=30)


def test_live_session_with_recent_heartbeat_stays() -> None:
    assert run(view("connected", seen=100, session=True), now=120) == []


def test_silent_session_is_closed_and_disconnected() -> None:
    assert run(view("connected", seen=100, session=True), now=131) == [
        Transition("m1", "disconnected", close_session=True)
    ]


def test_connected_without_session_becomes_disconnected() -> None:
    assert run(view("connected", since=100), now=101) == [Transition("m1", "disconnected")]


def test_disconnected_becomes_lost_only_after_lost_after() -> None:
    assert run(view("disconnected", since=100), now=159) == []
    assert run(view("disconnected", since=100), now=160) == [Transition("m1", "lost")]


def test_lost_stays_lost() -> None:
    assert run(view("lost", since=0), now=10_000) == []


def test_heartbeat_interval_grows_with_the_fleet() -> None:
    from coordinator.hub.sessions import MAX_HEARTBEATS_PER_S, Hub

    hub = Hub.__new__(Hub)
    hub.heartbeat_s = 10.0
    assert hub.heartbeat_for(100) == 10.0
    assert hub.heartbeat_for(20_000) == 20_000 / MAX_HEARTBEATS_PER_S
    assert hub.heartbeat_for(20_000) * MAX_HEARTBEATS_PER_S >= 20_000
