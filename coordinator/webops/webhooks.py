"""WebOps webhooks (#21): domain events from the one event seam (`coordinator.events`),
delivered by HTTP POST to the receivers a tenant registered.

A delivery is signed: `X-Moorage-Signature: sha256=<hex>` is the HMAC-SHA256, keyed with
the webhook's secret, of `<X-Moorage-Timestamp>.<body>` (the timestamp is Unix seconds;
a receiver refuses one too old, so a captured delivery cannot be replayed later).
`X-Moorage-Event` names the event and `X-Moorage-Delivery` the delivery (the same over
its retries, so a receiver can drop duplicates).

The bus calls `_on_event` on the event loop of whichever coordinator the event happened
on: it stores one delivery per matching webhook in the outbox (one write, never an
HTTP call). The coordinator holding the lease (#23) runs `run`: it sends due
deliveries, each attempt in its own task, and retries a failed one (no answer, 408,
429, 5xx) with exponential backoff by storing when it is next due; a delivery leaves
the outbox when it succeeded, was refused for good or ran out of attempts. Every
attempt goes to the delivery log. A crash, a restart or a failover loses no delivery
(one in flight at the crash may be sent twice: the delivery id lets a receiver drop
the duplicate). A receiver that is down or slow only ever holds its own deliveries.
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

import aiohttp
import msgspec

from coordinator.connector import LoopConnector
from coordinator.errors import Invalid, NotFound
from coordinator.events import Event, EventBus, matches
from coordinator.store.ports import WebhookStore
from coordinator.webops.records import OutboxItem, Webhook, WebhookDelivery

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
POLL_S = 0.5
"""How often the delivery loop looks for deliveries stored by other coordinators."""
LONE_POLL_S = 10.0
"""The same, for a coordinator alone on its database (its own events wake the loop)."""
CLAIM_MARGIN_S = 5.0
"""A claimed delivery is due again this long after its attempt's timeout."""

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
        inflight_max: int = 200,
        poll_s: float = POLL_S,
    ) -> None:
        self.storage = storage
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.timeout_s = timeout_s
        self.inflight_max = inflight_max
        self.poll_s = poll_s
        self.dropped = 0
        """Deliveries that could not even be stored (the storage refused)."""
        self._cache: dict[str, tuple[float, list[Webhook]]] = {}
        """tenant -> (when read, monotonic; its webhooks)"""
        self._inflight: dict[int, asyncio.Task[None]] = {}
        """Outbox item id -> its attempt in progress."""
        self._wake = asyncio.Event()
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
        """On the loop, from the bus, on whichever coordinator the event happened: its
        deliveries are stored (never waited for); the lease holder sends them."""
        name = event_name(event.kind)
        if name == TEST_EVENT:
            return
        hooks = [h for h in self.hooks(event.tenant) if h.active and wants(h.events, name)]
        if not hooks:
            return
        now = time.time()
        items = []
        for hook in hooks:
            delivery = uuid.uuid4().hex
            items.append(
                OutboxItem(
                    webhook_id=hook.id,
                    tenant=hook.tenant,
                    event=name,
                    delivery=delivery,
                    body=payload(event, name, delivery).decode(),
                    next_at=now,
                    created_at=now,
                )
            )
        try:
            self.storage.outbox_add(items)
        except Exception as exc:  # a storage fault, or the hook deleted meanwhile
            self.dropped += len(items)
            log.warning("webhooks: %d delivery(ies) of %s not stored: %s", len(items), name, exc)
            return
        self._wake.set()

    async def run(self) -> None:
        """The lease holder's delivery loop (`coordinator.cluster.leader`): due
        deliveries from the outbox, each attempt in its own task (at most
        `inflight_max`), woken by a new event here, by a retry coming due, or every
        `poll_s` for events stored by the other coordinators."""
        while True:
            self._wake.clear()
            now = time.time()
            following = await asyncio.to_thread(self.storage.outbox_next_at)  # a read
            room = self.inflight_max - len(self._inflight)
            if room > 0 and following is not None and following <= now:
                # Claimed until the attempt must be over: a crash mid-attempt makes the
                # item due again then (on whichever coordinator leads by then).
                until = now + self.timeout_s + CLAIM_MARGIN_S
                due = await asyncio.to_thread(self.storage.outbox_claim, now, room, until)
                for item in due:
                    if item.id not in self._inflight:
                        self._inflight[item.id] = asyncio.create_task(self._deliver(item))
                continue  # more may be due
            wait = self.poll_s
            if room > 0 and following is not None:
                wait = min(wait, max(0.0, following - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _deliver(self, item: OutboxItem) -> None:
        try:
            await self._attempt_item(item)
        finally:
            self._inflight.pop(item.id, None)
            self._wake.set()  # room for the next one

    async def _attempt_item(self, item: OutboxItem) -> None:
        """One attempt; then the item is done, or waits for its next attempt."""
        hook = self.storage.webhook_get(item.webhook_id, item.tenant)
        if hook is None or not hook.active:
            self.storage.outbox_done(item.id)  # deleted or disabled meanwhile
            return
        attempt = item.attempts + 1
        result = await self._attempt(hook, item.event, item.body.encode(), item.delivery, attempt)
        if result.ok or not retryable(result.status_code) or attempt >= self.attempts:
            if not result.ok:
                log.warning(
                    "webhook %d: %s not delivered after %d attempt(s)", hook.id, item.event, attempt
                )
            self.storage.outbox_done(item.id)
            return
        delay = backoff(attempt, self.backoff_s, self.backoff_cap_s)
        self.storage.outbox_retry(item.id, attempt, time.time() + delay)
        asyncio.get_running_loop().call_later(delay, self._wake.set)

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
                connector=LoopConnector(limit=self.inflight_max, limit_per_host=8),
            )
        return self._session

    async def idle(self) -> None:
        """Until the outbox is empty and nothing is in flight (tests; needs `run`)."""
        while True:
            if not self._inflight and not await asyncio.to_thread(self.storage.outbox_count):
                return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
