"""The world a fault runs in: a coordinator and a few machines, each a real agent on its
own real systemd manager, with units placed by the scheduler, a global unit and a
release rolled out through the Fleet Manager API, as an operator's fleet has them.

One machine (the last) may reach the hub from a network namespace of its own over a
veth (`tests.harness.netns`), so that partitions cut only it; the hub then listens on
the veth's host address, which the other agents reach too. Agents run with the
production reconnect backoff (up to 30 s) unless told otherwise: convergence after a
fault is measured as users would see it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proto.units import parse_unit_file
from tests.chaos.invariants import Snapshot, convergence_problems
from tests.fmclient import FleetManager
from tests.harness.netns import NetNs, agent_in, netns_available
from tests.harness.systemd import UserSystemd
from tests.procs import AgentProc, CoordinatorProc, free_port, wait_for

PLACED = tuple(f"svc-{i}.service" for i in range(1, 7))
"""Placed by the scheduler, one machine each: these are what may move, or run twice."""
GLOBAL = "glob.service"
"""On every machine (`Global=true`)."""
RELEASE_UNIT = "web.service"
DEPLOYMENT = "web"
OBSERVED = (*PLACED, GLOBAL, RELEASE_UNIT)
SLEEPER = (
    "[Unit]\nDescription=Moorage fault suite: {name}\n\n[Service]\nExecStart=/bin/sleep 1000000\n"
)
MANIFEST = """\
units:
  - name: web.service
    contents: |
      [Service]
      ExecStart=/bin/sh -c 'echo {word}; exec sleep 1000000'
rollout:
  batch_size: 1
  min_healthy_s: 1
  timeout_s: 120
"""
SHOW = "Id,ActiveState,InvocationID"


@dataclass(frozen=True)
class Shape:
    """How the world is built: machine count, whether the last machine sits behind a
    namespace (partitions need it, and root), and the coordinator's timings."""

    machines: int = 3
    isolated: bool = True
    lost_after: float = 60.0
    heartbeat: float = 2.0
    backoff_max: float = 30.0
    subnet: int = 170


def options(text: str) -> list[dict[str, str]]:
    return [{"section": o.section, "name": o.name, "value": o.value} for o in parse_unit_file(text)]


