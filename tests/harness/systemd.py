"""A real ``systemd --user`` manager with a private ``systemd-journald``, for integration tests.

The test machines are Debian 12 VMs where PID 1 is not systemd and cgroups are hybrid
(v1 + ``/sys/fs/cgroup/unified``). The recipe (TESTING.md sections 1 and 1b) is copied
here because a fresh clone has no ``../shared``:

* the manager runs in a private mount namespace where a scratch directory is bind-mounted
  over ``/run/systemd`` (``systemd --user`` insists on ``/run/systemd/system``), another
  over ``/run/log`` and a private ``journald.conf`` (``Storage=volatile``) over the
  host's, so nothing is written to the host's journal;
* it is moved into its own cgroup ``<name>/user@0.service`` *before* it starts: started in
  the root cgroup, systemd would move every process of the machine into ``init.scope``;
* journald sits in the sibling cgroup ``<name>/journald`` in its own cgroup namespace,
  otherwise the lines it records carry no unit name.

Teardown stops the manager and journald by PID, sweeps what is left in our own cgroup,
removes the cgroup directories deepest first and then the scratch directory.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# The hierarchies the manager and journald are moved into (hybrid layout).
CGROUP_HIERARCHIES = ("systemd", "unified")
CGROUP_PREFIX = "moorage-test-"
SYSTEMD_BINARY = "/lib/systemd/systemd"
JOURNALD_BINARY = "/lib/systemd/systemd-journald"
DBUS_USER_SOCKET_UNIT = Path("/usr/lib/systemd/user/dbus.socket")
JOURNALD_CONF = """\
[Journal]
Storage=volatile
RateLimitBurst=0
ReadKMsg=no
ForwardToSyslog=no
ForwardToWall=no
Audit=no
"""
# Variables that would make the manager talk to whatever started pytest.
_INHERITED_SERVICE_VARS = (
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "MANAGERPID",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "SYSTEMD_EXEC_PID",
)

_counter = itertools.count()


class HarnessError(RuntimeError):
    """A real component could not be started; the message carries its log."""


# --------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; zombies count as gone (orphans are reaped slowly here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` is gone; for processes that are not our children."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def pid_in_cgroup(pid: int, cgroup_name: str) -> bool:
    """Whether ``pid`` sits in (a child of) our cgroup: proof that we started it."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return any(
        line.split(":", 2)[-1].startswith(f"/{cgroup_name}/")
        or line.split(":", 2)[-1] == f"/{cgroup_name}"
        for line in text.splitlines()
    )


def terminate_pid(pid: int, *, timeout: float, what: str) -> None:
    """SIGTERM a process we started but cannot ``wait`` for, then SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_pid_gone(pid, timeout):
            return
        log.warning("%s (pid %d) survived %s for %.1f s", what, pid, sig.name, timeout)


def stop_popen(proc: subprocess.Popen[bytes], *, timeout: float, what: str) -> None:
    """SIGTERM a child, wait, SIGKILL after ``timeout``; Popen guards against PID reuse."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) ignored SIGTERM for %.1f s, killing it", what, proc.pid, timeout)
    proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("%s (pid %d) survived SIGKILL", what, proc.pid)


# --------------------------------------------------------------------------- cgroups


def unique_cgroup_name(suffix: str = "") -> str:
    """A cgroup name no other harness instance (in this or another process) uses."""
    while True:
        name = f"{CGROUP_PREFIX}{os.getpid()}-{next(_counter)}{suffix}"
        if not any((h / name).exists() for h in _hierarchies()):
            return name


