"""A private systemd manager and dockerd for `moorage dev` where the host has none.

The first place people try Moorage is often a container or a CI VM: PID 1 is not
systemd, no user manager runs and no dockerd either. There `moorage dev` starts its own
(the recipes of TESTING.md sections 1b and 2, which the test harness uses as well):

* a ``systemd --user`` manager in a private mount namespace where scratch directories
  are bind-mounted over ``/run/systemd``, ``/run/log`` and a private ``journald.conf``
  (``Storage=volatile``), so nothing of the host's ``/run`` or journal is touched. It is
  moved into its own cgroup ``<name>/user@0.service`` *before* it starts (started in the
  root cgroup, systemd would adopt every process of the machine), and its journald sits
  in the sibling cgroup ``<name>/journald`` in its own cgroup namespace, so the lines it
  records carry the unit's name and ``moorctl journal`` works;
* a ``dockerd`` without iptables or a bridge, with its own socket, exec root and cgroup
  parent; its data root is kept, so images and containers survive a restart.

`Keeper` runs them in a process of its own (``python -m coordinator.devhost``): it
tears them down when its parent goes away, even by SIGKILL (the parent's end of its
stdin closes, and PR_SET_PDEATHSIG sends it SIGTERM), and sweeps what a keeper that was
itself killed left behind. Teardown stops processes by PID, sweeps what is left in our
own cgroups, removes the cgroup directories deepest first and then the scratch
directory. Which manager and engine `moorage dev` uses is decided by `plan_runtimes`
(pure) from `HostFacts`.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal, Self

import msgspec

from proto.process import setup_logging

log = logging.getLogger("moorage.devhost")

CGROUP_ROOT = Path("/sys/fs/cgroup")
# The hierarchies the manager and journald are moved into (hybrid layout).
CGROUP_HIERARCHIES = ("systemd", "unified")
CGROUP_PREFIX = "moorage-"
"""Every cgroup these helpers create or remove is named so; nothing else is touched."""
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
INHERITED_SERVICE_VARS = (
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
"""What a service manager sets for the process it starts: passed on to one we start,
they would make it talk to whatever started us."""
PR_SET_PDEATHSIG = 1
PREVIOUS_KEEPER_WAIT_S = 30.0
CONTAINER_STOP_S = 2.0
"""How long a private dockerd's containers get to exit on SIGTERM at teardown: a dev
tool's Ctrl-C should be quick, and they are started again with it."""

_counter = itertools.count()


class DevHostError(RuntimeError):
    """A private manager or engine could not be started; the message carries its log."""


