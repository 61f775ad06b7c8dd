"""Figure 4: one real agent running 500 units: its RSS and its CPU at rest.

python -m bench.bench_agent_footprint --units 500 --rest 60
"""

from __future__ import annotations

import argparse
import time

from bench import common
from bench.realagent import RealAgent, real_agent
from tests.procs import wait_for


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--units", type=int, default=500)
    ap.add_argument("--rest", type=float, default=60.0)
    ap.add_argument("--name", default="agent-footprint")
    args = ap.parse_args(argv)
    with real_agent() as rig:
        return _run(rig, args)


def _run(rig: RealAgent, args: argparse.Namespace) -> dict[str, object]:
    c = rig.coordinator
    started = time.monotonic()
    units = [
        {
            "name": f"idle{i:04d}.service",
            "desired_state": "launched",
            "options": [
                {"section": "Service", "name": "ExecStart", "value": "/bin/sleep infinity"}
            ],
        }
        for i in range(args.units)
    ]
    c.api("PUT", "/moorage/v1/units", {"units": units})

    def active() -> bool:
        states = c.api("GET", "/moorage/v1/unit-states")["states"]
        return bool(sum(s["active_state"] == "active" for s in states) >= args.units)

    wait_for(active, timeout=600, interval=1.0, what=f"{args.units} units active")
    launch_s = time.monotonic() - started
    print(
        f"{args.units} units active in {launch_s:.1f} s; settling, then sampling {args.rest:.0f} s",
        flush=True,
    )
    time.sleep(5)
    rest = common.sample(rig.agent_pid, args.rest)
    figures: dict[str, object] = {
        "units": args.units,
        "launch_all_seconds": round(launch_s, 1),
        "agent_rss_mib": rest["rss_mib"],
        "agent_uss_mib": rest["uss_mib"],
        "agent_cpu_percent_at_rest": rest["cpu_percent"],
    }
    common.write(args.name, figures, vars(args))
    return figures


if __name__ == "__main__":
    main()