def _hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy once (``cpu`` -> ``cpu,cpuacct`` links skipped)."""
    try:
        entries = sorted(CGROUP_ROOT.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.is_symlink()]


def _check_cgroup_name(name: str) -> None:
    """Refuse anything but our own, single-level names: teardown rmdirs them."""
    if not name.startswith(CGROUP_PREFIX) or "/" in name or name in (".", ".."):
        raise ValueError(f"refusing to touch cgroup {name!r}")


def cgroup_dirs(name: str) -> list[Path]:
    """All directories of cgroup ``name`` in every hierarchy, deepest first."""
    _check_cgroup_name(name)
    found: list[Path] = []
    for hierarchy in _hierarchies():
        top = hierarchy / name
        if top.is_dir():
            found.extend(Path(d) for d, _subdirs, _files in os.walk(top))
    found.sort(key=lambda p: len(p.parts), reverse=True)
    return found


def cgroup_pids(name: str) -> set[int]:
    """PIDs of every process in cgroup ``name`` and its children, in any hierarchy."""
    pids: set[int] = set()
    for d in cgroup_dirs(name):
        try:
            pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            continue
    pids.discard(os.getpid())
    return pids


def kill_cgroup(name: str, *, timeout: float = 5.0) -> None:
    """SIGKILL by PID whatever is still in our cgroup (it can only be ours) until it is empty."""
    deadline = time.monotonic() + timeout
    while pids := cgroup_pids(name):
        if time.monotonic() >= deadline:
            log.warning("processes %s still in cgroup %s after %.1f s", sorted(pids), name, timeout)
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def remove_cgroup(name: str, *, timeout: float = 5.0) -> list[Path]:
    """rmdir cgroup ``name`` everywhere, deepest first; returns the directories left behind."""
    deadline = time.monotonic() + timeout
    while True:
        left: list[Path] = []
        for d in cgroup_dirs(name):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        if not left or time.monotonic() >= deadline:
            if left:
                log.warning("could not remove cgroup directories %s", left)
            return left
        time.sleep(0.05)


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that logs instead of raising: teardown must go on."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("could not remove %s completely", path)


# --------------------------------------------------------------------------- availability


def systemd_available() -> str | None:
    """None if a private ``systemd --user`` can be started here, else why not (skip reason)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (cgroups and mount namespaces)"
    for binary in (SYSTEMD_BINARY, JOURNALD_BINARY):
        if not os.access(binary, os.X_OK):
            return f"{binary} missing (apt install systemd)"
    for tool, package in (
        ("systemctl", "systemd"),
        ("journalctl", "systemd"),
        ("unshare", "util-linux"),
        ("mount", "mount"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt install {package})"
    if not DBUS_USER_SOCKET_UNIT.exists():
        return "dbus-user-session missing (apt install dbus-user-session)"
    for hierarchy in CGROUP_HIERARCHIES:
        if not (CGROUP_ROOT / hierarchy / "cgroup.procs").exists():
            return f"needs the hybrid cgroup layout ({CGROUP_ROOT / hierarchy} missing)"
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        pid1 = ""
    if pid1 == "systemd":
        return "PID 1 is systemd: this harness is for machines where it is not (TESTING.md)"
    if not Path("/etc/systemd/journald.conf").is_file():
        return "/etc/systemd/journald.conf missing (needed as a bind-mount target)"
    return None


# --------------------------------------------------------------------------- the manager


class UserSystemd:
    """A private ``systemd --user`` plus journald; use as a context manager or start()/stop().

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
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.systemd_binary = systemd_binary
        self.journald_binary = journald_binary
        self.cgroup_name = unique_cgroup_name()
        self.root = Path(tempfile.mkdtemp(prefix="moorage-systemd-"))
        self.run_dir = self.root / "run"
        self.home = self.root / "home"
        self.config_home = self.home / ".config"
        self.unit_dir = self.config_home / "systemd" / "user"
        self.journal_dir = self.root / "runlog" / "journal"
        self.log_path = self.root / "systemd.log"
        self.bus_address = f"unix:path={self.run_dir}/bus"
        self.env: dict[str, str] = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.run_dir),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.config_home),
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
        }
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._journald_pid: int | None = None
        self._stopped = False

    # -- public API

    @property
    def pid(self) -> int:
        """PID of the manager (kept after stop() so tests can check it is gone)."""
        if self._pid is None:
            raise HarnessError("systemd --user was not started")
        return self._pid

    @property
    def journald_pid(self) -> int | None:
        """PID of the private journald, once it has written its pid file."""
        if self._journald_pid is None:
            try:
                self._journald_pid = int((self.root / "journald.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        return self._journald_pid

    def start(self) -> Self:
        """Start journald and the manager; return once ``SystemState`` is ``running``."""
        if self._stopped or self._proc is not None:
            raise HarnessError("a UserSystemd instance can be started once")
        try:
            began = time.monotonic()
            self._launch()
            self._wait_running()
            self.startup_seconds = time.monotonic() - began
            log.info("systemd --user pid %d ready in %.2f s", self.pid, self.startup_seconds)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Tear everything down; idempotent, logs instead of raising."""
        if self._stopped:
            return
        self._stopped = True
        # journald goes before the manager so that the manager, its parent, reaps it at
        # once; killed after, it is an orphan that PID 1 here reaps only slowly.
        for step in (
            self._stop_units,
            self._stop_journald,
            self._stop_manager,
            lambda: kill_cgroup(self.cgroup_name),
            lambda: remove_cgroup(self.cgroup_name),
            lambda: remove_tree(self.root),
        ):
            try:
                step()
            except Exception:
                log.exception("teardown of systemd --user (%s) failed a step", self.cgroup_name)

    def reboot(self) -> None:
        """Power-cycle the "machine": every unit stops and runtime state (/run, the
        volatile journal) is wiped; persistent config such as unit_dir survives."""
        if self._stopped or self._proc is None:
            raise HarnessError("reboot() needs a running manager")
        for step in (
            self._stop_units,
            self._stop_journald,
            self._stop_manager,
            lambda: kill_cgroup(self.cgroup_name),
            lambda: remove_cgroup(self.cgroup_name),
        ):
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def systemctl(
        self, *args: str, check: bool = False, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``systemctl --user ARGS`` against this manager (text output captured)."""
        return subprocess.run(
            ["systemctl", "--user", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def agent_flags(self) -> list[str]:
        """Flags that point a Moorage agent at this manager: scope, unit and journal dirs."""
        return [
            "--systemd-scope",
            "user",
            "--unit-dir",
            str(self.unit_dir),
            "--journal-dir",
            str(self.journal_dir),
        ]

    def agent_env(self) -> dict[str, str]:
        """The environment an agent needs to reach this manager's bus."""
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

    def diagnostics(self) -> str:
        """The manager's console log and the tail of its journal, for error messages."""
        parts = [f"--- {self.log_path}:"]
        try:
            parts.append(self.log_path.read_text(errors="replace")[-8000:])
        except OSError as exc:
            parts.append(f"<unreadable: {exc}>")
        try:
            journal = subprocess.run(
                ["journalctl", "-D", str(self.journal_dir), "-n", "60", "--no-pager"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            parts += [f"--- journal {self.journal_dir}:", journal.stdout + journal.stderr]
        except (OSError, subprocess.SubprocessError) as exc:
            parts.append(f"<journalctl failed: {exc}>")
        return "\n".join(parts)

    # -- internals

    def _write_files(self) -> Path:
        """Scratch tree, journald.conf and the start script (TESTING.md 1b, plus guards)."""
        self.run_dir.mkdir(mode=0o700)
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "fakerun" / "system").mkdir(parents=True)
        (self.root / "runlog").mkdir()
        (self.root / "journald.conf").write_text(JOURNALD_CONF)
        q = shlex.quote
        hierarchies = " ".join(CGROUP_HIERARCHIES)
        script = f"""#!/bin/sh
set -e
C={q(str(CGROUP_ROOT))}
CG={q(self.cgroup_name)}
T={q(str(self.root))}
for h in {hierarchies}; do
  mkdir -p "$C/$h/$CG/journald" "$C/$h/$CG/user@0.service"
  echo $$ > "$C/$h/$CG/cgroup.procs"
done
# Safety: never go on in the root cgroup (systemd would adopt every process).
grep -qx "[0-9]*:name=systemd:/$CG" /proc/self/cgroup
grep -qxF "0::/$CG" /proc/self/cgroup
mkdir -p /run/systemd /run/log
mount --bind "$T/fakerun" /run/systemd
mount --bind "$T/runlog" /run/log
mount --bind "$T/journald.conf" /etc/systemd/journald.conf
SYSTEMD_LOG_TARGET=console unshare --cgroup sh -c \\
  'for h in {hierarchies}; do echo $$ > "$0/$h/$1/journald/cgroup.procs"; done; exec "$2"' \\
  "$C" "$CG" {q(self.journald_binary)} &
echo $! > "$T/journald.pid"
i=0
while [ ! -S /run/systemd/journal/stdout ]; do
  i=$((i + 1))
  if [ $i -gt 1000 ]; then echo "journald did not create its socket" >&2; exit 1; fi
  sleep 0.01
done
for h in {hierarchies}; do echo $$ > "$C/$h/$CG/user@0.service/cgroup.procs"; done
grep -qx "[0-9]*:name=systemd:/$CG/user@0.service" /proc/self/cgroup
grep -qxF "0::/$CG/user@0.service" /proc/self/cgroup
exec {q(self.systemd_binary)} --user --log-target=journal
"""
        path = self.root / "start.sh"
        path.write_text(script)
        path.chmod(0o755)
        return path

    def _launch(self) -> None:
        script = self._write_files()
        env = {k: v for k, v in self.env.items() if k not in _INHERITED_SERVICE_VARS}
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", str(script)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,  # setsid: no signals from the test's terminal
            )
        self._pid = self._proc.pid

    def _wait_running(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise HarnessError(
                    f"systemd --user exited with {code} before it was ready\n{self.diagnostics()}"
                )
            try:
                state = self.systemctl("show", "-p", "SystemState", "--value", timeout=5).stdout
            except subprocess.TimeoutExpired:
                state = "<systemctl timed out>"
            state = state.strip()
            if state == "running":
                return
            if state == "degraded":
                failed = self.systemctl("--failed", "--no-legend").stdout
                raise HarnessError(
                    f"systemd --user is degraded; failed units:\n{failed}\n{self.diagnostics()}"
                )
            time.sleep(0.05)
        raise HarnessError(
            f"systemd --user not running after {self.start_timeout} s (SystemState={state!r})\n"
            f"{self.diagnostics()}"
        )

    def _manager_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stop_units(self) -> None:
        if not self._manager_running():
            return
        try:
            self.systemctl("stop", "*.service", "*.socket", "*.timer", timeout=15)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("systemctl --user stop failed: %s", exc)

    def _stop_manager(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            asked = self.systemctl("exit", timeout=15).returncode == 0
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("systemctl --user exit failed: %s", exc)
            asked = False
        if not asked:  # not (yet) listening, e.g. a failed start: SIGTERM means exit too
            stop_popen(proc, timeout=5, what="systemd --user")
            return
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("systemd --user (pid %d) did not exit, killing it", proc.pid)
            stop_popen(proc, timeout=5, what="systemd --user")

    def _stop_journald(self) -> None:
        pid = self.journald_pid
        if pid is None or not pid_alive(pid):
            return
        if not pid_in_cgroup(pid, self.cgroup_name):
            log.warning("pid %d from journald.pid is not in %s; not killing", pid, self.cgroup_name)
            return
        terminate_pid(pid, timeout=5, what="systemd-journald")
