"""Drift, repair and version stickers end to end: a real coordinator, releases through
the Fleet Manager API (/api/v2), a real agent on a real systemd manager (and a real
dockerd for container units); drift is read back through /moorage/v1/drift."""

# ruff: noqa: F811  (pytest fixtures imported by name)
from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from proto.container import LABEL_UNIT, container_name
from proto.messages import Sticker
from tests.fmclient import FleetManager
from tests.harness.dockerd import BUSYBOX_TAG, Dockerd
from tests.harness.fixtures import dockerd, user_systemd  # noqa: F401
from tests.harness.systemd import UserSystemd
from tests.procs import MachineRig, wait_for

pytestmark = pytest.mark.integration

DETECT_S = 5.0
"""The promise: drift is visible through the API within 5 s of the change on the machine."""

SERVICE = """\
units:
  - name: web.service
    contents: |
      [Unit]
      Description=drift test {word}
      [Service]
      ExecStart=/bin/sleep 3600
rollout:
  batch_size: 1
  min_healthy_s: 1
  timeout_s: 60
"""

CONTAINER = f"""\
units:
  - name: db.container
    contents: |
      [Container]
      Image={BUSYBOX_TAG}
      Exec=/bin/sleep 3600
      Network=none
      StopTimeout=1
rollout:
  batch_size: 1
  min_healthy_s: 1
  timeout_s: 60
"""

REPAIR = "drift:\n  policy: repair\n"


