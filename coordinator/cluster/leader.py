"""The leader: this coordinator's part in the lease that singleton work runs under.

Every coordinator runs one `Leader`. It registers the coordinator and keeps its
heartbeat (other coordinators' leader reaps the hub sessions of one whose heartbeat
stopped), and tries to take the lease; holding it, it renews it every `renew_s` and
runs the singleton coroutines, each in a context whose `FENCE` names this tenure, so
the store refuses their writes once the tenure is over. When a renewal is refused,
or none succeeds before the tenure's local deadline (`lease.deadline`, before the
database's expiry), the work is cancelled at once; it starts again, from the
beginning, when the lease is taken again. With SQLite (one coordinator) the lease is
taken at start and kept: the work runs as it always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from coordinator.cluster import lease
from coordinator.store.fence import FENCE, Fence
from coordinator.store.ports import ClusterStore

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[], Coroutine[Any, Any, None]]

RESTART_S = 1.0
"""A singleton coroutine that failed (or returned) is started again after this."""
STOP_WAIT_S = 2.0
"""How long losing the lease waits for cancelled work to finish unwinding."""


class Leader:
    def __init__(
        self,
        store: ClusterStore,
        coordinator_id: str,
        *,
        ttl_s: float = lease.DEFAULT_TTL_S,
        renew_s: float = lease.DEFAULT_RENEW_S,
        name: str = lease.LEADER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.id = coordinator_id
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.name = name
        self.clock = clock
        self.work: dict[str, Work] = {}
        """Singleton coroutines by name (a factory each: started again on every tenure)."""
        self.tenure: lease.Tenure | None = None
        self.tenures = 0
        """How many times this coordinator took the lease (a metric, and for tests)."""
        self._running: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._urls = ("", "")
        self._last = 0.0
        self._warned = False

    @property
    def leading(self) -> bool:
        return self.tenure is not None and not lease.lost(self.clock(), self.tenure)

    @property
    def epoch(self) -> int:
        return self.tenure.epoch if self.tenure is not None else 0

    def add(self, name: str, work: Work) -> None:
        """Run `work` only while leading (before `start`)."""
        self.work[name] = work

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, api_url: str = "", hub_url: str = "") -> None:
        """Register, make the first attempt at the lease (so a lone coordinator leads
        as soon as it started), then keep at it in the background."""
        self._urls = (api_url, hub_url)
        await self._call(self.store.register_coordinator, self.id, api_url, hub_url, time.time())
        await self._attempt()
        self._tasks.append(asyncio.create_task(self._loop()))
        self._tasks.append(asyncio.create_task(self._heartbeats()))

    async def stop(self) -> None:
        """Stop the work and give the lease up, so another coordinator takes it at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        held = self.tenure
        await self._abdicate("stopping")
        if held is not None:
            await self._call(self.store.release, self.name, self.id, held.epoch, within_s=1.0)

    # --- the lease ------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(lease.wait_s(self.clock(), self._last, self.renew_s, self.tenure))
            await self._attempt()

    async def _attempt(self) -> None:
        """One acquisition or renewal, and what follows from its answer."""
        now = self._last = self.clock()
        if self.tenure is not None and lease.lost(now, self.tenure):
            await self._abdicate("its renewal did not succeed in time")
        tenure = self.tenure
        if tenure is None:
            ok, epoch = await self._call(
                self.store.try_acquire, self.name, self.id, self.ttl_s, within_s=self.renew_s
            )
            if ok and epoch is not None:
                self._lead(lease.Tenure(epoch, lease.deadline(now, self.ttl_s)))
            return
        ok, renewed = await self._call(
            self.store.renew,
            self.name,
            self.id,
            tenure.epoch,
            self.ttl_s,
            within_s=max(0.0, tenure.deadline - now),
        )
        if self.tenure is not tenure:
            return
        if ok and renewed:
            self.tenure = lease.renewed(tenure, now, self.ttl_s)
        elif ok:
            await self._abdicate("the lease expired or another coordinator took it")
        elif lease.lost(self.clock(), tenure):
            await self._abdicate("its renewal did not succeed in time")

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.renew_s)
            ok, alive = await self._call(self.store.heartbeat_coordinator, self.id)
            if ok and not alive:  # pruned, or the database was restored: say who we are again
                await self._call(self.store.register_coordinator, self.id, *self._urls, time.time())

    async def _call(
        self, fn: Callable[..., T], *args: Any, within_s: float | None = None
    ) -> tuple[bool, T | None]:
        """A store call in a thread (it may wait on a long write, or on a database that
        does not answer), bounded by `within_s`: (whether it answered, its answer)."""
        try:
            async with asyncio.timeout(within_s):
                result = await asyncio.to_thread(fn, *args)
        except Exception as exc:
            if not self._warned:
                log.warning("lease %r: the database did not answer: %s", self.name, exc)
                self._warned = True
            return False, None
        self._warned = False
        return True, result

    # --- the work -------------------------------------------------------------------------

    def _lead(self, tenure: lease.Tenure) -> None:
        self.tenure = tenure
        self.tenures += 1
        log.info("coordinator %s leads (lease %r, epoch %d)", self.id, self.name, tenure.epoch)
        fenced = contextvars.copy_context()
        fenced.run(FENCE.set, Fence(self.name, self.id, tenure.epoch))
        for name, work in self.work.items():
            self._running[name] = asyncio.create_task(
                self._supervise(name, work), name=f"singleton:{name}", context=fenced.copy()
            )

    async def _abdicate(self, why: str) -> None:
        """Cancel the singleton work at once, then wait (briefly) for it to unwind."""
        if self.tenure is None:
            return
        log.warning(
            "coordinator %s no longer leads (epoch %d): %s", self.id, self.tenure.epoch, why
        )
        self.tenure = None
        running = list(self._running.values())
        self._running.clear()
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=STOP_WAIT_S)

    async def _supervise(self, name: str, work: Work) -> None:
        while True:
            try:
                await work()
                log.warning("singleton %s returned; starting it again", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("singleton %s failed; starting it again", name)
            await asyncio.sleep(RESTART_S)
