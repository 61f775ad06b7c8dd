"""Every benchmark runs end to end at a tiny size: the figures exist and are sane.

Targets are not asserted here (timed assertions are flaky); bench/README.md holds
the real figures from full runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.dockerd import dockerd_available
from tests.harness.postgres import postgres_available
from tests.harness.systemd import systemd_available

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOORAGE_BENCH_RESULTS", str(tmp_path))
    import importlib

    import bench.common

    importlib.reload(bench.common)
    return tmp_path


def load(results: Path, name: str) -> dict:  # type: ignore[type-arg]
    doc = json.loads((results / f"{name}.json").read_text())
    assert doc["machine"]["cores"] >= 1
    return dict(doc["figures"])


def test_agents_and_kill9(results_dir: Path) -> None:
    from bench import bench_agents

    bench_agents.main(["--agents", "40", "--rest", "1", "--name", "smoke-agents"])
    figures = load(results_dir, "smoke-agents")
    assert figures["agents_connected"] == 40
    assert figures["agents_connected_after_restart"] == 40
    assert figures["kill9_reconnect_all_seconds"] > 0


def test_placements(results_dir: Path) -> None:
    from bench import bench_placements

    bench_placements.main(
        ["--machines", "30", "--units", "300", "--batch", "100", "--name", "smoke-place"]
    )
    figures = load(results_dir, "smoke-place")
    assert figures["units"] == 300 and figures["placements_per_second_acknowledged"] > 0


@pytest.mark.skipif(systemd_available() is not None, reason=str(systemd_available()))
def test_latency(results_dir: Path) -> None:
    from bench import bench_latency

    bench_latency.main(["--units", "3", "--name", "smoke-latency"])
    figures = load(results_dir, "smoke-latency")
    assert figures["units"] == 3 and 0 < figures["p50_ms"] <= figures["max_ms"]


@pytest.mark.skipif(systemd_available() is not None, reason=str(systemd_available()))
def test_agent_footprint(results_dir: Path) -> None:
    from bench import bench_agent_footprint

    bench_agent_footprint.main(["--units", "10", "--rest", "2", "--name", "smoke-footprint"])
    figures = load(results_dir, "smoke-footprint")
    assert figures["units"] == 10 and figures["agent_rss_mib"] > 0


def test_submit(results_dir: Path) -> None:
    from bench import bench_submit

    bench_submit.main(["--units", "20", "--name", "smoke-submit"])
    figures = load(results_dir, "smoke-submit")
    assert figures["moorctl_submit_requests"] == 1 and figures["one_by_one_requests"] == 60


def test_tasks(results_dir: Path) -> None:
    from bench import bench_tasks

    bench_tasks.main(
        [
            "--machines",
            "5",
            "--runs",
            "20",
            "--log-runs",
            "2",
            "--lines",
            "500",
            "--name",
            "smoke-tasks",
        ]
    )
    figures = load(results_dir, "smoke-tasks")
    assert figures["runs_placed_per_second"] > 0 and figures["log_lines_per_second"] > 0
    assert figures["log_lines_read_back_of_one_run"] == 500


@pytest.mark.skipif(dockerd_available() is not None, reason=str(dockerd_available()))
def test_task_latency(results_dir: Path) -> None:
    from bench import bench_task_latency

    bench_task_latency.main(["--runs", "2", "--name", "smoke-task-latency"])
    figures = load(results_dir, "smoke-task-latency")
    assert figures["runs"] == 2 and 0 < figures["p50_ms"] <= figures["max_ms"]


@pytest.mark.skipif(systemd_available() is not None, reason=str(systemd_available()))
def test_fleet(results_dir: Path) -> None:
    from bench import bench_fleet

    bench_fleet.main(["--units", "12", "--rounds", "1", "--rest", "1", "--name", "smoke-fleet"])
    figures = load(results_dir, "smoke-fleet")
    assert figures["units"] == 12
    for key in bench_fleet.TARGETS:
        assert float(figures[key]) > 0, key
    floor = figures["submit_floor_seconds (same requests, TLS server with canned answers)"]
    assert floor > 0
    stack = next(v for k, v in figures.items() if k.startswith("stack_floor_rss_mb"))
    assert 10 < stack < figures["coordinator_rss_mb"]


@pytest.mark.skipif(postgres_available() is not None, reason=str(postgres_available()))
def test_ha_kill9(results_dir: Path) -> None:
    from bench import bench_ha

    bench_ha.main(["--agents", "40", "--heartbeat", "1", "--name", "smoke-ha"])
    figures = load(results_dir, "smoke-ha")
    assert (
        figures["agents_on_killed_coordinator"] + figures["agents_on_surviving_coordinator"] == 40
    )
    assert figures["agents_on_killed_coordinator"] > 0  # both coordinators held agents
    assert figures["survivor_sessions"] == 40
    assert (
        0
        < figures["kill9_reconnect_all_seconds"]
        <= figures["kill9_stored_view_all_connected_seconds"]
    )
    assert figures["leader_takeover_seconds"] > 0


@pytest.mark.skipif(postgres_available() is not None, reason=str(postgres_available()))
def test_placements_postgresql(results_dir: Path) -> None:
    from bench import bench_placements

    bench_placements.main(
        ["--machines", "20", "--units", "200", "--database", "postgresql", "--name", "smoke-pg"]
    )
    figures = load(results_dir, "smoke-pg")
    assert figures["database"] == "postgresql" and figures["units"] == 200
    assert figures["placements_per_second_acknowledged"] > 0


def test_tls_handshake_floor(results_dir: Path) -> None:
    from bench import bench_tls

    bench_tls.main(["--handshakes", "40", "--hold", "40", "--name", "smoke-tls"])
    figures = load(results_dir, "smoke-tls")
    assert figures["server_cpu_ms_per_handshake"] > 0
    assert figures["client_cpu_ms_per_handshake"] > 0
    # a held TLS connection costs more than a plain one: the measurement sees TLS
    assert (
        figures["server_kib_per_held_tls_connection"]
        > figures["server_kib_per_held_tcp_connection"]
    )
