"""Figures 7 and 8: batch tasks (#19) through the task API and simulated agents.

    python -m bench.bench_tasks --machines 200 --runs 2000 --log-runs 20 --lines 50000

7. Runs accepted and placed per second: `--runs` executes of one definition through
   `PUT /api/v1/task/{id}/execute` (`--concurrency` requests in flight), onto
   `--machines` simulated agents; the clock runs from the first request until every
   run's TaskStart has reached its agent. Each agent answers RUNNING then STOPPED at
   once, so the coordinator also stores two updates per run meanwhile.
8. Log lines ingested per second end to end: `--log-runs` runs each printing
   `--lines` lines (~30 bytes each, shipped in 64 KiB TaskOutput chunks); the clock
   runs from the first execute until every run's whole log is stored and acknowledged
   final to its agent. One run's log is then read back through the API and counted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench import common
from bench.loadgen import sim_fleet
from moorctl.client import ApiClient
from tests.procs import CoordinatorProc


async def define(coordinator: CoordinatorProc, alias: str, command: str) -> str:
    async with ApiClient(coordinator.admin_client()) as api:
        body = await api.call(
            "POST", "api/v1/task", {"alias": alias, "image": "bench:1", "command": command}
        )
    return str(body["definition_id"])


async def execute_many(
    coordinator: CoordinatorProc, definition_id: str, count: int, concurrency: int
) -> tuple[float, list[str]]:
    started = time.monotonic()
    run_ids: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    async with ApiClient(coordinator.admin_client(), timeout_s=600) as api:

        async def one() -> None:
            async with sem:
                run = await api.call("PUT", f"api/v1/task/{definition_id}/execute", {})
                run_ids.append(run["run_id"])

        await asyncio.gather(*(one() for _ in range(count)))
    return time.monotonic() - started, run_ids


async def read_log(coordinator: CoordinatorProc, run_id: str) -> int:
    lines: int = 0
    last_seen = ""
    async with ApiClient(coordinator.admin_client(), timeout_s=600) as api:
        while True:
            body = await api.call("GET", f"api/v1/{run_id}/logs?last_seen={last_seen}")
            lines += str(body["log"]).count("\n")
            if body["last_seen"] == last_seen:
                return lines
            last_seen = str(body["last_seen"])


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--machines", type=int, default=200)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--log-runs", type=int, default=20)
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--name", default="tasks")
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {"machines": args.machines}
    with sim_fleet(
        args.machines,
        workers=args.workers,
        timeout=args.timeout,
        heartbeat=10,
        **{"lost-after": 600},
    ) as fleet:
        coordinator, load = fleet.coordinator, fleet.load
        quick = asyncio.run(define(coordinator, "quick", "true"))
        print(f"executing {args.runs} runs", flush=True)
        started = time.monotonic()
        accept_s, _ = asyncio.run(execute_many(coordinator, quick, args.runs, args.concurrency))
        load.wait(
            lambda s: s.get("tasks_started", 0) >= args.runs,
            args.timeout,
            common.progress("placing"),
        )
        placed_s = time.monotonic() - started
        load.wait(
            lambda s: s.get("tasks_final", 0) >= args.runs,
            args.timeout,
            common.progress("finishing"),
        )
        finished_s = time.monotonic() - started
        figures |= {
            "runs": args.runs,
            "runs_accepted_per_second": round(args.runs / accept_s),
            "runs_placed_per_second": round(args.runs / placed_s),
            "runs_finished_per_second": round(args.runs / finished_s),
            "seconds_until_all_placed": round(placed_s, 2),
        }
        before = load.stats().get("tasks_final", 0)
        chatty = asyncio.run(define(coordinator, "chatty", f"lines {args.lines}"))
        print(f"executing {args.log_runs} runs of {args.lines} lines", flush=True)
        started = time.monotonic()
        _, run_ids = asyncio.run(execute_many(coordinator, chatty, args.log_runs, args.concurrency))
        load.wait(
            lambda s: s.get("tasks_final", 0) >= before + args.log_runs,
            args.timeout,
            common.progress("ingesting"),
        )
        ingest_s = time.monotonic() - started
        total_lines = args.log_runs * args.lines
        read_back = asyncio.run(read_log(coordinator, run_ids[0]))
        figures |= {
            "log_lines": total_lines,
            "log_lines_per_second": round(total_lines / ingest_s),
            "log_seconds": round(ingest_s, 2),
            "log_lines_read_back_of_one_run": read_back,
        }
    common.write(args.name, figures, vars(args))
    return figures


if __name__ == "__main__":
    main()
