"""The audit log: every write request (recorded by the server's middleware, in one
place) and every domain event (a subscriber of the EventBus), appended to the audit
store in batches off the event loop: within `flush_s` of being recorded, and at
shutdown. Reading it is `GET /moorage/v1/audit` and `moorctl audit`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from coordinator.errors import Invalid
from coordinator.events import LIVE_ONLY, Event, EventBus
from coordinator.models import AuditEntry, AuditQuery
from coordinator.store.ports import AuditStore, StorageUnavailable

log = logging.getLogger(__name__)

MAX_PAGE = 1000
MAX_PENDING = 100_000
"""Entries kept while the storage refuses writes; beyond it the oldest are dropped
(and counted in the log): the coordinator keeps serving."""
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_write(method: str) -> bool:
    """Every method but GET, HEAD and OPTIONS is a write (unknown ones too). Pure."""
    return method.upper() not in READ_METHODS


def event_entry(event: Event) -> AuditEntry:
    """The audit line of a domain event. Pure."""
    kind, _, name = event.actor.partition(":")
    return AuditEntry(
        at=event.at or time.time(),
        kind="event",
        principal_kind=kind if name else "",
        principal=name or kind,
        tenant=event.tenant,
        event=event.kind,
        subject=event.subject,
        actor=event.actor,
        data={k: _text(v) for k, v in event.data.items()},
    )


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def check_query(query: AuditQuery) -> AuditQuery:
    """Invalid naming the field when a filter cannot be right. Pure."""
    if not 1 <= query.limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    if query.kind and query.kind not in ("request", "event"):
        raise Invalid("kind must be 'request' or 'event'")
    if query.status and not 100 <= query.status <= 599:
        raise Invalid("status must be an HTTP status code (100-599)")
    if query.before < 0:
        raise Invalid("cursor must be a positive entry id")
    return query


class AuditLog:
    """Records into memory at once (cheap, on the loop), writes batches in a thread."""

    def __init__(self, store: AuditStore, events: EventBus | None = None, *, flush_s: float = 0.5):
        self.store = store
        self.flush_s = flush_s
        self._pending: list[AuditEntry] = []
        self._dropped = 0
        self._lock = asyncio.Lock()
        if events is not None:
            events.subscribe(self.on_event)

    def record(self, entry: AuditEntry) -> None:
        self._pending.append(entry)
        if len(self._pending) > MAX_PENDING:
            over = len(self._pending) - MAX_PENDING
            del self._pending[:over]
            self._dropped += over

    def on_event(self, event: Event) -> None:
        if event.kind in LIVE_ONLY:
            return
        self.record(event_entry(event))

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def query(self, query: AuditQuery) -> tuple[list[AuditEntry], int | None]:
        """One page, newest first, and the cursor of the next page (None: the last).
        What is recorded but not yet written is written first, so a reader sees its
        own writes."""
        check_query(query)
        await self._write()
        entries = await asyncio.to_thread(self.store.audit, query)
        more = len(entries) == query.limit and entries[-1].id > 1
        return entries, (entries[-1].id if more else None)

    def flush(self) -> None:
        """Write what is pending, on this thread (at shutdown)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self.store.append_audit(pending)
        except StorageUnavailable as exc:
            log.error("%d audit entries not written: %s", len(pending), exc)

    async def _write(self) -> None:
        """Write what is pending in a thread, one batch at a time (ids in order)."""
        async with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            try:
                await asyncio.to_thread(self.store.append_audit, pending)
            except StorageUnavailable:
                # The store's health object logs the fault once, and its end; a retry
                # every flush is not news (the pending count is a metric).
                self._pending[:0] = pending

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            if self._dropped:
                log.error("audit log: %d entries dropped (storage refused writes)", self._dropped)
                self._dropped = 0
            try:
                await self._write()
            except Exception:
                log.exception("audit write failed")
