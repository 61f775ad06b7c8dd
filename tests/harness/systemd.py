"""A real ``systemd --user`` manager with a private ``systemd-journald``, for integration tests.

The test machines are Debian 12 VMs where PID 1 is not systemd and cgroups are hybrid
(v1 + ``/sys/fs/cgroup/unified``). The recipe (TESTING.md sections 1 and 1b) lives in
the product, `coordinator.devhost.PrivateSystemd`, because `moorage dev` starts the same
manager where a machine has none; this module gives it a scratch directory of its own
per instance, a ``moorage-test-`` cgroup, and the helpers tests need (journal reads,
a simulated reboot).

Teardown stops the manager and journald by PID, sweeps what is left in our own cgroup,
removes the cgroup directories deepest first and then the scratch directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from coordinator import devhost
from coordinator.devhost import (
    CGROUP_HIERARCHIES,
    JOURNALD_BINARY,
    SYSTEMD_BINARY,
    PrivateSystemd,
    cgroup_dirs,
    cgroup_pids,
    kill_cgroup,
    pid_alive,
    pid_in_cgroup,
    remove_cgroup,
    remove_tree,
    stop_popen,
    terminate_pid,
    wait_pid_gone,
)

__all__ = [
    "CGROUP_HIERARCHIES",
    "CGROUP_PREFIX",
    "HarnessError",
    "UserSystemd",
    "cgroup_dirs",
    "cgroup_pids",
    "kill_cgroup",
    "pid_alive",
    "pid_in_cgroup",
    "remove_cgroup",
    "remove_tree",
    "stop_popen",
    "systemd_available",
    "terminate_pid",
    "unique_cgroup_name",
    "wait_pid_gone",
]

log = logging.getLogger(__name__)

CGROUP_PREFIX = "moorage-test-"
HarnessError = devhost.DevHostError
"""A real component could not be started; the message carries its log."""


def unique_cgroup_name(suffix: str = "") -> str:
    """A ``moorage-test-`` cgroup name no other harness instance uses."""
    return devhost.unique_cgroup_name(CGROUP_PREFIX, suffix)


def systemd_available() -> str | None:
    """None if a private ``systemd --user`` can be started here, else why not (skip reason)."""
    return devhost.systemd_unavailable()


class UserSystemd(PrivateSystemd):
    """A private ``systemd --user`` plus journald in a scratch directory of its own;
    use as a context manager or start()/stop().

    Paths exist from construction on, so unit files can be written before ``start()``.
    """

    def __init__(
        self,
        *,
        start_timeout: float = 15.0,
        stop_timeout: float = 20.0,
        systemd_binary: str = SYSTEMD_BINARY,
        journald_binary: str = JOURNALD_BINARY,
    ) -> None:
        root = Path(tempfile.mkdtemp(prefix="moorage-systemd-"))
        super().__init__(
            root,
            root / "home",
            unique_cgroup_name(),
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            systemd_binary=systemd_binary,
            journald_binary=journald_binary,
        )

    def reboot(self) -> None:
        """Power-cycle the "machine": every unit stops and runtime state (/run, the
        volatile journal) is wiped; persistent config such as unit_dir survives."""
        if self._stopped or self._proc is None:
            raise HarnessError("reboot() needs a running manager")
        for step in self._shutdown_steps():
            step()
        for runtime in (self.run_dir, self.root / "fakerun", self.root / "runlog"):
            shutil.rmtree(runtime, ignore_errors=True)
        self._proc = None
        self._journald_pid = None
        try:
            self._launch()
            self._wait_running()
        except BaseException:
            self.stop()
            raise

    def agent_env(self) -> dict[str, str]:
        """The environment of this manager's session, for agents and tools beside it."""
        keys = ("XDG_RUNTIME_DIR", "HOME", "XDG_CONFIG_HOME", "DBUS_SESSION_BUS_ADDRESS")
        return {k: self.env[k] for k in keys}

    def unit_property(self, unit: str, name: str) -> str:
        """One property of a unit, e.g. ``unit_property("x.service", "ActiveState")``."""
        return self.systemctl("show", "-p", name, "--value", unit, check=True).stdout.strip()

    def _journalctl_json(self, *matches: str) -> list[dict[str, object]]:
        result = subprocess.run(
            ["journalctl", "-D", str(self.journal_dir), "-o", "json", "--no-pager", *matches],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            if "No journal files" in result.stderr:
                return []
            raise HarnessError(f"journalctl failed ({result.returncode}): {result.stderr}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def journal_entries(
        self, unit: str, *, identifier: str | None = None
    ) -> list[dict[str, object]]:
        """Journal entries (``journalctl -o json``) of a user unit, oldest first.

        A process that exits within milliseconds may lose its unit attribution; give
        such units ``SyslogIdentifier=`` and pass it as ``identifier`` to match it too.
        """
        entries = self._journalctl_json("--user-unit", unit)
        if identifier is not None:
            entries += self._journalctl_json(f"SYSLOG_IDENTIFIER={identifier}")
        unique = {str(e.get("__CURSOR")): e for e in entries}
        return sorted(unique.values(), key=lambda e: int(str(e.get("__REALTIME_TIMESTAMP", 0))))

    def journal_lines(self, unit: str, *, identifier: str | None = None) -> list[str]:
        """The MESSAGE field of every journal entry of a user unit, oldest first."""
        lines: list[str] = []
        for entry in self.journal_entries(unit, identifier=identifier):
            message = entry.get("MESSAGE")
            if isinstance(message, list):  # non-UTF-8 messages come as byte arrays
                lines.append(bytes(message).decode("utf-8", "replace"))
            elif message is not None:
                lines.append(str(message))
        return lines

    def wait_journal_line(
        self, unit: str, text: str, *, timeout: float = 5.0, identifier: str | None = None
    ) -> list[str]:
        """Poll the journal until a line of ``unit`` contains ``text``; returns all lines."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.journal_lines(unit, identifier=identifier)
            if any(text in line for line in lines):
                return lines
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f"{text!r} not in the journal of {unit} after {timeout} s; lines: {lines}"
                )
            time.sleep(0.05)
