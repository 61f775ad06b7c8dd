"""SHA-256 of the unit files the agent manages, re-read only when their stat changes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

FileKey = tuple[int, int, int, int]


class UnitFiles:
    """SHA-256 of unit files, read again only when a file's stat changed (inode, size,
    mtime, ctime): checking 500 files every few seconds costs 500 stats, not 500 reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._prefix = os.path.join(directory, "")
        """String paths: pathlib's joins cost more than the stat itself, every 2 s."""
        self._seen: dict[str, tuple[FileKey | None, str | None]] = {}

    def scan(self, names: Iterable[str], *, prune: bool = False) -> set[str]:
        """Stat ``names`` (re-hashing what changed); the names whose hash changed.
        ``prune`` forgets every other name."""
        wanted = set(names)
        if prune:
            for name in [n for n in self._seen if n not in wanted]:
                del self._seen[name]
        return {n for n in wanted if self._update(n)}

    def sha(self, name: str) -> str | None:
        """The file's SHA-256 as of the last scan (None: no file; "unreadable")."""
        if name not in self._seen:
            self._update(name)
        return self._seen[name][1]

    def _update(self, name: str) -> bool:
        path = self._prefix + name
        key: FileKey | None
        try:
            st = os.stat(path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except FileNotFoundError:
            key = None
        except OSError:
            key = (-1, -1, -1, -1)
        old = self._seen.get(name)
        if old is not None and old[0] == key and key != (-1, -1, -1, -1):
            return False
        sha: str | None = None
        if key is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    sha = hashlib.sha256(f.read().encode()).hexdigest()
            except FileNotFoundError:
                key = None
            except (OSError, UnicodeDecodeError):
                sha = "unreadable"
        self._seen[name] = (key, sha)
        return old is None or old[1] != sha
