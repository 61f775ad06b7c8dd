"""`.container` units through a real coordinator and agent, run by a real dockerd."""

# ruff: noqa: F811  (pytest fixtures imported by name)
from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from proto.container import LABEL_HASH, LABEL_UNIT, container_name
from proto.units import parse_unit_file, unit_hash
from tests.harness.dockerd import BUSYBOX_TAG, Dockerd
from tests.harness.fixtures import dockerd  # noqa: F401
from tests.procs import AgentProc, CoordinatorProc, MachineRig, wait_for

pytestmark = pytest.mark.integration

SLEEPER = (
    "[Unit]\nDescription=Moorage test {name}\n\n"
    "[Container]\nImage=" + BUSYBOX_TAG + "\n"
    "Exec=/bin/sh -c 'echo hi from {name}; sleep {secs}'\n"
    "Network=none\n"
    "StopTimeout=1\n"  # sh as PID 1 ignores SIGTERM: SIGKILL after 1 s, not 10
)


def sleeper(name: str, secs: int = 300, extra: str = "") -> str:
    return SLEEPER.format(name=name, secs=secs) + extra


class Rig(MachineRig):
    """The machine's agent (no systemd) drives the test's dockerd."""

    def __init__(self, tmp: Path, daemon: Dockerd) -> None:
        self.tmp = tmp
        self.dockerd = daemon
        self.image_id = daemon.import_busybox()
        super().__init__(
            tmp,
            extra=["--systemd-scope", "user", "--unit-dir", str(tmp / "units")],
            env={
                "DOCKER_HOST": daemon.host,
                "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp}/no-such-bus",
            },
        )

    @functools.cached_property
    def docker(self) -> Any:
        return self.dockerd.client()  # keeps working across dockerd restarts

    def container(self, unit: str) -> dict[str, Any] | None:
        import docker

        try:
            return dict(self.docker.api.inspect_container(container_name(unit)))
        except docker.errors.NotFound:
            return None

    def running(self, unit: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            c = self.container(unit)
            return c if c is not None and c["State"]["Running"] else None

        return dict(wait_for(check, 20, what=f"{unit}'s container running"))

    def agent_back(self) -> None:
        self.agent.start()
        wait_for(lambda: "m1" in self.coordinator.connected(), what="agent back")


@pytest.fixture
def rig(tmp_path: Path, dockerd: Dockerd) -> Iterator[Rig]:
    r = Rig(tmp_path, dockerd)
    try:
        yield r
    finally:
        r.close()


def test_container_unit_runs_with_labels_and_image_digest(rig: Rig) -> None:
    text = sleeper("web") + "\n[X-Fleet]\nMachineID=m1\n"
    unit = rig.put("web.container", text)
    assert unit["hash"] == unit_hash(parse_unit_file(text))
    state = rig.wait_state("web.container", "active", sub_state="running")
    c = rig.running("web.container")
    assert c["Name"] == "/moorage-web"
    labels = c["Config"]["Labels"]
    assert labels[LABEL_UNIT] == "web.container" and labels[LABEL_HASH] == unit["hash"]
    assert c["Config"]["Cmd"] == ["/bin/sh", "-c", "echo hi from web; sleep 300"]
    assert c["HostConfig"]["NetworkMode"] == "none"
    assert state["load_state"] == "loaded" and state["hash"] == unit["hash"]
    assert state["main_pid"] == c["State"]["Pid"] > 0
    # Imported images have no RepoDigests: the digest is the image ID, as docker inspect says.
    assert state["image_digest"] == c["Image"] == rig.image_id
    assert rig.docker.api.inspect_image(BUSYBOX_TAG)["RepoDigests"] == []
    machine = next(m for m in rig.coordinator.machines() if m["id"] == "m1")
    assert "docker" in machine["capabilities"]


def test_stop_unload_destroy_behave_like_systemd_units(rig: Rig) -> None:
    rig.put("stage.container", sleeper("stage"), state="loaded")
    rig.wait_state("stage.container", "inactive", load_state="loaded", sub_state="created")
    created = rig.container("stage.container")
    assert created is not None and not created["State"]["Running"]

    rig.put("stage.container", sleeper("stage"), state="launched")
    rig.wait_state("stage.container", "active", sub_state="running")
    assert rig.running("stage.container")["Id"] == created["Id"]

    rig.put("stage.container", sleeper("stage"), state="loaded")  # stop
    stopped = rig.wait_state("stage.container", "inactive", load_state="loaded", sub_state="exited")
    assert "stopped" in stopped["message"]
    c = rig.container("stage.container")
    assert c is not None and c["Id"] == created["Id"] and not c["State"]["Running"]

    rig.put("stage.container", sleeper("stage"), state="launched")  # start the same one
    rig.wait_state("stage.container", "active")
    assert rig.running("stage.container")["Id"] == created["Id"]

    rig.put("stage.container", sleeper("stage"), state="inactive")  # unload
    wait_for(lambda: rig.container("stage.container") is None, what="unloaded: removed")

    rig.put("gone.container", sleeper("gone"))
    rig.wait_state("gone.container", "active")
    rig.coordinator.api("DELETE", "/moorage/v1/units/gone.container")  # destroy
    wait_for(lambda: rig.container("gone.container") is None, what="destroyed: removed")
    wait_for(lambda: rig.reported("gone.container") is None, what="state forgotten")


def test_changed_options_recreate_unchanged_ones_keep_running(rig: Rig) -> None:
    first = rig.put("swap.container", sleeper("v1"))
    rig.wait_state("swap.container", "active", hash=first["hash"])
    old = rig.running("swap.container")

    again = rig.put("swap.container", sleeper("v1"))  # same options, same hash
    assert again["hash"] == first["hash"]
    time.sleep(1.0)
    same = rig.running("swap.container")
    assert (same["Id"], same["State"]["StartedAt"]) == (old["Id"], old["State"]["StartedAt"])

    second = rig.put("swap.container", sleeper("v2", secs=400))
    assert second["hash"] != first["hash"]
    rig.wait_state("swap.container", "active", hash=second["hash"])
    new = rig.running("swap.container")
    assert new["Id"] != old["Id"]
    assert new["Config"]["Labels"][LABEL_HASH] == second["hash"]
    assert "sleep 400" in new["Config"]["Cmd"][-1]
    ours = rig.docker.containers.list(all=True, filters={"label": LABEL_UNIT})
    assert [c.id for c in ours] == [new["Id"]]  # the old container is gone


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_agent_restart_keeps_containers(rig: Rig, how: str) -> None:
    names = ["keep-a.container", "keep-b.container"]
    for n in names:
        rig.put(n, sleeper(n))
    for n in names:
        rig.wait_state(n, "active")
    before = {n: (c := rig.running(n))["Id"] + c["State"]["StartedAt"] for n in names}

    assert rig.agent.proc is not None
    if how == "kill9":
        rig.agent.proc.kill9()
    else:
        assert rig.agent.proc.stop() == 0
    time.sleep(0.5)
    rig.agent_back()
    for n in names:
        rig.wait_state(n, "active", sub_state="running")
    time.sleep(1.0)  # give a wrong recreation or restart the time to happen
    after = {n: (c := rig.running(n))["Id"] + c["State"]["StartedAt"] for n in names}
    assert after == before


def test_dockerd_restart_readopts_containers(rig: Rig) -> None:
    """Same IDs after a dockerd restart; launched ones run again, the rest stay as they were."""
    rig.put("plain.container", sleeper("plain"))  # Restart=no: the agent starts it again
    rig.put("always.container", sleeper("always", extra="\n[Service]\nRestart=always\n"))
    rig.put("init.container", sleeper("init", extra="RunInit=yes\n"))
    parked = sleeper("parked", extra="\n[Service]\nRestart=on-failure\n")
    rig.put("parked.container", parked)
    rig.put(
        "crash.container",
        f"[Container]\nImage={BUSYBOX_TAG}\nExec=/bin/sh -c 'exit 3'\nNetwork=none\n",
    )
    launched = ["plain.container", "always.container", "init.container"]
    for n in [*launched, "parked.container"]:
        rig.wait_state(n, "active")
    rig.put("parked.container", parked, state="loaded")  # stopped by the agent
    rig.wait_state("parked.container", "inactive", sub_state="exited")
    crashed = rig.wait_state("crash.container", "failed", sub_state="exited")
    assert "exited with code 3" in crashed["message"]
    ids = {n: rig.container(n)["Id"] for n in [*launched, "parked.container", "crash.container"]}  # type: ignore[index]

    rig.dockerd.restart()

    for n in launched:
        rig.wait_state(n, "active", sub_state="running")
        assert rig.running(n)["Id"] == ids[n]
    time.sleep(1.0)
    parked_now = rig.container("parked.container")
    assert parked_now is not None and parked_now["Id"] == ids["parked.container"]
    assert not parked_now["State"]["Running"]  # on-failure would have restarted it
    crash_now = rig.container("crash.container")
    assert crash_now is not None and crash_now["Id"] == ids["crash.container"]
    assert crash_now["State"]["ExitCode"] == 3 and not crash_now["State"]["Running"]
    assert rig.reported("crash.container")["active_state"] == "failed"  # type: ignore[index]
    assert rig.reported("parked.container")["active_state"] == "inactive"  # type: ignore[index]
    assert rig.agent.proc is not None and rig.agent.proc.alive()


def test_agent_killed_dockerd_restarted_coordinator_down(rig: Rig) -> None:
    """kill -9 the agent, restart dockerd, coordinator away: the persisted desired state
    brings the same containers back; a unit changed meanwhile is recreated."""
    rig.put("stay.container", sleeper("stay"))
    rig.put("change.container", sleeper("change-v1"))
    for n in ("stay.container", "change.container"):
        rig.wait_state(n, "active")
    stay = rig.running("stay.container")["Id"]
    change_v1 = rig.running("change.container")["Id"]

    assert rig.agent.proc is not None
    rig.agent.proc.kill9()
    rig.dockerd.restart()
    assert not rig.container("stay.container")["State"]["Running"]  # type: ignore[index]
    rig.agent_back()
    for n in ("stay.container", "change.container"):
        rig.wait_state(n, "active", sub_state="running")
    assert rig.running("stay.container")["Id"] == stay
    assert rig.running("change.container")["Id"] == change_v1

    # Now with the coordinator away too, and a change made before it went.
    rig.put("change.container", sleeper("change-v2"))
    wait_for(lambda: rig.running("change.container")["Id"] != change_v1, what="v2 created")
    change_v2 = rig.running("change.container")["Id"]
    rig.agent.proc.kill9()
    rig.coordinator.stop()
    rig.dockerd.restart()
    rig.agent.start()
    for n, cid in (("stay.container", stay), ("change.container", change_v2)):
        c = rig.running(n)
        assert c["Id"] == cid
    assert rig.coordinator.proc is not None and not rig.coordinator.proc.alive()


def test_containers_without_moorage_labels_are_never_touched(rig: Rig) -> None:
    api = rig.docker.api
    common = {"detach": True, "network_mode": "none"}
    bystander = rig.docker.containers.run(BUSYBOX_TAG, ["sleep", "300"], name="bystander", **common)
    # A container that has the name Moorage would give unit hand.container, but no label.
    squatter = rig.docker.containers.run(
        BUSYBOX_TAG, ["sleep", "300"], name=container_name("hand.container"), **common
    )
    started = {
        c.id: api.inspect_container(c.id)["State"]["StartedAt"] for c in (bystander, squatter)
    }

    rig.put("hand.container", sleeper("hand"))
    state = rig.wait_state("hand.container", "failed", load_state="error")
    assert "did not create" in state["message"]
    rig.put("mine.container", sleeper("mine"))
    rig.wait_state("mine.container", "active")
    rig.put("hand.container", sleeper("hand"), state="loaded")
    time.sleep(0.5)
    rig.coordinator.api("DELETE", "/moorage/v1/units/hand.container")
    assert rig.agent.proc is not None
    rig.agent.proc.kill9()
    rig.agent_back()
    rig.wait_state("mine.container", "active")
    time.sleep(1.0)
    for c in (bystander, squatter):
        attrs = api.inspect_container(c.id)
        assert attrs["State"]["Running"] and attrs["State"]["StartedAt"] == started[c.id]
        assert LABEL_UNIT not in (attrs["Config"]["Labels"] or {})


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("Imag=busybox", "Imag"),
        ("PublishPort=99999:80", "PublishPort"),
        ("Memory=lots", "Memory"),
        ("Volume=relative/path:/data", "Volume"),
        ("Environment=1BAD=x", "Environment"),
        ("HealthInterval=5 fortnights", "HealthInterval"),
        ("Label=moorage.unit=other", "Label"),
    ],
)
def test_invalid_container_options_are_refused_naming_the_key(
    tmp_path: Path, line: str, key: str
) -> None:
    coordinator = CoordinatorProc(tmp_path / "coordinator").start()
    try:
        options = [
            {"section": o.section, "name": o.name, "value": o.value}
            for o in parse_unit_file(f"[Container]\nImage={BUSYBOX_TAG}\n{line}\n")
        ]
        status, body = coordinator.raw(
            "PUT",
            "/moorage/v1/units/bad.container",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"options": options, "desired_state": "launched"}).encode(),
        )
        assert status == 400, body
        assert f"[Container] {key}" in body.decode(), body
        assert coordinator.api("GET", "/moorage/v1/units")["units"] == []
    finally:
        coordinator.stop()


