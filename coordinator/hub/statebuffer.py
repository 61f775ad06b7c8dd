"""Write-behind for what machines report: Hellos, liveness, unit states, acks.

These are observations, not writes a client waits on: every agent re-sends all of
them in its next Hello, so a crash between two flushes loses nothing acknowledged.
Batching them turns thousands of fsyncs per second (a reconnect storm of 10,000
agents) into a few transactions, while operator writes stay synchronous.

While the storage is full or failing nothing queued is dropped: the writes stay
queued, in order, and are retried every `RETRY_S` until they are stored (an agent
does not re-send a state it already reported, and a liveness change is never
re-sent at all). Only a write that fails for its own reason is dropped, alone.

The periodic flush writes its batch in a thread (`asyncio.to_thread`): a batch of
thousands of rows and its fsync stay off the event loop. Batches land in the order
they were taken: `_order` is held from taking a batch to its COMMIT, so a synchronous
`flush` (the liveness check, a rollout tick, shutdown) first waits for the batch in
flight and then sees it stored.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from coordinator.store.ports import StorageUnavailable, StoreAdmin

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05
RETRY_S = 1.0
MAX_PENDING = 2000
"""Queued writes that make the flusher write at once (no gathering pause)."""
HARD_PENDING = 20 * MAX_PENDING
"""Queued writes past which `add` writes them itself, on the loop: the flusher cannot
keep up, and holding the agents' messages back is the only bound left (memory). Below
it the loop never waits on the database for observations (a burst of 2,000 state
reports once blocked it for a whole batch on PostgreSQL)."""


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
        self._order = threading.Lock()
        """Held while a batch is written (on the loop or in a thread): one at a time, in order."""

    @property
    def pending(self) -> int:
        return len(self._ops)

    def add(self, op: Callable[[], None]) -> None:
        """Queue a storage write; writes are applied in the order they were added."""
        self._ops.append(op)
        if len(self._ops) >= HARD_PENDING and not self.stalled:
            self.flush()
        else:
            self._wake.set()

    def flush(self) -> bool:
        """Write everything queued, on this thread, after any batch in flight; False if
        the storage refused and writes wait."""
        ops, self._ops = self._ops, []
        if not ops:
            return True
        with self._order:
            unwritten = self._write(ops)
        return self._settle(unwritten)

    async def flush_in_thread(self) -> bool:
        """`flush`, with the batch written in a thread so the event loop keeps running."""
        ops, self._ops = self._ops, []
        if not ops:
            return True
        self._order.acquire()  # free: only this task writes batches off the loop
        written = asyncio.ensure_future(asyncio.to_thread(self._write_then_release, ops))
        try:
            unwritten = await asyncio.shield(written)
        except asyncio.CancelledError:
            # The thread goes on; what a fault leaves unwritten is still queued again.
            written.add_done_callback(lambda f: f.cancelled() or self._settle(f.result()))
            raise
        return self._settle(unwritten)

    def _write_then_release(self, ops: list[Callable[[], None]]) -> list[Callable[[], None]]:
        try:
            return self._write(ops)
        finally:
            self._order.release()

    def _write(self, ops: list[Callable[[], None]]) -> list[Callable[[], None]]:
        """Apply `ops` in one transaction; what is left unwritten by a storage fault.
        Touches nothing but the store: it may run in a thread."""
        try:
            with self.storage.batch():
                for op in ops:
                    op()
        except StorageUnavailable:
            return ops
        except Exception:
            # One bad write must not cost the others: replay them one transaction each.
            log.warning("a batch of %d state updates failed; writing them one by one", len(ops))
            for i, op in enumerate(ops):
                try:
                    with self.storage.batch():
                        op()
                except StorageUnavailable:
                    return ops[i:]
                except Exception:
                    log.exception("a buffered state update failed")
        return []

    def _settle(self, unwritten: list[Callable[[], None]]) -> bool:
        """Back on the loop: queue what a fault left unwritten ahead of newer writes."""
        if unwritten:
            self._ops = unwritten + self._ops
            self.stalled = True
            return False
        self.stalled = False
        return True

    async def run(self) -> None:
        while True:
            if self.stalled or self.storage.health.fault:
                # Retry (or, with nothing queued, probe) until the storage takes writes:
                # /readyz must turn ready again even if no agent reports anything.
                await asyncio.sleep(self.retry_s)
                if not self._ops:
                    self.stalled = not await asyncio.to_thread(self.storage.probe)
                    continue
            else:
                await self._wake.wait()
                self._wake.clear()  # before sleeping: an add() during the sleep wakes us again
                if len(self._ops) < MAX_PENDING:
                    await asyncio.sleep(self.interval_s)  # gather a batch
            await self.flush_in_thread()