class World:
    """Everything a scenario acts on; `close` stops what it started, whatever happened."""

    observed: tuple[str, ...] = OBSERVED
    """The units looked at on every machine and judged (a subclass adds its own)."""

    def __init__(self, tmp: Path, shape: Shape) -> None:
        self.tmp = tmp
        self.shape = shape
        self.machines = tuple(f"m{i}" for i in range(1, shape.machines + 1))
        self.ns: NetNs | None = None
        self.systemds: dict[str, UserSystemd] = {}
        self.agents: dict[str, AgentProc] = {}
        self.coordinator: CoordinatorProc | None = None
        self.fm: FleetManager | None = None
        self.app_id = ""
        self.deployment_id = ""
        self.release_id = ""
        self.release_word = ""
        self.last_placements: dict[str, frozenset[str]] = {}
        """Placements at the start of the current round (what a rebooted machine must
        bring back on its own)."""

    # --- building it ---------------------------------------------------------------------

    @property
    def victim(self) -> str:
        """The machine faults that hit one machine hit (the one behind the namespace)."""
        return self.machines[-1]

    @property
    def coord(self) -> CoordinatorProc:
        assert self.coordinator is not None
        return self.coordinator

    def start(self) -> World:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        host = "127.0.0.1"
        if self.shape.isolated:
            reason = netns_available()
            if reason:
                raise RuntimeError(f"this world needs a network namespace: {reason}")
            self.ns = NetNs(self.shape.subnet).start()
            host = self.ns.host_ip
        self.coordinator = self._make_coordinator(host)
        self.coordinator.start()
        self._add_agents()
        self._add_units()

    def _add_agents(self) -> None:
        """Every machine, enrolled through `_enrol_at` (its hub first in the agent's list)."""
        for i, mid in enumerate(self.machines):
            self._add(mid, self._enrol_at(i))
        self.wait(lambda: not self.connection_problems(), 60, "every agent connected")

    def _enrol_at(self, index: int) -> CoordinatorProc:
        """The coordinator machine number `index` enrols through."""
        return self.coord

    def _add_units(self) -> None:
        """The fleet units and the first release, everywhere; returns once converged."""
        self.fm = FleetManager(self.coord)
        for name in PLACED:
            self.put_unit(name, SLEEPER.format(name=name))
        self.put_unit(GLOBAL, SLEEPER.format(name=GLOBAL) + "\n[X-Fleet]\nGlobal=true\n")
        self._create_release()
        self.deploy("v0")
        if self.wait_converged(120) is None:
            raise RuntimeError(f"the new world did not converge: {self.problems()}")

    def _make_coordinator(self, host: str) -> CoordinatorProc:
        """The coordinator, its hub on `host` (where every agent, the victim in its
        namespace too, reaches it). Worlds of other shapes override this."""
        return CoordinatorProc(
            self.tmp / "coordinator", **self._coordinator_options(host, free_port())
        )

    def _coordinator_options(self, host: str, port: int) -> dict[str, Any]:
        """The world's timings, the hub listening on `host:port`, and the hub URL agents
        are given (`_hub_url`)."""
        return {
            "lost-after": self.shape.lost_after,
            "heartbeat": self.shape.heartbeat,
            "hub-listen": f"{host}:{port}",
            "hub-url": self._hub_url(host, port),
        }

    def _hub_url(self, host: str, port: int) -> str:
        """Where agents dial the hub listening on `host:port` (a proxy's, in a subclass)."""
        return f"wss://{host}:{port}/agent/v1"

    def _add(self, mid: str, at: CoordinatorProc) -> None:
        """Machine `mid`: its own systemd manager, and an agent enrolled through `at`."""
        sd = UserSystemd()
        self.systemds[mid] = sd
        sd.start()
        agent = self._make_agent(
            mid,
            at,
            sd,
            [
                *sd.agent_flags(),
                "--sticker-dir",
                str(self.sticker_dir(mid)),
                "--drift-interval",
                "2",
                "--backoff-max",
                str(self.shape.backoff_max),
                *self.agent_flags(mid),
            ],
        )
        if self.ns is not None and mid == self.victim:
            agent_in(self.ns, agent)
        self.agents[mid] = agent
        enrolled = agent.enroll(at.join_token())
        assert enrolled.returncode == 0, enrolled.stderr
        agent.start()

    def _make_agent(
        self, mid: str, at: CoordinatorProc, sd: UserSystemd, extra: list[str]
    ) -> AgentProc:
        """Machine `mid`'s agent (not yet enrolled nor started), with the flags `extra`,
        pointed at its manager `sd` (a subclass runs it as a unit of that manager)."""
        return AgentProc(self.tmp, mid, at, extra=extra, env=sd.agent_env())

    def agent_flags(self, mid: str) -> list[str]:
        """More agent flags for machine `mid` (a subclass's Docker endpoint...)."""
        return []

    def sticker_dir(self, mid: str) -> Path:
        return self.tmp / f"stickers-{mid}"

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        if self.coordinator is not None:
            self.coordinator.stop()
        for sd in self.systemds.values():
            sd.stop()
        if self.ns is not None:
            self.ns.close()

    # --- acting on it ----------------------------------------------------------------------

    def put_unit(self, name: str, text: str, desired: str = "launched") -> None:
        self.coord.api(
            "PUT", f"/fleet/v1/units/{name}", {"desiredState": desired, "options": options(text)}
        )

    def _create_release(self) -> None:
        assert self.fm is not None
        app = self.fm.ok(
            "POST",
            "/deployment-applications",
            {"name": DEPLOYMENT, "sourceConfig": MANIFEST.format(word="v0")},
            expect=201,
        )
        group = self.fm.default_group()
        dep = self.fm.ok(
            "POST",
            "/deployments",
            {"name": DEPLOYMENT, "applicationId": app["id"], "clusterGroupId": group["id"]},
            expect=201,
        )
        self.app_id, self.deployment_id = app["id"], dep["id"]

    def deploy(self, word: str) -> None:
        """A new release of `web.service` (its text names `word`), rolled out one machine
        at a time; convergence then includes its success and every sticker naming it."""
        assert self.fm is not None
        if word != "v0":
            self.fm.ok(
                "PUT",
                f"/deployment-applications/{self.app_id}",
                {"sourceConfig": MANIFEST.format(word=word)},
            )
        release = self.fm.ok("POST", f"/deployments/{self.deployment_id}/deploy", expect=201)
        self.release_id, self.release_word = release["id"], word

    # --- looking at it ---------------------------------------------------------------------

    def running(self, mid: str) -> dict[str, str]:
        """unit -> InvocationID of the active units on `mid`, as its systemd says ({} when
        the manager is down)."""
        sd = self.systemds[mid]
        try:
            out = sd.systemctl("show", "-p", SHOW, *self.observed, timeout=10)
        except Exception:
            return {}
        if out.returncode != 0:
            return {}
        found: dict[str, str] = {}
        for block in out.stdout.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if props.get("ActiveState") == "active" and props.get("InvocationID"):
                found[props["Id"]] = props["InvocationID"]
        return found

    def placements(self, coordinator: CoordinatorProc | None = None) -> dict[str, frozenset[str]]:
        coord = coordinator or self.coord
        units = coord.api("GET", "/moorage/v1/units")["units"]
        out = {
            u["name"]: frozenset(u["machines"])
            for u in units
            if u["name"] in self.observed and u["desired_state"] == "launched"
        }
        out[RELEASE_UNIT] = frozenset(self.machines)
        return out

    def machine_states(self, coordinator: CoordinatorProc | None = None) -> dict[str, str]:
        coord = coordinator or self.coord
        return {m["id"]: m["state"] for m in coord.machines()}

    def snapshot(self, coordinator: CoordinatorProc | None = None) -> Snapshot:
        states = self.machine_states(coordinator)
        return Snapshot(
            placements=self.placements(coordinator),
            running={mid: self.running(mid) for mid in self.machines},
            connected=frozenset(m for m, s in states.items() if s == "connected"),
        )

    def connection_problems(self) -> list[str]:
        states = self.machine_states()
        return [
            f"{m} {states.get(m, 'unknown')}" for m in self.machines if states.get(m) != "connected"
        ]

    def release_problems(self, coordinator: CoordinatorProc | None = None) -> list[str]:
        """The latest release succeeded and every machine's sticker tells the truth: it
        names that release, and the unit file on disk has the hash the sticker gives."""
        assert self.fm is not None
        fm = self.fm.aimed_at(coordinator or self.coord)
        releases = fm.ok("GET", f"/deployments/{self.deployment_id}/releases")
        last = releases[-1] if releases else None
        if last is None or last["id"] != self.release_id:
            return [f"release {self.release_id} not listed last"]
        if last["status"] != "Success":
            return [f"release {self.release_id} {last['status']}"]
        problems = []
        for mid in self.machines:
            problems += self._sticker_problems(mid)
        return problems

    def _sticker_problems(self, mid: str) -> list[str]:
        path = self.sticker_dir(mid) / f"{DEPLOYMENT}.json"
        try:
            sticker = json.loads(path.read_text())
        except (OSError, ValueError):
            return [f"no sticker on {mid}"]
        if sticker.get("release") != self.release_id:
            return [f"sticker on {mid} names {sticker.get('release')}, not {self.release_id}"]
        unit_file = self.systemds[mid].unit_dir / RELEASE_UNIT
        try:
            text = unit_file.read_bytes()
        except OSError:
            return [f"{RELEASE_UNIT} missing on {mid}"]
        if self.release_word.encode() not in text:
            return [f"{RELEASE_UNIT} on {mid} is not {self.release_word}'s"]
        want = sticker.get("units", {}).get(RELEASE_UNIT, {}).get("sha256")
        if want != hashlib.sha256(text).hexdigest():
            return [f"sticker on {mid} gives another hash than the file's"]
        return []

    def refusals(self) -> list[str]:
        """Every time an agent was refused by a hub, from the agents' logs: an honest agent
        never is, whatever the fault (a refusal costs it the longest backoff)."""
        found = []
        for log in sorted(self.tmp.glob("agent-*.log")):
            with contextlib.suppress(OSError):
                found += [
                    line
                    for line in log.read_text(errors="replace").splitlines()
                    if "refused this agent" in line
                ]
        return found

    def drift(self, coordinator: CoordinatorProc | None = None) -> list[str]:
        """Drift the agents report when asked afresh (after convergence: none)."""
        coord = coordinator or self.coord
        body = coord.api("GET", "/moorage/v1/drift?refresh=1")
        out = [f"{m['machine_id']}: {e}" for m in body["machines"] for e in m["entries"]]
        out += [f"{mid} unreachable: {why}" for mid, why in body.get("unreachable", {}).items()]
        return out

    def problems(self, coordinator: CoordinatorProc | None = None) -> list[str]:
        """Why the world has not converged (empty: it has)."""
        try:
            snap = self.snapshot(coordinator)
            found = convergence_problems(snap, self.machines)
            return found or self.release_problems(coordinator)
        except Exception as exc:  # the coordinator is (still) away: not converged
            return [f"cannot look: {exc}"]

    def wait_converged(
        self, timeout: float, coordinator: CoordinatorProc | None = None
    ) -> float | None:
        """Seconds until the world converged, None if it did not within `timeout`."""
        started = time.monotonic()
        while True:
            if not self.problems(coordinator):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                return None
            time.sleep(0.25)

    def wait(self, check: Callable[[], object], timeout: float, what: str) -> Any:
        return wait_for(check, timeout, interval=0.2, what=what)


