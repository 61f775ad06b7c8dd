"""WebOps webhooks (#21): domain events from the one event seam (`coordinator.events`),
delivered by HTTP POST to the receivers a tenant registered.

A delivery is signed: `X-Moorage-Signature: sha256=<hex>` is the HMAC-SHA256, keyed with
the webhook's secret, of `<X-Moorage-Timestamp>.<body>` (the timestamp is Unix seconds;
a receiver refuses one too old, so a captured delivery cannot be replayed later).
`X-Moorage-Event` names the event and `X-Moorage-Delivery` the delivery (the same over
its retries, so a receiver can drop duplicates).

The bus calls `_on_event` on the event loop: it only puts the delivery on a bounded
queue (dropped, and logged, when full). A worker task sends them, each in its own task,
retrying a failed attempt (no answer, 408, 429, 5xx) with exponential backoff; every
attempt goes to the delivery log. A receiver that is down or slow only ever holds its
own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
import urllib.parse
import uuid
from typing import Any

import aiohttp
import msgspec

from coordinator.errors import Invalid, NotFound
from coordinator.events import Event, EventBus, matches
from coordinator.store.ports import WebhookStore
from coordinator.webops.records import Webhook, WebhookDelivery

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Moorage-Signature"
TIMESTAMP_HEADER = "X-Moorage-Timestamp"
EVENT_HEADER = "X-Moorage-Event"
DELIVERY_HEADER = "X-Moorage-Delivery"
REPLAY_WINDOW_S = 300
"""How old a timestamp `verify` accepts (receivers should do the same)."""

MAX_URL = 2048
MAX_EVENTS = 50
MAX_SECRET = 256
MAX_HOOKS_PER_TENANT = 100
HOOKS_CACHE_S = 5.0
"""How long a tenant's webhooks are read from memory: a webhook created or deleted
through another coordinator sharing the database (#23) counts here after at most this."""
TEST_EVENT = "webhook.test"

ALIASES: dict[str, str] = {
    "webops.created": "deployment.created",
    "webops.deployed": "deployment.completed",
    "webops.failed": "deployment.failed",
    "webops.deleted": "deployment.deleted",
}
"""Domain event kinds under the names the WebOps API documents; every other event
(releases, promotions, task runs, drift, machines...) keeps its own kind."""


# --- pure -----------------------------------------------------------------------------------


def event_name(kind: str) -> str:
    return ALIASES.get(kind, kind)


def wants(events: list[str], name: str) -> bool:
    """Empty: every event; else exact names or prefixes ending in `.`."""
    return not events or matches(name, frozenset(events))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, signature: str, body: bytes, now: float, window: float = 300
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > window:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def retryable(status: int) -> bool:
    """No answer (0), a timeout, throttling or a server error is worth another try; any
    other 4xx says the receiver refuses it."""
    return status == 0 or status in (408, 425, 429) or status >= 500


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before the attempt after `attempt` (1-based): base, 2·base, 4·base... ≤ cap."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def url_problem(url: str) -> str | None:
    if len(url) > MAX_URL:
        return f"url is longer than {MAX_URL} characters"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return f"url {url!r} is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "url must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "url must not carry credentials"
    return None


def events_problem(events: list[str]) -> str | None:
    if len(events) > MAX_EVENTS:
        return f"at most {MAX_EVENTS} events"
    for name in events:
        if not name or len(name) > 100 or not all(c.isalnum() or c in "._-" for c in name):
            return f"event {name!r} is not an event name (letters, digits, '.', '_', '-')"
    return None


def payload(event: Event, name: str, delivery: str) -> bytes:
    return msgspec.json.encode(
        {
            "id": delivery,
            "event": name,
            "timestamp": event.at,
            "tenant": event.tenant,
            "subject": event.subject,
            "actor": event.actor,
            "data": event.data,
        }
    )


# --- the service ------------------------------------------------------------------------------


class WebhookService:
    def __init__(
        self,
        storage: WebhookStore,
        events: EventBus,
        *,
        attempts: int = 5,
        backoff_s: float = 2.0,
        backoff_cap_s: float = 300.0,
        timeout_s: float = 10.0,
        queue_max: int = 1000,
        inflight_max: int = 200,
    ) -> None:
        self.storage = storage
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.timeout_s = timeout_s
        self.inflight_max = inflight_max
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[Webhook, str, bytes, str]] = asyncio.Queue(queue_max)
        self._cache: dict[str, tuple[float, list[Webhook]]] = {}
        """tenant -> (when read, monotonic; its webhooks)"""
        self._worker: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(inflight_max)
        self._session: aiohttp.ClientSession | None = None
        events.subscribe(self._on_event)

    # --- management ---------------------------------------------------------------------

    def create(
        self, tenant: str, url: str, events: list[str], secret: str = "", *, actor: str = ""
    ) -> Webhook:
        """The webhook, with its secret (generated when none is given): shown once."""
        for problem in (url_problem(url), events_problem(events)):
            if problem:
                raise Invalid(problem)
        if len(secret) > MAX_SECRET:
            raise Invalid(f"secret is longer than {MAX_SECRET} characters")
        if len(self.hooks(tenant)) >= MAX_HOOKS_PER_TENANT:
            raise Invalid(f"at most {MAX_HOOKS_PER_TENANT} webhooks per tenant")
        hook = Webhook(
            tenant=tenant,
            url=url,
            events=sorted(set(events)),
            secret=secret or secrets.token_urlsafe(32),
            created_by=actor,
            created_at=time.time(),
        )
        hook = self.storage.webhook_create(hook)
        self._cache.pop(tenant, None)
        return hook

    def hooks(self, tenant: str) -> list[Webhook]:
        now = time.monotonic()
        cached = self._cache.get(tenant)
        if cached is None or now - cached[0] >= HOOKS_CACHE_S:
            cached = self._cache[tenant] = (now, self.storage.webhooks(tenant))
        return list(cached[1])

    def get(self, tenant: str, hook_id: int) -> Webhook:
        hook = self.storage.webhook_get(hook_id, tenant)
        if hook is None:
            raise NotFound(f"webhook {hook_id} does not exist")
        return hook

    def delete(self, hook: Webhook) -> None:
        self.storage.webhook_delete(hook.id)
        self._cache.pop(hook.tenant, None)

    def deliveries(self, hook: Webhook, limit: int = 100) -> list[WebhookDelivery]:
        return self.storage.webhook_deliveries(hook.id, limit)

    async def test(self, hook: Webhook, actor: str = "") -> WebhookDelivery:
        """One attempt at a `webhook.test` event, awaited (no retries)."""
        event = Event(TEST_EVENT, tenant=hook.tenant, subject=str(hook.id), actor=actor)
        event = msgspec.structs.replace(event, at=time.time())
        delivery = uuid.uuid4().hex
        return await self._attempt(
            hook, TEST_EVENT, payload(event, TEST_EVENT, delivery), delivery, 1
        )

    # --- delivery -----------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """On the loop, from the bus: queue, never wait."""
        name = event_name(event.kind)
        if name == TEST_EVENT:
            return
        hooks = [h for h in self.hooks(event.tenant) if h.active and wants(h.events, name)]
        if not hooks:
            return
        if not self._start():
            return
        for hook in hooks:
            delivery = uuid.uuid4().hex
            try:
                self._queue.put_nowait((hook, name, payload(event, name, delivery), delivery))
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("webhook %d: queue full, %s not delivered", hook.id, name)

    def _start(self) -> bool:
        if self._worker is not None and not self._worker.done():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # no loop (a synchronous caller): nothing can deliver
        self._worker = loop.create_task(self._run())
        return True

    async def _run(self) -> None:
        while True:
            hook, name, body, delivery = await self._queue.get()
            await self._slots.acquire()
            task = asyncio.create_task(self._deliver(hook, name, body, delivery))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()
        self._queue.task_done()

    async def _deliver(self, hook: Webhook, name: str, body: bytes, delivery: str) -> None:
        for attempt in range(1, self.attempts + 1):
            result = await self._attempt(hook, name, body, delivery, attempt)
            if result.ok or not retryable(result.status_code):
                return
            if attempt < self.attempts:
                await asyncio.sleep(backoff(attempt, self.backoff_s, self.backoff_cap_s))
                if all(h.id != hook.id for h in self.hooks(hook.tenant)):
                    return  # deleted meanwhile: no more attempts
        log.warning("webhook %d: %s not delivered after %d attempts", hook.id, name, self.attempts)

    async def _attempt(
        self, hook: Webhook, name: str, body: bytes, delivery: str, attempt: int
    ) -> WebhookDelivery:
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Moorage-Webhook/1",
            SIGNATURE_HEADER: sign(hook.secret, stamp, body),
            TIMESTAMP_HEADER: str(stamp),
            EVENT_HEADER: name,
            DELIVERY_HEADER: delivery,
        }
        started = time.monotonic()
        status, error = 0, ""
        try:
            session = self._client()
            async with session.post(
                hook.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                await resp.content.read(4096)  # a little of the answer, never all of it
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            error = (str(exc) or type(exc).__name__)[:300]
        result = WebhookDelivery(
            webhook_id=hook.id,
            delivery=delivery,
            event=name,
            attempt=attempt,
            status_code=status,
            ok=200 <= status < 300,
            error=error if error else ("" if 200 <= status < 300 else f"HTTP {status}"),
            duration_ms=int((time.monotonic() - started) * 1000),
            at=time.time(),
        )
        try:
            self.storage.webhook_delivered(result)
        except Exception:  # the hook was deleted meanwhile, or storage fails: not fatal
            log.warning("webhook %d: delivery log not written", hook.id)
        return result

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.inflight_max, limit_per_host=8),
            )
        return self._session

    async def idle(self) -> None:
        """Until the queue is empty and nothing is in flight (tests, shutdown)."""
        await self._queue.join()

    async def close(self) -> None:
        tasks: list[Any] = [self._worker, *self._inflight]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._session is not None:
            await self._session.close()
