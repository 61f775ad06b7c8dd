"""agent-systemd-restart: the agent killed the way production's systemd kills it.

In production the agent is `packaging/agent/moorage-agent.service` (`Type=exec`,
`KillMode=control-group`, `Restart=on-failure`, `RestartSec=2s`): a `systemctl
restart` (an upgrade, an operator) or a crash followed by the automatic restart ends
*every* process in the agent's cgroup, not only the agent. The promise: the units the
agent manages are its systemd's own units, never the agent's children, so they keep
running, the same instances, through any number of such restarts.

`AgentUnitWorld` is the fault suite's world (tests/chaos/world.py) in which the victim
machine's agent is a service of that machine's own systemd manager (the `systemd
--user` it manages units on), started as the transient unit `moorage-agent-<mid>.service`
by `systemd-run --user` with production's settings for kills and restarts
(`Type=exec`, `KillMode=control-group`, `Restart=on-failure`, `RestartSec=2s`,
`TimeoutStopSec=30s`, `UMask=0077`), the command line and environment `AgentProc`
uses (tests/procs.py), the working directory the repository and its output appended
to `agent-<mid>-unit.log` in the world's directory. It is enrolled beforehand, as
`AgentProc` does it. Its `ExecStart=` is a two-line shell script that leaves a
`sleep` in the cgroup, then execs the agent (same PID, the unit's `MainPID`): the
`sleep` is then the agent's own child, standing for the processes a real agent has
beside it (journalctl readers, a WebOps build), which the kill must take too.

Each round, in the middle of the rollout and of API writes, the victim's agent unit
gets, in turn (`HOWS`): a `systemctl restart` (SIGTERM to the whole cgroup, then
started again); a crash, `systemctl kill --kill-whom=main --signal=SIGKILL` (only the
agent dies; systemd ends the rest of the cgroup because of `KillMode=control-group`,
and `Restart=on-failure` starts the unit again 2 s later); or `systemctl kill
--signal=SIGKILL` (every process of the cgroup killed at once; the same restart). The
short run (2 rounds) does the first two, the ones where `KillMode=` decides. The fault
then checks that every process the cgroup held before is gone (the kill really was a
cgroup kill), that the unit is active again under a new `MainPID` (after a SIGKILL: by
an automatic restart, `NRestarts` one higher, no sooner than `RestartSec`), and that
every unit the victim ran just before, bar the release being rolled out, is still the
same instance (InvocationID) once the agent is back. The runner judges the rest as for
`agent-kill`: no unit wrongly stopped or restarted anywhere (InvocationIDs before and
after the round), no duplicates, no acknowledged write lost, convergence.

Differences from production, all outside what the fault exercises: the manager is a
user manager (`systemd --user`, TESTING.md), so the unit sits in the manager's
`app.slice`, not `system.slice`, and the sandboxing of the real unit
(`ProtectSystem=`, `SystemCallFilter=`...) and its `StateDirectory=`/
`ConditionPathExists=` are left out; the state, sticker and unit directories are the
world's, passed as flags. The user manager's `KillMode=control-group` does what the
system manager's does (checked each round: the extra child dies with the agent).
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from coordinator.devhost import INHERITED_SERVICE_VARS
from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.world import RELEASE_UNIT, Shape, World
from tests.harness.systemd import CGROUP_HIERARCHIES, UserSystemd
from tests.procs import ROOT, AgentProc, CoordinatorProc

UNIT_PROPERTIES = (
    "Type=exec",
    "KillMode=control-group",
    "Restart=on-failure",
    "RestartSec=2s",
    "TimeoutStopSec=30s",
    "UMask=0077",
)
"""What packaging/agent/moorage-agent.service says about how the agent is run,
stopped and restarted."""
HOWS = ("restart", "crash", "SIGKILL")
"""The faults in turn: `systemctl restart` of the agent's unit (SIGTERM to its whole
cgroup, then started again); a crash (`systemctl kill --kill-whom=main
--signal=SIGKILL`: only the agent dies, systemd ends the rest of its cgroup by
`KillMode=` and `Restart=on-failure` starts it 2 s later); `systemctl kill
--signal=SIGKILL` of the whole cgroup at once (the same restart)."""
RESTART_SEC = 2.0
BACK_WITHIN_S = 30.0
"""The agent's unit must be active again this long after the kill (or restart)."""


