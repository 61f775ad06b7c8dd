"""Figure 6: `moorctl submit` of many unit files, as an operator runs it.

    python -m bench.bench_submit --units 1000

N unit files in a directory, then the real `moorctl submit DIR/*` (a new process, TLS
and all, against a real coordinator): wall time of the command, and the API requests
it made, read from the coordinator's request metrics. For comparison the same number
of other units is submitted the way fleetctl (and moorctl before the batch) does it,
one unit at a time (GET, GET, PUT each), in one client session.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path

from bench import common
from moorctl.cli import _ensure_submitted
from moorctl.client import ApiClient
from tests.procs import CoordinatorProc

UNIT = "[Unit]\nDescription=bench {i}\n\n[Service]\nExecStart=/bin/sleep {n}\n"


def requests(coordinator: CoordinatorProc) -> dict[str, int]:
    """API requests so far, by "METHOD route"."""
    out: dict[str, int] = {}
    for method, route, count in re.findall(
        r'^moorage_api_request_seconds_count\{method="(\w+)",route="([^"]+)",[^}]*\} (\S+)',
        coordinator.metrics(),
        re.M,
    ):
        key = f"{method} {route}"
        out[key] = out.get(key, 0) + int(float(count))
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> int:
    skip = ("GET /metrics",)
    return sum(v - before.get(k, 0) for k, v in after.items() if k not in skip)


async def one_by_one(coordinator: CoordinatorProc, directory: Path, names: list[str]) -> float:
    started = time.monotonic()
    async with ApiClient(coordinator.admin_client(), timeout_s=600) as api:
        for name in names:
            await _ensure_submitted(api, name, directory)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--name", default="submit")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moorage-bench-submit-") as tmp:
        root = Path(tmp)
        batch_dir, single_dir = root / "batch", root / "single"
        for directory, prefix in ((batch_dir, "b"), (single_dir, "s")):
            directory.mkdir()
            for i in range(args.units):
                (directory / f"{prefix}{i:05d}.service").write_text(UNIT.format(i=i, n=1000 + i))
        coordinator = CoordinatorProc(root / "state" / "coordinator").start()
        try:
            files = sorted(str(p) for p in batch_dir.iterdir())
            before = requests(coordinator)
            started = time.monotonic()
            out = coordinator.moorctl("submit", *files, cwd=root)
            command_s = time.monotonic() - started
            assert out.returncode == 0, out.stderr
            batch_requests = delta(requests(coordinator), before)
            served = re.search(
                r'^moorage_api_request_seconds_sum\{method="PUT",route="/moorage/v1/units",'
                r"[^}]*\} (\S+)",
                coordinator.metrics(),
                re.M,
            )
            batch_server_s = float(served.group(1)) if served else float("nan")
            again_started = time.monotonic()
            again = coordinator.moorctl("submit", *files, cwd=root)
            again_s = time.monotonic() - again_started
            assert again.returncode == 0 and "already submitted" in again.stdout, again.stderr
            # the same process start and TLS handshake, doing nothing: what the CLI costs
            started = time.monotonic()
            coordinator.moorctl("list-machines", cwd=root)
            baseline_s = time.monotonic() - started
            names = sorted(p.name for p in single_dir.iterdir())
            before = requests(coordinator)
            single_s = asyncio.run(one_by_one(coordinator, single_dir, names))
            single_requests = delta(requests(coordinator), before)
        finally:
            coordinator.stop()
    figures: dict[str, object] = {
        "units": args.units,
        "moorctl_submit_seconds": round(command_s, 2),
        "moorctl_submit_requests": batch_requests,
        "batch_request_server_seconds": round(batch_server_s, 3),
        "moorctl_submit_again_seconds (all already submitted)": round(again_s, 2),
        "moorctl_list_machines_seconds (process start + TLS + one request)": round(baseline_s, 2),
        "one_by_one_seconds (fleetctl's way, one session)": round(single_s, 2),
        "one_by_one_requests": single_requests,
    }
    common.write(args.name, figures, vars(args))
    return figures


if __name__ == "__main__":
    main()
