"""`moorage dev` as a newcomer runs it: one command, Ctrl-C, and a resume; on a machine
like CI's (PID 1 not systemd, no dockerd running, no session bus) with the private
systemd manager and dockerd it starts, which die with it however it dies."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from coordinator.devhost import (
    cgroup_dirs,
    cgroup_pids,
    dockerd_unavailable,
    pid_alive,
    pids_mentioning,
    systemd_unavailable,
)
from tests.harness.dockerd import BUSYBOX_TAG, import_busybox
from tests.procs import ROOT, wait_for

pytestmark = pytest.mark.integration


HELLO = """\
[Service]
ExecStart=/bin/sh -c 'while true; do echo hello; sleep 5; done'
"""
TICK = f"""\
[Container]
Image={BUSYBOX_TAG}
Exec=/bin/sh -c 'while true; do echo tick; sleep 1; done'
Network=none
"""
# The host's session bus and engine, if any, are hidden: the machine CI runs on has none.
HOST_RUNTIME_VARS = ("DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "DOCKER_HOST")


def start_dev(state: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator.dev",
            "dev",
            "--state-dir",
            str(state),
            "--api-port",
            "0",
            "--hub-port",
            "0",
            *extra,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in HOST_RUNTIME_VARS},
        start_new_session=True,
    )


def wait_banner(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "again to resume." in text:
            return text
        assert proc.poll() is None, f"moorage dev exited early:\n{text}"
        time.sleep(0.1)
    raise AssertionError(f"no banner within {timeout} s:\n{log.read_text()}")


def moorctl(state: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moorctl", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def interrupt(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> list[int]:
    """Ctrl-C as a terminal sends it (or `sig`: SIGHUP when the terminal goes away);
    returns the PIDs of children that were running."""
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(sig)
    assert proc.wait(30) == 0
    return children


def test_dev_starts_lists_stops_and_resumes(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    log = tmp_path / "dev-1.log"
    proc = start_dev(state, log, "--systemd-scope", "user")
    try:
        banner = wait_banner(log, proc)
        match = re.search(r"^API: (https://127\.0\.0\.1:(\d+))$", banner, re.M)
        assert match, banner
        endpoint = match.group(1)
        printed = re.search(r"^moorctl: +(\S*moorctl --state-dir \S+ list-machines)$", banner, re.M)
        assert printed
        pasted = subprocess.run(
            ["bash", "-c", printed.group(1)], capture_output=True, text=True, timeout=60
        )
        assert pasted.returncode == 0 and "connected" in pasted.stdout, pasted
        curl = re.search(r"^curl: +(curl --cacert .*)$", banner, re.M)
        assert (
            curl and "Authorization: Bearer $(cat " in curl.group(1) and endpoint in curl.group(1)
        )
        assert re.search(
            r"^fleetctl: +fleetctl --endpoint "
            + re.escape(endpoint)
            + r" --ca-file \S+ --cert-file \S+ --key-file \S+ list-machines$",
            banner,
            re.M,
        )

        # the first user: its password's file is named, never the password itself
        user = re.search(r"^user: admin, password in (\S+) ", banner, re.M)
        assert user, banner
        password_file = Path(user.group(1))
        assert password_file.resolve() == (state / "admin.password").resolve()
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert password_file.read_text().strip() not in log.read_text()

        # the printed curl line works as pasted
        out = subprocess.run(
            ["bash", "-c", curl.group(1) + " -s"], capture_output=True, text=True, timeout=30
        )
        machines = json.loads(out.stdout)["machines"]
        assert len(machines) == 1
        machine_id = machines[0]["id"]
        gitops = re.search(r"^gitops: +(curl --cacert .*)$", banner, re.M)
        assert gitops and "api-key: $(cat " in gitops.group(1), banner
        out = subprocess.run(
            ["bash", "-c", gitops.group(1) + " -s"], capture_output=True, text=True, timeout=30
        )
        clusters = json.loads(out.stdout)
        assert [c["id"] for c in clusters["items"]] == [machine_id] and clusters["next"] is None
        deploy = re.search(r"^deploy: +(.*)$", banner, re.M)
        assert deploy and deploy.group(1).count(printed.group(1).rsplit(" ", 1)[0]) == 3, banner

        listed = moorctl(state, "--json", "list-machines")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(r["id"], r["state"]) for r in rows] == [(machine_id, "connected")]
        table = moorctl(state, "list-machines")
        assert machine_id[:8] in table.stdout and "connected" in table.stdout

        children = interrupt(proc)
        assert children, "the agent should have been a child process"
        for pid in children:
            assert (
                not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    ca_before = (state / "coordinator" / "pki" / "ca.pem").read_bytes()
    log2 = tmp_path / "dev-2.log"
    proc = start_dev(state, log2, "--systemd-scope", "user")
    try:
        banner = wait_banner(log2, proc)
        assert f"machine: {machine_id}" in banner
        assert (state / "coordinator" / "pki" / "ca.pem").read_bytes() == ca_before
        rows = json.loads(moorctl(state, "--json", "list-machines").stdout)
        assert [(r["id"], r["state"]) for r in rows] == [(machine_id, "connected")]
        assert "enrolled machine" not in log2.read_text()  # resumed, not enrolled again
        interrupt(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_moorctl_without_a_dev_says_what_to_do(tmp_path: Path) -> None:
    out = moorctl(tmp_path / "nothing", "list-machines")
    assert out.returncode == 3
    assert "moorage dev" in out.stderr


def needs_private_systemd() -> None:
    reason = systemd_unavailable()
    if reason is not None:
        pytest.skip(f"a private systemd cannot start here: {reason}")


def stop_dev(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_hello_runs_on_a_machine_without_systemd_or_dockerd_and_comes_back(
    tmp_path: Path,
) -> None:
    """The README's example from an empty state directory, with what `moorage dev`
    starts itself; a unit no machine can take fails fast with the reason."""
    needs_private_systemd()
    state = tmp_path / "dev"
    (tmp_path / "hello.service").write_text(HELLO)
    (tmp_path / "pinned.service").write_text(HELLO + "\n[X-Fleet]\nMachineID=nonexistent\n")
    proc = start_dev(state, tmp_path / "dev-1.log")
    try:
        banner = wait_banner(tmp_path / "dev-1.log", proc)
        assert "runs: systemd units (private systemd --user manager)" in banner, banner
        if dockerd_unavailable() is None and "dockerd at" not in banner:
            assert "containers (private dockerd)" in banner, banner
        assert "moorage dev --state-dir" in banner  # the resume hint: what was run

        began = time.monotonic()
        started = moorctl(state, "start", "hello.service", cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        assert time.monotonic() - began < 5, "hello.service not active within 5 s"
        assert "hello.service launched" in started.stdout
        wait_for(
            lambda: "hello" in moorctl(state, "journal", "hello.service").stdout.split(),
            timeout=5,
            what="hello in moorctl journal",
        )

        began = time.monotonic()
        pinned = moorctl(state, "start", "pinned.service", cwd=tmp_path)
        assert pinned.returncode == 1, pinned
        assert time.monotonic() - began < 10
        assert pinned.stderr.strip().splitlines()[-1] == (
            "moorctl: unit pinned.service cannot be scheduled: MachineID=nonexistent: no such machine"
        ), pinned.stderr
        status = moorctl(state, "status", "pinned.service")
        assert "not scheduled on any machine: MachineID=nonexistent: no such machine" in (
            status.stdout
        )
        unit = json.loads(moorctl(state, "--json", "status", "pinned.service").stdout)["unit"]
        assert unit["unschedulable"] == "MachineID=nonexistent: no such machine"

        interrupt(proc)
    finally:
        stop_dev(proc)

    proc = start_dev(state, tmp_path / "dev-2.log")
    try:
        wait_banner(tmp_path / "dev-2.log", proc)

        def active() -> bool:
            rows = json.loads(moorctl(state, "--json", "list-units").stdout)
            return any(
                r["name"] == "hello.service" and r.get("systemdActiveState") == "active"
                for r in rows
            )

        wait_for(active, timeout=10, what="hello.service active again")
        children = interrupt(proc, signal.SIGHUP)
        assert len(children) >= 4  # keeper, agent, systemd, journald (and dockerd)
        assert not [pid for pid in children if pid_alive(pid)]
    finally:
        stop_dev(proc)


def test_sigkill_of_dev_takes_everything_with_it_and_one_agent_per_state_dir(
    tmp_path: Path,
) -> None:
    """A unit and, where dockerd is installed, a container run when `moorage dev` is
    killed: within 5 s nothing it started is left, cgroups and scratch included."""
    needs_private_systemd()
    state = tmp_path / "dev"
    (tmp_path / "hello.service").write_text(HELLO)
    proc = start_dev(state, tmp_path / "dev.log")
    try:
        banner = wait_banner(tmp_path / "dev.log", proc)
        units = ["hello.service"]
        if "containers (private dockerd)" in banner:
            runtimes = json.loads((state / "runtimes" / "runtimes.json").read_text())
            client = docker.DockerClient(
                base_url=f"unix://{runtimes['scratch']}/docker/docker.sock"
            )
            try:
                import_busybox(client)
            finally:
                client.close()
            (tmp_path / "tick.container").write_text(TICK)
            units.append("tick.container")
        for unit in units:
            started = moorctl(state, "start", unit, cwd=tmp_path)
            assert started.returncode == 0, started.stderr
        tree = psutil.Process(proc.pid).children(recursive=True)
        agent = next(c for c in tree if c.cmdline()[1:3] == ["-m", "agent"])
        names = {c.name() for c in tree}
        assert {"systemd", "systemd-journald"} <= names, names
        runtimes = json.loads((state / "runtimes" / "runtimes.json").read_text())
        assert cgroup_pids(runtimes["cgroups"][0])  # the unit (and container) run there

        second = subprocess.run(
            [sys.executable, "-m", "agent", "--state-dir", str(state / "agent")],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            f"moorage-agent: error: another agent (pid {agent.pid}) is running on state "
            f"directory {state / 'agent'}"
        ), second.stderr
        again = subprocess.run(
            [sys.executable, "-m", "coordinator.dev", "dev", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert again.returncode == 1
        assert f"another 'moorage dev' (pid {proc.pid}) is running on {state}" in again.stderr

        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(
            lambda: (
                not any(pid_alive(c.pid) for c in tree) and not pids_mentioning(runtimes["scratch"])
            ),  # containerd's shims
            timeout=5,
            what=f"{[(c.pid, c.name()) for c in tree if pid_alive(c.pid)]} gone",
        )
        wait_for(
            lambda: not any(cgroup_dirs(name) for name in runtimes["cgroups"]),
            timeout=5,
            what="the private cgroups removed",
        )
        assert not Path(runtimes["scratch"]).exists()
    finally:
        stop_dev(proc)


def test_a_keeper_killed_with_sigkill_is_swept_by_the_next(tmp_path: Path) -> None:
    """The keeper's own death: its manager follows it (PR_SET_PDEATHSIG), and what it
    could not clean (journald's last moments, cgroups, scratch) the next keeper does."""
    needs_private_systemd()
    state = tmp_path / "runtimes"

    def keeper() -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.devhost", "--state-dir", str(state), "--systemd"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["systemd_flags"] and not started["errors"], started
        return proc, json.loads((state / "runtimes.json").read_text())

    first, old = keeper()
    manager = [c.pid for c in psutil.Process(first.pid).children() if c.name() == "systemd"]
    assert manager
    first.kill()
    first.wait()
    wait_for(lambda: not pid_alive(manager[0]), timeout=5, what="the manager follows its keeper")
    assert Path(old["scratch"]).exists()  # nobody cleaned up yet

    second, new = keeper()
    try:
        assert new["scratch"] != old["scratch"]
        assert not Path(old["scratch"]).exists()
        assert not any(cgroup_dirs(name) for name in old["cgroups"])
    finally:
        assert second.stdin is not None
        second.stdin.close()  # what moorage dev's death looks like to the keeper
        assert second.wait(30) == 0
    assert not Path(new["scratch"]).exists()
    assert not (state / "runtimes.json").exists()
