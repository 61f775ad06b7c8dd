"""The coordinator's memory: it pins glibc's mmap threshold (coordinator/memory.py) and
does not import at start what only some requests or commands use (#22)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_large_buffers_stay_in_their_own_mappings_after_one_is_freed() -> None:
    """Without the fix, freeing one 256 KiB block raises glibc's threshold and the next
    comes from the heap; with it, each is its own mapping (glibc marks such a chunk with
    bit 1, IS_MMAPPED, of the size word just before the pointer)."""
    code = """
import ctypes, sys
from coordinator.memory import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(256 * 1024))  # the first freed block: glibc adjusts here
p = libc.malloc(256 * 1024)
print(ctypes.c_size_t.from_address(p - ctypes.sizeof(ctypes.c_size_t)).value & 2)
"""
    mapped = {}
    for mode in ("dynamic", "fixed"):
        out = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
        )
        mapped[mode] = int(out.stdout) == 2
    assert mapped == {"dynamic": False, "fixed": True}


DEFERRED = (
    "yaml",
    "coordinator.deploy.manifest_yaml",
    "jinja2",
    "alembic",
    "psycopg",
    "sqlalchemy.dialects.postgresql",
)
"""Imported by the first manifest (PyYAML and the parser, ~1 MiB), dashboard page,
schema upgrade or PostgreSQL store, never by the import of the server."""


def test_the_server_does_not_import_what_only_some_requests_use() -> None:
    code = f"""
import sys
from pathlib import Path
import coordinator.server
print(sorted(m for m in {DEFERRED!r} if m in sys.modules))
from coordinator.deploy.manifest import parse_manifest
parse_manifest('units: [{{name: a.service, contents: "[Service]\\\\nExecStart=/bin/true"}}]')
print("yaml" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def test_a_new_database_is_migrated_apart_and_alembic_never_loads(tmp_path: Path) -> None:
    """`serve` migrates a schema that is behind in a forked child (cli.migrate_apart):
    the coordinator then opens a database at its head without importing Alembic."""
    code = f"""
import sys
from pathlib import Path
from coordinator.cli import migrate_apart
from coordinator.config import CoordinatorConfig
from coordinator.store.sql import SqlStore, core, migrate
config = CoordinatorConfig(state_dir={str(tmp_path / "state")!r})  # not there yet
migrate_apart(config)
assert core.status(config.database)[0] == migrate.HEAD, core.status(config.database)
SqlStore(config.database).close()
print("alembic" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"]
