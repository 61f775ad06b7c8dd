"""One agent per state directory: an flock held for the life of the process.

Two agents on one identity would fight over the same units and the same session (each
one's reconnect closing the other's). The kernel drops the lock when the process
dies, however it dies, so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "agent.lock"


class StateDirBusy(Exception):
    """Another live process holds the state directory; the message names it."""


def lock_state_dir(state_dir: Path) -> int:
    """Take the state directory's lock (it is kept until the process exits) and write
    our PID into the lock file; raise `StateDirBusy` naming the PID holding it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirBusy(
            f"another agent (pid {holder}) is running on state directory {state_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def lock_holder(state_dir: Path) -> int | None:
    """The PID of the live agent holding the state directory, or None when none runs
    (a probe: the lock is taken and let go at once, the file left as it was)."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
