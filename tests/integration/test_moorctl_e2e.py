"""moorctl end to end: a real coordinator, three real agents, each on its own real
systemd manager; submit/start/list/journal/status/stop/destroy as an operator would."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleetrig import Fleet
from tests.harness.systemd import systemd_available
from tests.procs import ROOT, wait_for

pytestmark = pytest.mark.integration

MACHINES = ("m1", "m2", "m3")
TICKER = "[Service]\nExecStart=/bin/sh -c 'i=0; while true; do echo {word}-$i; i=$((i+1)); sleep 0.3; done'\n"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    reason = systemd_available()
    if reason:
        pytest.skip(reason)
    f = Fleet(tmp_path, MACHINES, metadata=lambda i: {"rack": f"r{i % 2}"}, lost_after=4)
    try:
        yield f
    finally:
        f.close()


def _as_from_a_terminal() -> None:
    """Ctrl-C reaches a command run from a terminal. A test run started in the
    background of a non-interactive shell has SIGINT ignored, which its children
    inherit (Python then leaves it ignored, and SIGINT would not end the follow)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_unit_on_a_chosen_machine(fleet: Fleet) -> None:
    (fleet.workdir / "pinned.service").write_text(
        TICKER.format(word="pinned") + "\n[X-Fleet]\nMachineID=m2\n"
    )
    out = fleet.moorctl("submit", "pinned.service")
    assert "pinned.service" in out.stdout
    files = fleet.json("list-unit-files")
    assert [(u["name"], u["desiredState"]) for u in files] == [("pinned.service", "inactive")]

    out = fleet.moorctl("start", "pinned.service")
    assert "launched on m2" in out.stdout
    assert fleet.active_on("pinned.service") == {"m2"}

    states = fleet.json("list-units")
    assert [(s["name"], s["machineID"], s["systemdActiveState"]) for s in states] == [
        ("pinned.service", "m2", "active")
    ]
    table = fleet.moorctl("list-units").stdout
    assert "pinned.service" in table and "m2/127.0.0.1" in table and "running" in table
    table = fleet.moorctl("list-unit-files").stdout
    assert "launched" in table and "m2/127.0.0.1" in table

    wait_for(
        lambda: "pinned-2" in fleet.moorctl("journal", "-n", "20", "pinned.service").stdout,
        what="journal lines via moorctl",
    )
    lines = fleet.moorctl("journal", "-n", "3", "pinned.service").stdout.splitlines()
    assert len(lines) == 3

    follower = subprocess.Popen(
        fleet.coordinator.moorctl_argv("journal", "-f", "-n", "1", "pinned.service"),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=_as_from_a_terminal,
    )
    try:
        assert follower.stdout is not None
        got = [follower.stdout.readline().strip() for _ in range(4)]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    ticks = [int(x.split("-")[1]) for x in got if x.startswith("pinned-")]
    assert len(ticks) >= 3 and ticks == sorted(ticks)

    status = fleet.moorctl("status", "pinned.service").stdout
    assert "active" in status and "running" in status and "pinned-" in status

    assert fleet.moorctl("cat", "pinned.service").stdout.startswith("[Service]\nExecStart=/bin/sh")

    fleet.moorctl("stop", "pinned.service")
    assert fleet.active_on("pinned.service") == set()
    assert fleet.json("list-unit-files")[0]["currentState"] == "loaded"

    fleet.moorctl("destroy", "pinned.service")
    wait_for(
        lambda: not (fleet.systemds["m2"].unit_dir / "pinned.service").exists(), what="file gone"
    )
    assert fleet.json("list-unit-files") == []


def test_global_unit_on_three_machines(fleet: Fleet) -> None:
    (fleet.workdir / "everywhere.service").write_text(
        TICKER.format(word="g") + "\n[X-Fleet]\nGlobal=true\n"
    )
    fleet.moorctl("start", "everywhere.service")
    assert fleet.active_on("everywhere.service") == set(MACHINES)
    states = fleet.json("list-units")
    assert sorted(s["machineID"] for s in states) == sorted(MACHINES)
    files = fleet.json("list-unit-files")
    assert files[0]["machineID"] == "" and "currentState" not in files[0]
    assert "global" in fleet.moorctl("list-unit-files").stdout
    assert "g-" in fleet.moorctl("journal", "--machine", "m3", "everywhere.service").stdout
    fleet.moorctl("destroy", "everywhere.service")
    for sd in fleet.systemds.values():
        wait_for(lambda sd=sd: not (sd.unit_dir / "everywhere.service").exists(), what="removed")


def test_start_of_a_failing_unit_exits_non_zero_with_the_reason(fleet: Fleet) -> None:
    (fleet.workdir / "broken.service").write_text("[Service]\nExecStart=/bin/false\n")
    out = fleet.moorctl("start", "--timeout", "15", "broken.service", check=False)
    assert out.returncode == 1, out
    assert "broken.service" in out.stderr and "failed" in out.stderr
    missing = fleet.moorctl("start", "nothing-here.service", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_units_move_when_a_machine_is_lost_not_when_disconnected(fleet: Fleet) -> None:
    (fleet.workdir / "mobile.service").write_text(
        TICKER.format(word="mob") + "\n[X-Fleet]\nMachineMetadata=rack=r0\n"
    )
    fleet.moorctl("start", "mobile.service")
    (first,) = [s["machineID"] for s in fleet.json("list-units")]
    assert first in ("m1", "m3")  # rack r0
    other = "m3" if first == "m1" else "m1"

    agent = fleet.agents[first].proc
    assert agent is not None
    agent.popen.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: _state(fleet, first) == "disconnected", timeout=10, what="disconnected")
        time.sleep(1.0)
        assert _placement(fleet, "mobile.service") == [first]  # only disconnected: stays
        wait_for(lambda: _state(fleet, first) == "lost", timeout=15, what="lost")
        wait_for(
            lambda: _placement(fleet, "mobile.service") == [other], timeout=10, what="rescheduled"
        )
        wait_for(
            lambda: other in fleet.active_on("mobile.service"), timeout=15, what="running elsewhere"
        )
    finally:
        agent.popen.send_signal(signal.SIGCONT)


def _state(fleet: Fleet, mid: str) -> str:
    return str(next(m["state"] for m in fleet.coordinator.machines() if m["id"] == mid))


def _placement(fleet: Fleet, unit: str) -> list[str]:
    return list(fleet.coordinator.api("GET", f"/moorage/v1/units/{unit}")["machines"])
