"""Figure 2: placements per second, acknowledged by the agents.

    python -m bench.bench_placements --machines 10000 --units 100000
    python -m bench.bench_placements --machines 10000 --units 100000 --database postgresql

Units with constraints (a third pinned to a rack by MachineMetadata, a third with
Conflicts, a third free) are submitted in batches through the API; the clock runs
from the first request until every simulated agent has acknowledged its units.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.loadgen import sim_fleet
from moorctl.client import ApiClient
from tests.procs import CoordinatorProc

RACKS = 10


def unit_body(i: int) -> dict[str, Any]:
    opts = [{"section": "Service", "name": "ExecStart", "value": f"/bin/sleep {1000 + i}"}]
    kind = i % 3
    if kind == 0:
        opts.append(
            {"section": "X-Fleet", "name": "MachineMetadata", "value": f"rack=r{i % RACKS}"}
        )
    elif kind == 1:
        opts.append({"section": "X-Fleet", "name": "Conflicts", "value": f"u{i:06d}@*.service"})
    return {"name": f"u{i:06d}.service", "options": opts, "desired_state": "launched"}


async def submit(coordinator: CoordinatorProc, total: int, batch: int) -> float:
    started = time.monotonic()
    async with ApiClient(coordinator.admin_client(), timeout_s=3600) as api:
        for start in range(0, total, batch):
            body = {"units": [unit_body(i) for i in range(start, min(total, start + batch))]}
            await api.call("PUT", "moorage/v1/units", body)
            print(
                f"  submitted {min(total, start + batch)} units "
                f"({time.monotonic() - started:.1f} s)",
                flush=True,
            )
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--machines", type=int, default=10_000)
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=100_000, help="units per API request")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the coordinator's store: its SQLite file, or a private PostgreSQL cluster",
    )
    ap.add_argument("--name", default="placements")
    args = ap.parse_args(argv)
    database: dict[str, Any] = {}  # coordinator options
    if args.database == "postgresql":
        from tests.harness.databases import fresh_database

        url = fresh_database(Path(tempfile.gettempdir()), "postgresql")  # no file
        database["database_url"] = url
    with sim_fleet(
        args.machines,
        workers=args.workers,
        timeout=args.timeout,
        racks=RACKS,
        heartbeat=10,
        **{"lost-after": 600},
        **database,
    ) as fleet:
        coordinator, load = fleet.coordinator, fleet.load
        print(f"submitting {args.units} units", flush=True)
        started = time.monotonic()
        submit_s = asyncio.run(submit(coordinator, args.units, args.batch))
        load.wait(
            lambda s: s.get("applied_units", 0) >= args.units,
            args.timeout,
            common.progress("acknowledging"),
        )
        total_s = time.monotonic() - started
        metrics = coordinator.metrics()
        passes = re.search(r"^moorage_schedule_seconds_count (\S+)", metrics, re.M)
        pass_sum = re.search(r"^moorage_schedule_seconds_sum (\S+)", metrics, re.M)
        figures: dict[str, object] = {
            "database": args.database,
            "machines": args.machines,
            "units": args.units,
            "placements_per_second_acknowledged": round(args.units / total_s),
            "seconds_until_all_acknowledged": round(total_s, 1),
            "submit_seconds": round(submit_s, 1),
            "scheduling_passes": int(float(passes.group(1))) if passes else None,
            "scheduling_seconds_total": round(float(pass_sum.group(1)), 2) if pass_sum else None,
        }
        common.write(args.name, figures, vars(args))
        return figures


if __name__ == "__main__":
    main()