# --------------------------------------------------------------------------- processes


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` that has the kernel send `sig` to the child when this process
    dies, SIGKILL included (PR_SET_PDEATHSIG survives exec); a child whose parent is
    already gone exits at once."""
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


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


def pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (our unique scratch path)."""
    found: list[int] = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# --------------------------------------------------------------------------- cgroups


def unique_cgroup_name(prefix: str, suffix: str = "") -> str:
    """A cgroup name no other instance (in this or another process) uses."""
    _check_cgroup_name(prefix + "x")
    while True:
        name = f"{prefix}{os.getpid()}-{next(_counter)}{suffix}"
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


def mount_points_under(root: Path) -> list[str]:
    """Mount points below ``root`` in our mount namespace, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points: list[str] = []
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return points
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")  # \040 etc.
        if point.startswith(prefix):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_under(root: Path) -> None:
    """Unmount what a killed dockerd left mounted under ``root`` (shm, netns, overlays)."""
    for point in mount_points_under(root):
        result = subprocess.run(["umount", point], capture_output=True, text=True)
        if result.returncode != 0:
            result = subprocess.run(["umount", "--lazy", point], capture_output=True, text=True)
        if result.returncode != 0:
            log.warning("could not unmount %s: %s", point, result.stderr.strip())


# --------------------------------------------------------------------------- availability


def systemd_unavailable() -> str | None:
    """None if a private ``systemd --user`` can be started here, else what is missing."""
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
    if pid1_is_systemd():
        return "PID 1 is systemd: use its manager (the recipe is for machines where it is not)"
    if not Path("/etc/systemd/journald.conf").is_file():
        return "/etc/systemd/journald.conf missing (needed as a bind-mount target)"
    return None


def dockerd_unavailable() -> str | None:
    """None if a private dockerd can be started here, else what is missing."""
    for tool, package in (("dockerd", "docker.io"), ("containerd", "containerd"), ("runc", "runc")):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt install {package})"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root"
    return None


def pid1_is_systemd() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def unix_socket_path(address: str) -> str:
    """The path of a ``unix:path=...`` D-Bus or ``unix://...`` Docker address, else ""."""
    if address.startswith("unix://"):
        return address[len("unix://") :]
    for part in address.removeprefix("unix:").split(","):
        key, _, value = part.partition("=")
        if key == "path":
            return value
    return ""


def socket_answers(path: str) -> bool:
    """Whether a unix socket accepts connections (a stale socket file does not)."""
    if not path:
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def docker_ping(path: str) -> bool:
    """Whether a Docker Engine answers ``/_ping`` on the unix socket ``path``."""
    if not path:
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return s.recv(64).split(b" ", 2)[1:2] == [b"200"]
        except OSError:
            return False


# --------------------------------------------------------------------------- the choice


class HostFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What `plan_runtimes` needs to know about the machine (see `host_facts`)."""

    root: bool
    system_manager: bool
    """PID 1 is systemd and its bus answers."""
    user_manager: bool
    """A session bus answers ($DBUS_SESSION_BUS_ADDRESS or $XDG_RUNTIME_DIR/bus)."""
    private_systemd: str | None
    """Why a private systemd cannot start here (None: it can)."""
    docker: str
    """A Docker Engine that answers (its address), else ""."""
    private_docker: str | None
    """Why a private dockerd cannot start here (None: it can)."""


class RuntimePlan(msgspec.Struct, frozen=True, kw_only=True):
    scope: Literal["system", "user"]
    private_systemd: bool = False
    private_docker: bool = False
    docker_host: str = ""
    """The host's engine to use ("" with a private one, or none)."""
    notes: tuple[str, ...] = ()
    """One line for each of systemd and Docker that cannot be had: what to do."""


def plan_runtimes(facts: HostFacts, scope: str | None, allow_private: bool) -> RuntimePlan:
    """Which systemd manager and Docker engine the local agent drives: the host's where
    one answers, else a private one where it can start, else a note saying how to get one."""
    wanted: Literal["system", "user"]
    if scope == "system" or (scope is None and facts.root and facts.system_manager):
        wanted = "system"
    else:
        wanted = "user"
    host_ok = facts.system_manager if wanted == "system" else facts.user_manager
    notes: list[str] = []
    private_systemd = False
    if not host_ok:
        if allow_private and facts.private_systemd is None:
            private_systemd, wanted = True, "user"
        elif not allow_private:
            notes.append(f"systemd units: no systemd {wanted} manager is reachable")
        elif not facts.root:
            notes.append(
                "systemd units: no systemd manager is reachable; run 'moorage dev' as root "
                "(it then starts a private one) or in a login session with systemd --user"
            )
        else:
            notes.append(
                "systemd units: no systemd manager is reachable and a private one cannot "
                f"start: {facts.private_systemd}"
            )
    private_docker = False
    if not facts.docker:
        if allow_private and facts.private_docker is None:
            private_docker = True
        elif not allow_private:
            notes.append("containers: no Docker Engine is reachable (set DOCKER_HOST)")
        elif facts.private_docker == "needs root":
            notes.append(
                "containers: no Docker Engine is reachable; start dockerd "
                "(sudo systemctl start docker) or run 'moorage dev' as root"
            )
        else:
            notes.append(f"containers: no Docker Engine is reachable ({facts.private_docker})")
    return RuntimePlan(
        scope=wanted,
        private_systemd=private_systemd,
        private_docker=private_docker,
        docker_host=facts.docker,
        notes=tuple(notes),
    )


def host_facts() -> HostFacts:
    """Probe this machine for `plan_runtimes` (sockets only; nothing is started)."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    session = unix_socket_path(os.environ.get("DBUS_SESSION_BUS_ADDRESS", ""))
    if not session and runtime_dir:
        session = str(Path(runtime_dir) / "bus")
    docker_host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if docker_host.startswith("unix://") and not docker_ping(unix_socket_path(docker_host)):
        docker_host = ""  # a TCP engine is taken on trust: the agent reports if it is not up
    return HostFacts(
        root=os.geteuid() == 0,
        system_manager=Path("/run/systemd/system").is_dir()
        and socket_answers("/run/dbus/system_bus_socket"),
        user_manager=socket_answers(session),
        private_systemd=systemd_unavailable(),
        docker=docker_host,
        private_docker=dockerd_unavailable(),
    )


# --------------------------------------------------------------------------- systemd


class _Component:
    """start()/stop() and the context-manager protocol of a private runtime: stop() runs
    the teardown steps once, each even if one before it failed (logged, not raised)."""

    what = "a private runtime"
    _stopped = False

    def start(self) -> Self:
        raise NotImplementedError

    def _teardown_steps(self) -> list[Callable[[], object]]:
        raise NotImplementedError

    def stop(self) -> None:
        """Tear everything down; idempotent, logs instead of raising."""
        if self._stopped:
            return
        self._stopped = True
        for step in self._teardown_steps():
            try:
                step()
            except Exception:
                log.exception("teardown of %s failed a step", self.what)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PrivateSystemd(_Component):
    """A private ``systemd --user`` plus journald; use as a context manager or start()/stop().

    ``root`` is scratch (runtime directories, the start script, the log) and is removed
    by stop(); ``home`` holds ``.config/systemd/user``, the unit directory, and is kept.
    Paths exist from construction on, so unit files can be written before ``start()``.
    """

    def __init__(
        self,
        root: Path,
        home: Path,
        cgroup_name: str,
        *,
        start_timeout: float = 15.0,
        stop_timeout: float = 20.0,
        systemd_binary: str = SYSTEMD_BINARY,
        journald_binary: str = JOURNALD_BINARY,
        die_with_parent: bool = False,
    ) -> None:
        _check_cgroup_name(cgroup_name)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.systemd_binary = systemd_binary
        self.journald_binary = journald_binary
        self.die_with_parent = die_with_parent
        self.cgroup_name = cgroup_name
        self.root = root
        self.run_dir = root / "run"
        self.home = home
        self.config_home = home / ".config"
        self.unit_dir = self.config_home / "systemd" / "user"
        self.journal_dir = root / "runlog" / "journal"
        self.log_path = root / "systemd.log"
        self.bus_address = f"unix:path={self.run_dir}/bus"
        self.env: dict[str, str] = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.run_dir),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.config_home),
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
        }
        self.what = f"systemd --user ({cgroup_name})"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._journald_pid: int | None = None
        self._stopped = False

    @property
    def pid(self) -> int:
        """PID of the manager (kept after stop() so callers can check it is gone)."""
        if self._pid is None:
            raise DevHostError("systemd --user was not started")
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
            raise DevHostError("a private systemd can be started once")
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

    def _teardown_steps(self) -> list[Callable[[], object]]:
        return [*self._shutdown_steps(), lambda: remove_tree(self.root)]

    def _shutdown_steps(self) -> list[Callable[[], object]]:
        """Everything stops, nothing of the scratch directory is removed (a reboot)."""
        # journald goes before the manager so that the manager, its parent, reaps it at
        # once; killed after, it is an orphan that PID 1 here reaps only slowly.
        return [
            self._stop_units,
            self._stop_journald,
            self._stop_manager,
            lambda: kill_cgroup(self.cgroup_name),
            lambda: remove_cgroup(self.cgroup_name),
        ]

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
        """Flags that point a Moorage agent at this manager (its configuration, no more):
        scope, bus address, unit and journal directories."""
        return [
            "--systemd-scope", "user",
            "--bus-address", self.bus_address,
            "--unit-dir", str(self.unit_dir),
            "--journal-dir", str(self.journal_dir),
        ]  # fmt: skip

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
        self.run_dir.mkdir(mode=0o700, parents=True)
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
# journald gets SIGTERM when the manager (this shell, once exec'd) goes, however.
PDEATH=""
if command -v setpriv >/dev/null 2>&1; then PDEATH="setpriv --pdeathsig TERM --"; fi
SYSTEMD_LOG_TARGET=console $PDEATH unshare --cgroup sh -c \\
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
        env = {k: v for k, v in self.env.items() if k not in INHERITED_SERVICE_VARS}
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", str(script)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,  # setsid: no signals from a terminal
                # A user manager's SIGTERM means exit.target: units stop, then it exits.
                preexec_fn=die_with_parent() if self.die_with_parent else None,
            )
        self._pid = self._proc.pid

    def _wait_running(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise DevHostError(
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
                raise DevHostError(
                    f"systemd --user is degraded; failed units:\n{failed}\n{self.diagnostics()}"
                )
            time.sleep(0.05)
        raise DevHostError(
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


# --------------------------------------------------------------------------- dockerd


class PrivateDockerd(_Component):
    """A private dockerd; use as a context manager or start()/stop().

    Socket, exec root, pid file, config and log live in ``root`` (scratch, removed by
    stop()); ``data_root`` may lie elsewhere and is kept. Containers get the cgroup
    parent ``cgroup_parent``, so teardown removes exactly their cgroups.
    """

    def __init__(
        self,
        root: Path,
        data_root: Path,
        cgroup_parent: str,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
        die_with_parent: bool = False,
    ) -> None:
        _check_cgroup_name(cgroup_parent)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self.die_with_parent = die_with_parent
        self.root = root
        self.data_root = data_root
        self.exec_root = root / "exec"
        self.socket_path = root / "docker.sock"
        self.pidfile = root / "dockerd.pid"
        self.config_file = root / "daemon.json"
        self.log_path = root / "dockerd.log"
        self.host = f"unix://{self.socket_path}"
        self.env: dict[str, str] = {**os.environ, "DOCKER_HOST": self.host}
        self.cgroup_parent = cgroup_parent
        self.what = f"dockerd ({root})"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self._stopped = False

    @property
    def pid(self) -> int:
        """PID of the running dockerd (changes on restart())."""
        if self._proc is None:
            raise DevHostError("dockerd was not started")
        return self._proc.pid

    def start(self) -> Self:
        """Start dockerd and return once it answers ``/_ping``."""
        if self._started or self._stopped:
            raise DevHostError("a private dockerd can be started once (use restart())")
        self._started = True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """SIGTERM dockerd, wait, start it again on the same data root."""
        if self._proc is None or self._stopped:
            raise DevHostError("dockerd is not running")
        stop_popen(self._proc, timeout=self.stop_timeout, what="dockerd")
        self._proc = None
        self._launch()

    def _teardown_steps(self) -> list[Callable[[], object]]:
        return [
            self._stop_containers,
            self._stop_daemon,
            self._kill_leftovers,
            lambda: unmount_under(self.root),
            lambda: unmount_under(self.data_root),
            lambda: kill_cgroup(self.cgroup_parent),
            lambda: remove_cgroup(self.cgroup_parent),
            lambda: remove_tree(self.root),
        ]

    # -- internals

    def _args(self) -> list[str]:
        return [
            "dockerd",
            "--config-file", str(self.config_file),
            "--iptables=false",
            "--ip-forward=false",  # do not flip the host's net.ipv4.ip_forward
            "--bridge=none",
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "--host", self.host,
            "--cgroup-parent", f"/{self.cgroup_parent}",
            *self.extra_args,
        ]  # fmt: skip

    def _write_config(self) -> None:
        """A private daemon.json: ignore the host's, keep the trust key out of /etc/docker."""
        config = {"deprecated-key-path": str(self.root / "key.json")}
        self.config_file.write_text(json.dumps(config))

    def _launch(self) -> None:
        began = time.monotonic()
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # setsid, as the recipe does
                preexec_fn=die_with_parent() if self.die_with_parent else None,
            )
        self._wait_ready()
        self.startup_seconds = time.monotonic() - began
        log.info("dockerd pid %d ready in %.2f s", self._proc.pid, self.startup_seconds)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise DevHostError(f"dockerd exited with {code}\n{self._log_tail()}")
            if docker_ping(str(self.socket_path)):
                return
            time.sleep(0.05)
        raise DevHostError(
            f"dockerd not answering after {self.start_timeout} s\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")[-8000:]
        except OSError as exc:
            text = f"<unreadable: {exc}>"
        return f"--- {self.log_path}:\n{text}"

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stop_containers(self) -> None:
        """SIGTERM every container process, SIGKILL after `CONTAINER_STOP_S`: dockerd's
        own shutdown gives each container its stop timeout (10 s by default) in turn.
        Containers stopped so read as stopped, not failed, and are started again."""
        pids = cgroup_pids(self.cgroup_parent)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + CONTAINER_STOP_S
        while cgroup_pids(self.cgroup_parent) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_cgroup(self.cgroup_parent)

    def _stop_daemon(self) -> None:
        if self._proc is not None:
            stop_popen(self._proc, timeout=self.stop_timeout, what="dockerd")

    def _kill_leftovers(self) -> None:
        """containerd and shims outlive a SIGKILLed dockerd; they name our scratch dir."""
        for pid in pids_mentioning(str(self.root)):
            log.warning("killing leftover process %d of dockerd %s", pid, self.root)
            terminate_pid(pid, timeout=5, what="dockerd leftover")


# --------------------------------------------------------------------------- the keeper


class Started(msgspec.Struct, frozen=True, kw_only=True):
    """The keeper's one line on stdout once its runtimes are up (or could not start)."""

    systemd_flags: list[str] = []
    """`PrivateSystemd.agent_flags` of the private manager; empty: none runs."""
    docker_host: str = ""
    """The private dockerd's address; empty: none runs."""
    errors: list[str] = []


class Leftovers(msgspec.Struct, frozen=True, kw_only=True):
    """What a running keeper owns, written to the state dir so that the next keeper
    can sweep it if this one is killed before it tears down."""

    pid: int
    scratch: str
    cgroups: list[str]
    data_root: str = ""


class KeeperPaths:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.home = state_dir / "systemd-home"
        """The private manager's $HOME: its unit directory survives restarts."""
        self.docker_data = state_dir / "docker"
        self.leftovers = state_dir / "runtimes.json"


def sweep_leftovers(paths: KeeperPaths) -> None:
    """Remove what an earlier keeper left behind: processes in its cgroups, mounts under
    its directories, the cgroups, its scratch directory. A keeper still tearing down
    (its `moorage dev` is gone: the caller holds the state directory's lock) is given
    `PREVIOUS_KEEPER_WAIT_S` to finish, then stopped."""
    try:
        old = msgspec.json.decode(paths.leftovers.read_bytes(), type=Leftovers)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return
    if _is_keeper(old.pid, paths.state_dir) and not wait_pid_gone(old.pid, PREVIOUS_KEEPER_WAIT_S):
        terminate_pid(old.pid, timeout=5, what="the previous keeper")
    log.info("sweeping what the keeper pid %d left behind", old.pid)
    for pid in pids_mentioning(old.scratch) if old.scratch else []:
        terminate_pid(pid, timeout=5, what="leftover")
    for name in old.cgroups:
        kill_cgroup(name)
    for root in (old.scratch, old.data_root):
        if root:
            unmount_under(Path(root))
    for name in old.cgroups:
        remove_cgroup(name)
    if old.scratch:
        remove_tree(Path(old.scratch))
    paths.leftovers.unlink(missing_ok=True)


def _is_keeper(pid: int, state_dir: Path) -> bool:
    """Whether ``pid`` is a live keeper of ``state_dir`` (not a process that reused the
    PID, nor another state directory's keeper)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and b"coordinator.devhost" in argv and os.fsencode(state_dir) in argv


class Keeper:
    """Starts the private runtimes, reports them, and tears them down on exit."""

    def __init__(self, state_dir: Path, *, systemd: bool, docker: bool) -> None:
        self.paths = KeeperPaths(state_dir)
        self.want_systemd = systemd
        self.want_docker = docker
        self.scratch = Path(tempfile.mkdtemp(prefix="moorage-dev-"))
        self.cgroup = unique_cgroup_name("moorage-dev-")
        self.systemd: PrivateSystemd | None = None
        self.docker: PrivateDockerd | None = None
        self._recorded = False

    def start(self) -> Started:
        self.paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        sweep_leftovers(self.paths)
        cgroups = [self.cgroup, self.cgroup + "-docker"]
        leftovers = Leftovers(
            pid=os.getpid(),
            scratch=str(self.scratch),
            cgroups=cgroups,
            data_root=str(self.paths.docker_data),
        )
        self.paths.leftovers.write_bytes(msgspec.json.encode(leftovers))
        self._recorded = True
        errors: list[str] = []
        systemd_flags: list[str] = []
        if self.want_systemd:
            manager = PrivateSystemd(
                self.scratch / "systemd", self.paths.home, self.cgroup, die_with_parent=True
            )
            try:
                self.systemd = manager.start()
                systemd_flags = manager.agent_flags()
            except (DevHostError, OSError) as exc:
                errors.append(f"the private systemd did not start: {_first_line(exc)}")
                log.error("%s", exc)
        docker_host = ""
        if self.want_docker:
            daemon = PrivateDockerd(
                self.scratch / "docker",
                self.paths.docker_data,
                cgroups[1],
                die_with_parent=True,
            )
            try:
                self.docker = daemon.start()
                docker_host = daemon.host
            except (DevHostError, OSError) as exc:
                errors.append(f"the private dockerd did not start: {_first_line(exc)}")
                log.error("%s", exc)
        return Started(systemd_flags=systemd_flags, docker_host=docker_host, errors=errors)

    def stop(self) -> None:
        if self.docker is not None:
            self.docker.stop()
        if self.systemd is not None:
            self.systemd.stop()
        remove_tree(self.scratch)
        if self._recorded:
            self.paths.leftovers.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def keeper_main(argv: list[str] | None = None) -> None:
    """``python -m coordinator.devhost``: run until stdin closes or a signal arrives.

    The parent holds the other end of stdin: when it dies, however, the read returns."""
    p = argparse.ArgumentParser(prog="python -m coordinator.devhost")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--systemd", action="store_true")
    p.add_argument("--docker", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging()
    if not args.verbose:  # moorage dev's banner says what runs; details only with -v
        logging.getLogger("moorage.devhost").setLevel(logging.WARNING)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    keeper = Keeper(args.state_dir, systemd=args.systemd, docker=args.docker)
    try:
        try:
            started = keeper.start()
        except Exception as exc:  # the parent must get its line, whatever went wrong
            log.exception("the private runtimes could not start")
            started = Started(errors=[_first_line(exc)])
        sys.stdout.buffer.write(msgspec.json.encode(started) + b"\n")
        sys.stdout.flush()
        sys.stdin.buffer.read()
    except _Stop:
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        keeper.stop()


if __name__ == "__main__":
    keeper_main()
