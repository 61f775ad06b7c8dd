"""The agent link under faults: coordinator restarts in a row, a black-holed link.

Real coordinator and agent processes; the black hole is a veth link into a network
namespace of the test's own (10.231.153.0/30), cut by taking its host end down:
packets vanish, no RST, no FIN, and the agent's reconnect attempts get no answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import NetNs, agent_in, netns_available
from tests.procs import AgentProc, CoordinatorProc, free_port, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netns_available() is not None, reason=str(netns_available())),
]


@pytest.fixture
def ns() -> Iterator[NetNs]:
    with NetNs(153) as made:
        yield made


def test_ten_restarts_reconnect_fast_and_a_black_hole_is_seen_in_15_s(
    tmp_path: Path, ns: NetNs, agents: list[AgentProc]
) -> None:
    port = free_port()
    coordinator = CoordinatorProc(
        tmp_path / "coordinator",
        **{
            "heartbeat": 10.0,  # the production interval: fast detection must not need more
            "lost-after": 60.0,
            "hub-listen": f"{ns.host_ip}:{port}",
            "hub-url": f"wss://{ns.host_ip}:{port}/agent/v1",
        },
    )
    try:
        coordinator.start()
        ids = ["r1", "r2", "r3", "cut"]
        for mid in ids:
            # the default backoff ceiling (30 s), not the harness' 1 s: the reset is tested
            agent = AgentProc(tmp_path, mid, coordinator, extra=["--backoff-max", "30"])
            if mid == "cut":
                agent_in(ns, agent)
            agents.append(agent)
            result = agent.enroll(coordinator.join_token())
            assert result.returncode == 0, result.stderr
            agent.start()
        wait_for(lambda: coordinator.connected() == set(ids), timeout=30, what="all connected")

        latencies: list[float] = []
        for i in range(10):
            began = time.monotonic()
            if i % 2:
                coordinator.kill9()
            else:
                coordinator.stop()
            coordinator.start()
            ready = time.monotonic()
            seen: dict[str, float] = {}
            while len(seen) < len(ids) and time.monotonic() - ready < 20:
                for mid in coordinator.connected() - set(seen):
                    seen[mid] = time.monotonic() - ready
                time.sleep(0.05)
            assert set(seen) == set(ids), f"restart {i}: only {sorted(seen)} came back in 20 s"
            latencies += seen.values()
            time.sleep(max(0.0, 5.0 - (time.monotonic() - began)))  # restarts 5 s apart
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        assert p99 <= 5.0, f"reconnect latencies after 10 restarts: {latencies}"

        cut_at = time.monotonic()
        ns.cut()
        wait_for(
            lambda: _state(coordinator, "cut") == "disconnected",
            timeout=15,
            interval=0.2,
            what="the black-holed machine disconnected",
        )
        detected = time.monotonic() - cut_at
        assert _state(coordinator, "r1") == "connected"
        print(f"black hole seen in {detected:.1f} s; reconnects p99 {p99:.2f} s")

        # The agent side: it notices too (keepalive, or missing echoes), says it closed or
        # lost the link (not that the coordinator closed it), and its attempts into the
        # black hole time out in 5 s with a reason.
        cut_agent = next(a for a in agents if a.machine_id == "cut").proc
        assert cut_agent is not None
        before = cut_agent.log()
        wait_for(
            lambda: "within 5 s" in cut_agent.log()[len(before) :],
            timeout=40,
            interval=0.5,
            what="the isolated agent's connect attempt timing out",
        )
        since_cut = cut_agent.log()[len(before) :]
        assert "link closed by the coordinator" not in since_cut, since_cut
        assert "link lost:" in since_cut or "closed the link:" in since_cut, since_cut
        assert "failed: \n" not in since_cut, since_cut
        ns.heal()
        wait_for(lambda: "cut" in coordinator.connected(), timeout=30, what="back after healing")
    finally:
        coordinator.stop()


def _state(coordinator: CoordinatorProc, machine_id: str) -> str:
    return str(next(m["state"] for m in coordinator.machines() if m["id"] == machine_id))
