"""Batch tasks end to end (#19, must-show): a real coordinator process, a real enrolled
agent process and a real private dockerd running the locally imported busybox image,
driven through the Flotilla API (/api/v6 and /api/v1) and `moorctl task`.

Every wait polls with a generous deadline: the machine may be loaded."""

# ruff: noqa: F811  (pytest fixtures imported by name)
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import facts
from tests.harness.dockerd import BUSYBOX_TAG, Dockerd
from tests.harness.fixtures import dockerd  # noqa: F401
from tests.procs import wait_for
from tests.taskrig import TASK_MEMORY_MB, TaskRig, counting

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(tmp_path: Path, dockerd: Dockerd) -> Iterator[TaskRig]:
    r = TaskRig(tmp_path, dockerd)
    try:
        yield r
    finally:
        r.close()


def test_runs_exit_codes_stop_and_the_log_cursor(rig: TaskRig) -> None:
    # Create → execute → RUNNING → STOPPED exit_code 0, its output in the log.
    did = rig.define("hello", "echo hello world\necho from $FLOTILLA_RUN_ID")
    rid = rig.execute(did)
    run = rig.wait_status(rid, "STOPPED")
    assert run["exit_code"] == 0, run
    assert run["instance"]["instance_id"] == "m1"
    assert run["queued_at"] <= run["started_at"] <= run["finished_at"]
    expected = f"hello world\nfrom {rid}\n"
    assert rig.whole_log(rid) == expected
    first = rig.logs(rid)
    assert first["log"] == expected and first["last_seen"]
    reasons = [
        e["reason"] for e in rig.coordinator.api("GET", f"/api/v6/{rid}/events")["pod_events"]
    ]
    assert reasons[:2] == ["Queued", "Placed"] and "Started" in reasons and "Exited" in reasons
    status = rig.coordinator.api("GET", f"/api/v6/{rid}/status")
    assert (status["status"], status["exit_code"]) == ("STOPPED", 0)
    # Its container is removed once the whole log is stored (final ack).
    wait_for(lambda: not rig.containers(), 60, 0.2, what="the run's container removed")

    # A failing command gives its exit code (and its output).
    bad = rig.execute(rig.define("fail", "echo oops >&2; exit 3"))
    run = rig.wait_status(bad, "STOPPED")
    assert run["exit_code"] == 3 and run["exit_reason"], run
    assert rig.whole_log(bad) == "oops\n"

    # A run stopped while running ends STOPPED; stop always answers terminated.
    long = rig.define("long", "echo started; sleep 300")
    slow = rig.execute(long)
    rig.wait_status(slow, "RUNNING")
    wait_for(lambda: rig.logs(slow)["log"], 60, 0.2, what="the long run's first output")
    stop = rig.coordinator.api("DELETE", f"/api/v1/task/{long}/history/{slow}")
    assert stop == {"terminated": True}
    run = rig.wait_status(slow, "STOPPED")
    # SIGTERM reached the command (143), it was not SIGKILLed after the grace (137).
    assert run["exit_code"] == 143 and "stopped by request" in run["exit_reason"], run
    assert rig.whole_log(slow) == "started\n"
    stop = rig.coordinator.api("DELETE", f"/api/v1/task/{long}/history/{slow}")
    assert stop == {"terminated": True}

    # The log cursor: only new text each call, the same token when nothing is new.
    command, expected = counting(3, pause="4")
    cur = rig.execute(rig.define("cursor", command))
    token, text, chunks = "", "", 0
    while True:
        done = rig.run(cur)["status"] == "STOPPED"
        got = rig.logs(cur, token)
        if got["log"]:
            assert got["last_seen"] and got["last_seen"] != token
            chunks += 1
        else:
            # Nothing new: the same token (the first call, without one, gets one).
            assert got["last_seen"] == token or (not token and got["last_seen"])
        text += got["log"]
        assert expected.startswith(text), text  # only new text, never a repeat
        token = got["last_seen"]
        if done and text == expected:
            break
        time.sleep(0.3)
    assert chunks >= 2  # it was read while it ran, piece by piece
    assert rig.logs(cur, token) == {"log": "", "last_seen": token}
    assert rig.logs(cur)["last_seen"] == token  # a finished run's token is never empty
    assert rig.logs(cur)["log"] == expected