def unit_name(mid: str) -> str:
    return f"moorage-agent-{mid}.service"


class AgentUnit(AgentProc):
    """An agent run as the service `moorage-agent-<mid>.service` of its machine's own
    systemd manager `sd`, not as a child of the suite (`proc` stays None)."""

    def __init__(
        self,
        root: Path,
        machine_id: str,
        coordinator: CoordinatorProc,
        sd: UserSystemd,
        extra: list[str],
    ) -> None:
        super().__init__(root, machine_id, coordinator, extra=extra, env=sd.agent_env())
        self.sd = sd
        self.unit = unit_name(machine_id)
        self.log_path = root / f"agent-{machine_id}-unit.log"
        self.script = root / f"agent-{machine_id}-unit.sh"

    def environment(self) -> dict[str, str]:
        """What `AgentProc` gives its process: the suite's environment, the manager's
        session on top (a manager's own service variables left out)."""
        env = {**os.environ, **self.env}
        return {
            k: v
            for k, v in env.items()
            if k not in INHERITED_SERVICE_VARS and "\n" not in v and k.replace("_", "a").isalnum()
        }

    def _write_script(self) -> None:
        self.script.write_text(
            "#!/bin/sh\n"
            f"# ExecStart of {self.unit} (tests/chaos/agent_unit.py): a child of the agent\n"
            "# in its cgroup, then the agent itself (exec: same PID, the unit's MainPID).\n"
            "sleep 1000000 &\n"
            f"exec {shlex.join(self.base_args())}\n"
        )
        self.script.chmod(0o755)

    def start(self) -> AgentUnit:
        self.runs += 1
        self._write_script()
        self.sd.systemctl("reset-failed", self.unit, timeout=15)  # a failed one of before
        argv = ["systemd-run", "--user", "--unit", self.unit]
        for prop in (
            *UNIT_PROPERTIES,
            f"WorkingDirectory={ROOT}",
            f"StandardOutput=append:{self.log_path}",
            "StandardError=inherit",
        ):
            argv += ["-p", prop]
        for key, value in sorted(self.environment().items()):
            argv += ["-E", f"{key}={value}"]
        argv += ["--", str(self.script)]
        started = subprocess.run(
            argv, env=self.sd.env, capture_output=True, text=True, timeout=30, cwd=ROOT
        )
        if started.returncode != 0:
            raise RuntimeError(f"systemd-run of {self.unit} failed: {started.stderr}")
        return self

    def stop(self) -> None:
        try:
            self.sd.systemctl("stop", self.unit, timeout=40)
        except (OSError, subprocess.SubprocessError):
            pass  # the manager is gone already: so is the unit

    def show(self) -> dict[str, str]:
        out = self.sd.systemctl(
            "show", "-p", "ActiveState,SubState,MainPID,NRestarts,ControlGroup", self.unit
        )
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def cgroup_pids(self) -> set[int]:
        """Every process in the unit's cgroup (both hierarchies of this hybrid layout)."""
        group = self.show().get("ControlGroup", "")
        if not group:
            return set()
        pids: set[int] = set()
        for hierarchy in CGROUP_HIERARCHIES:
            try:
                text = Path(f"/sys/fs/cgroup/{hierarchy}{group}/cgroup.procs").read_text()
            except OSError:
                continue
            pids.update(int(p) for p in text.split())
        return pids

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class AgentUnitWorld(World):
    """The fault suite's world, the victim's agent a service of its own manager."""

    def __init__(self, tmp: Path, shape: Shape) -> None:
        super().__init__(tmp, shape)
        self.kills = 0
        """Faults injected so far (which of `HOWS` is next)."""

    def _make_agent(
        self, mid: str, at: CoordinatorProc, sd: UserSystemd, extra: list[str]
    ) -> AgentProc:
        if mid != self.victim:
            return super()._make_agent(mid, at, sd, extra)
        return AgentUnit(self.tmp, mid, at, sd, extra)

    @property
    def unit_agent(self) -> AgentUnit:
        agent = self.agents[self.victim]
        assert isinstance(agent, AgentUnit), agent
        return agent


