"""Fencing singleton work (#23): the lease a write is made under, and the refusal of
that write once the lease is lost.

Several coordinators share one database; singleton work (scheduling passes, rollouts,
liveness, the task queue) runs on the one holding a lease. A leader that pauses (a
long GC, a stopped VM, a partition) may wake after its lease expired and another took
it: its in-flight work must not write then. The leader sets `FENCE` in the context of
its singleton tasks (asyncio copies it into the tasks and threads they start); the
store checks it at the start of each outermost transaction, in that transaction
(PostgreSQL: the lease row locked FOR UPDATE, so a new holder's acquisition waits
for the fenced write to commit) and raises `LeaseLost` when the lease is no longer
held with that epoch.
"""

from __future__ import annotations

from contextvars import ContextVar

import msgspec

from coordinator.store.ports import StorageUnavailable


class Fence(msgspec.Struct, frozen=True):
    """A tenure: the lease, its holder and the epoch (fencing token) it was taken at."""

    lease: str
    holder: str
    epoch: int


FENCE: ContextVar[Fence | None] = ContextVar("moorage_fence", default=None)
"""The tenure the running singleton work writes under (None: not singleton work)."""


class LeaseLost(StorageUnavailable):
    """A fenced write after its lease was lost (expired, or taken with a higher epoch).

    A StorageUnavailable (so a StorageError): what writes behind (the state buffer,
    the audit log) keeps such writes queued and retries them from its own, unfenced
    task instead of dropping them; the singleton work itself is being cancelled."""

    def __init__(self, fence: Fence) -> None:
        self.fence = fence
        super().__init__(
            "lease",
            f"lease {fence.lease!r} (epoch {fence.epoch}) is no longer held by {fence.holder}",
        )


class CoordinatorInfo(msgspec.Struct, frozen=True):
    """A coordinator sharing the database (times: the database's clock)."""

    id: str
    api_url: str
    hub_url: str
    started_at: float
    heartbeat_at: float


class LeaseInfo(msgspec.Struct, frozen=True):
    """A lease as stored; `remaining_s` is measured with the database's clock (<= 0:
    expired, anyone may take it)."""

    name: str
    holder: str
    epoch: int
    remaining_s: float
