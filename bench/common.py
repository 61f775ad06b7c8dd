"""What every benchmark shares: the machine's facts, sampling a process, writing results."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(
    os.environ.get("MOORAGE_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # 1, 5 and 15 minutes when the figures are written: others may share the host.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def sample(pid: int, seconds: float) -> dict[str, float]:
    """RSS and USS (MiB: USS leaves out shared libraries' pages) at the end, and mean CPU
    (% of one core) over `seconds`, children excluded."""
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    started = time.monotonic()
    time.sleep(seconds)
    after = proc.cpu_times()
    elapsed = time.monotonic() - started
    used = (after.user - before.user) + (after.system - before.system)
    full = proc.memory_full_info()
    return {
        "rss_mib": round(full.rss / 2**20, 1),
        "uss_mib": round(full.uss / 2**20, 1),
        "cpu_percent": round(100 * used / elapsed, 2),
        "seconds": round(elapsed, 1),
    }


def write(name: str, figures: dict[str, Any], params: dict[str, Any]) -> Path:
    """Print the figures (with the core count) and write bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "params": params,
        "figures": figures,
    }
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    host = doc["machine"]
    print(
        f"\n== {name} ({host['cores']} cores, {host['memory_gib']} GiB,"
        f" load average {' '.join(map(str, host['load_average']))}) =="
    )
    for key, value in figures.items():
        print(f"  {key:<40} {value}")
    print(f"  -> {path}")
    return path


def progress(label: str) -> Any:
    started = time.monotonic()

    def show(stats: dict[str, float]) -> None:
        print(
            f"  [{time.monotonic() - started:6.1f} s] {label}: "
            + ", ".join(f"{k}={int(v)}" for k, v in stats.items() if k != "last_applied_at"),
            flush=True,
        )

    return show


def py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy (in the project's virtualenv) sampling `pid` until SIGINT: raw stacks into
    `out` (flamegraph.pl or speedscope read them)."""
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "1000",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            out,
        ],
        stdout=subprocess.DEVNULL,
    )
    return spy


def stop_spy(spy: subprocess.Popen[bytes] | None) -> None:
    """End a `py_spy` recording: it writes its file on SIGINT."""
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
