"""The harness itself: real systemd --user, journald and dockerd start, work and go away."""

# The fixtures are imported so pytest registers them without a conftest; the test
# parameters then shadow those imports, which is how pytest fixtures work.
# ruff: noqa: F811

from __future__ import annotations

import glob
import time
from pathlib import Path

import pytest

from tests.harness.dockerd import BUSYBOX_TAG, Dockerd, dockerd_available
from tests.harness.fixtures import (  # noqa: F401
    dockerd,
    dockerd_session,
    user_systemd,
    user_systemd_session,
)
from tests.harness.systemd import (
    HarnessError,
    UserSystemd,
    cgroup_dirs,
    pid_alive,
    systemd_available,
)

pytestmark = pytest.mark.integration

HELLO_UNIT = """\
[Unit]
Description=harness smoke test

[Service]
ExecStart=/bin/sh -c 'echo hello-from-unit; sleep 30'
"""


def _cgroup_paths(pid: int) -> dict[str, str]:
    """Hierarchy -> path from /proc/<pid>/cgroup ("" for the cgroup2 line)."""
    paths: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        paths[controllers] = path
    return paths


def _leftover_cgroups(name: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/{name}") + glob.glob(f"/sys/fs/cgroup/*/{name}/**")


def _skip_unless(reason: str | None) -> None:
    if reason is not None:
        pytest.skip(reason)


# --------------------------------------------------------------------------- systemd


def test_unit_runs_and_logs_to_journal(user_systemd: UserSystemd) -> None:
    (user_systemd.unit_dir / "hello.service").write_text(HELLO_UNIT)
    user_systemd.systemctl("daemon-reload", check=True)
    user_systemd.systemctl("start", "hello.service", check=True)
    try:
        assert user_systemd.unit_property("hello.service", "ActiveState") == "active"
        lines = user_systemd.wait_journal_line("hello.service", "hello-from-unit", timeout=5)
        assert "hello-from-unit" in lines
    finally:
        user_systemd.systemctl("stop", "hello.service", check=True)
    assert user_systemd.unit_property("hello.service", "ActiveState") == "inactive"


def test_manager_and_journald_are_not_in_the_root_cgroup(user_systemd: UserSystemd) -> None:
    name = user_systemd.cgroup_name
    manager = _cgroup_paths(user_systemd.pid)
    assert manager["name=systemd"].startswith(f"/{name}/user@0.service"), manager
    assert manager[""].startswith(f"/{name}/user@0.service"), manager
    journald_pid = user_systemd.journald_pid
    assert journald_pid is not None
    journald = _cgroup_paths(journald_pid)
    assert journald["name=systemd"] == f"/{name}/journald", journald
    # The machine was left alone: PID 1 and this test process did not move.
    assert _cgroup_paths(1)["name=systemd"] == "/"
    assert not _cgroup_paths(1)[""].startswith(f"/{name}")


def test_teardown_removes_processes_cgroups_and_files() -> None:
    _skip_unless(systemd_available())
    manager = UserSystemd()
    with manager:
        pid, journald_pid = manager.pid, manager.journald_pid
        assert journald_pid is not None
        (manager.unit_dir / "hello.service").write_text(HELLO_UNIT)
        manager.systemctl("daemon-reload", check=True)
        manager.systemctl("start", "hello.service", check=True)
        unit_pid = int(manager.unit_property("hello.service", "MainPID"))
        assert pid_alive(pid) and pid_alive(journald_pid) and pid_alive(unit_pid)
        assert cgroup_dirs(manager.cgroup_name)
    assert not pid_alive(pid)
    assert not pid_alive(journald_pid)
    assert not pid_alive(unit_pid)
    assert _leftover_cgroups(manager.cgroup_name) == []
    assert not manager.root.exists()
    manager.stop()  # idempotent


def test_start_failure_raises_with_log_and_cleans_up() -> None:
    _skip_unless(systemd_available())
    manager = UserSystemd(systemd_binary="/bin/false", start_timeout=10)
    with pytest.raises(HarnessError, match=r"exited with 1 before it was ready") as info:
        manager.start()
    assert str(manager.root / "systemd.log") in str(info.value)
    assert _leftover_cgroups(manager.cgroup_name) == []
    assert not manager.root.exists()
    journald_pid = manager.journald_pid  # read before the pid file went away
    assert journald_pid is None or not pid_alive(journald_pid)


def test_start_timeout_mid_start_cleans_up() -> None:
    _skip_unless(systemd_available())
    manager = UserSystemd(start_timeout=0.01)
    with pytest.raises(HarnessError, match="not running after"):
        manager.start()
    assert not pid_alive(manager.pid)
    assert _leftover_cgroups(manager.cgroup_name) == []
    assert not manager.root.exists()


def test_short_lived_unit_found_by_syslog_identifier(user_systemd: UserSystemd) -> None:
    (user_systemd.unit_dir / "quick.service").write_text(
        "[Service]\nType=oneshot\nSyslogIdentifier=quick\nExecStart=/bin/echo quick-line\n"
    )
    user_systemd.systemctl("daemon-reload", check=True)
    for _ in range(3):
        user_systemd.systemctl("start", "quick.service", check=True)
    deadline = time.monotonic() + 5
    while True:
        lines = user_systemd.journal_lines("quick.service", identifier="quick")
        if lines.count("quick-line") == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines.count("quick-line") == 3, lines


# --------------------------------------------------------------------------- dockerd


def test_container_survives_dockerd_restart(dockerd: Dockerd) -> None:
    image_id = dockerd.import_busybox()
    assert image_id.startswith("sha256:")
    client = dockerd.client()
    image = client.images.get(BUSYBOX_TAG)
    assert image.id == image_id
    assert not image.attrs.get("RepoDigests")  # imported: the digest to report is the ID

    common = {"detach": True, "network_mode": "none", "init": True}
    plain = client.containers.run(BUSYBOX_TAG, ["sleep", "30"], name="plain", **common)
    always = client.containers.run(
        BUSYBOX_TAG,
        ["sleep", "30"],
        name="always",
        restart_policy={"Name": "always"},
        **common,
    )
    for container in (plain, always):
        container.reload()
        assert container.status == "running"

    old_pid = dockerd.pid
    dockerd.restart()
    assert dockerd.pid != old_pid

    client = dockerd.client()
    plain_after = client.containers.get(plain.id)
    always_after = client.containers.get(always.id)
    assert (plain_after.id, always_after.id) == (plain.id, always.id)
    # dockerd (no live-restore) stops every container when it stops; on start it restarts
    # only those with a restart policy.
    assert always_after.status == "running"
    assert plain_after.status == "exited"
    plain_after.start()
    plain_after.reload()
    assert plain_after.status == "running"


def test_dockerd_teardown_leaves_nothing() -> None:
    _skip_unless(dockerd_available())
    daemon = Dockerd()
    with daemon:
        daemon.import_busybox()
        client = daemon.client()
        container = client.containers.run(
            BUSYBOX_TAG, ["sleep", "30"], detach=True, network_mode="none"
        )
        container.reload()
        assert container.status == "running"
        container_pid = int(container.attrs["State"]["Pid"])
        dockerd_pid = daemon.pid
        assert _leftover_cgroups(daemon.cgroup_parent)
    assert not pid_alive(dockerd_pid)
    assert not pid_alive(container_pid)
    assert _leftover_cgroups(daemon.cgroup_parent) == []
    assert not daemon.root.exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(daemon.root) not in mounts
    daemon.stop()  # idempotent


def test_dockerd_start_failure_raises_with_log() -> None:
    _skip_unless(dockerd_available())
    daemon = Dockerd(extra_args=["--no-such-flag"], start_timeout=10)
    with pytest.raises(HarnessError, match="dockerd exited") as info:
        daemon.start()
    assert "no-such-flag" in str(info.value)
    assert not daemon.root.exists()


# --------------------------------------------------------------------------- session scope


def test_session_fixtures_work(user_systemd_session: UserSystemd, dockerd_session: Dockerd) -> None:
    state = user_systemd_session.systemctl("show", "-p", "SystemState", "--value")
    assert state.stdout.strip() == "running"
    started = time.monotonic()
    assert dockerd_session.client().ping()
    assert time.monotonic() - started < 5
