"""One real agent on a real systemd manager (the test harness's), for benchmarks."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.harness.systemd import UserSystemd, systemd_available
from tests.procs import AgentProc, CoordinatorProc, wait_for


class RealAgent:
    def __init__(self, root: Path) -> None:
        reason = systemd_available()
        if reason:
            raise SystemExit(f"cannot run: {reason}")
        self.systemd = UserSystemd().start()
        # The production heartbeat (the tests' 1 s would be 10x the idle traffic).
        self.coordinator = CoordinatorProc(root / "coordinator", heartbeat=10.0).start()
        self.agent = AgentProc(
            root,
            "bench-machine",
            self.coordinator,
            extra=self.systemd.agent_flags(),
            env=self.systemd.agent_env(),
        )
        result = self.agent.enroll(self.coordinator.join_token())
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        self.agent.start()
        wait_for(lambda: "bench-machine" in self.coordinator.connected(), what="agent connected")

    @property
    def agent_pid(self) -> int:
        assert self.agent.proc is not None
        return self.agent.proc.pid

    def close(self) -> None:
        self.agent.stop()
        self.coordinator.stop()
        self.systemd.stop()


@contextlib.contextmanager
def real_agent() -> Iterator[RealAgent]:
    root = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    rig: RealAgent | None = None
    try:
        rig = RealAgent(root)
        yield rig
    finally:
        if rig is not None:
            rig.close()
        shutil.rmtree(root, ignore_errors=True)
