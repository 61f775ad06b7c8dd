"""Live updates for the dashboard: domain events (coordinator/events.py) fanned out to
the browsers of the tenant they happened in, as server-sent events.

One EventBus subscription for all browsers; each stream has a bounded queue. A browser
that cannot keep up loses the oldest events and is told to refresh once (`resync`)
instead of the coordinator buffering without bound. The browser's script refreshes a
page's live regions at most once a second, however many events arrive: no polling.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from coordinator.events import Event, EventBus

QUEUE_MAX = 256
MAX_STREAMS = 1000
"""Open event streams over all tenants; more are refused (503)."""
MAX_PER_OWNER = 8
"""Open event streams of one session (a few tabs); more are refused (429)."""
KEEPALIVE_S = 15.0


class Stream:
    __slots__ = ("overflowed", "owner", "queue", "tenant")

    def __init__(self, tenant: str, owner: str = "") -> None:
        self.tenant = tenant
        self.owner = owner
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_MAX)
        self.overflowed = False


def sse(event: Event) -> bytes:
    """One server-sent event carrying the domain event as JSON. Pure."""
    body: dict[str, Any] = {
        "kind": event.kind,
        "subject": event.subject,
        "data": event.data,
        "at": event.at,
    }
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


RESYNC = b'data: {"kind":"resync","subject":"","data":{}}\n\n'


class LiveHub:
    def __init__(self, events: EventBus) -> None:
        self.streams: set[Stream] = set()
        events.subscribe(self._on_event)

    def refusal(self, owner: str) -> int:
        """The status refusing one more stream for `owner` (0: it may open one)."""
        if len(self.streams) >= MAX_STREAMS:
            return 503
        if sum(1 for s in self.streams if s.owner == owner) >= MAX_PER_OWNER:
            return 429
        return 0

    def open(self, tenant: str, owner: str = "") -> Stream | None:
        if self.refusal(owner):
            return None
        stream = Stream(tenant, owner)
        self.streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def _on_event(self, event: Event) -> None:
        targets = [s for s in self.streams if s.tenant == event.tenant]
        if not targets:
            return
        frame = sse(event)
        for stream in targets:
            if stream.queue.full():
                # Drop the oldest; the browser refreshes once instead of replaying.
                stream.queue.get_nowait()
                stream.overflowed = True
            stream.queue.put_nowait(frame)

    async def next_frame(self, stream: Stream) -> bytes:
        """The next frame for `stream`: an event, a resync after an overflow, or a
        keep-alive comment when nothing happened for a while."""
        if stream.overflowed:
            stream.overflowed = False
            while not stream.queue.empty():
                stream.queue.get_nowait()
            return RESYNC
        try:
            async with asyncio.timeout(KEEPALIVE_S):
                return await stream.queue.get()
        except TimeoutError:
            return b": keep-alive\n\n"
