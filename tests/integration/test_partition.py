"""A partition long enough for a machine to be lost: the old copy of a rescheduled
unit stays visible (stale) until its machine reports it gone, and a unit marked
StopWhenIsolated is stopped on the isolated machine before it starts elsewhere.

Machine `iso` runs its agent in a network namespace of the test's own, reaching the
hub over a veth (10.231.154.0/30); the partition takes the veth's host end down
(packets vanish). Machine `free` runs in the test's namespace. Both agents drive
their own real systemd manager; the test orders the stop on `iso` and the start on
`free` by watching both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.netns import NetNs, agent_in, netns_available
from tests.harness.systemd import UserSystemd, systemd_available
from tests.procs import AgentProc, CoordinatorProc, free_port, wait_for

pytestmark = pytest.mark.integration

TICKER = "[Service]\nExecStart=/bin/sh -c 'while true; do sleep 0.5; done'\n"


class Rig:
    def __init__(self, tmp: Path, ns: NetNs) -> None:
        port = free_port()
        self.tmp = tmp
        self.ns = ns
        self.coordinator = CoordinatorProc(
            tmp / "coordinator",
            **{
                "lost-after": 5.0,
                "hub-listen": f"{ns.host_ip}:{port}",
                "hub-url": f"wss://{ns.host_ip}:{port}/agent/v1",
            },
        )
        self.systemds: dict[str, UserSystemd] = {}
        self.agents: dict[str, AgentProc] = {}
        self.workdir = tmp / "units"
        self.workdir.mkdir()

    def add(self, mid: str, *, isolated: bool) -> None:
        sd = UserSystemd()
        self.systemds[mid] = sd
        sd.start()
        agent = AgentProc(
            self.tmp, mid, self.coordinator, extra=sd.agent_flags(), env=sd.agent_env()
        )
        if isolated:
            agent_in(self.ns, agent)
        self.agents[mid] = agent
        result = agent.enroll(self.coordinator.join_token())
        assert result.returncode == 0, result.stderr
        agent.start()
        wait_for(lambda: mid in self.coordinator.connected(), timeout=30, what=f"{mid} connected")

    def moorctl(self, *args: str) -> str:
        out = self.coordinator.moorctl(*args, cwd=self.workdir)
        assert out.returncode == 0, f"moorctl {args}: {out.stdout}\n{out.stderr}"
        return out.stdout

    def copies(self, unit: str) -> dict[str, dict[str, Any]]:
        """list-units as moorctl shows it (fleet's /state), by machine."""
        states = json.loads(self.moorctl("--json", "list-units"))
        return {s["machineID"]: s for s in states if s["name"] == unit}

    def placed(self, unit: str) -> list[str]:
        return list(self.coordinator.api("GET", f"/moorage/v1/units/{unit}")["machines"])

    def state(self, mid: str) -> str:
        return str(next(m["state"] for m in self.coordinator.machines() if m["id"] == mid))

    def active(self, mid: str, unit: str) -> str:
        return self.systemds[mid].unit_property(unit, "ActiveState")

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.coordinator.stop()
        for sd in self.systemds.values():
            sd.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    for reason in (systemd_available(), netns_available()):
        if reason:
            pytest.skip(reason)
    with NetNs(154) as ns:
        made = Rig(tmp_path, ns)
        try:
            made.coordinator.start()
            yield made
        finally:
            made.close()


def test_old_copies_stay_visible_and_singletons_stop_before_moving(rig: Rig) -> None:
    rig.add("iso", isolated=True)
    (rig.workdir / "copy.service").write_text(TICKER)
    (rig.workdir / "single.service").write_text(TICKER + "\n[X-Fleet]\nStopWhenIsolated=true\n")
    rig.moorctl("start", "copy.service", "single.service")
    assert rig.placed("copy.service") == rig.placed("single.service") == ["iso"]
    rig.add("free", isolated=False)

    cut_at = time.monotonic()
    rig.ns.cut()
    wait_for(lambda: rig.state("iso") == "lost", timeout=25, what="iso lost")
    lost_at = time.monotonic()

    # The plain unit moves at once; its old copy runs on (Moorage never stops a unit
    # for want of the coordinator) and list-units shows both, the old one stale.
    wait_for(lambda: rig.placed("copy.service") == ["free"], timeout=5, what="copy moved")
    wait_for(lambda: rig.active("free", "copy.service") == "active", timeout=15, what="copy up")
    assert rig.active("iso", "copy.service") == "active"
    copies = rig.copies("copy.service")
    assert set(copies) == {"iso", "free"}, copies
    assert copies["iso"]["stale"] is True and copies["iso"]["ageSeconds"] > 0, copies
    assert copies["iso"]["systemdActiveState"] == "active"
    assert not copies["free"].get("stale"), copies
    table = rig.moorctl("list-units")
    assert "stale" in table, table
    native = rig.coordinator.api("GET", "/moorage/v1/unit-states?unit=copy.service")["states"]
    assert {(s["machine_id"], s["stale"]) for s in native} == {("iso", True), ("free", False)}

    # The singleton is stopped on the isolated machine by its agent, and stays placed
    # there until lost_after plus the margin have passed...
    wait_for(lambda: rig.active("iso", "single.service") != "active", timeout=5, what="stop")
    stopped_at = time.monotonic()
    assert rig.placed("single.service") == ["iso"]
    assert rig.active("free", "single.service") != "active"
    # ...and only then starts elsewhere.
    wait_for(lambda: rig.placed("single.service") == ["free"], timeout=20, what="single moved")
    moved_at = time.monotonic()
    wait_for(lambda: rig.active("free", "single.service") == "active", timeout=15, what="up")
    assert stopped_at < moved_at
    assert moved_at - lost_at >= 9, "singletons move only after the margin"

    # Still partitioned: the old copies stay listed.
    assert set(rig.copies("copy.service")) == {"iso", "free"}

    # Healed: iso reports its copies gone (and stops the old plain copy); the lists
    # show one copy of each unit, on `free`; the singleton is not started again on iso.
    rig.ns.heal()
    wait_for(lambda: rig.state("iso") == "connected", timeout=30, what="iso back")
    wait_for(
        lambda: (
            set(rig.copies("copy.service")) == {"free"}
            and set(rig.copies("single.service")) == {"free"}
        ),
        timeout=15,
        what="old copies reported gone",
    )
    wait_for(lambda: rig.active("iso", "copy.service") != "active", timeout=15, what="old copy")
    assert rig.active("iso", "single.service") != "active"
    assert rig.active("free", "single.service") == "active"
    log = rig.agents["iso"].proc
    assert log is not None and "stopping the units marked StopWhenIsolated" in log.log()
    print(
        f"lost {lost_at - cut_at:.1f} s after the cut, singleton moved {moved_at - lost_at:.1f} s later"
    )
