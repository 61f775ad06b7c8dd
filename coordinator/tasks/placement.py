"""Where queued runs go, as a pure function over plain values.

Rules:
- a run goes to a machine of its cluster (a machine group; `default`: every machine)
  that is connected, has Docker and enough free memory and CPU (its reported totals
  minus the runs placed there and not finished);
- strict FIFO per cluster: runs are placed in queue order, and a run that does not fit
  now blocks the runs queued after it in the same cluster (they wait for it), so a big
  run is never starved by small ones. A run that no machine of its cluster could take
  even empty does not block (it waits alone until such a machine connects);
- among the machines that fit, the one with the most free memory (then CPU, then id)
  takes it, so runs spread over the cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class RunNeed(msgspec.Struct, frozen=True):
    run_id: str
    cluster: str
    memory: int
    cpu: int


class MachineRoom(msgspec.Struct, frozen=True):
    machine_id: str
    clusters: frozenset[str]
    """The clusters (group names, `default` included) the machine belongs to."""
    memory_total: int
    cpu_total: int
    memory_used: int = 0
    cpu_used: int = 0


class Placement(msgspec.Struct, frozen=True):
    run_id: str
    machine_id: str


def _fits(need: RunNeed, free_memory: int, free_cpu: int) -> bool:
    return need.memory <= free_memory and need.cpu <= free_cpu


def place(waiting: Sequence[RunNeed], machines: Sequence[MachineRoom]) -> list[Placement]:
    """Placements for `waiting` (in queue order) on `machines` (connected, with Docker)."""
    free = {
        m.machine_id: [m.memory_total - m.memory_used, m.cpu_total - m.cpu_used] for m in machines
    }
    blocked: set[str] = set()
    plan: list[Placement] = []
    for need in waiting:
        if need.cluster in blocked:
            continue
        members = [m for m in machines if need.cluster in m.clusters]
        fitting = [m for m in members if _fits(need, *free[m.machine_id])]
        if not fitting:
            if any(_fits(need, m.memory_total, m.cpu_total) for m in members):
                blocked.add(need.cluster)
            continue
        best = min(
            fitting,
            key=lambda m: (-free[m.machine_id][0], -free[m.machine_id][1], m.machine_id),
        )
        free[best.machine_id][0] -= need.memory
        free[best.machine_id][1] -= need.cpu
        plan.append(Placement(need.run_id, best.machine_id))
    return plan
