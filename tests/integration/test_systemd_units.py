"""Units set through a real coordinator, run by a real agent on a real systemd manager."""

# ruff: noqa: F811  (pytest fixtures imported by name)
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proto.units import parse_unit_file, unit_hash
from tests.harness.fixtures import user_systemd  # noqa: F401
from tests.harness.systemd import UserSystemd
from tests.procs import AgentProc, CoordinatorProc, MachineRig, wait_for

pytestmark = pytest.mark.integration

SLEEPER = "[Unit]\nDescription=Moorage test {name}\n\n[Service]\nExecStart=/bin/sleep {secs}\n"


class Rig(MachineRig):
    """The machine's agent drives the test's systemd manager."""

    def __init__(self, tmp: Path, systemd: UserSystemd, extra: list[str] | None = None) -> None:
        self.systemd = systemd
        super().__init__(
            tmp, extra=[*systemd.agent_flags(), *(extra or [])], env=systemd.agent_env()
        )

    def prop(self, name: str, prop: str) -> str:
        return self.systemd.unit_property(name, prop)


@pytest.fixture
def rig(tmp_path: Path, user_systemd: UserSystemd) -> Iterator[Rig]:
    r = Rig(tmp_path, user_systemd)
    try:
        yield r
    finally:
        r.close()


def test_unit_becomes_active_with_its_fleet_hash(rig: Rig) -> None:
    text = SLEEPER.format(name="a", secs=300) + "\n[X-Fleet]\nMachineID=m1\n"
    unit = rig.put("hello.service", text)
    assert unit["hash"] == unit_hash(parse_unit_file(text))
    state = rig.wait_state("hello.service", "active", sub_state="running")
    assert state["hash"] == unit["hash"]
    assert state["load_state"] == "loaded"
    assert state["main_pid"] == int(rig.prop("hello.service", "MainPID")) > 0
    on_disk = (rig.systemd.unit_dir / "hello.service").read_text()
    assert "X-Fleet" not in on_disk and "ExecStart=/bin/sleep 300" in on_disk


def test_agent_metrics(tmp_path: Path, user_systemd: UserSystemd) -> None:
    import urllib.request

    from tests.procs import free_port

    port = free_port()
    rig = Rig(tmp_path, user_systemd, extra=["--metrics-listen", f"127.0.0.1:{port}"])
    try:
        rig.put("metered.service", SLEEPER.format(name="m", secs=300))
        rig.wait_state("metered.service", "active")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                body: bytes = resp.read()
                return body.decode()

        text = wait_for(
            lambda: (t := scrape()) and "moorage_agent_units 1.0" in t and t, what="metrics"
        )
        assert "moorage_agent_connected 1.0" in text
        assert 'moorage_agent_messages_in_total{type="desired"}' in text
        assert "moorage_agent_reconcile_seconds_count" in text
        assert "moorage_agent_state_reports_total" in text
    finally:
        rig.close()