class Rig(MachineRig):
    """A coordinator and agent m1 on the test's systemd manager (and dockerd), driven
    through /api/v2 with an API token, like a GitOps pipeline."""

    def __init__(self, tmp: Path, systemd: UserSystemd, daemon: Dockerd | None = None) -> None:
        self.systemd = systemd
        self.dockerd = daemon
        self.sticker_dir = tmp / "stickers-m1"
        self.image_id = daemon.import_busybox() if daemon is not None else ""
        env = systemd.agent_env()
        if daemon is not None:
            env["DOCKER_HOST"] = daemon.host
        super().__init__(
            tmp,
            extra=[
                *systemd.agent_flags(),
                "--sticker-dir",
                str(self.sticker_dir),
                "--drift-interval",
                "2",
            ],
            env=env,
        )
        self.fm = FleetManager(self.coordinator)

    # --- /api/v2 ------------------------------------------------------------------------

    def v2(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, value = self.fm.call(method, path, body, header="bearer")
        assert status == expect, (method, path, status, value)
        return value

    def deploy(self, manifest: str, name: str = "shop", version: str = "1") -> dict[str, Any]:
        """Create (or update) the application and its deployment, deploy, wait for Success;
        the release as GET /api/v2/deployments/{id}/releases shows it."""
        apps = {a["name"]: a for a in self.v2("GET", "/deployment-applications?limit=200")["items"]}
        body = {"name": name, "version": version, "sourceConfig": manifest, "sourceType": "git"}
        if name in apps:
            app = self.v2("PUT", f"/deployment-applications/{apps[name]['id']}", body)
        else:
            app = self.v2("POST", "/deployment-applications", body, expect=201)
        groups = self.v2("GET", "/cluster-groups?limit=200")["items"]
        group = next(g for g in groups if g["name"] == "default")
        dep = self.v2(
            "POST",
            "/deployments",
            {"name": name, "applicationId": app["id"], "clusterGroupId": group["id"]},
            expect=201,
        )
        release = self.v2("POST", f"/deployments/{dep['id']}/deploy", expect=201)

        def done() -> Any:
            releases = self.v2("GET", f"/deployments/{dep['id']}/releases")
            last = releases[-1] if releases else None
            assert last is None or last["status"] != "Failed", last
            return (
                last
                if last and last["id"] == release["id"] and last["status"] == "Success"
                else None
            )

        return dict(wait_for(done, 60, interval=0.2, what="release Success"))

    # --- what the machine reports -------------------------------------------------------

    def drift(self, refresh: bool = False) -> list[dict[str, Any]]:
        body = self.coordinator.api(
            "GET", "/moorage/v1/drift?machine=m1" + ("&refresh=1" if refresh else "")
        )
        return list(body["machines"][0]["entries"]) if body["machines"] else []

    def wait_drift(
        self, check: Callable[[list[dict[str, Any]]], Any], what: str, timeout: float = DETECT_S
    ) -> tuple[Any, float]:
        """Poll GET /moorage/v1/drift (no refresh) until ``check`` holds; (value, seconds)."""
        started = time.monotonic()
        value = wait_for(lambda: check(self.drift()), timeout, interval=0.1, what=what)
        return value, time.monotonic() - started

    def sticker_file(self, deployment: str = "shop") -> Path:
        return self.sticker_dir / f"{deployment}.json"

    def reported_stickers(self) -> list[dict[str, Any]]:
        return list(self.coordinator.api("GET", "/moorage/v1/stickers?machine=m1")["stickers"])

    def moorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.coordinator.moorctl(*args, timeout=60)

    # --- the machine --------------------------------------------------------------------

    def unit_file(self, name: str = "web.service") -> Path:
        return self.systemd.unit_dir / name

    def main_pid(self, name: str = "web.service") -> int:
        return int(self.systemd.unit_property(name, "MainPID"))

    @functools.cached_property
    def docker(self) -> Any:
        assert self.dockerd is not None
        return self.dockerd.client()

    def container(self, unit: str = "db.container") -> dict[str, Any] | None:
        import docker

        try:
            return dict(self.docker.api.inspect_container(container_name(unit)))
        except docker.errors.NotFound:
            return None

    def agent_log(self) -> str:
        assert self.agent.proc is not None
        return self.agent.proc.log()


def entry(kind: str, unit: str) -> Callable[[list[dict[str, Any]]], dict[str, Any] | None]:
    return lambda entries: next(
        (e for e in entries if (e["kind"], e["unit"]) == (kind, unit)), None
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def rig(tmp_path: Path, user_systemd: UserSystemd) -> Iterator[Rig]:
    r = Rig(tmp_path, user_systemd)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def drig(tmp_path: Path, user_systemd: UserSystemd, dockerd: Dockerd) -> Iterator[Rig]:
    r = Rig(tmp_path, user_systemd, dockerd)
    try:
        yield r
    finally:
        r.close()


# --- systemd units ----------------------------------------------------------------------


def test_edited_and_stopped_units_are_reported_within_5s_and_left_alone(rig: Rig) -> None:
    release = rig.deploy(SERVICE.format(word="v1"))
    (unit,) = release["units"]
    on_disk = rig.unit_file().read_bytes()
    assert sha256(on_disk) == unit["sha256"]
    wait_for(lambda: rig.drift(refresh=True) == [], 10, what="no drift after the rollout")
    assert rig.moorctl("drift", "m1").stdout.startswith("no drift on 1 machine(s)")

    # An operator edits the managed unit file on the host.
    edited = on_disk + b"# edited by hand\n"
    rig.unit_file().write_bytes(edited)
    found, took = rig.wait_drift(entry("file_changed", "web.service"), "file_changed")
    assert took < DETECT_S
    assert (found["expected"], found["actual"]) == (unit["sha256"], sha256(edited))
    assert found["deployment"] == "shop" and not found.get("repairing", False)
    out = rig.moorctl("drift")
    assert out.returncode == 0 and "file_changed" in out.stdout and "web.service" in out.stdout
    as_json = json.loads(rig.moorctl("--json", "drift", "m1").stdout)
    assert as_json["machines"][0]["entries"][0]["kind"] == "file_changed"
    time.sleep(3)  # report policy: the edit stays
    assert rig.unit_file().read_bytes() == edited
    rig.unit_file().write_bytes(on_disk)
    rig.wait_drift(lambda entries: entries == [], "the edit undone: no drift")

    # Somebody stops the unit by hand.
    rig.systemd.systemctl("stop", "web.service", check=True)
    found, took = rig.wait_drift(entry("state_differs", "web.service"), "state_differs")
    assert took < DETECT_S
    assert (found["expected"], found["actual"]) == ("active", "inactive")
    assert not found.get("repairing", False)
    time.sleep(3)  # nothing is restarted behind the operator's back
    assert rig.systemd.unit_property("web.service", "ActiveState") == "inactive"
    assert entry("state_differs", "web.service")(rig.drift(refresh=True))
    assert rig.moorctl("drift", "--refresh").returncode == 0
    # Each change of what the machine reports is a domain event, in the audit log.
    events = rig.coordinator.api("GET", "/moorage/v1/audit?event=drift.&limit=1000")["entries"]
    kinds = [(e["event"], e["subject"]) for e in reversed(events)]
    assert kinds[-3:] == [  # (a rollout under way may show a moment of drift before)
        ("drift.detected", "m1"),
        ("drift.resolved", "m1"),
        ("drift.detected", "m1"),
    ], kinds
    assert "web.service" in events[0]["data"]["units"]


def test_repair_policy_restores_edited_and_stopped_units(rig: Rig) -> None:
    release = rig.deploy(SERVICE.format(word="v1") + REPAIR)
    (unit,) = release["units"]
    original = rig.unit_file().read_bytes()
    pid = rig.main_pid()
    assert pid > 0

    rig.unit_file().write_text(original.decode().replace("sleep 3600", "sleep 7200"))
    started = time.monotonic()
    wait_for(
        lambda: sha256(rig.unit_file().read_bytes()) == unit["sha256"],
        DETECT_S,
        interval=0.05,
        what="the edited file rewritten",
    )
    assert time.monotonic() - started < DETECT_S
    wait_for(lambda: rig.main_pid() not in (0, pid), 10, what="restarted on the released file")
    assert "sleep 3600" in rig.systemd.unit_property("web.service", "ExecStart")
    assert "web.service file_changed (repairing)" in rig.agent_log()
    rig.wait_drift(lambda entries: entries == [], "repaired: no drift", timeout=10)

    pid = rig.main_pid()
    rig.systemd.systemctl("stop", "web.service", check=True)
    started = time.monotonic()
    wait_for(
        lambda: rig.systemd.unit_property("web.service", "ActiveState") == "active",
        DETECT_S,
        interval=0.05,
        what="started again",
    )
    assert time.monotonic() - started < DETECT_S and rig.main_pid() != pid
    rig.wait_drift(lambda entries: entries == [], "repaired: no drift", timeout=10)


def test_sticker_matches_the_release_and_survives_an_agent_restart(rig: Rig) -> None:
    release = rig.deploy(SERVICE.format(word="v1"), version="1.0")
    (unit,) = release["units"]
    path = wait_for(lambda: rig.sticker_file().exists() and rig.sticker_file(), 10, what="sticker")
    raw = path.read_bytes()
    sticker = msgspec.json.decode(raw, type=Sticker)
    assert (sticker.deployment, sticker.release, sticker.version) == ("shop", release["id"], "1.0")
    assert {n: (u.hash, u.sha256) for n, u in sticker.units.items()} == {
        "web.service": (unit["hash"], unit["sha256"])
    }
    assert sticker.image_digests == {} and sticker.applied_at > 0
    reported = wait_for(rig.reported_stickers, 10, what="sticker reported")
    assert reported[0]["sticker"] == msgspec.to_builtins(sticker)
    before = path.stat()

    assert rig.agent.proc is not None and rig.agent.proc.stop() == 0
    assert path.read_bytes() == raw
    rig.agent.start()
    wait_for(lambda: "m1" in rig.coordinator.connected(), what="agent back")
    time.sleep(2.5)  # a pass or two: nothing to rewrite
    after = path.stat()
    assert path.read_bytes() == raw
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    again = wait_for(
        lambda: [
            r for r in rig.reported_stickers() if r["reported_at"] > reported[0]["reported_at"]
        ],
        10,
        what="sticker reported again after the restart",
    )
    assert again[0]["sticker"] == msgspec.to_builtins(sticker)
    assert rig.moorctl("stickers").stdout.count("shop") == 1


def test_sticker_is_replaced_whole_on_a_new_release(rig: Rig) -> None:
    first = rig.deploy(SERVICE.format(word="v1"), version="1")
    path = rig.sticker_file()
    wait_for(lambda: path.exists(), 10, what="first sticker")
    inode = path.stat().st_ino
    seen: set[str] = set()
    problems: list[str] = []
    names: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            names.update(p.name for p in rig.sticker_dir.iterdir())
            try:
                seen.add(msgspec.json.decode(path.read_bytes(), type=Sticker).release)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                problems.append(str(exc))
            except FileNotFoundError:
                problems.append("the sticker vanished")
            time.sleep(0.001)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        second = rig.deploy(SERVICE.format(word="v2"), version="2")
        wait_for(
            lambda: msgspec.json.decode(path.read_bytes(), type=Sticker).release == second["id"],
            10,
            what="second sticker",
        )
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert seen == {first["id"], second["id"]}
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    # only the sticker and (for an instant) the writer's temp file: never another name
    assert all(
        n == "shop.json" or (n.startswith(".shop.json.") and n.endswith(".tmp")) for n in names
    )
    assert [p.name for p in rig.sticker_dir.iterdir()] == ["shop.json"]
    (stored,) = rig.reported_stickers()
    assert stored["sticker"]["release"] == second["id"] and stored["sticker"]["version"] == "2"


def test_drift_api_errors(rig: Rig) -> None:
    status, body = rig.coordinator.raw("GET", "/moorage/v1/drift?machine=nope")
    assert status == 404 and "nope" in json.loads(body)["error"]["message"]
    status, _ = rig.coordinator.raw("GET", "/moorage/v1/stickers?machine=nope")
    assert status == 404
    assert rig.agent.proc is not None
    rig.agent.proc.stop()
    wait_for(lambda: "m1" not in rig.coordinator.connected(), what="agent gone")
    status, body = rig.coordinator.raw("GET", "/moorage/v1/drift?machine=m1&refresh=1")
    assert status == 503 and "not connected" in json.loads(body)["error"]["message"]
    status, _ = rig.coordinator.raw("GET", "/moorage/v1/drift?refresh=1")
    assert status == 200  # all machines: the ones connected are asked, none here


# --- container units ------------------------------------------------------------------------


def other_image(rig: Rig) -> str:
    """A second local image (busybox plus one file), so its ID differs."""
    made = rig.docker.containers.run(
        BUSYBOX_TAG, ["/bin/touch", "/marker"], network_mode="none", detach=True
    )
    made.wait()
    image = made.commit("moorage-test/other", "2")
    made.remove()
    return str(image.id)


def replace_by_hand(rig: Rig, image: str) -> None:
    """What an operator might do: same name, labels copied, another image."""
    old = rig.container()
    assert old is not None
    labels = old["Config"]["Labels"]
    rig.docker.api.remove_container(old["Id"], force=True)
    rig.docker.containers.run(
        image,
        ["/bin/sleep", "3600"],
        name=container_name("db.container"),
        labels=labels,
        network_mode="none",
        stop_signal="SIGKILL",  # sleep as PID 1 ignores SIGTERM: no 10 s stop
        detach=True,
    )


def test_container_release_is_pinned_to_the_image_id_and_drift_is_reported(drig: Rig) -> None:
    release = drig.deploy(CONTAINER)
    (unit,) = release["units"]
    # a local, imported image has no RepoDigests: it is pinned to its ID, and docker
    # create accepts that ID as the container's image reference
    assert unit["image"] == BUSYBOX_TAG and unit["imageDigest"] == drig.image_id
    c = drig.container()
    assert c is not None and c["State"]["Running"]
    assert c["Config"]["Image"] == drig.image_id == c["Image"]
    path = wait_for(
        lambda: drig.sticker_file().exists() and drig.sticker_file(), 10, what="sticker"
    )
    sticker = msgspec.json.decode(path.read_bytes(), type=Sticker)
    assert sticker.image_digests == {"db.container": drig.image_id}
    assert sticker.units["db.container"].sha256 == unit["sha256"]
    wait_for(lambda: drig.drift(refresh=True) == [], 10, what="no drift")

    other = other_image(drig)
    started = time.monotonic()
    replace_by_hand(drig, other)
    found, _ = drig.wait_drift(entry("image_differs", "db.container"), "image_differs")
    assert time.monotonic() - started < DETECT_S
    assert (found["expected"], found["actual"]) == (drig.image_id, other)
    assert not found.get("repairing", False)
    time.sleep(3)  # report policy: the operator's container stays
    c = drig.container()
    assert c is not None and c["Image"] == other and c["State"]["Running"]

    drig.docker.api.remove_container(c["Id"], force=True)
    drig.wait_drift(entry("missing", "db.container"), "missing")

    made = drig.docker.containers.run(
        BUSYBOX_TAG,
        ["/bin/sleep", "3600"],
        name="stray",
        labels={LABEL_UNIT: "stray.container"},
        network_mode="none",
        detach=True,
    )
    found, _ = drig.wait_drift(entry("extra", "stray.container"), "extra")
    assert found["actual"] == "container"
    made.remove(force=True)
    drig.wait_drift(lambda entries: not entry("extra", "stray.container")(entries), "extra gone")


def test_repair_policy_recreates_a_container_of_another_image(drig: Rig) -> None:
    drig.deploy(CONTAINER + REPAIR)
    first = drig.container()
    assert first is not None
    other = other_image(drig)
    replace_by_hand(drig, other)
    started = time.monotonic()

    def restored() -> dict[str, Any] | None:
        c = drig.container()
        ok = c is not None and c["Image"] == drig.image_id and c["State"]["Running"]
        return c if ok else None

    back = wait_for(restored, DETECT_S + 5, interval=0.1, what="recreated on the pinned image")
    assert time.monotonic() - started < DETECT_S + 5
    assert back["Id"] != first["Id"]
    drig.wait_drift(lambda entries: entries == [], "repaired: no drift", timeout=10)
    # what the agent saw first depends on how fast the operator's two steps were
    assert re.search(r"drift: .*db\.container \w+ \(repairing\)", drig.agent_log())

    drig.docker.api.stop(back["Id"], timeout=1)  # stopped by hand: started again
    wait_for(
        lambda: (
            (c := drig.container()) is not None and c["State"]["Running"] and c["Id"] == back["Id"]
        ),
        DETECT_S + 5,
        interval=0.1,
        what="started again",
    )
    drig.docker.api.remove_container(back["Id"], force=True)  # removed by hand: recreated
    wait_for(restored, DETECT_S + 5, interval=0.1, what="recreated after removal")


def test_image_that_cannot_be_resolved_fails_the_deploy_with_dockers_reason(drig: Rig) -> None:
    manifest = CONTAINER.replace(BUSYBOX_TAG, "moorage-test/absent:9")
    apps = drig.v2(
        "POST", "/deployment-applications", {"name": "bad", "sourceConfig": manifest}, expect=201
    )
    groups = drig.v2("GET", "/cluster-groups?limit=200")["items"]
    group = next(g for g in groups if g["name"] == "default")
    dep = drig.v2(
        "POST",
        "/deployments",
        {"name": "bad", "applicationId": apps["id"], "clusterGroupId": group["id"]},
        expect=201,
    )
    status, body = drig.fm.call("POST", f"/deployments/{dep['id']}/deploy", header="bearer")
    assert status == 400, body
    assert "moorage-test/absent:9" in body["message"] and "pull" in body["message"]


def test_a_rollout_waits_for_health_checks_and_fails_on_unhealthy(drig: Rig) -> None:
    """`active and healthy`: a container is not up until its health check first passes;
    one that turns unhealthy fails its machine's job."""
    slow = CONTAINER.replace(
        "Exec=/bin/sleep 3600",
        "Exec=/bin/sh -c 'sleep 3; touch /tmp/ready; exec sleep 3600'\n"
        "      HealthCmd=test -e /tmp/ready\n      HealthInterval=500ms\n      HealthRetries=100",
    )
    started = time.monotonic()
    release = drig.deploy(slow, name="slow")
    assert time.monotonic() - started >= 3  # not before the check passed
    assert release["status"] == "Success"

    sick = CONTAINER.replace("db.container", "sick.container").replace(
        "Exec=/bin/sleep 3600",
        "Exec=/bin/sleep 3600\n      HealthCmd=false\n      HealthInterval=500ms\n      HealthRetries=1",
    )
    app = drig.v2(
        "POST", "/deployment-applications", {"name": "sick", "sourceConfig": sick}, expect=201
    )
    dep = drig.v2(
        "POST",
        "/deployments",
        {"applicationId": app["id"], "clusterGroupId": "default"},
        expect=201,
    )
    drig.v2("POST", f"/deployments/{dep['id']}/deploy", expect=201)

    def failed() -> Any:
        last = drig.v2("GET", f"/deployments/{dep['id']}/releases")[-1]
        return last if last["status"] == "Failed" else None

    last = wait_for(failed, 60, interval=0.2, what="unhealthy release Failed")
    assert "sick.container failed: unhealthy" in last["message"]
