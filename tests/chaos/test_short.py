"""The fault suite's short version, as CI runs it: each scenario a round or two, with
the coordinator's timings shortened (lost_after 8 s) so partitions past it fit in CI.
The long run is `python -m tests.chaos` (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import invariants as inv
from tests.chaos.runner import Config, run, scenarios

pytestmark = pytest.mark.integration

GROUPS = {
    "kills": ("agent-kill", "coordinator-kill", "reboot"),
    "agent-unit": ("agent-systemd-restart",),
    "partitions": (
        "partition-down-6s",
        "partition-blackhole-13s-lost",
        "partition-oneway-6s",
        "partition-oneway-13s-lost",
    ),
    "restore": ("restore",),
    "leader": ("leader-kill",),
    "pg-partition": ("pg-partition",),
    "coord-partition": ("coord-partition",),
    "dockerd": ("dockerd-kill", "dockerd-kill-live-restore"),
    "tasks": ("task-agent-kill",),
    "disk": ("disk-full",),
    "link": ("slow-link",),
    "webops": ("webops-agent-kill", "webops-coordinator-kill"),
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_short_run_breaks_no_promise(group: str, tmp_path: Path) -> None:
    config = Config.short()
    names = [s.name for s in scenarios(config) if s.name in GROUPS[group]]
    if not names:
        pytest.skip(f"no {group} scenario yet")
    outcome = run(config, names, tmp_root=tmp_path)
    if not outcome.results:
        pytest.skip("; ".join(f"{k}: {v}" for k, v in outcome.skipped.items()))
    failed = [r for rs in outcome.results.values() for r in rs if not r.ok]
    print(inv.table(outcome.summaries()))
    assert not failed, "\n".join(
        f"{r.scenario} #{r.round}: stopped {r.wrongly_stopped}, duplicates {r.duplicates}, "
        f"lost {r.lost_writes}, problems {r.problems}, converged {r.converge_s}, notes {r.notes}"
        for r in failed
    )
