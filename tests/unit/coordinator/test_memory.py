"""The coordinator pins glibc's mmap threshold (coordinator/memory.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

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
