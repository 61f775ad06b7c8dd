"""A real, private ``dockerd`` for integration tests (TESTING.md section 2).

Each instance has its own socket, data root, exec root, config file and cgroup parent in
a scratch directory, so several can run beside each other (and beside a host Docker)
without sharing anything: there is no bridge and no iptables on these machines, so
containers use ``network_mode="none"``; the vfs storage driver needs no kernel module.
Images come from ``import_busybox()`` (no registry is reachable); imported images have no
RepoDigests, their digest is the image ID.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

from coordinator.devhost import PrivateDockerd, pids_mentioning

from .systemd import HarnessError, unique_cgroup_name

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


def import_busybox(client: Any, tag: str = BUSYBOX_TAG) -> str:
    """Import a one-binary image made from the host's static busybox into the engine of
    ``client`` (a ``docker.DockerClient``); returns its ID."""
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
    client.api.import_image_from_data(
        buf.getvalue(),
        repository=repository,
        tag=image_tag or "latest",
        changes=['CMD ["/bin/sh"]'],
    )
    return str(client.images.get(tag).id)


class Dockerd(PrivateDockerd):
    """A private dockerd in a scratch directory of its own (data root included), on the
    vfs driver; use as a context manager or start()/stop()."""

    def __init__(
        self,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        root = Path(tempfile.mkdtemp(prefix="moorage-dockerd-"))
        super().__init__(
            root,
            root / "data",
            # Own cgroup parent: teardown then removes exactly the cgroups of our containers.
            unique_cgroup_name("-docker"),
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            extra_args=("--storage-driver=vfs", *extra_args),
        )
        self._clients: list[Any] = []

    def _teardown_steps(self) -> list[Callable[[], object]]:
        return [self._remove_containers, self._close_clients, *super()._teardown_steps()]

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
        return import_busybox(self.client(), tag)

    # -- internals

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
        for pid in pids_mentioning(str(self.root)):
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