def test_missing_image_is_a_reported_failure_not_a_crash_loop(rig: Rig) -> None:
    # A registry on this machine's closed port 1: pulling fails at once, without traffic out.
    image = "localhost:1/moorage-test/missing:1"
    rig.put("ghost.container", sleeper("ghost").replace(BUSYBOX_TAG, image))
    state = rig.wait_state("ghost.container", "failed")
    assert image in state["message"] and "pulling it failed" in state["message"]
    assert "localhost:1" in state["message"]
    rig.put("fine.container", sleeper("fine"))
    rig.wait_state("fine.container", "active")
    time.sleep(1.0)
    assert rig.agent.proc is not None and rig.agent.proc.alive()
    assert rig.agent.proc.log().count("pulling image localhost:1") <= 2
    assert rig.container("ghost.container") is None


def test_unhealthy_container_is_failed_and_exit_codes_are_reported(rig: Rig) -> None:
    rig.put(
        "sick.container",
        sleeper("sick", extra="HealthCmd=false\nHealthInterval=100ms\nHealthRetries=1\n"),
    )
    state = rig.wait_state("sick.container", "failed", sub_state="running")
    assert state["message"].startswith("unhealthy")
    assert rig.running("sick.container")["State"]["Health"]["Status"] == "unhealthy"
    rig.put("done.container", f"[Container]\nImage={BUSYBOX_TAG}\nExec=true\nNetwork=none\n")
    rig.wait_state("done.container", "inactive", sub_state="exited", load_state="loaded")


