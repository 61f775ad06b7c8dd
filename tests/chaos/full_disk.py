"""disk-full: the coordinator's disk fills up to the last byte in the middle of a rollout
and of API writes, for a few seconds (short config 3 s, long 10 s), then is freed.

The coordinator's state directory (its SQLite database, WAL and PKI) is a small tmpfs of
the world's own (`SmallDiskWorld`), mounted before the coordinator first starts and
unmounted when the world closes, whatever happened. What the coordinator promises
(tests/integration/test_storage_full.py): while full, writes are refused with a 5xx that
names the storage (507, or 503 for failing storage) and /readyz is not ready; it does
not crash; once space is back, writes work again and it is ready without a restart.
Besides the round's invariants (no acknowledged write lost, no unit stopped,
convergence after space is back), the fault checks those promises itself and reports a
broken one as a problem of the round.

A broken promise of the coordinator's own (a write refused without naming the storage,
/readyz ready while full, not ready or not writable again within 30 s of space coming
back, a crash) is a problem of the round (`Fault.problems`); no write refused at all
means the fault did not take (`FaultNotTaken`).

A round costs about 18 s in the long run (the rollout of three machines one at a time,
10 s full, about 5 s to converge), 8 s in the short one: the long run does 40 of them
(`Scenario.rounds`, about 12 minutes).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorctl.client import ApiClientError
from tests.chaos.runner import Config, Fault, FaultNotTaken, Scenario
from tests.chaos.world import Shape, World
from tests.harness.databases import default_engine
from tests.procs import CoordinatorProc, free_port

SIZE = "64m"
"""The small filesystem: room for the database of a long run (audit rows pile up,
about 100 KiB a round), filled with zeros in a few tens of milliseconds."""
CLEAR = (507, 503)
"""What a refused write may be answered while the disk is full: 507 (full), or 503 if
SQLite calls it an I/O failure; either must name the coordinator's storage."""
READY_AGAIN_S = 30.0


def needs() -> str | None:
    if default_engine() != "sqlite":
        return "fills the disk under the coordinator's SQLite file (PostgreSQL's is its own)"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    return None


@dataclass(frozen=True)
class Answer:
    """One API write the world made, as the coordinator answered it."""

    at: float
    """time.monotonic() when the answer came."""
    method: str
    path: str
    status: int
    """The HTTP status (2xx when acknowledged; 0: no answer)."""
    message: str = ""


class CountingCoordinator(CoordinatorProc):
    """A coordinator whose API writes (the Writer's, the rollout's) are recorded with
    their answers, so that a fault can tell how many were refused while the disk was
    full and how."""

    def __init__(self, state_dir: Path, **options: Any) -> None:
        super().__init__(state_dir, **options)
        self.answers: list[Answer] = []
        self._lock = threading.Lock()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        if method.upper() in ("GET", "HEAD"):
            return super().api(method, path, body)
        try:
            out = super().api(method, path, body)
        except ApiClientError as exc:
            self._record(Answer(time.monotonic(), method, path, exc.status, str(exc)))
            raise
        self._record(Answer(time.monotonic(), method, path, 200))
        return out

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def answers_since(self, since: float, until: float = float("inf")) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if since <= a.at <= until]


class SmallDiskWorld(World):
    """The standard world, its coordinator's state directory on a tmpfs of `SIZE`."""

    def __init__(self, tmp: Path, shape: Shape) -> None:
        super().__init__(tmp, shape)
        self.mount = tmp / "coordinator"
        self.mounted = False

    def _start(self) -> None:
        self.mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(self.mount)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.mounted = True
        super()._start()

    def _make_coordinator(self, host: str) -> CoordinatorProc:
        return CountingCoordinator(
            self.mount,
            database_url="",  # the SQLite file in the state directory, on the tmpfs
            **self._coordinator_options(host, free_port()),
        )

    @property
    def counting(self) -> CountingCoordinator:
        assert isinstance(self.coordinator, CountingCoordinator)
        return self.coordinator

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._unmount()

    def _unmount(self) -> None:
        if not self.mounted:
            return
        (self.mount / FILLER).unlink(missing_ok=True)
        done = subprocess.run(["umount", str(self.mount)], capture_output=True, timeout=30)
        if done.returncode != 0:  # something still holds it open: detach it all the same
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True, timeout=30)
        self.mounted = False


FILLER = "filler"
DATABASE = "moorage.db"


