"""dockerd-kill: kill -9 of a machine's dockerd in the middle of a rollout and of API
writes; started again (same data root) 0-2 s later.

The victim machine (`world.victim`) also has a private dockerd (`tests.harness.dockerd`,
its agent pointed at it with ``--docker-host``) and runs one container unit,
`CONTAINER`, pinned to it with ``[X-Fleet] MachineID=``. The other agents get a Docker
endpoint that does not exist, so that a host's own Docker is never looked at. The
fault kills only dockerd's PID; its systemd units must not notice.

What a user may expect of the container depends on dockerd's own ``live-restore``
setting, which Moorage does not change (the agent never restarts dockerd nor sets its
options; checked live, dockerd 20.10):

* **live-restore off** (dockerd's default, and the harness's): the container's process
  outlives the kill (its containerd-shim holds it), but the new dockerd, while loading
  its containers, stops every container it finds running (SIGTERM, SIGKILL after the
  container's stop timeout: exit 137) before it answers its API at all. A ``Restart=no``
  container stopped so reads as inactive, not failed, and the agent starts it again:
  **the same container (same ID) restarts once**, as after a reboot. That one restart
  is the expected cost of the kill; a second restart, a new container (a recreation
  loses the container's writable layer) or a container left stopped is a failure.
* **live-restore on**: dockerd reattaches to the running container; **it must not
  restart at all** (same ID, same StartedAt).

`DockerWorld.running` reports the container as ``<id>@<StartedAt>``, so a restart is a
new instance and a stopped container is absent; the one restart a kill permits (live-
restore off) is forgiven by aliasing that one new instance to the one it replaced, so
the round's usual invariants (no unit wrongly stopped, no duplicate, no acknowledged
write lost, convergence) judge everything else unchanged. Convergence also requires
the coordinator to show the container unit active on the victim again (what
``fleetctl list-units`` shows a user), not only Docker. While dockerd is away the
victim stays connected, so the container unit must stay placed on it (units move only
off a lost machine): the fault watches the coordinator's placement of it every 0.1 s
until dockerd answers again, and reports any other placement as a problem of the round.

dockerd here runs its own containerd, which dies with it (parent-death signal) and
is reparented to PID 1. This machine's PID 1 reaps orphans slowly (~1.5-2 s), and a
new dockerd that finds the dead containerd's PID still present (a zombie) waits for
its socket and gives up after 15 s; so dockerd is started again after the drawn delay
*and* once that zombie is gone (on a real host, init reaps it at once, and Debian's
docker.service uses a containerd of its own that outlives dockerd). The fault's note
gives the time dockerd was away.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from proto.container import container_name
from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.world import Shape, World
from tests.harness.dockerd import BUSYBOX_TAG, Dockerd, dockerd_available
from tests.procs import CoordinatorProc

CONTAINER = "box.container"
CONTAINER_TEXT = (
    "[Unit]\nDescription=Moorage fault suite: {name}\n\n"
    "[Container]\nImage=" + BUSYBOX_TAG + "\n"
    "Exec=/bin/sh -c 'echo up; exec sleep 1000000'\n"
    "Network=none\n"
    "StopTimeout=1\n"  # sleep as PID 1 ignores SIGTERM: dockerd's restore kills it after 1 s
    "\n[X-Fleet]\nMachineID={machine}\n"
)
RESTART_MAX_S = 2.0
REAP_TIMEOUT_S = 30.0
"""How long the dead containerd is waited for (PID 1 reaps it within ~2 s here)."""


class KillableDockerd(Dockerd):
    """The harness's private dockerd, with a kill -9 of its PID only and a start again
    on the same data root."""

    def kill9(self) -> tuple[int, int | None]:
        """SIGKILL dockerd (its PID only); returns its PID and its containerd's."""
        proc = self._proc
        if proc is None:
            raise FaultNotTaken("dockerd is not running")
        containerd = self.containerd_pid()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self._proc = None
        return proc.pid, containerd

    def containerd_pid(self) -> int | None:
        try:
            return int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def is_ours(self, pid: int) -> bool:
        """True while `pid` is still our containerd, zombie or alive (a zombie has an
        empty command line; a reused PID names something else)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return not cmdline or str(self.root).encode() in cmdline

    def start_again(self, containerd: int | None) -> float:
        """Start dockerd again once its dead containerd is reaped; returns the seconds
        waited for that."""
        began = time.monotonic()
        if containerd is not None:
            while self.is_ours(containerd):
                if time.monotonic() - began > REAP_TIMEOUT_S:
                    raise FaultNotTaken(
                        f"dockerd's containerd {containerd} still there {REAP_TIMEOUT_S:g} s "
                        "after dockerd's kill"
                    )
                time.sleep(0.05)
        waited = time.monotonic() - began
        self._launch()
        return waited


class DockerWorld(World):
    """The standard world on loopback, its victim also running a private dockerd and
    one container unit (`CONTAINER`) pinned to it."""

    dockerd_args: tuple[str, ...] = ()
    """dockerd's own options (the default: none, so live-restore off)."""

    def __init__(self, tmp: Path, shape: Shape) -> None:
        super().__init__(tmp, shape)
        self.dockerd: KillableDockerd | None = None
        self.live_restore = False
        self.container_put = False
        self._api: Any = None
        self._api_lock = threading.Lock()
        self._aliases: dict[str, str] = {}
        """An observed container instance -> the one it stands for (a permitted restart)."""
        self._permit: str | None = None
        """The instance running when dockerd was killed, which may be replaced once."""
        self.restarts = 0
        """Permitted restarts seen so far (each kill without live-restore makes one)."""

    # --- building it ---------------------------------------------------------------------

    def _start(self) -> None:
        super()._start()
        self.put_unit(CONTAINER, CONTAINER_TEXT.format(name=CONTAINER, machine=self.victim))
        self.container_put = True
        if self.wait_converged(120) is None:
            raise RuntimeError(f"the container unit did not converge: {self.problems()}")

    def _add(self, mid: str, at: CoordinatorProc) -> None:
        """As World._add; the victim's private dockerd is started first."""
        if mid == self.victim:
            self.dockerd = KillableDockerd(extra_args=self.dockerd_args)
            self.dockerd.start()
            self.dockerd.import_busybox()
            info = self.dockerd.client(timeout=30).info()
            self.live_restore = bool(info.get("LiveRestoreEnabled"))
        super()._add(mid, at)

    def agent_flags(self, mid: str) -> list[str]:
        """A Docker endpoint for every agent: the victim's private dockerd, for the
        others one that does not exist (a host's own Docker is never looked at)."""
        if mid == self.victim:
            assert self.dockerd is not None
            # task runs (tests/chaos/tasks.py) go here: no network, a modest memory cap
            return [
                "--docker-host",
                self.dockerd.host,
                "--task-network",
                "none",
                "--task-memory-mb",
                "256",
            ]
        return ["--docker-host", f"unix://{self.tmp}/no-dockerd-{mid}.sock"]

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.dockerd is not None:
                try:  # its scratch directory goes with it: keep the log with the world's
                    shutil.copyfile(self.dockerd.log_path, self.tmp / "dockerd.log")
                except OSError:
                    pass
                self.dockerd.stop()

    # --- the fault's bookkeeping ---------------------------------------------------------

    def permit_restart(self) -> str | None:
        """Before a kill: without live-restore, the running instance may be replaced
        once (by the same container). Returns the instance running now, as Docker
        shows it."""
        now = self._container_raw()
        with self._api_lock:
            self._permit = now if not self.live_restore else None
        return now

    def container_fate(self, before: str) -> str:
        """What dockerd, back, shows of the container that ran as `before` (its restore
        is over once it answers: live-restore keeps it, otherwise it was stopped)."""
        with self._api_lock:
            try:
                attrs = self._docker_api().inspect_container(container_name(CONTAINER))
            except Exception as exc:
                return f"not found ({type(exc).__name__})"
        state = attrs.get("State") or {}
        if attrs["Id"][:12] != before.split("@")[0]:
            return f"a new container {attrs['Id'][:12]} (was {before.split('@')[0]})"
        if state.get("Running"):
            same = f"{attrs['Id'][:12]}@{state.get('StartedAt', '')}" == before
            return "kept running" if same else "running again (restarted)"
        return f"{state.get('Status')}, exit {state.get('ExitCode')}"

    # --- looking at it -------------------------------------------------------------------

    def _docker_api(self) -> Any:
        if self._api is None:
            assert self.dockerd is not None
            self._api = self.dockerd.client(timeout=5).api
        return self._api

    def _container_raw(self) -> str | None:
        """``<id>@<StartedAt>`` of the running container of `CONTAINER` (None: absent,
        not running, or dockerd away)."""
        if self.dockerd is None:
            return None
        with self._api_lock:
            try:
                attrs = self._docker_api().inspect_container(container_name(CONTAINER))
            except Exception:
                return None
        state = attrs.get("State") or {}
        if not state.get("Running"):
            return None
        return f"{attrs['Id'][:12]}@{state.get('StartedAt', '')}"

    def _container(self) -> str | None:
        """The container's instance as judged: a permitted restart stands for the
        instance it replaced."""
        raw = self._container_raw()
        if raw is None:
            return None
        with self._api_lock:
            if raw in self._aliases:
                return self._aliases[raw]
            permit = self._permit
            if permit is not None and raw != permit and raw.split("@")[0] == permit.split("@")[0]:
                self._aliases[raw] = self._aliases.get(permit, permit)
                self._permit = None
                self.restarts += 1
                return self._aliases[raw]
        return raw

    def running(self, mid: str) -> dict[str, str]:
        found = super().running(mid)
        if mid == self.victim:
            instance = self._container()
            if instance is not None:
                found[CONTAINER] = instance
        return found

    def placements(self, coordinator: CoordinatorProc | None = None) -> dict[str, frozenset[str]]:
        out = super().placements(coordinator)
        coord = coordinator or self.coord
        for unit in coord.api("GET", "/moorage/v1/units")["units"]:
            if unit["name"] == CONTAINER and unit["desired_state"] == "launched":
                out[CONTAINER] = frozenset(unit["machines"])
        return out

    def problems(self, coordinator: CoordinatorProc | None = None) -> list[str]:
        """World's, and the coordinator must show the container active on the victim.
        Once converged, a kill's permit is spent (a restart after that is not its)."""
        found = self._problems(coordinator)
        if not found:
            with self._api_lock:
                self._permit = None
        return found

    def _problems(self, coordinator: CoordinatorProc | None) -> list[str]:
        found = super().problems(coordinator)
        if found or not self.container_put:
            return found
        try:
            coord = coordinator or self.coord
            states = coord.api("GET", f"/moorage/v1/unit-states?unit={CONTAINER}")["states"]
        except Exception as exc:
            return [f"cannot look: {exc}"]
        mine = [s for s in states if s.get("machine_id") == self.victim]
        if not mine or mine[0].get("active_state") != "active":
            shown = [
                (s.get("machine_id"), s.get("active_state"), s.get("sub_state")) for s in states
            ]
            return [f"the coordinator shows {CONTAINER} as {shown}, not active on {self.victim}"]
        return []


