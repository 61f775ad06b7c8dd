"""Figures 1 and 5: simulated agents held by one coordinator, and a kill -9 under them.

    python -m bench.bench_agents --agents 10000

1. agents connected and heartbeating, the coordinator's RSS and CPU at rest;
5. coordinator `kill -9` and restart: seconds until every agent is connected again
   (`--profile FILE`: py-spy's raw stacks of the restarted coordinator over the wave).
"""

from __future__ import annotations

import argparse
import time

import psutil

from bench import common
from bench.loadgen import sim_fleet


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2, help="load generator processes")
    ap.add_argument("--rest", type=float, default=30.0, help="seconds sampled at rest")
    ap.add_argument("--heartbeat", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--no-restart", action="store_true", help="skip figure 5")
    ap.add_argument(
        "--hello-units", type=int, default=0, help="units each agent reports in its Hello"
    )
    ap.add_argument(
        "--profile", metavar="FILE", help="py-spy raw stacks of the restarted coordinator"
    )
    ap.add_argument("--name", default="agents")
    args = ap.parse_args(argv)

    with sim_fleet(
        args.agents,
        workers=args.workers,
        timeout=args.timeout,
        heartbeat=args.heartbeat,
        hello_units=args.hello_units,
        **{"lost-after": 300},
    ) as fleet:
        coordinator, load = fleet.coordinator, fleet.load
        server_connected = len(coordinator.connected())
        print(f"sampling {args.rest:.0f} s at rest", flush=True)
        beats_before = load.stats().get("heartbeats", 0)
        rest = common.sample(coordinator.proc.pid, args.rest)
        beats = load.stats().get("heartbeats", 0) - beats_before
        figures: dict[str, object] = {
            "agents_connected": server_connected,
            "enrol_seconds": round(fleet.enrol_s, 1),
            "connect_all_seconds": round(fleet.connect_s, 1),
            "heartbeats_per_second": round(beats / rest["seconds"], 1),
            "coordinator_rss_mib_at_rest": rest["rss_mib"],
            "coordinator_cpu_percent_at_rest": rest["cpu_percent"],
        }
        if not args.no_restart:
            sessions = load.stats().get("sessions", 0)
            coordinator.kill9()
            t1 = time.monotonic()
            coordinator.start()
            spy = common.py_spy(coordinator.proc.pid, args.profile) if args.profile else None
            load.wait(
                lambda s: (
                    s.get("sessions", 0) >= sessions + args.agents
                    and s.get("connected", 0) >= args.agents
                ),
                args.timeout,
                common.progress("reconnecting"),
            )
            figures["kill9_reconnect_all_seconds"] = round(time.monotonic() - t1, 1)
            # Its start-up included: a new process (steadier than the wave's wall time,
            # which waits on the simulated agents' CPU too)
            figures["kill9_coordinator_cpu_seconds"] = round(
                sum(psutil.Process(coordinator.proc.pid).cpu_times()[:2]), 1
            )
            common.stop_spy(spy)
            figures["agents_connected_after_restart"] = len(coordinator.connected())
        common.write(args.name, figures, vars(args))
        return figures


if __name__ == "__main__":
    main()