def give_back_wal(db: Path) -> bool:
    """Checkpoint the database and truncate its WAL to nothing, from a connection of our
    own (SQLite allows any connection to): SQLite reuses its WAL file from the start
    after a checkpoint, so a full filesystem would otherwise still leave the database
    room it holds already, and writes would land there (no write was refused in two
    rounds of five before this). False if the coordinator kept it busy."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=5.0, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        for _ in range(20):
            busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            time.sleep(0.05)
        return False
    except sqlite3.Error:
        return False
    finally:
        con.close()


def fill(mount: Path) -> Path:
    """Write zeros until the filesystem says ENOSPC, down to its last byte."""
    path = mount / FILLER
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return path


def readyz(coord: CoordinatorProc) -> tuple[int, str]:
    try:
        status, body = coord.raw("GET", "/readyz", cert=False)
    except Exception as exc:  # no answer at all
        return 0, str(exc)
    return status, body.decode(errors="replace")


def full_disk(seconds: float) -> Callable[[World, random.Random], Fault]:
    def inject(world: World, rng: random.Random) -> Fault:
        assert isinstance(world, SmallDiskWorld)
        coord = world.counting
        assert coord.proc is not None
        pid = coord.proc.pid
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the rollout's first batch or two
        truncated = give_back_wal(world.mount / DATABASE)
        filler = fill(world.mount)
        full_at = time.monotonic()
        probes: list[tuple[float, int, str]] = []
        try:
            while time.monotonic() - full_at < seconds:
                probes.append((time.monotonic(), *readyz(coord)))
                time.sleep(0.25)
            probes.append((time.monotonic(), *readyz(coord)))
        finally:
            filler.unlink()
        freed_at = time.monotonic()
        problems: list[str] = []
        ready_s = written_s = None
        while time.monotonic() - freed_at < READY_AGAIN_S and (
            ready_s is None or written_s is None
        ):
            now = time.monotonic()
            if ready_s is None and readyz(coord)[0] == 200:
                ready_s = now - freed_at
            if written_s is None:
                done = [a.at for a in coord.answers_since(freed_at) if a.status < 300]
                written_s = min(done) - freed_at if done else None
            time.sleep(0.2)

        answers = coord.answers_since(full_at, freed_at)
        refused = [a for a in answers if a.status >= 300]
        acked = len(answers) - len(refused)
        unclear = [
            a for a in refused if a.status not in CLEAR or "coordinator storage" not in a.message
        ]
        problems += [
            f"a write refused unclearly while full: {a.method} {a.path}: {a.message}"
            for a in unclear[:3]
        ]
        if refused:
            first = min(a.at for a in refused)
            later = [(s, body) for at, s, body in probes if at > first]
            if later and not any(s == 503 and "storage" in body for s, body in later):
                problems.append(
                    "/readyz said ready while the disk was full, after a write was refused: "
                    + ", ".join(sorted({str(s) for s, _ in later}))
                )
        not_taken = (
            "no write was refused while the disk was full"
            + ("" if truncated else " (the WAL could not be truncated first)")
            if not refused
            else ""
        )
        if ready_s is None:
            problems.append(f"/readyz not ready {READY_AGAIN_S:g} s after space came back")
        if written_s is None:
            problems.append(f"no write acknowledged {READY_AGAIN_S:g} s after space came back")
        if not coord.proc.alive() or coord.proc.pid != pid:
            problems.append("the coordinator exited while its disk was full")
        codes = sorted({a.status for a in refused})
        note = (
            f"full {freed_at - full_at:.1f} s: {len(refused)} writes refused "
            f"({', '.join(map(str, codes)) or 'none'}), {acked} acknowledged meanwhile; "
            f"/readyz {'/'.join(sorted({str(s) for _, s, _ in probes}))} while full, "
            + ("never ready again" if ready_s is None else f"ready {ready_s:.1f} s after")
            + ("" if written_s is None else f", a write taken {written_s:.1f} s after")
        )
        if not_taken:
            raise FaultNotTaken("; ".join([not_taken, *problems]) + f" [{note}]")
        return Fault(note=note, problems=tuple(problems))

    return inject


def scenarios(config: Config) -> list[Scenario]:
    seconds = 3.0 if config.shorter else 10.0
    return [
        Scenario(
            "disk-full",
            full_disk(seconds),
            shape=config.loopback(),
            world=SmallDiskWorld,
            needs=needs,
            rounds=lambda c: min(c.rounds, 40),
        )
    ]