class PlacementWatch:
    """Where the coordinator places `CONTAINER`, and what it says of the victim, every
    0.1 s while dockerd is away: a machine whose dockerd restarts is still connected,
    and its units must stay placed on it (only a lost machine's units move)."""

    def __init__(self, world: DockerWorld) -> None:
        self.world = world
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        want = frozenset({self.world.victim})
        while not self._stop.is_set():
            try:
                placed = self.world.placements().get(CONTAINER, frozenset())
                if placed != want:
                    victim = next(
                        m for m in self.world.coord.machines() if m["id"] == self.world.victim
                    )
                    seen = (
                        f"{CONTAINER} placed on {sorted(placed)} while {victim['id']} was "
                        f"{victim['state']} with capabilities {victim.get('capabilities')}"
                    )
                    if seen not in self.seen:
                        self.seen.append(seen)
            except Exception:
                pass  # the coordinator is busy: the next look will do
            self._stop.wait(0.1)

    def __enter__(self) -> PlacementWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def dockerd_kill(world: World, rng: random.Random) -> Fault:
    """kill -9 of the victim's dockerd (its PID only) in the middle of the rollout and of
    API writes; started again on the same data root after 0-2 s (and once its dead
    containerd is reaped)."""
    assert isinstance(world, DockerWorld), world
    assert world.dockerd is not None
    time.sleep(rng.uniform(0.0, 1.5))
    before = world.permit_restart()
    if before is None:
        raise FaultNotTaken(f"{CONTAINER} was not running before the kill")
    with PlacementWatch(world) as watch:
        pid, containerd = world.dockerd.kill9()
        killed = time.monotonic()
        time.sleep(rng.uniform(0.0, RESTART_MAX_S))
        reaped = world.dockerd.start_again(containerd)
        away = time.monotonic() - killed
        fate = world.container_fate(before)
    note = (
        f"dockerd {pid} on {world.victim} away {away:.1f} s (reap wait {reaped:.1f} s), "
        f"live-restore {'on' if world.live_restore else 'off'}; "
        f"{CONTAINER} once dockerd answered: {fate}"
    )
    problems = [f"rescheduled while dockerd was away: {seen}" for seen in watch.seen]
    agent = world.agents[world.victim].proc
    if agent is None or not agent.alive():
        problems.append(f"{world.victim}'s agent exited when dockerd was killed")
    return Fault(note=note, problems=tuple(problems))


class LiveRestoreWorld(DockerWorld):
    """DockerWorld whose dockerd runs with ``--live-restore``: the container must not
    restart at all when dockerd is killed."""

    dockerd_args = ("--live-restore",)

    def _add(self, mid: str, at: CoordinatorProc) -> None:
        super()._add(mid, at)
        if mid == self.victim and not self.live_restore:
            raise RuntimeError("dockerd was started with --live-restore but does not report it")


def scenarios(config: Config) -> list[Scenario]:
    return [
        Scenario(
            "dockerd-kill",
            dockerd_kill,
            shape=config.loopback(),
            world=DockerWorld,
            needs=dockerd_available,
        ),
        Scenario(
            "dockerd-kill-live-restore",
            dockerd_kill,
            shape=config.loopback(),
            world=LiveRestoreWorld,
            needs=dockerd_available,
        ),
    ]