def _started(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), with its PID naming it across
    PID reuse; None once it is gone (a zombie, which its manager reaps shortly, too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def agent_systemd_restart(world: World, rng: random.Random) -> Fault:
    """0-1.5 s into the rollout, one of `HOWS` (in turn) to the victim's agent unit;
    returns once the unit is back."""
    assert isinstance(world, AgentUnitWorld), world
    agent = world.unit_agent
    sd = agent.sd
    mid = world.victim
    how = HOWS[world.kills % len(HOWS)]
    world.kills += 1
    time.sleep(rng.uniform(0.0, 1.5))

    before = agent.show()
    if before.get("ActiveState") != "active":
        raise FaultNotTaken(f"{agent.unit} not active before the fault: {before}")
    old_pid = int(before["MainPID"])
    old_restarts = int(before.get("NRestarts", "0") or 0)
    pids = {pid: _started(pid) for pid in agent.cgroup_pids()}
    units = {u: i for u, i in world.running(mid).items() if u != RELEASE_UNIT}

    began = time.monotonic()
    if how == "restart":
        done = sd.systemctl("restart", agent.unit, timeout=60)
    else:
        whom = "main" if how == "crash" else "all"
        done = sd.systemctl("kill", f"--kill-whom={whom}", "--signal=SIGKILL", agent.unit)
    if done.returncode != 0:
        raise FaultNotTaken(f"systemctl {how} of {agent.unit} failed: {done.stderr.strip()}")
    problems: list[str] = []
    if len(pids) < 2:
        problems.append(f"{agent.unit}'s cgroup held {sorted(pids)} only, not the agent's child")

    now: dict[str, str] = {}
    while time.monotonic() - began < BACK_WITHIN_S:
        now = agent.show()
        pid = int(now.get("MainPID", "0") or 0)
        if now.get("ActiveState") == "active" and pid not in (0, old_pid):
            break
        time.sleep(0.1)
    back_s = time.monotonic() - began
    new_pid = int(now.get("MainPID", "0") or 0)
    if now.get("ActiveState") != "active" or new_pid in (0, old_pid):
        problems.append(
            f"{agent.unit} not active under a new MainPID {BACK_WITHIN_S:g} s after the "
            f"{how} (was {old_pid}): {now}"
        )
    elif how != "restart":
        restarts = int(now.get("NRestarts", "0") or 0)
        if restarts != old_restarts + 1:
            problems.append(
                f"{agent.unit} back after the {how} with NRestarts {restarts}, not "
                f"{old_restarts + 1}: not Restart=on-failure's doing"
            )
        if back_s < RESTART_SEC - 0.2:
            problems.append(f"{agent.unit} back {back_s:.1f} s after the {how}, before RestartSec")
    survivors = sorted(p for p, born in pids.items() if born and _started(p) == born)
    if survivors:
        problems.append(f"processes of {agent.unit}'s cgroup outlived the {how}: {survivors}")

    after = world.running(mid)
    for unit, invocation in sorted(units.items()):
        seen = after.get(unit)
        if seen != invocation:
            state = "stopped" if seen is None else f"restarted ({invocation} -> {seen})"
            problems.append(f"{unit} on {mid} {state} across the agent's {how}")
    return Fault(
        note=(
            f"{agent.unit} {how}: pid {old_pid} -> {new_pid} in {back_s:.1f} s, "
            f"its cgroup held {len(pids)} processes, {len(units)} units kept"
        ),
        problems=tuple(problems),
    )


def systemd_run_missing() -> str | None:
    return None if shutil.which("systemd-run") else "no systemd-run"


def scenarios(config: Config) -> list[Scenario]:
    return [
        Scenario(
            "agent-systemd-restart",
            agent_systemd_restart,
            shape=config.loopback(),
            world=AgentUnitWorld,
            needs=systemd_run_missing,
        )
    ]
