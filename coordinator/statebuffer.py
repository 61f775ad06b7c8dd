"""Write-behind for what machines report: Hellos, liveness, unit states, acks.

These are observations, not writes a client waits on: every agent re-sends all of
them in its next Hello, so a crash between two flushes loses nothing acknowledged.
Batching them turns thousands of fsyncs per second (a reconnect storm of 10,000
agents) into a few transactions, while operator writes stay synchronous.

While the storage is full or failing nothing queued is dropped: the writes stay
queued, in order, and are retried every `RETRY_S` until they are stored (an agent
does not re-send a state it already reported, and a liveness change is never
re-sent at all). Only a write that fails for its own reason is dropped, alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from coordinator.store.ports import StorageUnavailable, StoreAdmin

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05
RETRY_S = 1.0
MAX_PENDING = 2000


class StateBuffer:
    def __init__(
        self, storage: StoreAdmin, interval_s: float = FLUSH_INTERVAL_S, retry_s: float = RETRY_S
    ) -> None:
        self.storage = storage
        self.interval_s = interval_s
        self.retry_s = retry_s
        self._ops: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self.stalled = False
        """The last flush stopped on a storage fault; what it could not write is queued."""

    @property
    def pending(self) -> int:
        return len(self._ops)

    def add(self, op: Callable[[], None]) -> None:
        """Queue a storage write; writes are applied in the order they were added."""
        self._ops.append(op)
        if len(self._ops) >= MAX_PENDING and not self.stalled:
            self.flush()
        else:
            self._wake.set()

    def flush(self) -> bool:
        """Write everything queued; False if the storage refused and writes wait."""
        ops, self._ops = self._ops, []
        if not ops:
            return True
        try:
            with self.storage.batch():
                for op in ops:
                    op()
        except StorageUnavailable:
            return self._stall(ops)
        except Exception:
            # One bad write must not cost the others: replay them one transaction each.
            log.warning("a batch of %d state updates failed; writing them one by one", len(ops))
            for i, op in enumerate(ops):
                try:
                    with self.storage.batch():
                        op()
                except StorageUnavailable:
                    return self._stall(ops[i:])
                except Exception:
                    log.exception("a buffered state update failed")
        self.stalled = False
        return True

    def _stall(self, unwritten: list[Callable[[], None]]) -> bool:
        self._ops = unwritten + self._ops
        self.stalled = True
        return False

    async def run(self) -> None:
        while True:
            if self.stalled or self.storage.health.fault:
                # Retry (or, with nothing queued, probe) until the storage takes writes:
                # /readyz must turn ready again even if no agent reports anything.
                await asyncio.sleep(self.retry_s)
                if not self._ops:
                    self.stalled = not self.storage.probe()
                    continue
            else:
                await self._wake.wait()
                self._wake.clear()  # before sleeping: an add() during the sleep wakes us again
                await asyncio.sleep(self.interval_s)
            self.flush()
