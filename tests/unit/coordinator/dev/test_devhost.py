"""`moorage dev`'s choices on plain values: which systemd manager and Docker Engine the
local agent drives, what the banner says, and the agent's state-directory lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.statelock import StateDirBusy, lock_state_dir
from coordinator.dev import agent_runtime, resume_command, runs_line
from coordinator.devhost import (
    HostFacts,
    PrivateSystemd,
    Started,
    plan_runtimes,
    unix_socket_path,
)


def facts(**changes: object) -> HostFacts:
    """This CI machine: root, PID 1 not systemd, no user bus, no dockerd running."""
    base: dict[str, object] = {
        "root": True,
        "system_manager": False,
        "user_manager": False,
        "private_systemd": None,
        "docker": "",
        "private_docker": None,
    }
    return HostFacts(**{**base, **changes})  # type: ignore[arg-type]


def test_nothing_running_as_root_starts_both_privately() -> None:
    plan = plan_runtimes(facts(), None, True)
    assert (plan.scope, plan.private_systemd, plan.private_docker) == ("user", True, True)
    assert plan.notes == ()


def test_a_host_that_has_them_is_used() -> None:
    plan = plan_runtimes(
        facts(system_manager=True, docker="unix:///var/run/docker.sock"), None, True
    )
    assert (plan.scope, plan.private_systemd, plan.private_docker) == ("system", False, False)
    assert plan.docker_host == "unix:///var/run/docker.sock"
    user = plan_runtimes(facts(root=False, user_manager=True, private_systemd="x"), None, True)
    assert (user.scope, user.private_systemd) == ("user", False)


def test_an_asked_scope_that_does_not_answer_falls_back_to_a_private_manager() -> None:
    plan = plan_runtimes(facts(), "system", True)
    assert (plan.scope, plan.private_systemd) == ("user", True)


def test_what_cannot_be_had_is_one_line_saying_what_to_do() -> None:
    plan = plan_runtimes(
        facts(root=False, private_systemd="needs root", private_docker="needs root"), None, True
    )
    assert not plan.private_systemd and not plan.private_docker
    assert len(plan.notes) == 2 and all("\n" not in n for n in plan.notes)
    assert "run 'moorage dev' as root" in plan.notes[0]
    assert "start dockerd" in plan.notes[1]
    missing = plan_runtimes(
        facts(
            private_systemd="/lib/systemd/systemd missing (apt install systemd)",
            private_docker="dockerd missing (apt install docker.io)",
        ),
        None,
        True,
    )
    assert "apt install systemd" in missing.notes[0]
    assert "apt install docker.io" in missing.notes[1]
    never = plan_runtimes(facts(), None, False)
    assert not never.private_systemd and len(never.notes) == 2


def test_the_agent_is_pointed_at_the_private_runtimes_and_the_banner_says_so() -> None:
    plan = plan_runtimes(facts(), None, True)
    manager = PrivateSystemd(Path("/t"), Path("/s"), "moorage-dev-1-0")
    started = Started(systemd_flags=manager.agent_flags(), docker_host="unix:///t/docker.sock")
    runtime = agent_runtime(plan, started)
    assert runtime.flags == [
        "--systemd-scope", "user",
        "--bus-address", "unix:path=/t/run/bus",
        "--unit-dir", "/s/.config/systemd/user",
        "--journal-dir", "/t/runlog/journal",
        "--docker-host", "unix:///t/docker.sock",
    ]  # fmt: skip
    assert runs_line(["systemd", "docker"], runtime) == (
        "systemd units (private systemd --user manager), containers (private dockerd)"
    )
    failed = agent_runtime(plan, Started(errors=["the private dockerd did not start: boom"]))
    assert failed.notes == ["the private dockerd did not start: boom"]
    assert runs_line([], failed) == "nothing: neither systemd nor Docker is reachable"


def test_the_resume_hint_is_the_command_that_was_run() -> None:
    argv = ["/repo/.venv/bin/moorage", "dev", "--state-dir", "/a b"]
    assert resume_command("./run", argv) == "./run dev --state-dir '/a b'"
    assert resume_command("", argv) == "moorage dev --state-dir '/a b'"


def test_unix_socket_paths_of_dbus_and_docker_addresses() -> None:
    assert unix_socket_path("unix:path=/run/user/0/bus") == "/run/user/0/bus"
    assert unix_socket_path("unix:path=/x/bus,guid=abc") == "/x/bus"
    assert unix_socket_path("unix:///var/run/docker.sock") == "/var/run/docker.sock"
    assert unix_socket_path("tcp://1.2.3.4:2375") == ""


def test_a_second_lock_on_a_state_directory_names_the_holder(tmp_path: Path) -> None:
    fd = lock_state_dir(tmp_path / "agent")
    try:
        with pytest.raises(StateDirBusy) as info:
            lock_state_dir(tmp_path / "agent")
        assert str(info.value) == (
            f"another agent (pid {os.getpid()}) is running on state directory {tmp_path / 'agent'}"
        )
    finally:
        os.close(fd)
    os.close(lock_state_dir(tmp_path / "agent"))  # released with its holder
