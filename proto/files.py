"""Atomic file writes for keys, certificates and state, without the crypto stack.

Kept apart from pki.py so the agent can persist its state without importing
`cryptography` (several MiB of resident memory it needs only when renewing).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a secret: the temp file is created 0600, so the content is
    never readable by others, not even between creation and rename."""
    _write_atomic(Path(path), data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write a non-secret file (certificates, CA), mode 0644."""
    _write_atomic(Path(path), data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write to a temp file in the same directory, fsync, rename over the target, then
    fsync the directory: readers see the old or the new content, never a torn file."""
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits we want (0644)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dfd)
    finally:
        os.close(dfd)
