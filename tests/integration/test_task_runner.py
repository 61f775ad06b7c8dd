"""The agent's task runner (#19) over a real dockerd, driven as the coordinator would.

The runner runs in its own process (`tests.integration.taskdriver`), its link replaced
by pipes: the test plays the coordinator (TaskStart/TaskStop/TaskAck in, TaskUpdate and
TaskOutput out), can drop the "link" and can ``kill -9`` the process mid-run.
"""

# ruff: noqa: F811  (pytest fixtures imported by name)
from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.backends.docker import DockerBackend
from agent.tasks import (
    CHUNK_BYTES,
    KIND_TASK,
    LABEL_KIND,
    LABEL_RUN,
    NEVER_RAN,
    container_name,
)
from proto import messages as m
from tests.harness.dockerd import BUSYBOX_TAG, Dockerd
from tests.harness.fixtures import dockerd_session  # noqa: F401
from tests.integration.peerhub import PeerHub
from tests.procs import ROOT, AgentProc, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


class Driver:
    """The runner's process, and the test's side of its link (a coordinator stand-in)."""

    def __init__(self, tmp: Path, daemon: Dockerd) -> None:
        self.tmp = tmp
        self.daemon = daemon
        self.state_dir = tmp / "state"
        self.incarnation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.messages: list[m.Message] = []
        self._read: dict[Path, int] = {}
        self._outs: list[Path] = []

    def start(self) -> Driver:
        self.incarnation += 1
        out = self.tmp / f"driver-{self.incarnation}.out"
        err = self.tmp / f"driver-{self.incarnation}.err"
        self._outs.append(out)
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.taskdriver", str(self.state_dir),
                 self.daemon.host],
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: out.read_bytes().startswith(b"ready\n"), TIMEOUT, what="driver ready")
        return self

    def command(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def welcome(self) -> None:
        self.command("welcome")

    def send(self, message: m.Message) -> None:
        self.command("msg " + base64.b64encode(m.encode(message)).decode())

    def poll(self) -> list[m.Message]:
        """Every message the runner sent so far (all incarnations)."""
        for out in self._outs:
            data = out.read_bytes()
            start = self._read.get(out, 0)
            end = data.rfind(b"\n") + 1
            for line in data[start:end].splitlines():
                if line.startswith(b"msg "):
                    self.messages.append(m.decode(base64.b64decode(line[4:])))
            self._read[out] = max(start, end)
        return self.messages

    def updates(self, run_id: str) -> list[m.TaskUpdate]:
        return [u for u in self.poll() if isinstance(u, m.TaskUpdate) and u.run_id == run_id]

    def outputs(self, run_id: str) -> list[m.TaskOutput]:
        return [o for o in self.poll() if isinstance(o, m.TaskOutput) and o.run_id == run_id]

    def wait_update(self, run_id: str, state: str, what: str = "") -> m.TaskUpdate:
        def check() -> m.TaskUpdate | None:
            found = [u for u in self.updates(run_id) if u.state == state]
            return found[-1] if found else None

        result: m.TaskUpdate = wait_for(check, TIMEOUT, 0.05, what or f"{run_id} {state}")
        return result

    def log(self, run_id: str) -> bytes:
        return assemble(self.outputs(run_id))

    def wait_log(self, run_id: str, size: int) -> bytes:
        wait_for(lambda: len(self.log(run_id)) >= size, TIMEOUT, what=f"{size} bytes of output")
        return self.log(run_id)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stderr(self) -> str:
        return "".join(
            (self.tmp / f"driver-{i}.err").read_text(errors="replace")
            for i in range(1, self.incarnation + 1)
        )


def assemble(outputs: list[m.TaskOutput]) -> bytes:
    """The log from frames that may repeat (resent after reconnects): dedupe by offset,
    require every repeat to carry the same bytes and no gap."""
    log = bytearray()
    for frame in sorted(outputs, key=lambda o: (o.offset, len(o.data))):
        assert frame.offset <= len(log), f"gap: frame at {frame.offset}, log has {len(log)}"
        overlap = bytes(log[frame.offset : frame.offset + len(frame.data)])
        assert frame.data[: len(overlap)] == overlap, f"frame at {frame.offset} differs"
        log += frame.data[len(overlap) :]
    return bytes(log)


@pytest.fixture
def docker_daemon(dockerd_session: Dockerd) -> Iterator[Dockerd]:
    dockerd_session.import_busybox()
    yield dockerd_session
    client = dockerd_session.client()
    for c in client.containers.list(all=True, filters={"label": LABEL_KIND}):
        c.remove(force=True)


@pytest.fixture
def driver(tmp_path: Path, docker_daemon: Dockerd) -> Iterator[Driver]:
    d = Driver(tmp_path, docker_daemon).start()
    try:
        yield d
    finally:
        d.stop()


def inspect(daemon: Dockerd, run_id: str) -> dict[str, Any] | None:
    import docker

    try:
        return dict(daemon.client().api.inspect_container(container_name(run_id)))
    except docker.errors.NotFound:
        return None


def docker_log(daemon: Dockerd, container_id: str) -> bytes:
    """What Docker recorded of a container's output (stdout and stderr, non-TTY)."""
    return bytes(daemon.client().api.logs(container_id, stdout=True, stderr=True))


def same_lines(log: bytes, expected: bytes) -> bool:
    return sorted(log.splitlines()) == sorted(expected.splitlines())


def test_run_exits_zero_with_its_output_and_limits(driver: Driver, tmp_path: Path) -> None:
    driver.welcome()
    driver.send(
        m.TaskStart(
            run_id="run-ok",
            image=BUSYBOX_TAG,
            command='echo hello; echo "$GREETING"\necho to-stderr >&2',
            env={"GREETING": "hi there"},
            memory_mb=64,
            cpu_millis=500,
        )
    )
    running = driver.wait_update("run-ok", "RUNNING")
    assert running.container_id and running.event == "started"
    stopped = driver.wait_update("run-ok", "STOPPED")
    assert (stopped.exit_code, stopped.exit_reason) == (0, "exited")
    expected = b"hello\nhi there\nto-stderr\n"
    assert stopped.log_bytes == len(expected)
    log = driver.wait_log("run-ok", len(expected))
    # stdout and stderr are copied by two goroutines of dockerd: their relative order is
    # Docker's; the runner ships exactly what Docker recorded.
    assert log == docker_log(driver.daemon, running.container_id)
    assert sorted(log.splitlines()) == sorted(expected.splitlines())
    assert log.replace(b"to-stderr\n", b"") == b"hello\nhi there\n"

    attrs = inspect(driver.daemon, "run-ok")
    assert attrs is not None, "the container is kept until the final ack"
    assert attrs["Id"] == running.container_id
    assert attrs["Config"]["Labels"][LABEL_RUN] == "run-ok"
    assert attrs["Config"]["Labels"][LABEL_KIND] == KIND_TASK
    assert "moorage.unit" not in attrs["Config"]["Labels"]
    host = attrs["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["MemorySwap"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["RestartPolicy"]["Name"] in ("no", "")
    assert host["AutoRemove"] is False
    assert attrs["Path"] == "/bin/sh" and attrs["Args"][0] == "-c"

    run_dir = driver.state_dir / "tasks" / "run-ok"
    assert (run_dir / "output").read_bytes() == log
    assert os.stat(run_dir / "output").st_mode & 0o777 == 0o600
    assert os.stat(run_dir / "run.json").st_mode & 0o777 == 0o600

    # The unit backend does not see runs (no extra drift, no adoption as units).
    async def owned() -> set[str]:
        backend = DockerBackend(docker_host=driver.daemon.host)
        await backend.connect()
        try:
            return await backend.owned_extras() | set(await backend.list_owned())
        finally:
            await backend.close()

    assert asyncio.run(owned()) == set()

    driver.send(m.TaskAck("run-ok", offset=len(expected)))
    time.sleep(0.3)
    assert inspect(driver.daemon, "run-ok") is not None, "kept before the final ack"
    driver.send(m.TaskAck("run-ok", offset=len(expected), final=True))
    wait_for(lambda: inspect(driver.daemon, "run-ok") is None, TIMEOUT, what="container removed")
    wait_for(lambda: not run_dir.exists(), TIMEOUT, what="local files removed")


def test_failing_command_gives_its_exit_code(driver: Driver) -> None:
    driver.welcome()
    driver.send(m.TaskStart(run_id="run-fail", image=BUSYBOX_TAG, command="echo oops; exit 3"))
    stopped = driver.wait_update("run-fail", "STOPPED")
    assert stopped.exit_code == 3
    assert "3" in stopped.exit_reason
    assert driver.wait_log("run-fail", 5) == b"oops\n"
    # A repeated start is answered with the run's state, not run again.
    driver.send(m.TaskStart(run_id="run-fail", image=BUSYBOX_TAG, command="echo oops; exit 3"))
    wait_for(lambda: len(driver.updates("run-fail")) >= 3, TIMEOUT, what="state answered")
    assert driver.updates("run-fail")[-1].state == "STOPPED"
    assert [u.state for u in driver.updates("run-fail")].count("RUNNING") <= 1


def test_stop_while_running(driver: Driver) -> None:
    driver.welcome()
    driver.send(m.TaskStart(run_id="run-stop", image=BUSYBOX_TAG, command="echo up; sleep 300"))
    driver.wait_update("run-stop", "RUNNING")
    driver.wait_log("run-stop", 3)
    started = time.monotonic()
    driver.send(m.TaskStop("run-stop", grace_s=1))
    stopped = driver.wait_update("run-stop", "STOPPED")
    assert time.monotonic() - started < 30
    assert stopped.exit_reason == "stopped by request"
    assert stopped.exit_code == 143  # docker's init forwards SIGTERM to the command
    attrs = inspect(driver.daemon, "run-stop")
    assert attrs is not None and attrs["State"]["Status"] == "exited"


def test_missing_image_that_cannot_be_pulled(driver: Driver) -> None:
    driver.welcome()
    image = "127.0.0.1:9/moorage-test/none:1"  # nothing listens on port 9: refused at once
    driver.send(m.TaskStart(run_id="run-noimage", image=image, command="true"))
    stopped = driver.wait_update("run-noimage", "STOPPED")
    assert stopped.exit_code == NEVER_RAN
    assert image in stopped.exit_reason
    events = [u.event for u in driver.updates("run-noimage")]
    assert "pulling image" in events
    assert inspect(driver.daemon, "run-noimage") is None
    driver.send(m.TaskAck("run-noimage", final=True))
    wait_for(
        lambda: not (driver.state_dir / "tasks" / "run-noimage").exists(), TIMEOUT, what="forgot"
    )


def test_invalid_run_id_is_refused_without_touching_disk(driver: Driver) -> None:
    driver.welcome()
    driver.send(m.TaskStart(run_id="../escape", image=BUSYBOX_TAG, command="true"))
    stopped = driver.wait_update("../escape", "STOPPED")
    assert stopped.exit_code == NEVER_RAN and "invalid run id" in stopped.exit_reason
    assert not (driver.state_dir / "escape").exists()
    assert not (driver.state_dir.parent / "escape").exists()


COUNTER = (
    "i=0; while [ $i -lt 60 ]; do echo line $i; echo err $i >&2; i=$((i+1)); sleep 0.05; done;"
    " exit 7"
)
COUNTER_LOG = b"".join(f"line {i}\nerr {i}\n".encode() for i in range(60))


def test_link_loss_resends_from_the_last_ack(driver: Driver) -> None:
    driver.welcome()
    driver.send(m.TaskStart(run_id="run-link", image=BUSYBOX_TAG, command=COUNTER))
    running = driver.wait_update("run-link", "RUNNING")
    first = driver.wait_log("run-link", 40)
    driver.send(m.TaskAck("run-link", offset=len(first)))
    driver.command("down")  # the coordinator goes away: what is written meanwhile waits
    time.sleep(1.5)
    driver.welcome()
    stopped = driver.wait_update("run-link", "STOPPED")
    assert stopped.exit_code == 7
    log = driver.wait_log("run-link", len(COUNTER_LOG))
    assert log == docker_log(driver.daemon, running.container_id)
    assert same_lines(log, COUNTER_LOG)
    assert stopped.log_bytes == len(COUNTER_LOG)


def test_kill9_of_the_agent_mid_run(driver: Driver) -> None:
    driver.welcome()
    driver.send(m.TaskStart(run_id="run-k9", image=BUSYBOX_TAG, command=COUNTER))
    running = driver.wait_update("run-k9", "RUNNING")
    shipped = driver.wait_log("run-k9", 30)
    acked = len(shipped) // 2
    driver.send(m.TaskAck("run-k9", offset=acked))
    record = driver.state_dir / "tasks" / "run-k9" / "run.json"
    wait_for(lambda: json.loads(record.read_bytes())["acked"] == acked, TIMEOUT, what="ack kept")
    before = inspect(driver.daemon, "run-k9")
    assert before is not None and before["State"]["Running"]
    driver.kill9()

    attrs = inspect(driver.daemon, "run-k9")
    assert attrs is not None and attrs["State"]["Running"], "the run outlives the agent"
    time.sleep(1.0)  # it goes on writing while no agent follows it
    sent_before = len(driver.poll())
    driver.start()
    driver.welcome()
    stopped = driver.wait_update("run-k9", "STOPPED")
    assert stopped.exit_code == 7 and stopped.exit_reason == "exited with code 7"
    assert stopped.container_id == running.container_id
    log = driver.wait_log("run-k9", len(COUNTER_LOG))
    assert log == docker_log(driver.daemon, running.container_id)
    assert same_lines(log, COUNTER_LOG)
    assert stopped.log_bytes == len(COUNTER_LOG)
    resent = [o for o in driver.messages[sent_before:] if isinstance(o, m.TaskOutput)]
    assert resent and min(o.offset for o in resent) == acked, "resent from the last ack"
    after = inspect(driver.daemon, "run-k9")
    assert after is not None
    assert (
        after["RestartCount"] == 0 and after["State"]["StartedAt"] == before["State"]["StartedAt"]
    )


def test_kill9_then_restart_after_the_run_ended(driver: Driver) -> None:
    """The agent is away when the run ends: its exit code and whole log still arrive,
    and the STOPPED update is sent again after each Welcome until the final ack."""
    driver.welcome()
    driver.send(
        m.TaskStart(run_id="run-k9b", image=BUSYBOX_TAG, command="echo a; sleep 2; echo b; exit 4")
    )
    driver.wait_update("run-k9b", "RUNNING")
    driver.kill9()
    wait_for(
        lambda: (
            (inspect(driver.daemon, "run-k9b") or {}).get("State", {}).get("Status") == "exited"
        ),
        TIMEOUT,
        what="the run ended",
    )
    driver.start()
    driver.welcome()
    stopped = driver.wait_update("run-k9b", "STOPPED")
    assert stopped.exit_code == 4
    assert driver.wait_log("run-k9b", 4) == b"a\nb\n"
    count = len([u for u in driver.updates("run-k9b") if u.state == "STOPPED"])
    driver.welcome()
    wait_for(
        lambda: len([u for u in driver.updates("run-k9b") if u.state == "STOPPED"]) > count,
        TIMEOUT,
        what="STOPPED sent again after a Welcome",
    )
    driver.send(m.TaskAck("run-k9b", offset=4, final=True))
    wait_for(lambda: inspect(driver.daemon, "run-k9b") is None, TIMEOUT, what="removed")


def test_large_output_ships_in_bounded_frames(driver: Driver) -> None:
    driver.welcome()
    size = 5 * CHUNK_BYTES + 12345
    driver.send(
        m.TaskStart(run_id="run-big", image=BUSYBOX_TAG, command=f"head -c {size} /dev/zero")
    )
    stopped = driver.wait_update("run-big", "STOPPED")
    assert (stopped.exit_code, stopped.log_bytes) == (0, size)
    assert driver.wait_log("run-big", size) == b"\0" * size
    frames = driver.outputs("run-big")
    assert max(len(o.data) for o in frames) <= CHUNK_BYTES
    assert max(len(m.encode(o)) for o in frames) < m.MAX_FRAME


# --- the real agent process over the real link ------------------------------------------


class AgentRig:
    """An agent enrolled with a real coordinator, which then gives way to a `PeerHub` on
    the same port: the test speaks the coordinator's side of the task protocol."""

    def __init__(self, tmp: Path, daemon: Dockerd) -> None:
        self.daemon = daemon
        coordinator = CoordinatorProc(tmp / "coordinator").start()
        self.agent = AgentProc(
            tmp,
            "m1",
            coordinator,
            extra=["--systemd-scope", "user", "--unit-dir", str(tmp / "units"),
                   "--task-network", "none", "--metrics-listen", ""],
            env={
                "DOCKER_HOST": daemon.host,
                "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp}/no-such-bus",
            },
        )  # fmt: skip
        try:
            result = self.agent.enroll(coordinator.join_token())
            assert result.returncode == 0, result.stderr
        finally:
            coordinator.stop()
        self.hub = PeerHub(coordinator.paths, coordinator.hub_port).start()
        self.agent.start()
        self.wait_hellos(1)

    def wait_hellos(self, count: int) -> m.Hello:
        wait_for(lambda: len(self.hub.hellos) >= count and self.hub.connected, TIMEOUT,
                 what=f"hello #{count}")  # fmt: skip
        return self.hub.hellos[count - 1]

    def updates(self, run_id: str) -> list[m.TaskUpdate]:
        return [
            u for u in self.hub.messages() if isinstance(u, m.TaskUpdate) and u.run_id == run_id
        ]

    def wait_update(self, run_id: str, state: str) -> m.TaskUpdate:
        def check() -> m.TaskUpdate | None:
            found = [u for u in self.updates(run_id) if u.state == state]
            return found[-1] if found else None

        result: m.TaskUpdate = wait_for(check, TIMEOUT, what=f"{run_id} {state}")
        return result

    def log(self, run_id: str) -> bytes:
        return assemble(
            [o for o in self.hub.messages() if isinstance(o, m.TaskOutput) and o.run_id == run_id]
        )

    def wait_log(self, run_id: str, size: int) -> bytes:
        wait_for(lambda: len(self.log(run_id)) >= size, TIMEOUT, what=f"{size} bytes")
        return self.log(run_id)

    def close(self) -> None:
        self.agent.stop()
        self.hub.stop()


@pytest.fixture
def agent_rig(tmp_path: Path, docker_daemon: Dockerd) -> Iterator[AgentRig]:
    rig = AgentRig(tmp_path, docker_daemon)
    try:
        yield rig
    finally:
        rig.close()


def test_real_agent_runs_survives_kill9_and_coordinator_restart(agent_rig: AgentRig) -> None:
    rig = agent_rig
    hello = rig.hub.hellos[0]
    assert hello.resources is not None
    assert hello.resources.memory_mb > 0 and hello.resources.cpu_millis >= 1000

    command = COUNTER.replace("sleep 0.05", "sleep 0.2")  # ~12 s: kill -9 lands mid-run
    assert rig.hub.send(m.TaskStart(run_id="agent-k9", image=BUSYBOX_TAG, command=command))
    running = rig.wait_update("agent-k9", "RUNNING")
    first = rig.wait_log("agent-k9", 20)
    assert rig.hub.send(m.TaskAck("agent-k9", offset=len(first)))

    # The coordinator restarts (the session drops): the agent reconnects, says where
    # the run is and ships what was not acknowledged.
    rig.hub.drop()
    rig.wait_hellos(2)
    wait_for(lambda: len(rig.updates("agent-k9")) >= 2, TIMEOUT, what="state after Welcome")

    # kill -9 of the agent mid-run: the run goes on; the new agent re-adopts it.
    assert rig.agent.proc is not None
    rig.agent.proc.kill9()
    attrs = inspect(rig.daemon, "agent-k9")
    assert attrs is not None and attrs["State"]["Running"], "the run outlives the agent"
    rig.agent.start()
    rig.wait_hellos(3)

    stopped = rig.wait_update("agent-k9", "STOPPED")
    assert (stopped.exit_code, stopped.exit_reason) == (7, "exited with code 7")
    assert stopped.container_id == running.container_id
    log = rig.wait_log("agent-k9", len(COUNTER_LOG))
    assert log == docker_log(rig.daemon, running.container_id)
    assert same_lines(log, COUNTER_LOG) and stopped.log_bytes == len(log)
    after = inspect(rig.daemon, "agent-k9")
    assert after is not None and after["RestartCount"] == 0

    assert rig.hub.send(m.TaskAck("agent-k9", offset=len(log), final=True))
    wait_for(lambda: inspect(rig.daemon, "agent-k9") is None, TIMEOUT, what="removed")


def test_real_agent_stop_and_unit_containers_untouched(agent_rig: AgentRig) -> None:
    rig = agent_rig
    assert rig.hub.send(
        m.TaskStart(run_id="agent-stop", image=BUSYBOX_TAG, command="sleep 300", memory_mb=32)
    )
    rig.wait_update("agent-stop", "RUNNING")
    attrs = inspect(rig.daemon, "agent-stop")
    assert attrs is not None and attrs["HostConfig"]["Memory"] == 32 * 1024 * 1024
    # No drift is reported for the run's container (it is not a unit's).
    time.sleep(2.5)
    drift = [d for d in rig.hub.messages() if isinstance(d, m.DriftReport) and d.entries]
    assert drift == []
    assert rig.hub.send(m.TaskStop("agent-stop", grace_s=1))
    stopped = rig.wait_update("agent-stop", "STOPPED")
    assert stopped.exit_reason == "stopped by request"


def test_memory_limit_is_enforced(driver: Driver) -> None:
    driver.welcome()
    driver.send(
        m.TaskStart(
            run_id="run-oom",
            image=BUSYBOX_TAG,
            command="x=$(head -c 100000000 /dev/urandom); echo survived",
            memory_mb=16,
        )
    )
    stopped = driver.wait_update("run-oom", "STOPPED")
    assert stopped.exit_code != 0
    assert stopped.exit_reason.startswith("OOMKilled"), stopped.exit_reason
    assert b"survived" not in driver.log("run-oom")


def test_resource_error_stops_the_run_with_dockers_reason(driver: Driver) -> None:
    driver.welcome()
    driver.send(m.TaskStart(run_id="run-tiny", image=BUSYBOX_TAG, command="true", memory_mb=1))
    stopped = driver.wait_update("run-tiny", "STOPPED")
    assert stopped.exit_code == NEVER_RAN
    assert "memory" in stopped.exit_reason.lower(), stopped.exit_reason


def test_container_removed_behind_the_agents_back(driver: Driver) -> None:
    driver.welcome()
    driver.send(m.TaskStart(run_id="run-gone", image=BUSYBOX_TAG, command="sleep 300"))
    running = driver.wait_update("run-gone", "RUNNING")
    driver.daemon.client().api.remove_container(running.container_id, force=True)
    stopped = driver.wait_update("run-gone", "STOPPED")
    assert stopped.exit_code == NEVER_RAN
    assert "removed outside Moorage" in stopped.exit_reason
