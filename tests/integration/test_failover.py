"""Agents fail over between coordinators (#23): kill -9 of the coordinator an agent is
connected to, and the agent is on the next one within seconds; none for a while, and it
keeps trying both; its units untouched throughout."""

# ruff: noqa: F811  (pytest fixtures imported by name)
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from proto.units import parse_unit_file
from tests.harness.fixtures import user_systemd  # noqa: F401
from tests.harness.systemd import UserSystemd
from tests.procs import ROOT, AgentProc, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration

SLEEPER = "[Unit]\nDescription=Moorage failover test\n\n[Service]\nExecStart=/bin/sleep 600\n"
UNIT = "keep.service"


def put_unit(coordinator: CoordinatorProc, name: str, text: str) -> None:
    options = [
        {"section": o.section, "name": o.name, "value": o.value} for o in parse_unit_file(text)
    ]
    body = {"options": options, "desired_state": "launched", "machines": ["m1"]}
    coordinator.api("PUT", f"/moorage/v1/units/{name}", body)


def reported(coordinator: CoordinatorProc, name: str) -> dict[str, Any] | None:
    states = coordinator.api("GET", f"/moorage/v1/unit-states?unit={name}")["states"]
    return dict(states[0]) if states else None


def status(agent: AgentProc) -> list[str]:
    """`moorage-agent status` beside the running agent, as another process would."""
    result = subprocess.run(
        [*agent.base_args(), "status"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_kill9_of_the_coordinator_moves_the_agent_to_the_next_units_untouched(
    tmp_path: Path, user_systemd: UserSystemd, agents: list[AgentProc]
) -> None:
    a = CoordinatorProc(tmp_path / "a")
    b = CoordinatorProc(tmp_path / "b")
    hubs = [f"wss://127.0.0.1:{c.hub_port}/agent/v1" for c in (a, b)]
    # Every coordinator's hub, advertised at enrolment (top-level keys before the tables).
    a.config = f"hub_urls = {json.dumps(hubs)}\n{a.config}"
    try:
        a.start()
        # B shares A's CA (copied before B's first start, as docs/README say), so the
        # agent's certificate from A is good on B and B's server certificate on the agent.
        Path(b.paths.dir).mkdir(parents=True, mode=0o700)
        shutil.copy2(a.paths.ca_cert, b.paths.ca_cert)
        shutil.copy2(a.paths.ca_key, b.paths.ca_key)
        b.start()

        agent = AgentProc(
            tmp_path, "m1", a, extra=user_systemd.agent_flags(), env=user_systemd.agent_env()
        )
        agents.append(agent)
        enrolled = agent.enroll(a.join_token())
        assert enrolled.returncode == 0, enrolled.stderr
        assert json.loads((agent.state_dir / "link.json").read_text())["hub_urls"] == hubs

        # Each coordinator here has its own SQLite database, so B must know the machine
        # (it refuses unknown ones) and hold the same desired units: its record is enrolled
        # with a stand-in identity that is never used; the agent keeps A's certificate.
        (tmp_path / "b-record").mkdir()
        stand_in = AgentProc(tmp_path / "b-record", "m1", b).enroll(b.join_token())
        assert stand_in.returncode == 0, stand_in.stderr

        agent.start()
        wait_for(lambda: "m1" in a.connected(), what="agent connected to A")
        for coordinator in (a, b):
            put_unit(coordinator, UNIT, SLEEPER)
        wait_for(
            lambda: (s := reported(a, UNIT)) and s["active_state"] == "active",
            timeout=20,
            what="unit active, reported to A",
        )
        main_pid = user_systemd.unit_property(UNIT, "MainPID")
        started = user_systemd.unit_property(UNIT, "ExecMainStartTimestampMonotonic")
        assert int(main_pid) > 0
        lines = status(agent)
        assert lines[0].startswith("machine m1: agent running") and "connected for" in lines[0]
        assert lines[2:] == [f"  * {hubs[0]}", f"    {hubs[1]}"]

        a.kill9()
        killed = time.monotonic()
        wait_for(lambda: "m1" in b.connected(), timeout=15, what="agent connected to B")
        took = time.monotonic() - killed
        assert took < 6, f"failover took {took:.1f} s"

        # B has the machine's desired state (the same unit): it is reported as running,
        # by the very process that ran before the kill.
        state = wait_for(
            lambda: (s := reported(b, UNIT)) and s["active_state"] == "active" and s,
            timeout=20,
            what="unit reported to B",
        )
        assert state["main_pid"] == int(main_pid)
        time.sleep(2)  # give a wrong stop or restart the time to happen
        assert user_systemd.unit_property(UNIT, "ActiveState") == "active"
        assert user_systemd.unit_property(UNIT, "MainPID") == main_pid
        assert user_systemd.unit_property(UNIT, "ExecMainStartTimestampMonotonic") == started
        assert user_systemd.unit_property(UNIT, "NRestarts") == "0"
        assert agent.proc is not None and agent.proc.alive()
        assert status(agent)[2:] == [f"    {hubs[0]}", f"  * {hubs[1]}"]
        assert f"connected to {hubs[1]}" in agent.proc.log()

        # Now no coordinator at all for a while: the agent goes round both hubs, the
        # unit keeps running; A comes back (its own database intact) and takes it again.
        b.kill9()
        time.sleep(5)
        lines = status(agent)
        assert "disconnected for" in lines[0] and lines[2:] == [f"    {h}" for h in hubs]
        assert user_systemd.unit_property(UNIT, "MainPID") == main_pid
        a.start()
        wait_for(lambda: "m1" in a.connected(), timeout=15, what="agent back on A")
        wait_for(
            lambda: (s := reported(a, UNIT)) and s["main_pid"] == int(main_pid),
            timeout=20,
            what="the same process reported to A",
        )
        assert user_systemd.unit_property(UNIT, "ExecMainStartTimestampMonotonic") == started
        assert agent.proc.alive()
    finally:
        b.stop()
        a.stop()
