"""Write-behind for what machines report: Hellos, liveness, unit states, acks.

These are observations, not writes a client waits on: every agent re-sends all of
them in its next Hello, so a crash between two flushes loses nothing acknowledged.
Batching them turns thousands of fsyncs per second (a reconnect storm of 10,000
agents) into a few transactions, while operator writes stay synchronous.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from coordinator.storage import Storage

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05
MAX_PENDING = 2000


class StateBuffer:
    def __init__(self, storage: Storage, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.storage = storage
        self.interval_s = interval_s
        self._ops: list[Callable[[], None]] = []
        self._wake = asyncio.Event()

    def add(self, op: Callable[[], None]) -> None:
        """Queue a storage write; writes are applied in the order they were added."""
        self._ops.append(op)
        if len(self._ops) >= MAX_PENDING:
            self.flush()
        else:
            self._wake.set()

    def flush(self) -> None:
        ops, self._ops = self._ops, []
        if not ops:
            return
        try:
            with self.storage.batch():
                for op in ops:
                    op()
        except Exception:
            # One bad write must not cost the others: replay them one transaction each.
            log.warning("a batch of %d state updates failed; writing them one by one", len(ops))
            for op in ops:
                try:
                    with self.storage.batch():
                        op()
                except Exception:
                    log.exception("a buffered state update failed")

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()  # before sleeping: an add() during the sleep wakes us again
            await asyncio.sleep(self.interval_s)
            self.flush()
