"""How the coordinator's C heap behaves with thousands of TLS connections.

uvloop gives every TLS connection a 256 KiB read buffer (`malloc`) of which a
connection touches a few pages. glibc serves allocations that large with their own
`mmap`, whose untouched pages never become resident, but only until the first such
block is freed: it then raises its mmap threshold to that size ("dynamic threshold"),
and from then on every new connection's buffer comes from the heap, reusing pages
that closed connections already touched. Agents reconnect (restarts, enrolment,
network trouble), so the heap would grow with the churn. Fixing the threshold at
glibc's default keeps each buffer in its own mapping: what a connection holds resident
is what it touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number (malloc.h)."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's default, made fixed (setting it turns the dynamic adjustment off)."""


def fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold; False (and nothing changed) on another libc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return done
