"""task-agent-kill: `kill -9` of the agent running a batch task run (the task API,
Flotilla's `/api/v6`), in the middle of the run, of a rollout and of API writes.

The world is `DockerWorld` (tests/chaos/dockerkill.py): the victim has a private
dockerd, the only machine that can take runs. Each round defines nothing new: one task
definition (a counter printing `LINES` lines, 0.1 s apart) is executed; once some of
its output has arrived, the victim's agent is killed and started again 0-2 s later.
The promise (as tests/integration/test_tasks_e2e.py checks once): an execute answered
2xx is never lost; the run goes on in its container while the agent is away, the agent
finds it again, and it ends `STOPPED` with exit code 0 and its whole log, every line
once. Judged once the world has converged (`Fault.judge`), within `FINISH_S`.
"""

from __future__ import annotations

import random
import time
from typing import Any

from tests.chaos.dockerkill import DockerWorld
from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.world import World
from tests.harness.dockerd import BUSYBOX_TAG, dockerd_available

LINES = 40
COMMAND = f"i=1; while test $i -le {LINES}; do echo line $i; i=$((i+1)); sleep 0.1; done"
EXPECTED = "".join(f"line {i}\n" for i in range(1, LINES + 1))
FINISH_S = 90.0


class TaskWorld(DockerWorld):
    """DockerWorld with one task definition to execute in every round."""

    definition = ""

    def _add_units(self) -> None:
        super()._add_units()
        self.wait(self._takes_runs, 60, f"{self.victim} announces docker")
        body = self.coord.api(
            "POST", "/api/v6/task", {"alias": "counter", "image": BUSYBOX_TAG, "command": COMMAND}
        )
        self.definition = str(body["definition_id"])

    def _takes_runs(self) -> bool:
        machine = next((m for m in self.coord.machines() if m["id"] == self.victim), None)
        return bool(machine and "docker" in machine["capabilities"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.coord.api("GET", f"/api/v1/history/{run_id}"))

    def whole_log(self, run_id: str) -> str:
        status, body = self.coord.raw("GET", f"/api/v1/{run_id}/logs?raw_text=true")
        return body.decode(errors="replace") if status == 200 else f"<{status}>"


def task_agent_kill(world: World, rng: random.Random) -> Fault:
    assert isinstance(world, TaskWorld), world
    run = world.coord.api(
        "PUT",
        f"/api/v6/task/{world.definition}/execute",
        {"run_tags": {"owner_id": "chaos"}},
    )
    run_id = str(run["run_id"])  # acknowledged: it must finish, whatever happens next
    started = time.monotonic()
    while not world.coord.api("GET", f"/api/v6/{run_id}/logs")["log"]:
        if time.monotonic() - started > 60:
            raise FaultNotTaken(f"run {run_id} printed nothing within 60 s")
        time.sleep(0.1)
    time.sleep(rng.uniform(0.0, 1.5))
    agent = world.agents[world.victim]
    assert agent.proc is not None
    agent.proc.kill9()
    time.sleep(rng.uniform(0.0, 2.0))
    agent.start()

    def judge() -> list[str]:
        deadline = time.monotonic() + FINISH_S
        while True:
            found = world.run(run_id)
            if found["status"] == "STOPPED" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if found["status"] != "STOPPED":
            return [f"task run {run_id} still {found['status']} {FINISH_S:g} s after the kill"]
        if found.get("exit_code") != 0:
            return [
                f"task run {run_id} ended with {found.get('exit_code')}: {found.get('exit_reason')}"
            ]
        while True:  # the tail of the log may trail the final status a little
            log = world.whole_log(run_id)
            if log == EXPECTED or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if log != EXPECTED:
            lines = log.splitlines()
            return [
                f"task run {run_id}'s log has {len(lines)} lines "
                f"({len(set(lines))} distinct), not the {LINES} it printed"
            ]
        return []

    return Fault(note=f"agent {world.victim} killed mid-run {run_id}", judge=judge)


def scenarios(config: Config) -> list[Scenario]:
    return [
        Scenario(
            "task-agent-kill",
            task_agent_kill,
            shape=config.loopback(),
            world=TaskWorld,
            needs=dockerd_available,
        )
    ]
