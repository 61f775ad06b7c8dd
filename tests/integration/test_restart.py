"""kill -9 of the coordinator: agents come back, nothing enrolled is lost."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.test_enrolment import enrol_and_start
from tests.procs import AgentProc, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration


def test_coordinator_kill9_and_restart(
    coordinator: CoordinatorProc, agents: list[AgentProc], tmp_path: Path
) -> None:
    ids = {"alpha", "bravo", "charlie"}
    for mid in sorted(ids):
        enrol_and_start(coordinator, tmp_path, agents, mid)
    wait_for(lambda: coordinator.connected() == ids, what="all connected")
    before = {m["id"]: m for m in coordinator.machines()}
    pids = {a.machine_id: a.proc.pid for a in agents if a.proc}

    coordinator.kill9()
    coordinator.start()
    wait_for(
        lambda: coordinator.connected() == ids, timeout=20, what="all reconnected after kill -9"
    )

    after = {m["id"]: m for m in coordinator.machines()}
    assert set(after) == ids
    for mid in ids:
        assert after[mid]["cert_serial"] == before[mid]["cert_serial"]
        assert after[mid]["enrolled_at"] == before[mid]["enrolled_at"]
    # the agents reconnected on their own: same processes, never restarted
    assert {a.machine_id: a.proc.pid for a in agents if a.proc} == pids
    assert all(a.proc is not None and a.proc.alive() for a in agents)


def test_agents_outlive_a_long_outage_and_machines_become_lost_only_later(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    coordinator = CoordinatorProc(tmp_path / "coordinator", **{"lost-after": 2}).start()
    try:
        agent = enrol_and_start(coordinator, tmp_path, agents, "patient")
        other = enrol_and_start(coordinator, tmp_path, agents, "leaver")
        wait_for(lambda: coordinator.connected() == {"patient", "leaver"}, what="connected")
        assert other.proc is not None
        other.proc.popen.send_signal(signal.SIGSTOP)  # silent: no FIN, no heartbeats
        try:
            wait_for(
                lambda: _state(coordinator, "leaver") == "disconnected",
                timeout=10,
                what="silent machine disconnected",
            )
            wait_for(lambda: _state(coordinator, "leaver") == "lost", timeout=10, what="lost")
        finally:
            other.proc.popen.send_signal(signal.SIGCONT)
        wait_for(lambda: _state(coordinator, "leaver") == "connected", timeout=15, what="back")

        coordinator.stop()
        coordinator.start()
        # after a restart nobody is lost just because the coordinator was away
        wait_for(lambda: coordinator.connected() == {"patient", "leaver"}, timeout=20, what="back")
        assert agent.proc is not None and agent.proc.alive()
    finally:
        coordinator.stop()


def _state(coordinator: CoordinatorProc, machine_id: str) -> str:
    return str(next(m["state"] for m in coordinator.machines() if m["id"] == machine_id))
