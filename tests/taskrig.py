"""A real coordinator, one real enrolled agent and a real private dockerd with the
locally imported busybox image, for batch task tests and benchmarks (#19), with helpers
over the Flotilla task API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness.dockerd import BUSYBOX_TAG, Dockerd
from tests.procs import AgentProc, CoordinatorProc, wait_for

TASK_MEMORY_MB = 512
"""What the agent offers task runs (--task-memory-mb): the host has far more memory than a
test should ask a container limit for."""


def counting(n: int, pause: str = "0.1") -> tuple[str, str]:
    """A command printing `line 1` .. `line n`, `pause` seconds apart, and its output."""
    command = (
        f"i=1; while test $i -le {n}; do echo line $i; i=$((i+1)); sleep {pause}; done; exit 0"
    )
    return command, "".join(f"line {i}\n" for i in range(1, n + 1))


class TaskRig:
    """A coordinator and one agent ("m1", no systemd) whose task runs go to `daemon`."""

    def __init__(self, tmp: Path, daemon: Dockerd, **coordinator_options: Any) -> None:
        self.tmp = tmp
        self.dockerd = daemon
        daemon.import_busybox()
        # The production lost_after (60 s), not the tests' 5 s: a run whose agent is
        # restarted stays RUNNING instead of passing through NEEDS_RETRY on a slow machine.
        options = {"lost-after": 60.0, **coordinator_options}
        self.coordinator = CoordinatorProc(tmp / "coordinator", **options).start()
        self.agent = AgentProc(
            tmp,
            "m1",
            self.coordinator,
            extra=[
                "--systemd-scope",
                "user",
                "--unit-dir",
                str(tmp / "units"),
                "--task-network",
                "none",
                "--task-memory-mb",
                str(TASK_MEMORY_MB),
                "--metrics-listen=",
            ],
            env={
                "DOCKER_HOST": daemon.host,
                "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp}/no-such-bus",
            },
        )
        result = self.agent.enroll(self.coordinator.join_token())
        assert result.returncode == 0, result.stderr
        self.agent.start()
        self.wait_ready()

    def wait_ready(self) -> None:
        """The agent is connected and has announced Docker (it can take runs)."""

        def ready() -> bool:
            m = next((m for m in self.coordinator.machines() if m["id"] == "m1"), None)
            return bool(m and m["state"] == "connected" and "docker" in m["capabilities"])

        wait_for(ready, 60, 0.2, what="agent m1 connected with docker")

    # -- the Flotilla API

    def define(self, alias: str, command: str, **fields: Any) -> str:
        body = self.coordinator.api(
            "POST",
            "/api/v6/task",
            {"alias": alias, "image": BUSYBOX_TAG, "command": command, **fields},
        )
        return str(body["definition_id"])

    def execute(self, definition_id: str, **body: Any) -> str:
        run = self.coordinator.api(
            "PUT",
            f"/api/v6/task/{definition_id}/execute",
            {"run_tags": {"owner_id": "e2e"}, **body},
        )
        assert run["status"] == "QUEUED", run
        return str(run["run_id"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.coordinator.api("GET", f"/api/v1/history/{run_id}"))

    def wait_status(self, run_id: str, status: str, timeout: float = 90) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["status"] == status else None

        return dict(wait_for(check, timeout, 0.1, what=f"run {run_id} {status}"))

    def logs(self, run_id: str, last_seen: str = "") -> dict[str, Any]:
        return dict(self.coordinator.api("GET", f"/api/v6/{run_id}/logs?last_seen={last_seen}"))

    def whole_log(self, run_id: str) -> str:
        status, body = self.coordinator.raw("GET", f"/api/v1/{run_id}/logs?raw_text=true")
        assert status == 200, body
        return body.decode()

    def containers(self) -> list[dict[str, Any]]:
        """Every container, as one listing call (the SDK's `containers.list` inspects each
        one after listing, which races with a container the agent is removing)."""
        return list(self.dockerd.client().api.containers(all=True))

    def close(self) -> None:
        self.agent.stop()
        self.coordinator.stop()
