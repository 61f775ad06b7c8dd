"""Figure 3: fleet API `PUT launched` -> state `active` reported, with a real agent on
a real systemd manager.

    python -m bench.bench_latency --units 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench import common
from bench.realagent import RealAgent, real_agent


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--name", default="latency")
    args = ap.parse_args(argv)
    with real_agent() as rig:
        return _run(rig, args)


def _run(rig: RealAgent, args: argparse.Namespace) -> dict[str, object]:
    c = rig.coordinator
    samples: list[float] = []
    for i in range(args.units):
        name = f"lat{i:04d}.service"
        body = {
            "name": name,
            "desiredState": "launched",
            "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 3600"}],
        }
        started = time.monotonic()
        status, _ = c.raw(
            "PUT",
            f"/fleet/v1/units/{name}",
            headers={"Content-Type": "application/json"},
            data=json.dumps(body).encode(),
        )
        assert status == 201, status
        while True:
            status, raw = c.raw("GET", f"/fleet/v1/state/{name}")
            if json.loads(raw).get("systemdActiveState") == "active":
                break
            if time.monotonic() - started > 30:
                raise TimeoutError(f"{name} not active after 30 s")
            time.sleep(0.005)
        samples.append(time.monotonic() - started)
        if (i + 1) % 20 == 0:
            print(
                f"  {i + 1}/{args.units} units, p50 so far {statistics.median(samples) * 1000:.0f} ms",
                flush=True,
            )
    samples.sort()
    figures: dict[str, object] = {
        "units": len(samples),
        "p50_ms": round(statistics.median(samples) * 1000),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000),
        "max_ms": round(samples[-1] * 1000),
    }
    common.write(args.name, figures, vars(args))
    return figures


if __name__ == "__main__":
    main()
