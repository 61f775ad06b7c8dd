"""Batch tasks end to end through a real coordinator process and a simulated agent on
the real link (tests/integration/taskagent.py): runs, exit codes, stop, the log
cursor, a coordinator kill -9 mid-run, and runs waiting for memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.taskagent import SimTaskAgent
from tests.procs import CoordinatorProc, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def sims() -> Iterator[list[SimTaskAgent]]:
    made: list[SimTaskAgent] = []
    try:
        yield made
    finally:
        for sim in made:
            sim.close()


def sim(
    coordinator: CoordinatorProc, tmp: Path, made: list[SimTaskAgent], mid: str, **kw: Any
) -> SimTaskAgent:
    agent = SimTaskAgent(coordinator, tmp, mid, **kw)
    made.append(agent)
    return agent.start()


def define(coordinator: CoordinatorProc, alias: str, command: str, **fields: Any) -> str:
    body = coordinator.api(
        "POST", "/api/v1/task", {"alias": alias, "image": "alpine:3", "command": command, **fields}
    )
    return str(body["definition_id"])


def execute(coordinator: CoordinatorProc, definition_id: str, **body: Any) -> str:
    run = coordinator.api(
        "PUT", f"/api/v6/task/{definition_id}/execute", {"run_tags": {"owner_id": "test"}, **body}
    )
    assert run["status"] == "QUEUED"
    return str(run["run_id"])


def run_of(coordinator: CoordinatorProc, run_id: str) -> dict[str, Any]:
    return dict(coordinator.api("GET", f"/api/v1/history/{run_id}"))


def wait_status(
    coordinator: CoordinatorProc, run_id: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        run = run_of(coordinator, run_id)
        return run if run["status"] == status else None

    return dict(wait_for(check, timeout, 0.1, what=f"run {run_id} {status}"))


def logs(coordinator: CoordinatorProc, run_id: str, last_seen: str = "") -> dict[str, Any]:
    return dict(coordinator.api("GET", f"/api/v1/{run_id}/logs?last_seen={last_seen}"))


def whole_log(coordinator: CoordinatorProc, run_id: str) -> str:
    status, body = coordinator.raw("GET", f"/api/v1/{run_id}/logs?raw_text=true")
    assert status == 200
    return body.decode()


def test_a_run_goes_queued_to_stopped_with_its_output(
    coordinator: CoordinatorProc, sims: list[SimTaskAgent], tmp_path: Path
) -> None:
    sim(coordinator, tmp_path, sims, "m1")
    did = define(coordinator, "hello", "echo hello world\necho bye")
    rid = execute(coordinator, did)
    run = wait_status(coordinator, rid, "STOPPED")
    assert run["exit_code"] == 0
    assert run["instance"] == {"instance_id": "m1", "dns_name": "m1.sim"}
    assert run["started_at"] and run["finished_at"] and run["queued_at"]
    assert logs(coordinator, rid)["log"] == "hello world\nbye\n"
    assert whole_log(coordinator, rid) == "hello world\nbye\n"
    events = coordinator.api("GET", f"/api/v1/{rid}/events")["pod_events"]
    reasons = [e["reason"] for e in events]
    assert reasons[:2] == ["Queued", "Placed"] and "Started" in reasons and "Exited" in reasons
    assert any(e["message"] == "image pulled" for e in events)
    assert any(e["message"] == "placed on machine m1" for e in events)
    status = coordinator.api("GET", f"/api/v6/{rid}/status")
    assert (status["status"], status["exit_code"]) == ("STOPPED", 0)
    # The whole log is stored: the agent was told to forget the run.
    wait_for(lambda: rid in sims[0].finals, what="final ack")


def test_a_failing_command_gives_its_exit_code(
    coordinator: CoordinatorProc, sims: list[SimTaskAgent], tmp_path: Path
) -> None:
    sim(coordinator, tmp_path, sims, "m1")
    rid = execute(coordinator, define(coordinator, "fail", "echo oops\nexit 3"))
    run = wait_status(coordinator, rid, "STOPPED")
    assert run["exit_code"] == 3
    assert whole_log(coordinator, rid) == "oops\n"


def test_a_run_stopped_while_running_is_stopped(
    coordinator: CoordinatorProc, sims: list[SimTaskAgent], tmp_path: Path
) -> None:
    sim(coordinator, tmp_path, sims, "m1")
    did = define(coordinator, "long", "echo started; sleep 120")
    rid = execute(coordinator, did)
    wait_status(coordinator, rid, "RUNNING")
    assert coordinator.api("DELETE", f"/api/v1/task/{did}/history/{rid}") == {"terminated": True}
    run = wait_status(coordinator, rid, "STOPPED", timeout=20)
    assert run["exit_code"] == 143 and run["exit_reason"]
    assert coordinator.api("DELETE", f"/api/v1/task/{did}/history/{rid}") == {"terminated": True}


def test_the_log_cursor_returns_only_new_text_and_keeps_its_token(
    coordinator: CoordinatorProc, sims: list[SimTaskAgent], tmp_path: Path
) -> None:
    sim(coordinator, tmp_path, sims, "m1")
    rid = execute(coordinator, define(coordinator, "slow", "echo one; sleep 4; echo two; sleep 1"))
    first = wait_for(lambda: (b := logs(coordinator, rid))["log"] and b, 20, 0.1, what="first text")
    assert first["log"] == "one\n" and first["last_seen"]
    same = logs(coordinator, rid, first["last_seen"])
    assert same == {"log": "", "last_seen": first["last_seen"]}
    second = wait_for(
        lambda: (b := logs(coordinator, rid, first["last_seen"]))["log"] and b,
        20,
        0.1,
        what="second text",
    )
    assert second["log"] == "two\n" and second["last_seen"] != first["last_seen"]
    wait_status(coordinator, rid, "STOPPED")
    done = logs(coordinator, rid, second["last_seen"])
    assert done == {"log": "", "last_seen": second["last_seen"]}
    assert logs(coordinator, rid)["last_seen"] == second["last_seen"]  # never empty


def test_coordinator_kill9_mid_run_the_run_finishes_with_all_its_output(
    coordinator: CoordinatorProc, sims: list[SimTaskAgent], tmp_path: Path
) -> None:
    agent = sim(coordinator, tmp_path, sims, "m1")
    rid = execute(coordinator, define(coordinator, "seq", "seq 600 0.01; exit 0"))
    wait_for(lambda: logs(coordinator, rid)["log"], 30, 0.1, what="some output")
    coordinator.kill9()
    coordinator.start()
    run = wait_status(coordinator, rid, "STOPPED", timeout=60)
    assert run["exit_code"] == 0
    expected = "".join(f"line {i}\n" for i in range(1, 601))
    wait_for(lambda: whole_log(coordinator, rid) == expected, 30, 0.2, what="the whole log")
    wait_for(lambda: rid in agent.finals, 30, what="final ack after the restart")
    assert len(set(agent.starts)) == 1  # never started twice


def test_two_runs_needing_more_memory_than_the_machine_has_run_one_after_the_other(
    coordinator: CoordinatorProc, sims: list[SimTaskAgent], tmp_path: Path
) -> None:
    sim(coordinator, tmp_path, sims, "m1", memory_mb=1024)
    did = define(coordinator, "big", "echo go; sleep 3", memory=700)
    first = execute(coordinator, did)
    second = execute(coordinator, did)
    wait_status(coordinator, first, "RUNNING")
    assert run_of(coordinator, second)["status"] == "QUEUED"
    a = wait_status(coordinator, first, "STOPPED")
    b = wait_status(coordinator, second, "STOPPED")
    assert b["started_at"] >= a["finished_at"]
    assert b["instance"]["instance_id"] == "m1"


def test_moorctl_task_commands(
    coordinator: CoordinatorProc, sims: list[SimTaskAgent], tmp_path: Path
) -> None:
    sim(coordinator, tmp_path, sims, "m1")
    made = coordinator.moorctl(
        "task",
        "create",
        "greet",
        "alpine:3",
        "--command",
        "echo hi from moorctl",
        "--memory",
        "64",
        "--env",
        "A=1",
    )
    assert made.returncode == 0, made.stderr
    assert "(greet) created" in made.stdout
    listed = coordinator.moorctl("--json", "task", "list")
    assert [d["alias"] for d in json.loads(listed.stdout)] == ["greet"]
    table = coordinator.moorctl("task", "list")
    assert "greet" in table.stdout and "ALIAS" in table.stdout
    ran = coordinator.moorctl("task", "run", "greet", "--wait")
    assert ran.returncode == 0, ran.stderr
    run_id, outcome = ran.stdout.split()[:2]
    assert outcome == "SUCCESS"
    logs_out = coordinator.moorctl("task", "logs", run_id, "-f")
    assert logs_out.returncode == 0 and logs_out.stdout == "hi from moorctl\n"
    status = coordinator.moorctl("--json", "task", "status", run_id)
    assert json.loads(status.stdout)["exit_code"] == 0
    assert run_id in coordinator.moorctl("task", "status").stdout
    failing = coordinator.moorctl("task", "run", "greet", "--command", "exit 2", "--wait")
    assert failing.returncode == 1 and "FAILED" in failing.stdout
    slow = coordinator.moorctl("task", "run", "greet", "--command", "sleep 60")
    slow_id = slow.stdout.strip()
    wait_status(coordinator, slow_id, "RUNNING")
    stopped = coordinator.moorctl("task", "stop", slow_id)
    assert stopped.returncode == 0 and "stopping" in stopped.stdout
    wait_status(coordinator, slow_id, "STOPPED")
    missing = coordinator.moorctl("task", "run", "nope")
    assert missing.returncode == 1 and "Definition with ID nope not found" in missing.stderr


def test_a_run_whose_machine_is_lost_needs_a_retry_and_is_run_again_once(
    tmp_path: Path, sims: list[SimTaskAgent]
) -> None:
    coordinator = CoordinatorProc(tmp_path / "coordinator", **{"lost-after": 2}).start()
    try:
        doomed = sim(coordinator, tmp_path, sims, "doomed", memory_mb=1024)
        did = define(coordinator, "retry", "echo attempt; sleep 10", memory=512, retries=1)
        once = define(coordinator, "once", "echo attempt; sleep 60", memory=512)
        rid = execute(coordinator, did)
        other = execute(coordinator, once)
        wait_status(coordinator, rid, "RUNNING")
        wait_status(coordinator, other, "RUNNING")
        doomed.close()
        lost = wait_status(coordinator, rid, "NEEDS_RETRY", timeout=30)
        assert "lost" in lost["exit_reason"]
        assert wait_status(coordinator, other, "NEEDS_RETRY")["instance"]["instance_id"] == "doomed"
        history = coordinator.api("GET", f"/api/v1/task/{did}/history?sort_by=run_id")["history"]
        assert len(history) == 2
        retry = next(r for r in history if r["run_id"] != rid)
        assert retry["status"] == "QUEUED"  # no machine: it waits
        sim(coordinator, tmp_path, sims, "rescuer", memory_mb=1024)
        done = wait_status(coordinator, retry["run_id"], "STOPPED", timeout=30)
        assert done["exit_code"] == 0 and done["instance"]["instance_id"] == "rescuer"
        assert whole_log(coordinator, retry["run_id"]) == "attempt\n"
        # The run without a retry policy is not run again.
        assert coordinator.api("GET", f"/api/v1/task/{once}/history")["total"] == 1
        events = coordinator.api("GET", f"/api/v1/{rid}/events")["pod_events"]
        assert [e["reason"] for e in events][-2:] == ["Lost", "Retried"]
    finally:
        coordinator.stop()