def test_container_logs_last_lines_follow_and_resume(rig: Rig) -> None:
    rig.put(
        "talker.container",
        f"[Container]\nImage={BUSYBOX_TAG}\nNetwork=none\nStopTimeout=1\n"
        "Exec=/bin/sh -c 'i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done'\n",
    )
    rig.wait_state("talker.container", "active")
    wait_for(lambda: len(_logs(rig, 20)) >= 5, what="5 lines logged")
    lines = _logs(rig, 3)
    assert len(lines) == 3 and all(line["cursor"] and line["timestamp"] > 0 for line in lines)
    ticks = [int(line["message"].split("-")[1]) for line in lines]
    assert ticks == list(range(ticks[0], ticks[0] + 3))

    resumed = rig.coordinator.api(
        "GET", f"/moorage/v1/units/talker.container/journal?cursor={quote(lines[0]['cursor'])}"
    )["lines"]
    after = [int(line["message"].split("-")[1]) for line in resumed]
    assert after[:2] == ticks[1:] and after == list(range(ticks[1], ticks[1] + len(after)))

    status, raw = rig.coordinator.raw_stream(
        "/moorage/v1/units/talker.container/journal?follow=1&lines=2", max_lines=6, timeout=15
    )
    assert status == 200
    followed = [json.loads(line) for line in raw]
    nums = [int(f["message"].split("-")[1]) for f in followed]
    assert len(nums) == 6 and nums == list(range(nums[0], nums[0] + 6))

    # Follow goes on across a restart of the container (stop, then start the same one).
    text = rig.coordinator.api("GET", "/moorage/v1/units/talker.container")
    options = text["options"]
    for state in ("loaded", "launched"):
        rig.coordinator.api(
            "PUT",
            "/moorage/v1/units/talker.container",
            {"options": options, "desired_state": state, "machines": ["m1"]},
        )
        rig.wait_state("talker.container", "inactive" if state == "loaded" else "active")
    status, raw = rig.coordinator.raw_stream(
        "/moorage/v1/units/talker.container/journal?follow=1&cursor="
        + quote(followed[-1]["cursor"]),
        max_lines=20,
        timeout=15,
    )
    nums = [int(json.loads(line)["message"].split("-")[1]) for line in raw]
    restart = nums.index(0)  # the restarted container's first line
    old_run, new_run = nums[:restart], nums[restart:]
    assert old_run == list(range(nums[0], nums[0] + len(old_run)))
    assert old_run[0] == int(followed[-1]["message"].split("-")[1]) + 1  # no gap, no repeat
    assert new_run == list(range(len(new_run))) and len(new_run) >= 2