class Sampler:
    """Looks at every machine's systemd every `interval` while a fault runs, so that two
    copies of a unit at once are seen, not only the outcome; and records the states the
    coordinator gave the victim (whether a partition was noticed)."""

    def __init__(self, world: World, singletons: tuple[str, ...], interval: float = 0.5) -> None:
        self.world = world
        self.singletons = singletons
        self.interval = interval
        self.running: list[dict[str, dict[str, str]]] = []
        self.victim_states: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.running.append({mid: self.world.running(mid) for mid in self.world.machines})
            try:
                state = self.world.machine_states().get(self.world.victim, "unknown")
                self.victim_states.add(state)
            except Exception:
                self.victim_states.add("coordinator unreachable")
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


ACK_SLOTS = 32
"""Writes go round this many units (`ack-<slot>.service`), each write replacing its
slot's unit with one naming the write: the world stays small however long the run,
and one listing reads every write back."""
ACK_MARK = "Moorage fault suite write "


class Writer:
    """Fleet API writes, one after another, while a fault runs: each answered 2xx is an
    acknowledged write that must be readable afterwards. Write n of a round replaces
    the inactive unit `ack-<n mod ACK_SLOTS>.service` with a text naming `<tag>#<n>`."""

    def __init__(
        self, world: World, tag: str, targets: list[CoordinatorProc] | None = None
    ) -> None:
        self.world = world
        self.tag = tag
        self.targets = targets or [world.coord]
        self.acked: list[str] = []
        self.last_acked: dict[str, int] = {}
        """slot -> the number of its last acknowledged write."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            slot = f"ack-{n % ACK_SLOTS}.service"
            text = (
                f"[Unit]\nDescription={ACK_MARK}{self.tag}#{n}\n\n[Service]\nExecStart=/bin/true\n"
            )
            target = self.targets[n % len(self.targets)]
            try:
                target.api(
                    "PUT",
                    f"/fleet/v1/units/{slot}",
                    {"desiredState": "inactive", "options": options(text)},
                )
            except Exception:
                self._stop.wait(0.2)  # refused or unanswered: not acknowledged
            else:
                self.acked.append(f"{self.tag}#{n}")
                self.last_acked[slot] = n
                self._stop.wait(0.05)
            n += 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def lost(self, coordinator: CoordinatorProc | None = None) -> list[str]:
        """Acknowledged writes the coordinator cannot read back: each slot must hold its
        last acknowledged write or a later one (a write whose answer was lost may have
        landed after it)."""
        coord = coordinator or self.world.coord
        held = {
            u["name"]: written_number(u["options"], self.tag)
            for u in coord.api("GET", "/moorage/v1/units")["units"]
        }
        lost = []
        for slot, n in sorted(self.last_acked.items()):
            have = held.get(slot)
            if have is None or have < n:
                now = "missing" if have is None else f"holds an older write ({have})"
                lost.append(f"{slot}: write {self.tag}#{n} was acknowledged, the unit is {now}")
        return lost


def written_number(unit_options: list[dict[str, str]], tag: str) -> int:
    """The number of the write of round `tag` a slot's unit holds (-1: another round's)."""
    for o in unit_options:
        if o.get("name") == "Description" and o.get("value", "").startswith(ACK_MARK + tag + "#"):
            return int(o["value"].rsplit("#", 1)[1])
    return -1


def worlds(tmp: Path, shape: Shape) -> Iterator[World]:
    """A started world for a `with`-less caller, closed however it ends."""
    world = World(tmp, shape).start()
    try:
        yield world
    finally:
        world.close()