def test_launch_latency(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """p50 of 'set launched -> active reported' (printed; benchmarks own the targets)."""
    samples = []
    for i in range(8):
        name = f"lat{i}.service"
        started = time.monotonic()
        rig.put(name, SLEEPER.format(name=name, secs=300))
        rig.wait_state(name, "active", timeout=15)
        samples.append(time.monotonic() - started)
    with capsys.disabled():
        print(
            f"\nset launched -> active reported: p50 {statistics.median(samples) * 1000:.0f} ms, "
            f"max {max(samples) * 1000:.0f} ms over {len(samples)} units"
        )
    assert len(samples) == 8


def pids(rig: Rig, names: list[str]) -> dict[str, tuple[str, str]]:
    return {
        n: (rig.prop(n, "MainPID"), rig.prop(n, "ActiveEnterTimestampMonotonic")) for n in names
    }


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_agent_restart_never_restarts_units(rig: Rig, how: str) -> None:
    names = ["keep-a.service", "keep-b.service"]
    for n in names:
        rig.put(n, SLEEPER.format(name=n, secs=600))
    for n in names:
        rig.wait_state(n, "active")
    before = pids(rig, names)
    assert all(int(pid) > 0 for pid, _ in before.values())

    assert rig.agent.proc is not None
    if how == "kill9":
        rig.agent.proc.kill9()
    else:
        assert rig.agent.proc.stop() == 0
    time.sleep(0.5)
    assert pids(rig, names) == before  # nothing happened while the agent was gone

    rig.agent.start()
    wait_for(lambda: "m1" in rig.coordinator.connected(), what="agent back")
    for n in names:
        state = rig.wait_state(n, "active")
        assert state["main_pid"] == int(before[n][0])
    time.sleep(1.0)  # give a wrong restart the time to happen
    assert pids(rig, names) == before


def test_reboot_with_coordinator_down_brings_units_back(rig: Rig) -> None:
    names = ["boot-a.service", "boot-b.service"]
    for n in names:
        rig.put(n, SLEEPER.format(name=n, secs=600))
    for n in names:
        rig.wait_state(n, "active")
    rig.put("parked.service", SLEEPER.format(name="parked", secs=600), state="loaded")
    rig.wait_state("parked.service", "inactive", load_state="loaded")

    rig.coordinator.stop()
    rig.agent.stop()
    rig.systemd.reboot()
    assert rig.prop("boot-a.service", "ActiveState") == "inactive"

    rig.agent.start()
    for n in names:
        wait_for(lambda n=n: rig.prop(n, "ActiveState") == "active", timeout=15, what=f"{n} back")
    assert rig.prop("parked.service", "ActiveState") == "inactive"
    assert rig.coordinator.proc is not None and not rig.coordinator.proc.alive()


def test_foreign_unit_file_is_left_alone(rig: Rig) -> None:
    foreign = rig.systemd.unit_dir / "foreign.service"
    foreign.write_text(SLEEPER.format(name="foreign", secs=600))
    rig.systemd.systemctl("daemon-reload")
    rig.systemd.systemctl("start", "foreign.service", check=True)
    original = foreign.read_text()
    pid = rig.prop("foreign.service", "MainPID")

    rig.put("foreign.service", SLEEPER.format(name="mine", secs=5))
    state = rig.wait_state("foreign.service", "failed", load_state="error")
    assert "did not write" in state["message"]
    rig.put("other.service", SLEEPER.format(name="other", secs=600))
    rig.wait_state("other.service", "active")
    assert foreign.read_text() == original
    assert rig.prop("foreign.service", "MainPID") == pid

    rig.coordinator.api("DELETE", "/moorage/v1/units/foreign.service")
    time.sleep(1.0)
    assert foreign.exists() and rig.prop("foreign.service", "ActiveState") == "active"


def test_removed_unit_is_stopped_and_its_file_removed(rig: Rig) -> None:
    rig.put("gone.service", SLEEPER.format(name="gone", secs=600))
    rig.wait_state("gone.service", "active")
    rig.coordinator.api("DELETE", "/moorage/v1/units/gone.service")
    wait_for(lambda: not (rig.systemd.unit_dir / "gone.service").exists(), what="file removed")
    wait_for(lambda: rig.prop("gone.service", "ActiveState") == "inactive", what="stopped")
    wait_for(lambda: rig.reported("gone.service") is None, what="state forgotten")


def test_changed_options_replace_the_unit(rig: Rig) -> None:
    first = rig.put("swap.service", SLEEPER.format(name="v1", secs=600))
    old = rig.wait_state("swap.service", "active", hash=first["hash"])
    second = rig.put("swap.service", SLEEPER.format(name="v2", secs=700))
    assert second["hash"] != first["hash"]
    new = rig.wait_state("swap.service", "active", hash=second["hash"])
    assert new["main_pid"] != old["main_pid"]
    assert "sleep 700" in (rig.systemd.unit_dir / "swap.service").read_text()
    assert rig.prop("swap.service", "ExecStart").count("700") == 1


def test_desired_states_loaded_and_inactive(rig: Rig) -> None:
    rig.put("stage.service", SLEEPER.format(name="stage", secs=600), state="loaded")
    rig.wait_state("stage.service", "inactive", load_state="loaded")
    rig.put("stage.service", SLEEPER.format(name="stage", secs=600), state="launched")
    rig.wait_state("stage.service", "active")
    rig.put("stage.service", SLEEPER.format(name="stage", secs=600), state="loaded")
    rig.wait_state("stage.service", "inactive", load_state="loaded")
    assert (rig.systemd.unit_dir / "stage.service").exists()
    rig.put("stage.service", SLEEPER.format(name="stage", secs=600), state="inactive")
    wait_for(lambda: not (rig.systemd.unit_dir / "stage.service").exists(), what="unloaded")


def test_journal_lines_and_follow(rig: Rig) -> None:
    rig.put(
        "talker.service",
        "[Service]\nExecStart=/bin/sh -c 'i=0; while true; do echo tick-$i; "
        "i=$((i+1)); sleep 0.3; done'\n",
    )
    rig.wait_state("talker.service", "active")
    wait_for(
        lambda: any("tick-2" in line["message"] for line in _journal(rig, 20)), what="tick-2 logged"
    )
    lines = _journal(rig, 3)
    assert len(lines) == 3 and all(line["cursor"] for line in lines)

    followed: list[str] = []
    status, raw = rig.coordinator.raw_stream(
        "/moorage/v1/units/talker.service/journal?follow=1&lines=1", max_lines=4, timeout=10
    )
    assert status == 200
    followed = [json.loads(line)["message"] for line in raw]
    ticks = [int(msg.split("-")[1]) for msg in followed if msg.startswith("tick-")]
    assert len(ticks) >= 3 and ticks == sorted(ticks) and len(set(ticks)) == len(ticks)


def _journal(rig: Rig, n: int) -> list[dict[str, Any]]:
    return list(
        rig.coordinator.api("GET", f"/moorage/v1/units/talker.service/journal?lines={n}")["lines"]
    )


def test_agent_without_systemd_runs_and_reports_why(tmp_path: Path) -> None:
    coordinator = CoordinatorProc(tmp_path / "coordinator").start()
    agent = AgentProc(
        tmp_path,
        "nosd",
        coordinator,
        extra=["--systemd-scope", "user", "--unit-dir", str(tmp_path / "units")],
        env={"DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/no-such-bus"},
    )
    try:
        assert agent.enroll(coordinator.join_token()).returncode == 0
        agent.start()
        wait_for(lambda: "nosd" in coordinator.connected(), what="connected without systemd")
        machine = next(m for m in coordinator.machines() if m["id"] == "nosd")
        assert "systemd" not in machine["capabilities"]
        options = [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 5"}]
        coordinator.api(
            "PUT",
            "/moorage/v1/units/x.service",
            {"options": options, "desired_state": "launched", "machines": ["nosd"]},
        )
        state = wait_for(
            lambda: next(iter(coordinator.api("GET", "/moorage/v1/unit-states")["states"]), None),
            what="failed state reported",
        )
        assert state["active_state"] == "failed"
        assert "systemd is not available" in state["message"]
        time.sleep(1)
        assert agent.proc is not None and agent.proc.alive()
    finally:
        agent.stop()
        coordinator.stop()


def test_journal_follow_ends_when_the_machine_goes_away(rig: Rig) -> None:
    import threading

    rig.put(
        "chatty.service",
        "[Service]\nExecStart=/bin/sh -c 'while true; do echo chat; sleep 0.2; done'\n",
    )
    rig.wait_state("chatty.service", "active")
    result: dict[str, Any] = {}

    def follow() -> None:
        started = time.monotonic()
        result["status"], result["lines"] = rig.coordinator.raw_stream(
            "/moorage/v1/units/chatty.service/journal?follow=1&lines=1",
            max_lines=10_000,
            timeout=30,
        )
        result["seconds"] = time.monotonic() - started

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(1.5)
    assert rig.agent.proc is not None
    rig.agent.proc.kill9()
    reader.join(40)
    assert result["status"] == 200
    assert result["seconds"] < 15, "the follow should end when the agent disconnects"
    last = json.loads(result["lines"][-1])
    assert "disconnected" in last["error"]
    assert any(json.loads(line).get("message") == "chat" for line in result["lines"][:-1])
