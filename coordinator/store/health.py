"""Whether the store takes writes: a fault is logged when it starts and when it ends.

Engine-neutral: each engine reports its writes' outcome here (`failed`/`ok`); the
metrics, /readyz and the state buffer read it.
"""

from __future__ import annotations

import logging
import time

from coordinator.store.ports import FAULT_MESSAGES

log = logging.getLogger("coordinator.storage")


class StorageHealth:
    """Whether the last write got through. A fault is logged when it starts and when
    it ends, not per write; a disk that flaps (a small write fits where a big one did
    not) logs each of the two lines at most once per `QUIET_S`."""

    QUIET_S = 60.0

    def __init__(self) -> None:
        self.fault = ""
        self.detail = ""
        self.since = 0.0
        self.failures = 0
        self._fault_logged = -self.QUIET_S
        self._ok_logged = -self.QUIET_S

    @property
    def message(self) -> str:
        if not self.fault:
            return ""
        return f"{FAULT_MESSAGES.get(self.fault, 'coordinator storage failed')} ({self.detail})"

    def failed(self, kind: str, detail: str) -> None:
        self.failures += 1
        if self.fault == kind:
            return
        now = time.monotonic()
        self.fault, self.detail, self.since = kind, detail, time.time()
        if now - self._fault_logged >= self.QUIET_S:
            self._fault_logged = now
            log.error("%s; writes are refused or retried until it is fixed", self.message)

    def ok(self) -> None:
        if not self.fault:
            return
        now = time.monotonic()
        if now - self._ok_logged >= self.QUIET_S:
            self._ok_logged = now
            log.warning(
                "coordinator storage is writable again (after %.0f s)", time.time() - self.since
            )
        self.fault, self.detail = "", ""
