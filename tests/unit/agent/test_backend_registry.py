"""One registry picks each unit's backend by its suffix; both backends speak one protocol."""

from __future__ import annotations

from pathlib import Path

from agent.backends.base import Backend, Observed, Registry, UnitRuntime, unit_kind
from agent.backends.docker import DockerBackend
from agent.backends.systemd import SystemdBackend
from agent.reconciler import file_content, plan, sha256_text
from agent.store import AppliedUnit
from proto.messages import DesiredUnit
from proto.units import UnitOption, unit_hash


def registry(tmp_path: Path) -> tuple[Registry, SystemdBackend, DockerBackend]:
    systemd = SystemdBackend(scope="user", bus_address="unix:path=/nonexistent", unit_dir=tmp_path)
    docker = DockerBackend(docker_host="unix:///nonexistent.sock")
    backends: list[Backend] = [systemd, docker]  # both satisfy the protocol (mypy checks)
    return Registry(backends), systemd, docker


def test_units_go_to_the_backend_of_their_suffix(tmp_path: Path) -> None:
    reg, systemd, docker = registry(tmp_path)
    assert reg.of("web.service") is systemd and reg.of("web@1.socket") is systemd
    assert reg.of("cache.container") is docker
    assert reg.of("odd.name") is systemd  # no known type: systemd, as before
    assert unit_kind("cache.container") == "docker"
    assert reg.split(["a.service", "b.container", "c.timer"]) == {
        "systemd": {"a.service", "c.timer"},
        "docker": {"b.container"},
    }
    assert [b.kind for b in reg] == ["systemd", "docker"]
    assert systemd.owns("a.service") and not systemd.owns("b.container")
    assert docker.owns("b.container") and not docker.owns("a.service")


def test_only_the_docker_backend_resolves_images(tmp_path: Path) -> None:
    reg, _, docker = registry(tmp_path)
    assert reg.images() is docker
    assert Registry([reg.of("a.service")]).images() is None


def test_unconnected_backends_say_why(tmp_path: Path) -> None:
    _, systemd, docker = registry(tmp_path)
    assert not systemd.available and systemd.unavailable_reason == "not connected yet"
    assert not docker.available and docker.unavailable_reason == "not connected yet"


def test_repairing_one_kind_is_repairing_its_units_alone() -> None:
    """What a backend that came back by itself gets: its stopped units started, not others'."""
    c_opts = [UnitOption("Container", "Image", "busybox")]
    s_opts = [UnitOption("Service", "ExecStart", "/bin/sleep 100")]
    c = DesiredUnit(
        name="c.container", options=c_opts, desired_state="launched", hash=unit_hash(c_opts)
    )
    s = DesiredUnit(
        name="s.service", options=s_opts, desired_state="launched", hash=unit_hash(s_opts)
    )
    applied = {
        c.name: AppliedUnit(c.hash, "launched", ""),
        s.name: AppliedUnit(s.hash, "launched", sha256_text(file_content(s))),
    }
    stopped = {
        c.name: Observed(None, UnitRuntime(c.name, "loaded", "inactive", "exited"), c.hash),
        s.name: Observed(sha256_text(file_content(s)), UnitRuntime(s.name, "loaded", "inactive")),
    }
    desired = {c.name: c, s.name: s}
    assert plan(desired, applied, stopped, repair=False).steps == []
    by_kind = plan(desired, applied, stopped, repair=False, repair_kinds={"docker"})
    assert [(st.op, st.unit) for st in by_kind.steps] == [("start", "c.container")]
    assert by_kind == plan(desired, applied, stopped, repair=False, repair_containers=True)
