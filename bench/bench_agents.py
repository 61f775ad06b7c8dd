"""Figures 1 and 5: simulated agents held by one coordinator, and a kill -9 under them.

    python -m bench.bench_agents --agents 10000

1. agents connected and heartbeating, the coordinator's RSS and CPU at rest;
5. coordinator `kill -9` and restart: seconds until every agent is connected again.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from bench import common
from bench.loadgen import LoadGen
from bench.simagent import enrol_many, raise_fd_limit
from tests.procs import CoordinatorProc


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
    ap.add_argument("--name", default="agents")
    args = ap.parse_args(argv)
    raise_fd_limit()

    root = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    coordinator = CoordinatorProc(
        root / "coordinator", heartbeat=args.heartbeat, **{"lost-after": 300}
    )
    load: LoadGen | None = None
    try:
        coordinator.start()
        ids = [f"sim{i:05d}" for i in range(args.agents)]
        t0 = time.monotonic()
        identities = asyncio.run(enrol_many(coordinator.admin_client(), ids, root / "ids"))
        enrol_s = time.monotonic() - t0
        print(f"enrolled {len(identities)} agents in {enrol_s:.1f} s", flush=True)

        hub = f"wss://127.0.0.1:{coordinator.hub_port}/agent/v1"
        load = LoadGen(identities, hub, coordinator.paths.ca_cert, workers=args.workers)
        connect_s = load.wait(
            lambda s: s.get("connected", 0) >= args.agents,
            args.timeout,
            common.progress("connecting"),
        )
        assert coordinator.proc is not None
        server_connected = len(coordinator.connected())
        print(
            f"all {args.agents} connected in {connect_s:.1f} s; sampling {args.rest:.0f} s at rest",
            flush=True,
        )
        beats_before = load.stats().get("heartbeats", 0)
        rest = common.sample(coordinator.proc.pid, args.rest)
        beats = load.stats().get("heartbeats", 0) - beats_before
        figures: dict[str, object] = {
            "agents_connected": server_connected,
            "enrol_seconds": round(enrol_s, 1),
            "connect_all_seconds": round(connect_s, 1),
            "heartbeats_per_second": round(beats / rest["seconds"], 1),
            "coordinator_rss_mib_at_rest": rest["rss_mib"],
            "coordinator_cpu_percent_at_rest": rest["cpu_percent"],
        }
        if not args.no_restart:
            sessions = load.stats().get("sessions", 0)
            coordinator.kill9()
            t1 = time.monotonic()
            coordinator.start()
            load.wait(
                lambda s: (
                    s.get("sessions", 0) >= sessions + args.agents
                    and s.get("connected", 0) >= args.agents
                ),
                args.timeout,
                common.progress("reconnecting"),
            )
            consistent = len(coordinator.connected())
            figures["kill9_reconnect_all_seconds"] = round(time.monotonic() - t1, 1)
            figures["agents_connected_after_restart"] = consistent
        common.write(args.name, figures, vars(args))
        return figures
    finally:
        if load is not None:
            load.stop()
        coordinator.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
