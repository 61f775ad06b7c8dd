"""A real, private ``dockerd`` for integration tests (TESTING.md section 2).

Each instance has its own socket, data root, exec root, config file and cgroup parent in
a scratch directory, so several can run beside each other (and beside a host Docker)
without sharing anything: there is no bridge and no iptables on these machines, so
containers use ``network_mode="none"``; the vfs storage driver needs no kernel module.
Images come from ``import_busybox()`` (no registry is reachable); imported images have no
RepoDigests, their digest is the image ID.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from .systemd import (
    HarnessError,
    kill_cgroup,
    remove_cgroup,
    remove_tree,
    stop_popen,
    terminate_pid,
    unique_cgroup_name,
)

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")
BUSYBOX_TAG = "moorage-test/busybox:1"
# Applets linked in the test image (the recipe needs sh sleep echo ls cat).
BUSYBOX_APPLETS = (
    "sh", "sleep", "echo", "ls", "cat", "true", "false", "env", "kill", "ps", "printf",
    "test", "date", "id", "wc", "head", "tail", "grep", "hostname", "touch", "rm", "mkdir",
)  # fmt: skip


def dockerd_available() -> str | None:
    """None if a private dockerd can be started here, else why not (skip reason)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (dockerd)"
    for tool, package in (
        ("dockerd", "docker.io"),
        ("containerd", "containerd"),
        ("runc", "runc"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt install {package})"
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the docker Python SDK is not installed"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} missing (apt install busybox-static)"
    return None


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF without a program interpreter (runs in an empty image)."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only; fine for busybox here
            return False
        order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
        phoff = int.from_bytes(header[32:40], order)
        phentsize = int.from_bytes(header[54:56], order)
        phnum = int.from_bytes(header[56:58], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(
        int.from_bytes(table[i : i + 4], order) != pt_interp
        for i in range(0, len(table), phentsize)
    )


def _mount_points_under(root: Path) -> list[str]:
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


def _pids_mentioning(text: str) -> list[int]:
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


class Dockerd:
    """A private dockerd; use as a context manager or start()/stop()."""

    def __init__(
        self,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self.root = Path(tempfile.mkdtemp(prefix="moorage-dockerd-"))
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.socket_path = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.config_file = self.root / "daemon.json"
        self.log_path = self.root / "dockerd.log"
        self.host = f"unix://{self.socket_path}"
        self.env: dict[str, str] = {**os.environ, "DOCKER_HOST": self.host}
        # Own cgroup parent: teardown then removes exactly the cgroups of our containers.
        self.cgroup_parent = unique_cgroup_name("-docker")
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._clients: list[Any] = []
        self._started = False
        self._stopped = False

    # -- public API

    @property
    def pid(self) -> int:
        """PID of the running dockerd (changes on restart())."""
        if self._proc is None:
            raise HarnessError("dockerd was not started")
        return self._proc.pid

    def start(self) -> Self:
        """Start dockerd and return once it answers ``ping``."""
        if self._started or self._stopped:
            raise HarnessError("a Dockerd instance can be started once (use restart())")
        self._started = True
        try:
            self._write_config()
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """SIGTERM dockerd, wait, start it again on the same data root.

        Clients made before keep working: each request opens a new unix-socket connection.
        """
        if self._proc is None or self._stopped:
            raise HarnessError("dockerd is not running")
        stop_popen(self._proc, timeout=self.stop_timeout, what="dockerd")
        self._proc = None
        self._launch()

    def stop(self) -> None:
        """Tear everything down; idempotent, logs instead of raising."""
        if self._stopped:
            return
        self._stopped = True
        for step in (
            self._remove_containers,
            self._close_clients,
            self._stop_daemon,
            self._kill_leftovers,
            self._unmount,
            lambda: kill_cgroup(self.cgroup_parent),
            lambda: remove_cgroup(self.cgroup_parent),
            lambda: remove_tree(self.root),
        ):
            try:
                step()
            except Exception:
                log.exception("teardown of dockerd (%s) failed a step", self.root)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self, *, timeout: int = 60) -> Any:
        """A ``docker.DockerClient`` for this daemon (closed at teardown)."""
        import docker

        client = docker.DockerClient(base_url=self.host, timeout=timeout)
        self._clients.append(client)
        return client

    def docker_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the ``docker`` CLI against this daemon."""
        return subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, check=check
        )

    def import_busybox(self, tag: str = BUSYBOX_TAG) -> str:
        """Import a one-binary image made from the host's static busybox; returns its ID."""
        from docker.utils import parse_repository_tag

        if not _is_static_elf(BUSYBOX):
            raise HarnessError(f"{BUSYBOX} is not static (apt install busybox-static)")
        buf = BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in ("bin", "tmp"):
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if name == "tmp" else 0o755
                tar.addfile(info)
            tar.add(str(BUSYBOX), arcname="bin/busybox")
            for applet in BUSYBOX_APPLETS:
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type = tarfile.SYMTYPE
                info.linkname = "busybox"
                tar.addfile(info)
        repository, image_tag = parse_repository_tag(tag)
        client = self.client()
        client.api.import_image_from_data(
            buf.getvalue(),
            repository=repository,
            tag=image_tag or "latest",
            changes=['CMD ["/bin/sh"]'],
        )
        return str(client.images.get(tag).id)

    # -- internals

    def _args(self) -> list[str]:
        return [
            "dockerd",
            "--config-file", str(self.config_file),
            "--iptables=false",
            "--ip-forward=false",  # do not flip the host's net.ipv4.ip_forward
            "--bridge=none",
            "--storage-driver=vfs",
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
            )
        self._wait_ready()
        self.startup_seconds = time.monotonic() - began
        log.info("dockerd pid %d ready in %.2f s", self._proc.pid, self.startup_seconds)

    def _wait_ready(self) -> None:
        import docker

        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise HarnessError(f"dockerd exited with {code}\n{self._log_tail()}")
            if self.socket_path.exists():
                try:
                    client = docker.DockerClient(base_url=self.host, timeout=5)
                    try:
                        if client.ping():
                            return
                    finally:
                        client.close()
                except Exception as exc:  # not ready yet: refused, 5xx, ...
                    last_error = exc
            time.sleep(0.05)
        raise HarnessError(
            f"dockerd not answering after {self.start_timeout} s ({last_error!r})\n"
            f"{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")[-8000:]
        except OSError as exc:
            text = f"<unreadable: {exc}>"
        return f"--- {self.log_path}:\n{text}"

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _remove_containers(self) -> None:
        """Every container of a private daemon is ours: remove them all, fast (SIGKILL)."""
        if not self._running():
            return
        client = self.client(timeout=30)
        for container in client.containers.list(all=True):
            try:
                container.remove(force=True, v=True)
            except Exception as exc:
                log.warning("could not remove container %s: %s", container.id, exc)
        # Shims exit a moment after their container; if containerd (their subreaper) is
        # gone by then they become zombies of PID 1, which reaps slowly here.
        deadline = time.monotonic() + 5
        while self._shim_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _shim_pids(self) -> list[int]:
        shims: list[int] = []
        for pid in _pids_mentioning(str(self.root)):
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                continue
            if b"containerd-shim" in argv0:
                shims.append(pid)
        return shims

    def _close_clients(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        self._clients.clear()

    def _stop_daemon(self) -> None:
        if self._proc is not None:
            stop_popen(self._proc, timeout=self.stop_timeout, what="dockerd")

    def _kill_leftovers(self) -> None:
        """containerd and shims outlive a SIGKILLed dockerd; they name our scratch dir."""
        for pid in _pids_mentioning(str(self.root)):
            log.warning("killing leftover process %d of dockerd %s", pid, self.root)
            terminate_pid(pid, timeout=5, what="dockerd leftover")

    def _unmount(self) -> None:
        """Unmount shm/netns mounts a killed dockerd leaves under its roots."""
        for point in _mount_points_under(self.root):
            result = subprocess.run(["umount", point], capture_output=True, text=True)
            if result.returncode != 0:
                result = subprocess.run(["umount", "--lazy", point], capture_output=True, text=True)
            if result.returncode != 0:
                log.warning("could not unmount %s: %s", point, result.stderr.strip())
