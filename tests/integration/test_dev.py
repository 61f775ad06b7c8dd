"""`moorage dev` as a newcomer runs it: one command, Ctrl-C, and a resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.procs import ROOT

pytestmark = pytest.mark.integration


def start_dev(state: Path, log: Path) -> subprocess.Popen[bytes]:
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
            "--systemd-scope",
            "user",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        start_new_session=True,
    )


def wait_banner(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Ctrl-C stops both" in text:
            return text
        assert proc.poll() is None, f"moorage dev exited early:\n{text}"
        time.sleep(0.1)
    raise AssertionError(f"no banner within {timeout} s:\n{log.read_text()}")


def moorctl(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.moorctl", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def interrupt(proc: subprocess.Popen[bytes]) -> list[int]:
    """Ctrl-C as a terminal sends it; returns the PIDs of children that were running."""
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    return children


def test_dev_starts_lists_stops_and_resumes(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    log = tmp_path / "dev-1.log"
    proc = start_dev(state, log)
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
    proc = start_dev(state, log2)
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
