"""Several real machines for end-to-end tests: a coordinator and agents on real systemd."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.systemd import UserSystemd, systemd_available
from tests.procs import AgentProc, CoordinatorProc, wait_for


class Fleet:
    """A real coordinator and one real agent per machine id, each agent on its own real
    systemd manager; `close` stops everything it started, also after a failed start."""

    def __init__(
        self,
        tmp: Path,
        machines: Sequence[str],
        *,
        metadata: Callable[[int], dict[str, str]] = lambda i: {},
        lost_after: float = 5.0,
    ) -> None:
        self.tmp = tmp
        self.machines = tuple(machines)
        self.systemds: dict[str, UserSystemd] = {}
        self.agents: dict[str, AgentProc] = {}
        self.coordinator = CoordinatorProc(tmp / "coordinator", **{"lost-after": lost_after})
        self.workdir = tmp / "units"
        self.workdir.mkdir()
        try:
            self._start(metadata)
        except BaseException:
            self.close()
            raise

    def _start(self, metadata: Callable[[int], dict[str, str]]) -> None:
        self.coordinator.start()
        for i, mid in enumerate(self.machines):
            self._add(mid, metadata(i))
        wait_for(
            lambda: self.coordinator.connected() == set(self.machines),
            timeout=30,
            what=f"{len(self.machines)} agents",
        )

    def add_machine(self, mid: str, metadata: dict[str, str] | None = None) -> None:
        """Another machine joins the running fleet (connected when this returns)."""
        self._add(mid, metadata or {})
        self.machines = (*self.machines, mid)
        wait_for(lambda: mid in self.coordinator.connected(), timeout=30, what=f"{mid} connected")

    def _add(self, mid: str, metadata: dict[str, str]) -> None:
        """Start a systemd manager and an agent for `mid`, enrolled with a join token."""
        sd = UserSystemd()
        self.systemds[mid] = sd
        sd.start()
        meta = [f"--metadata={k}={v}" for k, v in metadata.items()]
        agent = AgentProc(
            self.tmp,
            mid,
            self.coordinator,
            extra=[*sd.agent_flags(), *meta],
            env=sd.agent_env(),
        )
        self.agents[mid] = agent
        result = agent.enroll(self.coordinator.join_token())
        assert result.returncode == 0, result.stderr
        agent.start()

    def moorctl(
        self, *args: str, check: bool = True, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        out = self.coordinator.moorctl(*args, cwd=self.workdir, timeout=timeout)
        if check:
            assert out.returncode == 0, (
                f"moorctl {args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
            )
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.moorctl("--json", *args).stdout)

    def active_on(self, unit: str) -> set[str]:
        return {
            mid
            for mid, sd in self.systemds.items()
            if sd.unit_property(unit, "ActiveState") == "active"
        }

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.coordinator.stop()
        for sd in self.systemds.values():
            sd.stop()


def fleet_of(tmp: Path, machines: tuple[str, ...]) -> Iterator[Fleet]:
    """A fleet of real agents for a fixture (`yield from fleet_of(...)`), closed however
    the test ends; skipped where no systemd manager can be started."""
    reason = systemd_available()
    if reason:
        pytest.skip(reason)
    f = Fleet(tmp, machines)
    try:
        yield f
    finally:
        f.close()
