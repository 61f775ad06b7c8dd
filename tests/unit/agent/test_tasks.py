"""The task runner's pure parts: run ids, container bodies, states from inspect, offsets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent import facts
from agent.tasks import (
    CHUNK_BYTES,
    KIND_TASK,
    LABEL_KIND,
    LABEL_RUN,
    NEVER_RAN,
    RunFiles,
    RunRecord,
    advance_ack,
    chunks,
    container_body,
    container_name,
    never_started,
    outcome,
    run_state,
    skip_prefix,
    start_problem,
    valid_run_id,
)
from proto import messages as m
from proto.container import LABEL_UNIT

ZERO = "0001-01-01T00:00:00Z"
WHEN = "2026-12-07T00:00:00.123456789Z"


def attrs(status: str, *, code: int = 0, started: str = WHEN, **state: Any) -> dict[str, Any]:
    return {
        "State": {"Status": status, "ExitCode": code, "StartedAt": started, **state},
        "HostConfig": {"Memory": 64 * 1024 * 1024},
    }


@pytest.mark.parametrize(
    "run_id",
    ["a", "run-1", "default-6f1c7a8e-1b2c-4d3e-8f90-123456789abc", "A_b.c-d", "x" * 128],
)
def test_valid_run_ids(run_id: str) -> None:
    assert valid_run_id(run_id)


@pytest.mark.parametrize(
    "run_id",
    ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "-flag", "a b", "é", "a\x00", "x" * 129],
)
def test_run_ids_that_could_escape_or_confuse_are_refused(run_id: str) -> None:
    assert not valid_run_id(run_id)
    assert "invalid run id" in start_problem(m.TaskStart(run_id=run_id, image="i"))


def test_run_files_refuse_an_invalid_run_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RunFiles(tmp_path, "../x")


def test_start_problems() -> None:
    ok = m.TaskStart(run_id="r", image="busybox", command="echo hi", env={"A": "1"})
    assert start_problem(ok) == ""
    assert "no image" in start_problem(m.TaskStart(run_id="r", image=" "))
    assert "A=B" in start_problem(m.TaskStart(run_id="r", image="i", env={"A=B": "x"}))
    assert "NUL" in start_problem(m.TaskStart(run_id="r", image="i", env={"A": "\x00"}))
    assert "negative" in start_problem(m.TaskStart(run_id="r", image="i", memory_mb=-1))


def test_container_body_with_command_limits_and_env() -> None:
    start = m.TaskStart(
        run_id="r1",
        image="busybox:1",
        command="echo a\necho b",
        env={"A": "1", "FLOTILLA_RUN_ID": "r1"},
        memory_mb=256,
        cpu_millis=1500,
    )
    body = container_body(start, network="none")
    assert body["Image"] == "busybox:1"
    assert body["Entrypoint"] == ["/bin/sh", "-c"]
    assert body["Cmd"] == ["echo a\necho b"]
    assert body["Env"] == ["A=1", "FLOTILLA_RUN_ID=r1"]
    assert body["Labels"] == {LABEL_RUN: "r1", LABEL_KIND: KIND_TASK}
    assert LABEL_UNIT not in body["Labels"]
    host = body["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 1_500_000_000
    assert host["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert host["AutoRemove"] is False
    assert host["Init"] is True  # a stop's SIGTERM reaches the command
    assert host["NetworkMode"] == "none"


def test_container_body_without_command_or_limits_keeps_the_images_own() -> None:
    body = container_body(m.TaskStart(run_id="r", image="img"))
    assert "Entrypoint" not in body and "Cmd" not in body
    assert not {"Memory", "MemorySwap", "NanoCpus", "NetworkMode"} & set(body["HostConfig"])


def test_container_names_never_meet_unit_containers() -> None:
    assert container_name("web") == "moorage.run.web"
    assert not container_name("web").startswith("moorage-")


def test_states_from_inspect() -> None:
    assert run_state(attrs("created", started=ZERO)) == "PENDING"
    assert never_started(attrs("created", started=ZERO))
    assert run_state(attrs("running")) == "RUNNING"
    assert run_state(attrs("paused")) == "RUNNING"
    assert run_state(attrs("restarting")) == "RUNNING"
    assert run_state(attrs("exited", code=3)) == "STOPPED"
    assert run_state(attrs("dead")) == "STOPPED"
    assert not never_started(attrs("exited"))


def test_outcomes_from_inspect() -> None:
    assert outcome(attrs("exited"), stop_requested=False) == (0, "exited")
    assert outcome(attrs("exited", code=3), stop_requested=False) == (3, "exited with code 3")
    assert outcome(attrs("exited", code=137), stop_requested=True) == (137, "stopped by request")
    code, reason = outcome(attrs("exited", code=143), stop_requested=False)
    assert code == 143 and "SIGTERM" in reason
    code, reason = outcome(attrs("exited", code=137, OOMKilled=True), stop_requested=False)
    assert code == 137 and reason.startswith("OOMKilled") and "64 MB" in reason
    code, reason = outcome(
        attrs("created", started=ZERO, Error="exec: no such file"), stop_requested=False
    )
    assert code == NEVER_RAN and "no such file" in reason
    code, reason = outcome(attrs("created", started=ZERO), stop_requested=True)
    assert code == NEVER_RAN and "stopped by request" in reason


def test_chunks_cover_the_range_exactly() -> None:
    assert chunks(0, 0) == []
    assert chunks(5, 5) == []
    assert chunks(0, 10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert chunks(3, 11, 4) == [(3, 4), (7, 4)]
    big = chunks(100, 100 + 3 * CHUNK_BYTES + 1)
    assert all(length <= CHUNK_BYTES for _, length in big)
    assert sum(length for _, length in big) == 3 * CHUNK_BYTES + 1
    assert CHUNK_BYTES + 200 < m.MAX_FRAME
    with pytest.raises(ValueError):
        chunks(0, 1, 0)


def test_skip_prefix_across_frames() -> None:
    stream = [b"abc", b"de", b"fghij"]
    skip, out = 4, b""
    for frame in stream:
        fresh, skip = skip_prefix(frame, skip)
        out += fresh
    assert out == b"efghij" and skip == 0
    assert skip_prefix(b"xy", 0) == (b"xy", 0)
    assert skip_prefix(b"xy", 2) == (b"", 0)
    assert skip_prefix(b"xy", 5) == (b"", 3)


def test_acks_never_go_back_nor_past_what_is_held() -> None:
    assert advance_ack(10, 20, 100) == 20
    assert advance_ack(20, 10, 100) == 20
    assert advance_ack(20, 500, 100) == 100


def test_run_files_are_private_and_append_only(tmp_path: Path) -> None:
    files = RunFiles(tmp_path / "tasks", "r1")
    files.create()
    files.append(b"hello ")
    files.append(b"world")
    assert files.size() == 11
    assert files.read(6, 100) == b"world"
    record = RunRecord(start=m.TaskStart(run_id="r1", image="i", env={"SECRET": "x"}), acked=6)
    files.save(record)
    assert files.load() == record
    for path in (files.output_path, files.record_path):
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(files.dir).st_mode & 0o777 == 0o700
    files.remove()
    assert not files.dir.exists()


def test_resources_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8048576 kB\nMemFree:  1 kB\n")
    res = facts.resources(str(meminfo))
    assert res.memory_mb == 8048576 // 1024
    assert res.cpu_millis >= 1000 and res.cpu_millis % 1000 == 0
    assert facts.resources(str(tmp_path / "missing")).memory_mb == 0
    # --task-memory-mb caps what is offered, never raises it above MemTotal.
    assert facts.resources(str(meminfo), memory_cap_mb=512).memory_mb == 512
    assert facts.resources(str(meminfo), memory_cap_mb=10**9).memory_mb == 8048576 // 1024
    assert facts.resources(str(tmp_path / "missing"), memory_cap_mb=512).memory_mb == 512
