"""The coordinator's disk fills up: it says so, keeps what agents report, and catches
up on liveness and unit states once space is back, without a restart.

The coordinator's state directory is a small tmpfs this test mounts (and unmounts);
the disk is filled by a file and freed by deleting it. Two real agents on their own
real systemd managers.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleetrig import Fleet
from tests.harness.databases import default_engine
from tests.harness.systemd import systemd_available
from tests.procs import wait_for

pytestmark = pytest.mark.integration

TICKER = "[Service]\nExecStart=/bin/sh -c 'while true; do sleep 0.5; done'\n"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs where the coordinator's state directory will be."""
    if default_engine() != "sqlite":
        # the database is then the PostgreSQL server's, on its own disk: the store's
        # mapping of PostgreSQL's disk-full SQLSTATE is a unit test (test_sql_engines.py)
        pytest.skip("fills the disk under the coordinator's SQLite file")
    reason = systemd_available()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "coordinator"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mnt)],
        check=True,
        capture_output=True,
    )
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path) -> Path:
    """Write zeros until the filesystem says ENOSPC (down to its last 4 KiB)."""
    path = mnt / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return path


def test_a_full_disk_is_named_and_liveness_and_states_catch_up_after_it(
    small_fs: Path, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path, ("m1", "m2"), lost_after=5)
    try:
        c = fleet.coordinator
        assert c.proc is not None
        pid = c.proc.pid
        (fleet.workdir / "web.service").write_text(TICKER)
        fleet.moorctl("start", "web.service")
        (victim,) = c.api("GET", "/moorage/v1/units/web.service")["machines"]
        survivor = "m2" if victim == "m1" else "m1"
        (fleet.workdir / "hand.service").write_text(TICKER + f"\n[X-Fleet]\nMachineID={survivor}\n")
        fleet.moorctl("start", "hand.service")

        filler = fill(small_fs)
        # Writes refused, named: the WAL may still have room for a few, so write until
        # one is refused (each request stores 500 join tokens).
        refused = None
        for _ in range(200):
            status, body = c.raw(
                "POST",
                "/moorage/v1/join-tokens",
                data=b'{"count": 500}',
                headers={"Content-Type": "application/json"},
            )
            if status != 200:
                refused = (status, body.decode())
                break
        assert refused is not None, "no write was refused on a full disk"
        assert refused[0] == 507, refused
        assert "coordinator storage is full" in refused[1], refused
        status, body = c.raw("GET", "/readyz", cert=False)
        assert status == 503 and b"coordinator storage is full" in body, body
        assert "moorage_storage_writable 0.0" in c.metrics()

        # Meanwhile: a machine dies, and a unit is stopped by hand on the other one.
        agent = fleet.agents[victim].proc
        assert agent is not None
        agent.kill9()
        killed_at = time.monotonic()
        fleet.systemds[survivor].systemctl("stop", "hand.service", check=True)
        time.sleep(2.5)
        assert c.raw("GET", "/readyz", cert=False)[0] == 503

        filler.unlink()
        freed_at = time.monotonic()
        wait_for(
            lambda: _state(fleet, victim) in ("disconnected", "lost"),
            timeout=5,
            what="the killed machine disconnected once space is back",
        )
        wait_for(
            lambda: _active(fleet, "hand.service", survivor) == "inactive",
            timeout=5,
            what="the unit stopped by hand reported inactive once space is back",
        )
        back = time.monotonic() - freed_at
        wait_for(lambda: _state(fleet, victim) == "lost", timeout=10, what="lost")
        lost_after = time.monotonic() - killed_at
        assert 4.5 <= lost_after <= 8.5, f"lost {lost_after:.1f} s after the kill (lost_after 5)"
        wait_for(
            lambda: c.api("GET", "/moorage/v1/units/web.service")["machines"] == [survivor],
            timeout=10,
            what="web.service rescheduled",
        )
        wait_for(lambda: survivor in fleet.active_on("web.service"), timeout=20, what="web moved")
        wait_for(lambda: c.raw("GET", "/readyz", cert=False)[0] == 200, timeout=5, what="ready")
        assert "moorage_storage_writable 1.0" in c.metrics()
        assert c.proc.pid == pid and c.proc.alive(), "the coordinator was not restarted"
        log = c.proc.log()
        assert 1 <= log.count("coordinator storage is full (") <= 3, "logged once, not per write"
        assert "Server got itself in trouble" not in log
        print(f"states back {back:.1f} s after space came back; lost at {lost_after:.1f} s")
    finally:
        fleet.close()


def _state(fleet: Fleet, mid: str) -> str:
    return str(next(m["state"] for m in fleet.coordinator.machines() if m["id"] == mid))


def _active(fleet: Fleet, unit: str, mid: str) -> str:
    states = fleet.coordinator.api("GET", f"/moorage/v1/unit-states?unit={unit}&machine={mid}")
    return str(states["states"][0]["active_state"]) if states["states"] else ""
