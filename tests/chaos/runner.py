"""Rounds of faults against a real world, judged by the invariants, summed up per scenario.

A scenario is a fault (how it is injected and healed) and what the invariants may
expect of it: which machines it stops on purpose (a power cycle), whether units may
move (only past `lost_after`), whether the cut-off machine's old copies may run beside
their replacements while it is cut off (Moorage never stops a unit for want of the
coordinator). Every round:

1. snapshot (where units are placed, which instance of each runs where);
2. while API writes keep coming (`Writer`) and every machine is sampled (`Sampler`),
   optionally start a rollout of a new release, then inject the fault and heal it;
3. wait until the world has converged (every agent connected, every unit active
   exactly where placed, the release succeeded, every sticker true), timed from the heal;
4. snapshot again, and judge: units wrongly stopped, duplicates, acknowledged writes
   lost, a reschedule before `lost_after`, drift left after convergence.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.chaos import invariants as inv
from tests.chaos.world import PLACED, RELEASE_UNIT, Sampler, Shape, World, Writer
from tests.harness.netns import netns_available
from tests.harness.systemd import systemd_available

CONVERGE_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Fault:
    """What a fault did, for the judgement of its round."""

    spared: tuple[str, ...] = ()
    """Machines whose units the fault itself stops (a power cycle)."""
    note: str = ""
    problems: tuple[str, ...] = ()
    """Broken promises the fault saw itself while it lasted (it still took)."""
    judge: Callable[[], list[str]] | None = None
    """Broken promises to look for once the world has converged (a task run acknowledged
    during the fault must have finished, with all its output)."""
    replaced: tuple[str, ...] = ()
    """Units the fault itself replaces on purpose on the machines that run them (a WebOps
    redeploy restarts its deployment's unit onto the new build): not a wrong stop."""
    seen: list[str] = field(default_factory=list)
    """What the judge saw, for the reader (its timings): filled as it runs, noted after."""


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Callable[[World, random.Random], Fault]
    """Inject the fault and heal it; returns when healed."""
    shape: Shape = field(default_factory=Shape)
    rollout: bool = True
    """Start a new release's rollout in every round, just before the fault."""
    redeploys: bool = False
    """The fault itself rolls out releases (their unit is replaced: not a wrong stop)."""
    may_move: bool = False
    """Units may be rescheduled (the fault lasts past `lost_after`)."""
    copies_while_cut: bool = False
    """The cut-off machine's old copies may run beside their replacements meanwhile."""
    expect_victim: str = ""
    """A state the coordinator must give the victim during the fault, or the fault did
    not take ("disconnected", "lost")."""
    world: Callable[[Path, Shape], World] = World
    """The world it runs in (a subclass for two coordinators, a proxied link...)."""
    needs: Callable[[], str | None] = lambda: None
    """Why it cannot run here beyond systemd and namespaces (PostgreSQL, dockerd...)."""
    rounds: Callable[[Config], int] | None = None
    """Its round count, when the runner's default (by kind) costs too long."""
    writes_survive: bool = True
    """Acknowledged writes must be readable afterwards (not so when the fault is a
    restore from a backup taken before them: they are counted, not judged)."""


@dataclass
class Config:
    """How much of each: the long run's defaults; `short()` is CI's."""

    rounds: int = 100
    """Rounds of each kill loop."""
    partitions: int = 10
    """Partitions of each kind and length."""
    reboots: int = 10
    partition_s: tuple[float, ...] = (30.0, 120.0)
    lost_after: float = 60.0
    """The coordinator's default: 30 s partitions stay below it, 2 min ones go past."""
    heartbeat: float = 2.0
    subnet: int = 170
    """The victim's namespace is 10.231.<subnet>.0/30 (two runs at once need two)."""

    @property
    def shorter(self) -> bool:
        """CI's short config: faults that last are shortened to stay well under its
        lost_after (8 s), or machines would be called lost and their units moved."""
        return self.lost_after < Config().lost_after

    def loopback(self) -> Shape:
        """The world's shape for faults that cut no link: no namespace."""
        return Shape(isolated=False, lost_after=self.lost_after, heartbeat=self.heartbeat)

    @classmethod
    def short(cls) -> Config:
        """A partition below lost_after lasts 6 s: the hub calls a silent session
        disconnected after 3 heartbeats (3 s here) and checks every second, so it is
        seen to take; past lost_after, 13 s."""
        return cls(
            rounds=2, partitions=1, reboots=1, partition_s=(6.0,), lost_after=8.0, heartbeat=1.0
        )


# --- the faults ----------------------------------------------------------------------------


def agent_kill(world: World, rng: random.Random) -> Fault:
    """kill -9 of one agent in the middle of the rollout; started again after 0-2 s."""
    mid = rng.choice(world.machines)
    time.sleep(rng.uniform(0.0, 1.5))
    agent = world.agents[mid]
    assert agent.proc is not None
    agent.proc.kill9()
    time.sleep(rng.uniform(0.0, 2.0))
    agent.start()
    return Fault(note=f"agent {mid}")


def coordinator_kill(world: World, rng: random.Random) -> Fault:
    """kill -9 of the coordinator in the middle of the rollout and of API writes;
    started again after 0-3 s (on its own database)."""
    time.sleep(rng.uniform(0.0, 1.5))
    world.coord.kill9()
    time.sleep(rng.uniform(0.0, 3.0))
    world.coord.start()
    return Fault()


def reboot(world: World, rng: random.Random) -> Fault:
    """A machine power-cycles while the coordinator is down: its agent is killed, its
    systemd manager stops every unit and starts afresh, the agent starts again, and it
    must bring every unit it was told to run back on its own before the coordinator
    returns."""
    mid = rng.choice(world.machines)
    time.sleep(rng.uniform(0.0, 1.0))
    world.coord.kill9()
    agent = world.agents[mid]
    assert agent.proc is not None
    agent.proc.kill9()
    world.systemds[mid].reboot()
    agent.start()
    back = _units_back(world, mid, timeout=60)
    world.coord.start()
    if back is None:
        raise FaultNotTaken(f"{mid}'s units were not back within 60 s of its reboot")
    return Fault(spared=(mid,), note=f"{mid}: units back {back:.1f} s after the reboot")


def _units_back(world: World, mid: str, timeout: float) -> float | None:
    """Seconds until every unit `mid` ran before is active again (coordinator away)."""
    want = {u for u, ms in world.last_placements.items() if mid in ms}
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if want <= set(world.running(mid)):
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def partition(kind: str, seconds: float) -> Callable[[World, random.Random], Fault]:
    """The victim cut off for `seconds`: its link down, both directions blackholed, or
    only what it sends dropped."""

    def inject(world: World, rng: random.Random) -> Fault:
        ns = world.ns
        assert ns is not None
        {"down": ns.cut, "blackhole": ns.blackhole, "oneway": ns.drop_one_way}[kind]()
        try:
            time.sleep(seconds)
        finally:
            ns.heal()
        return Fault(note=f"{kind} {seconds:g} s")

    return inject


class FaultNotTaken(Exception):
    """The world did not do what the fault needed (a broken promise of its own)."""


def scenarios(config: Config) -> list[Scenario]:
    shape = Shape(lost_after=config.lost_after, heartbeat=config.heartbeat, subnet=config.subnet)
    out = [
        Scenario("agent-kill", agent_kill, shape),
        Scenario("coordinator-kill", coordinator_kill, shape),
        Scenario("reboot", reboot, shape),
    ]
    lengths = [*config.partition_s, config.lost_after + max(5.0, config.heartbeat * 5)]
    for kind in ("down", "blackhole", "oneway"):
        for seconds in lengths:
            past = seconds > config.lost_after
            out.append(
                Scenario(
                    f"partition-{kind}-{seconds:g}s" + ("-lost" if past else ""),
                    partition(kind, seconds),
                    shape,
                    rollout=False,
                    may_move=past,
                    copies_while_cut=past,
                    expect_victim="lost" if past else "disconnected",
                )
            )
    from tests.chaos import (
        agent_unit,
        coord_partition,
        dockerkill,
        full_disk,
        leader,
        pg_partition,
        restore,
        slow_link,
        tasks,
        webops,
    )

    for module in (
        agent_unit,
        restore,
        leader,
        pg_partition,
        coord_partition,
        dockerkill,
        tasks,
        full_disk,
        slow_link,
        webops,
    ):
        out += module.scenarios(config)
    return out


def rounds_of(scenario: Scenario, config: Config) -> int:
    if scenario.rounds is not None:
        return scenario.rounds(config)
    if scenario.name.startswith("partition-"):
        return config.partitions
    if scenario.name == "reboot":
        return config.reboots
    return config.rounds


def needs(scenario: Scenario) -> str | None:
    """Why the scenario cannot run here (None: it can)."""
    reason = systemd_available()
    if reason:
        return reason
    if scenario.shape.isolated:
        reason = netns_available()
        if reason:
            return reason
    return scenario.needs()


# --- one round -----------------------------------------------------------------------------


def run_round(world: World, scenario: Scenario, number: int, rng: random.Random) -> inv.RoundResult:
    result = inv.RoundResult(scenario.name, number)
    refused = len(world.refusals())
    before = world.snapshot()
    world.last_placements = dict(before.placements)
    fault = Fault()
    with Sampler(world, PLACED) as sampler:
        with Writer(world, f"{scenario.name}-{number}") as writer:
            if scenario.rollout:
                world.deploy(f"r{number}")
            try:
                fault = scenario.inject(world, rng)
                result.faults = 1
                result.problems += list(fault.problems)
            except FaultNotTaken as exc:
                result.problems.append(str(exc))
        result.converge_s = world.wait_converged(CONVERGE_TIMEOUT_S)
    if result.converge_s is None:
        result.notes.extend(world.problems())
    after = world.snapshot()
    if fault.note:
        result.notes.append(fault.note)
    if fault.judge is not None:
        result.problems += fault.judge()
        result.notes += fault.seen
    result.problems += [f"an agent was refused: {line}" for line in world.refusals()[refused:]]

    replaced = [RELEASE_UNIT] if scenario.rollout or scenario.redeploys else []
    replaced += fault.replaced
    result.wrongly_stopped = inv.wrongly_stopped(
        before, after, replaced=replaced, spared=fault.spared
    )
    seen: set[str] = set(inv.duplicates(after.running, PLACED))
    if not scenario.copies_while_cut:
        for sample in sampler.running:
            seen.update(inv.duplicates(sample, PLACED))
    result.duplicates = sorted(seen)
    if not scenario.may_move:
        result.problems += [
            f"rescheduled: {m}" for m in inv.moved(before.placements, after.placements)
        ]
    if scenario.expect_victim and scenario.expect_victim not in sampler.victim_states:
        result.faults = 0
        result.problems.append(
            f"the coordinator never called {world.victim} {scenario.expect_victim} "
            f"(saw {sorted(sampler.victim_states)})"
        )
    if result.converge_s is not None:
        result.problems += [f"drift after convergence: {d}" for d in world.drift()]
    result.acked_writes = len(writer.acked)
    lost = writer.lost()
    if scenario.writes_survive:
        result.lost_writes = lost
    return result


# --- the run -------------------------------------------------------------------------------


@dataclass
class Run:
    config: Config
    results: dict[str, list[inv.RoundResult]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def summaries(self) -> list[inv.Summary]:
        return [inv.summarize(name, rs) for name, rs in self.results.items()]

    def to_json(self) -> dict[str, Any]:
        return {
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "started": self.started,
            "seconds": round(time.time() - self.started, 1),
            "config": asdict(self.config),
            "summaries": [asdict(s) for s in self.summaries()],
            "skipped": self.skipped,
            "failed_rounds": [asdict(r) for rs in self.results.values() for r in rs if not r.ok],
        }


def run(
    config: Config,
    names: Iterable[str] | None = None,
    *,
    seed: int = 0,
    deadline: float | None = None,
    tmp_root: Path | None = None,
    log: Callable[[str], None] = print,
    on_round: Callable[[Run], None] | None = None,
) -> Run:
    """Every chosen scenario, each in a world of its own, round after round, until its
    rounds are done or `deadline` (time.monotonic()) passes."""
    chosen = scenarios(config)
    if names is not None:
        wanted = set(names)
        unknown = wanted - {s.name for s in chosen}
        if unknown:
            raise ValueError(f"unknown scenarios: {sorted(unknown)}")
        chosen = [s for s in chosen if s.name in wanted]
    outcome = Run(config)
    rng = random.Random(seed)
    worlds = Worlds(tmp_root, log)
    try:
        for scenario in chosen:
            reason = needs(scenario)
            if reason:
                outcome.skipped[scenario.name] = reason
                log(f"{scenario.name}: skipped ({reason})")
                continue
            if deadline is not None and time.monotonic() > deadline:
                outcome.skipped[scenario.name] = "out of time"
                continue
            results: list[inv.RoundResult] = outcome.results.setdefault(scenario.name, [])
            for number in range(1, rounds_of(scenario, config) + 1):
                if deadline is not None and time.monotonic() > deadline:
                    log(f"{scenario.name}: out of time after {number - 1} rounds")
                    break
                try:
                    world = worlds.for_scenario(scenario)
                    result = run_round(world, scenario, number, rng)
                except Exception as exc:  # a broken promise too: recorded, world rebuilt
                    result = inv.RoundResult(scenario.name, number)
                    result.problems.append(f"round aborted: {type(exc).__name__}: {exc}")
                    worlds.keep = True
                    worlds.close()  # its logs kept; the next world's only if it fails
                else:
                    if not result.ok:
                        worlds.keep = True
                results.append(result)
                log(_line(result))
                if on_round is not None:
                    on_round(outcome)  # a long run's figures survive its interruption
    finally:
        worlds.close()
    return outcome


class Worlds:
    """Worlds are built once per shape: consecutive scenarios of the same shape share
    one (a world that did not converge is replaced). Their files are removed unless a
    round failed (then the logs stay, and the path is printed)."""

    def __init__(self, tmp_root: Path | None, log: Callable[[str], None]) -> None:
        self.tmp_root = tmp_root
        self.log = log
        self.current: tuple[object, World, Path] | None = None
        self.keep = False

    def for_scenario(self, scenario: Scenario) -> World:
        key = (scenario.world, scenario.shape)
        if self.current is not None:
            current_key, world, _ = self.current
            if current_key == key and not world.problems():
                return world
            self.close()
        tmp = Path(tempfile.mkdtemp(prefix=f"moorage-chaos-{scenario.name}-", dir=self.tmp_root))
        self.log(f"{scenario.name}: building the world in {tmp}")
        world = scenario.world(tmp, scenario.shape)
        self.current = (key, world, tmp)
        world.start()
        return world

    def close(self) -> None:
        if self.current is None:
            return
        _, world, tmp = self.current
        self.current = None
        world.close()
        if self.keep:
            self.log(f"logs of a failed round kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        self.keep = False


def _line(r: inv.RoundResult) -> str:
    took = "n/a" if r.converge_s is None else f"{r.converge_s:.1f} s"
    verdict = "ok" if r.ok else "FAILED"
    detail = "; ".join([*r.wrongly_stopped, *r.duplicates, *r.lost_writes, *r.problems])
    notes = "; ".join(r.notes)
    return (
        f"{r.scenario} #{r.round}: {verdict}, converged in {took}, {r.acked_writes} writes"
        + (f" [{notes}]" if notes else "")
        + (f" -- {detail}" if detail else "")
    )


def write_json(outcome: Run, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outcome.to_json(), indent=2) + "\n")


def config_from(**overrides: Any) -> Config:
    return replace(Config(), **{k: v for k, v in overrides.items() if v is not None})
