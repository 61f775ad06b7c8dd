"""Local git repositories (file:// URLs) that WebOps deployments build from, in tests
and in the fault suite: no network, a fixed identity, bounded in time."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(path: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@moorage.test", *args],
        cwd=path,
        check=True,
        capture_output=True,
        timeout=60,
    )


def commit(path: Path, files: dict[str, str | None], message: str) -> None:
    """Write (text) or delete (None) each file, and commit them all."""
    for name, text in files.items():
        if text is None:
            (path / name).unlink()
        else:
            (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)


def git_repo(path: Path, files: dict[str, str | None]) -> str:
    """A new repository at `path` (branch main) with `files` in its first commit; its URL."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    commit(path, files, "first")
    return f"file://{path}"