def _logs(rig: Rig, n: int) -> list[dict[str, Any]]:
    return list(
        rig.coordinator.api("GET", f"/moorage/v1/units/talker.container/journal?lines={n}")["lines"]
    )


def test_agent_without_docker_reports_why(tmp_path: Path) -> None:
    coordinator = CoordinatorProc(tmp_path / "coordinator").start()
    agent = AgentProc(
        tmp_path,
        "nodock",
        coordinator,
        extra=["--systemd-scope", "user", "--unit-dir", str(tmp_path / "units")],
        env={
            "DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock",
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/no-such-bus",
        },
    )
    try:
        assert agent.enroll(coordinator.join_token()).returncode == 0
        agent.start()
        wait_for(lambda: "nodock" in coordinator.connected(), what="connected without docker")
        machine = next(m for m in coordinator.machines() if m["id"] == "nodock")
        assert "docker" not in machine["capabilities"]
        options = [
            {"section": "Container", "name": "Image", "value": BUSYBOX_TAG},
            {"section": "Container", "name": "Network", "value": "none"},
        ]
        coordinator.api(
            "PUT",
            "/moorage/v1/units/x.container",
            {"options": options, "desired_state": "launched", "machines": ["nodock"]},
        )
        state = wait_for(
            lambda: next(iter(coordinator.api("GET", "/moorage/v1/unit-states")["states"]), None),
            what="failed state reported",
        )
        assert state["active_state"] == "failed"
        assert "docker is not available on this machine" in state["message"]
        assert "no-such-docker.sock" in state["message"]
        status, body = coordinator.raw("GET", "/moorage/v1/units/x.container/journal?lines=5")
        assert status == 502 and b"docker is not available" in body
        time.sleep(1)
        assert agent.proc is not None and agent.proc.alive()
    finally:
        agent.stop()
        coordinator.stop()
