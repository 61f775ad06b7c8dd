"""Figure 9: task execute → RUNNING on a real agent with a local image (#19).

    python -m bench.bench_task_latency --runs 30

A real coordinator, one real enrolled agent and a real private dockerd (the test
harness's, `tests/taskrig.py`) holding the locally imported busybox image, so nothing is
pulled. Each sample: `PUT /api/v6/task/{id}/execute`, then `GET /api/v6/{run_id}/status`
every 5 ms until the run is RUNNING; the clock runs from the execute request until that
answer (client side, what a Flotilla client sees). The run (`sleep 1`) is then left to
finish and its container to be removed before the next sample, so samples do not overlap.
Also printed: the coordinator's own `started_at - queued_at` of the same runs (the agent
stamps RUNNING), and of that the part until the run was placed (its "Placed" event).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from bench import common
from tests.harness.dockerd import Dockerd, dockerd_available
from tests.procs import wait_for
from tests.taskrig import TaskRig


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _pct(samples: list[float], q: float) -> int:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000)


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--name", default="task-latency")
    args = ap.parse_args(argv)
    reason = dockerd_available()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    with TemporaryDirectory(prefix="moorage-bench-") as tmp, Dockerd() as daemon:
        # The production heartbeat (the tests' 1 s is 10x the idle traffic).
        rig = TaskRig(Path(tmp), daemon, heartbeat=10.0)
        try:
            return _run(rig, args)
        finally:
            rig.close()


def _run(rig: TaskRig, args: argparse.Namespace) -> dict[str, object]:
    c = rig.coordinator
    did = rig.define("latency", "sleep 1")
    client: list[float] = []
    server: list[float] = []
    placing: list[float] = []
    for i in range(args.runs):
        started = time.monotonic()
        rid = rig.execute(did)
        while True:
            status = c.api("GET", f"/api/v6/{rid}/status")["status"]
            if status in ("RUNNING", "STOPPED"):
                break
            if time.monotonic() - started > 60:
                raise TimeoutError(f"run {rid} not RUNNING after 60 s ({status})")
            time.sleep(0.005)
        client.append(time.monotonic() - started)
        done = rig.wait_status(rid, "STOPPED")
        server.append(_at(done["started_at"]) - _at(done["queued_at"]))
        events = c.api("GET", f"/api/v6/{rid}/events")["pod_events"]
        placed = next(_at(e["timestamp"]) for e in events if e["reason"] == "Placed")
        placing.append(placed - _at(done["queued_at"]))
        wait_for(lambda: not rig.containers(), 60, 0.05, what="the run's container removed")
        if (i + 1) % 10 == 0:
            print(
                f"  {i + 1}/{args.runs} runs, p50 so far {statistics.median(client) * 1000:.0f} ms",
                flush=True,
            )
    figures: dict[str, object] = {
        "runs": len(client),
        "p50_ms": round(statistics.median(client) * 1000),
        "p90_ms": _pct(client, 0.9),
        "max_ms": round(max(client) * 1000),
        "coordinator_queued_to_started_p50_ms": round(statistics.median(server) * 1000),
        "of_which_queued_to_placed_p50_ms": round(statistics.median(placing) * 1000),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    common.write(args.name, figures, vars(args))
    return figures


if __name__ == "__main__":
    main()
