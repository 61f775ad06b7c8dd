"""Rolling rollouts as pure functions: batches, one machine's progress, the next step.

A release goes out batch by batch. A machine's job succeeds once every unit of the
release reports the release's hash and is active (containers: on the pinned image)
and stays so for `min_healthy_s`; it fails when one of those units fails, or when it
is not healthy `timeout_s` after its batch started. A batch advances only when every
job in it succeeded; one failed job stops the rollout once its batch has settled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from coordinator.models import Release, ReleaseJob, UnitState

Step = Literal["wait", "advance", "succeed", "fail"]


def batch_size(total: int, size: int | str, max_unavailable: int | None) -> int:
    """Machines per batch: a number or a percentage of `total`, capped by
    `max_unavailable` and by `total`; at least one."""
    n = math.ceil(total * int(size.rstrip("%")) / 100) if isinstance(size, str) else size
    if max_unavailable is not None:
        n = min(n, max_unavailable)
    return max(1, min(n, total))


def plan_batches(machine_ids: Sequence[str], size: int) -> list[list[str]]:
    """Machines in id order, cut into batches of `size` (deterministic)."""
    ordered = sorted(machine_ids)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def evaluate_job(
    job: ReleaseJob,
    release: Release,
    states: Mapping[str, UnitState],
    now: float,
) -> ReleaseJob:
    """One running job after looking at what its machine reports (`states` by unit)."""
    if job.status != "Running":
        return job
    waiting: list[str] = []
    for unit in release.units:
        s = states.get(unit.name)
        if s is None or s.hash != unit.hash:
            waiting.append(f"{unit.name} not applied yet")
            continue
        if s.active_state == "failed":
            why = s.message or s.sub_state or "failed"
            return msgspec.structs.replace(
                job,
                status="Failed",
                message=f"{unit.name} failed: {why}",
                healthy_since=0.0,
                finished_at=now,
            )
        if s.active_state != "active":
            waiting.append(f"{unit.name} is {s.active_state or 'unknown'}")
        elif unit.image_digest and s.image_digest and s.image_digest != unit.image_digest:
            waiting.append(f"{unit.name} runs image {s.image_digest}, not {unit.image_digest}")
    if waiting:
        if now - job.started_at >= release.timeout_s:
            return msgspec.structs.replace(
                job,
                status="Failed",
                message=f"not healthy after {release.timeout_s:g} s: {'; '.join(waiting)}",
                healthy_since=0.0,
                finished_at=now,
            )
        return msgspec.structs.replace(job, message="; ".join(waiting), healthy_since=0.0)
    since = job.healthy_since or now
    if now - since >= release.min_healthy_s:
        return msgspec.structs.replace(
            job, status="Success", message="", healthy_since=since, finished_at=now
        )
    return msgspec.structs.replace(job, message="healthy, settling", healthy_since=since)


def next_step(release: Release, jobs: Sequence[ReleaseJob]) -> Step:
    """What the rollout does now, given the jobs of every batch. A batch is judged once
    each of its jobs has settled (timeouts bound the wait), so a stopped rollout shows
    the whole batch's outcome, never a job left running."""
    current = [j for j in jobs if j.batch == release.batch]
    if any(j.status in ("Created", "Running") for j in current):
        return "wait"
    if any(j.status == "Failed" for j in current):
        return "fail"
    return "advance" if release.batch + 1 < release.batches else "succeed"