@pytest.mark.parametrize(
    "exits_while_down", [False, True], ids=["restart-at-once", "exits-while-down"]
)
def test_agent_kill9_mid_run_the_run_finishes_with_all_its_output(
    rig: TaskRig, exits_while_down: bool
) -> None:
    command, expected = counting(100)
    rid = rig.execute(rig.define("counter", command))
    wait_for(lambda: rig.logs(rid)["log"], 60, 0.1, what="some output")
    assert rig.agent.proc is not None
    rig.agent.proc.kill9()
    assert rig.run(rid)["status"] == "RUNNING"
    assert rig.logs(rid)["log"] != expected  # the agent died before shipping it all
    if exits_while_down:  # the run ends while no agent watches it
        wait_for(
            lambda: all(c["State"] == "exited" for c in rig.containers()),
            120,
            0.2,
            what="the run's container exited",
        )
        assert rig.run(rid)["status"] == "RUNNING"  # its machine is away, not lost
    rig.agent.start()
    rig.wait_ready()
    run = rig.wait_status(rid, "STOPPED")
    assert run["exit_code"] == 0, run
    wait_for(lambda: rig.whole_log(rid) == expected, 60, 0.2, what="the whole log")
    assert rig.whole_log(rid) == expected
    wait_for(lambda: not rig.containers(), 60, 0.2, what="the run's container removed")


def test_a_stop_asked_while_the_agent_is_down_reaches_it_when_it_is_back(rig: TaskRig) -> None:
    long = rig.define("long", "echo up; sleep 300")
    rid = rig.execute(long)
    rig.wait_status(rid, "RUNNING")
    assert rig.agent.proc is not None
    rig.agent.proc.kill9()
    stop = rig.coordinator.api("DELETE", f"/api/v6/task/{long}/history/{rid}")
    assert stop == {"terminated": True}
    assert rig.run(rid)["status"] == "RUNNING"  # nobody has stopped it yet
    rig.agent.start()
    run = rig.wait_status(rid, "STOPPED")
    assert run["exit_code"] == 143 and "stopped by request" in run["exit_reason"], run
    assert rig.whole_log(rid) == "up\n"
    wait_for(lambda: not rig.containers(), 60, 0.2, what="the run's container removed")


def test_coordinator_kill9_mid_run_the_run_finishes_with_all_its_output(rig: TaskRig) -> None:
    command, expected = counting(100)
    rid = rig.execute(rig.define("counter", command))
    wait_for(lambda: rig.logs(rid)["log"], 60, 0.1, what="some output")
    rig.coordinator.kill9()
    rig.coordinator.start()
    rig.wait_ready()
    run = rig.wait_status(rid, "STOPPED")
    assert run["exit_code"] == 0, run
    wait_for(lambda: rig.whole_log(rid) == expected, 60, 0.2, what="the whole log")
    assert rig.whole_log(rid) == expected
    wait_for(lambda: not rig.containers(), 60, 0.2, what="the run's container removed")


def test_two_runs_needing_more_than_half_the_memory_run_one_after_the_other(
    rig: TaskRig,
) -> None:
    offered = facts.resources(memory_cap_mb=TASK_MEMORY_MB).memory_mb  # what m1 reports
    assert 0 < offered <= TASK_MEMORY_MB
    memory = offered // 2 + 1
    did = rig.define("big", "echo go; sleep 2", memory=memory)
    first = rig.execute(did)
    second = rig.execute(did)
    a = rig.wait_status(first, "STOPPED")
    b = rig.wait_status(second, "STOPPED")
    assert a["exit_code"] == 0 and b["exit_code"] == 0, (a, b)
    assert a["memory"] == memory and b["memory"] == memory
    assert b["started_at"] >= a["finished_at"], (a, b)  # never at once
    assert rig.whole_log(first) == rig.whole_log(second) == "go\n"


def test_moorctl_task_logs_follow_prints_the_whole_output(rig: TaskRig) -> None:
    command, expected = counting(20, pause="0.2")
    made = rig.coordinator.moorctl("task", "create", "follow", BUSYBOX_TAG, "--command", command)
    assert made.returncode == 0, made.stderr
    ran = rig.coordinator.moorctl("task", "run", "follow")
    assert ran.returncode == 0, ran.stderr
    rid = ran.stdout.strip()
    followed = rig.coordinator.moorctl("task", "logs", rid, "-f", timeout=180)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == expected
    assert rig.run(rid)["status"] == "STOPPED"
    status = json.loads(rig.coordinator.moorctl("--json", "task", "status", rid).stdout)
    assert status["exit_code"] == 0
