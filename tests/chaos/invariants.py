"""What every round of the fault suite checks, as pure functions over what was observed.

The runner observes from the outside only (systemd's own view of each machine, the
coordinator's public API, the agents' sticker files); these functions turn two
snapshots and the samples taken between them into the figures of a round. Kept pure
so that the rules are unit-tested apart from any fault (tests/unit/tools/test_chaos.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Placements = Mapping[str, frozenset[str]]
"""unit -> the machines it should be active on (the coordinator's word)."""
Running = Mapping[str, Mapping[str, str]]
"""machine -> unit -> systemd's InvocationID of its running instance (active units only)."""


@dataclass(frozen=True)
class Snapshot:
    """One look at the world: where units should run, and where they do."""

    placements: Placements
    running: Running
    connected: frozenset[str]


def active_on(running: Running) -> dict[str, set[str]]:
    """unit -> machines where it is active."""
    out: dict[str, set[str]] = {}
    for machine, units in running.items():
        for unit in units:
            out.setdefault(unit, set()).add(machine)
    return out


def convergence_problems(snap: Snapshot, machines: Iterable[str]) -> list[str]:
    """Why the world has not converged yet (empty: it has): every machine connected,
    every unit active exactly where it is placed."""
    problems = [f"{mid} not connected" for mid in sorted(set(machines) - snap.connected)]
    active = active_on(snap.running)
    for unit in sorted(set(snap.placements) | set(active)):
        want = snap.placements.get(unit, frozenset())
        have = active.get(unit, set())
        for mid in sorted(want - have):
            problems.append(f"{unit} not active on {mid}")
        for mid in sorted(have - want):
            problems.append(f"{unit} active on {mid}, placed on {sorted(want) or 'none'}")
    return problems


def wrongly_stopped(
    before: Snapshot, after: Snapshot, *, replaced: Iterable[str] = (), spared: Iterable[str] = ()
) -> list[str]:
    """(machine, unit) pairs that were running before, whose placement did not change,
    and that are not the same running instance after: stopped (or restarted) although
    nothing asked for it. `replaced`: units a release of the round rewrites on every
    machine (a new instance is the point); `spared`: machines the fault itself stops
    (a power cycle)."""
    skip_units, skip_machines = set(replaced), set(spared)
    out: list[str] = []
    for mid, units in sorted(before.running.items()):
        if mid in skip_machines:
            continue
        for unit, invocation in sorted(units.items()):
            if unit in skip_units:
                continue
            if before.placements.get(unit) != after.placements.get(unit):
                continue  # moved by the scheduler: the old copy is meant to stop
            if mid not in before.placements.get(unit, frozenset()):
                continue  # an old copy that was already on its way out
            now = after.running.get(mid, {}).get(unit)
            if now != invocation:
                out.append(f"{unit} on {mid}: {'stopped' if now is None else 'restarted'}")
    return out


def duplicates(running: Running, singletons: Iterable[str]) -> list[str]:
    """Units meant to run once that are active on more than one machine at once."""
    active = active_on(running)
    return [
        f"{unit} on {sorted(active[unit])}"
        for unit in sorted(singletons)
        if len(active.get(unit, ())) > 1
    ]


def moved(before: Placements, after: Placements) -> list[str]:
    """Units whose placement changed (a reschedule)."""
    return [
        f"{unit}: {sorted(before.get(unit, ()))} -> {sorted(after.get(unit, ()))}"
        for unit in sorted(set(before) | set(after))
        if before.get(unit) != after.get(unit)
    ]


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..100) of `values`; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class RoundResult:
    """One round of one scenario, as the invariants judged it."""

    scenario: str
    round: int
    faults: int = 0
    """Faults injected and seen to take (a kill, a partition the coordinator noticed)."""
    wrongly_stopped: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    acked_writes: int = 0
    lost_writes: list[str] = field(default_factory=list)
    converge_s: float | None = None
    """From the end of the fault until the world converged; None: it did not in time."""
    problems: list[str] = field(default_factory=list)
    """Other broken promises: drift left after convergence, stickers that lie, a
    reschedule before lost_after, a fault that did not take."""
    notes: list[str] = field(default_factory=list)
    """What happened, for the reader (not judged): the fault's victim, why the world had
    not converged."""

    @property
    def ok(self) -> bool:
        return not (
            self.wrongly_stopped
            or self.duplicates
            or self.lost_writes
            or self.problems
            or self.converge_s is None
        )


@dataclass(frozen=True)
class Summary:
    """One scenario's rounds in one row of docs/reliability.md."""

    scenario: str
    rounds: int
    faults: int
    wrongly_stopped: int
    duplicates: int
    acked_writes: int
    lost_writes: int
    not_converged: int
    problems: int
    converge_p50_s: float | None
    converge_p99_s: float | None


def summarize(scenario: str, results: list[RoundResult]) -> Summary:
    times = [r.converge_s for r in results if r.converge_s is not None]
    return Summary(
        scenario=scenario,
        rounds=len(results),
        faults=sum(r.faults for r in results),
        wrongly_stopped=sum(len(r.wrongly_stopped) for r in results),
        duplicates=sum(len(r.duplicates) for r in results),
        acked_writes=sum(r.acked_writes for r in results),
        lost_writes=sum(len(r.lost_writes) for r in results),
        not_converged=sum(1 for r in results if r.converge_s is None),
        problems=sum(len(r.problems) for r in results),
        converge_p50_s=percentile(times, 50),
        converge_p99_s=percentile(times, 99),
    )


def table(summaries: list[Summary]) -> str:
    """The figures as a Markdown table (what docs/reliability.md shows)."""

    def secs(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f} s"

    head = (
        "| scenario | rounds | faults | units wrongly stopped | duplicates | acked writes "
        "| acked writes lost | not converged | other problems | converge p50 | p99 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = "".join(
        f"| {s.scenario} | {s.rounds} | {s.faults} | {s.wrongly_stopped} | {s.duplicates} "
        f"| {s.acked_writes} | {s.lost_writes} | {s.not_converged} | {s.problems} "
        f"| {secs(s.converge_p50_s)} | {secs(s.converge_p99_s)} |\n"
        for s in summaries
    )
    return head + rows
