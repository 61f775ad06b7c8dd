"""Rate limits: the arithmetic (pure, over plain values) and the limiter the server's
middleware asks (in memory, authoritative; every counted hit stored).

The arithmetic is a sliding log: a key's state is the times of its counted hits inside
the window, so "at most `count` in any `window_s`" holds exactly (a fixed or weighted
window lets a burst straddle its boundary: 5 failed logins at 14:59 and 5 more at
15:01). The logs stay small: at most `count` entries per key.

Three classes (`coordinator.config.RateLimits`):
- `token`: every authenticated request, per token (or principal); counted at once.
- `deploy`: routes declaring `limit="deploy"`, per user; a slot is reserved while the
  request runs and kept only if the deploy was accepted (a 409 does not use one up).
- `auth`: per client IP, failed authentications; a slot is reserved while the request
  runs (routes declaring `limit="auth"`, and any request presenting a token) and kept
  only if it failed (401/403). A request finding the IP's slots all reserved waits
  for them to settle instead of being refused at once, so concurrent honest requests
  pass while 50 concurrent failures still get exactly `count` through.

Hits are stored (`RateLimitStore`): failed authentications and deploys before the
response is sent (they are rare; a restart must not hand an attacker fresh attempts),
the per-token general hits batched every second.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coordinator.config import LimitConfig as Limit
from coordinator.config import RateLimits
from coordinator.store.ports import RateLimitStore, StorageUnavailable

log = logging.getLogger(__name__)

TOKEN = "token"
DEPLOY = "deploy"
AUTH = "auth"
CLASSES = (TOKEN, DEPLOY, AUTH)

SETTLE_WAIT_S = 10.0
"""How long a request waits for the reserved slots of its key to settle before it is
refused (only while some are reserved: a key at its limit is refused at once)."""
FLUSH_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float
    """Epoch seconds when the oldest counted hit leaves the window (a slot frees)."""
    retry_after: int
    """Whole seconds to wait before a retry can succeed; 0 when allowed."""

    def headers(self) -> dict[str, str]:
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


Hits = tuple[float, ...]


def live_hits(hits: Hits, now: float, window_s: float) -> Hits:
    """The hits still inside the window ending at `now` (sorted in, sorted out). Pure."""
    # A hit at `h` counts while h + window_s > now (the same sum reset_at uses, so the
    # float arithmetic never disagrees with itself at the boundary).
    return hits[bisect.bisect_right(hits, now, key=lambda h: h + window_s) :]


def judge(hits: Sequence[float], now: float, limit: Limit) -> tuple[Decision, int]:
    """Whether one more hit at `now` fits among `hits` (sorted), and how many of them
    (from the oldest) have left the window. Pure; `decide` applies it to a tuple, the
    limiter to its deques in place."""
    window = limit.window_s
    expired = bisect.bisect_right(hits, now, key=lambda h: h + window)
    return verdict(hits, expired, now, limit), expired


def verdict(hits: Sequence[float], start: int, now: float, limit: Limit) -> Decision:
    """`judge` once the hits before `start` are known to have left the window. Pure."""
    window = limit.window_s
    live = len(hits) - start
    if live < limit.count:
        oldest = min(hits[start], now) if live else now
        return Decision(True, limit.count, limit.count - live - 1, oldest + window, 0)
    # Refused: the hits beyond count-1 must leave the window first.
    free_at = hits[start + live - limit.count] + window if limit.count > 0 else now + window
    retry = max(1, math.ceil(free_at - now))
    if now + retry < free_at:  # rounding
        retry += 1
    return Decision(False, limit.count, 0, free_at, retry)


def decide(hits: Hits, now: float, limit: Limit) -> tuple[Decision, Hits]:
    """Whether one more hit at `now` fits, and the state after it (with the hit when
    allowed, only pruned when not). `hits` is sorted. Pure."""
    decision, expired = judge(hits, now, limit)
    live = hits[expired:]
    return decision, (_insert(live, now) if decision.allowed else live)


def without(hits: Hits, at: float) -> Hits:
    """`hits` with one hit at `at` removed (a reservation given back). Pure."""
    i = bisect.bisect_left(hits, at)
    if i < len(hits) and hits[i] == at:
        return hits[:i] + hits[i + 1 :]
    return hits


def _insert(hits: Hits, at: float) -> Hits:
    i = bisect.bisect_right(hits, at)
    return (*hits[:i], at, *hits[i:])


class Log:
    """One key's hits, sorted, mutated in place (what `decide` does to a tuple, in
    amortised constant time: a general limit can be large)."""

    __slots__ = ("hits",)

    def __init__(self) -> None:
        self.hits: deque[float] = deque()

    def take(self, now: float, limit: Limit) -> Decision:
        """Count a hit at `now` if it fits (`decide`, in place)."""
        hits = self.hits
        while hits and hits[0] + limit.window_s <= now:
            hits.popleft()
        decision = verdict(hits, 0, now, limit)  # O(1): no search, one index at most
        if decision.allowed:
            self.add(now)
        return decision

    def add(self, at: float) -> None:
        if not self.hits or self.hits[-1] <= at:
            self.hits.append(at)
        else:  # the clock went back
            self.hits.insert(bisect.bisect_right(self.hits, at), at)

    def remove(self, at: float) -> None:
        with contextlib.suppress(ValueError):
            self.hits.remove(at)

    def live(self, now: float, window_s: float) -> int:
        while self.hits and self.hits[0] + window_s <= now:
            self.hits.popleft()
        return len(self.hits)


class RateLimited(Exception):
    """A request over its limit: answered 429 with the decision's headers."""

    def __init__(self, cls: str, decision: Decision) -> None:
        super().__init__(
            f"rate limit exceeded ({cls}: {decision.limit} per window);"
            f" retry after {decision.retry_after} s"
        )
        self.cls = cls
        self.decision = decision


@dataclass
class Slot:
    """One hit counted (or reserved) for a key."""

    cls: str
    key: str
    at: float
    decision: Decision
    settled: bool = False


def limits_of(config: RateLimits) -> dict[str, Limit]:
    return {TOKEN: config.token, DEPLOY: config.deploy, AUTH: config.auth}


class RateLimiter:
    """The limits of one coordinator: in memory (authoritative; the event loop is its
    only writer, so a check and its count are atomic), every kept hit stored."""

    def __init__(
        self,
        limits: dict[str, Limit],
        store: RateLimitStore | None = None,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.enabled = enabled
        self.store = store
        self.clock = clock
        self._logs: dict[tuple[str, str], Log] = {}
        self._reserved: dict[tuple[str, str], int] = {}
        self._waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self._pending: list[tuple[str, str, float]] = []

    def limit(self, cls: str) -> Limit | None:
        return self.limits.get(cls) if self.enabled else None

    # --- start-up -------------------------------------------------------------------

    def load(self) -> int:
        """The stored hits still inside their windows (at start-up). How many."""
        if self.store is None or not self.enabled:
            return 0
        now = self.clock()
        longest = max(lim.window_s for lim in self.limits.values())
        loaded = 0
        for cls, key, at in self.store.rate_hits(now - longest):
            lim = self.limits.get(cls)
            if lim is None or at + lim.window_s <= now:
                continue
            self._log(cls, key).add(at)
            loaded += 1
        return loaded

    # --- counting -------------------------------------------------------------------

    def peek(self, cls: str, key: str) -> Decision | None:
        """Where a key stands, without counting (None: the class is not limited)."""
        lim = self.limit(cls)
        if lim is None:
            return None
        now = self.clock()
        entry = self._logs.get((cls, key))
        live = entry.live(now, lim.window_s) if entry is not None else 0
        reset = entry.hits[0] + lim.window_s if entry is not None and live else now + lim.window_s
        return Decision(True, lim.count, max(0, lim.count - live), reset, 0)

    def hit(self, cls: str, key: str) -> Decision | None:
        """Count one hit now, kept (stored within a second): the general per-token
        limit. RateLimited when over; None when the class is not limited."""
        lim = self.limit(cls)
        if lim is None:
            return None
        now = self.clock()
        decision = self._log(cls, key).take(now, lim)
        if not decision.allowed:
            raise RateLimited(cls, decision)
        self._pending.append((cls, key, now))
        return decision

    async def reserve(self, cls: str, key: str) -> Slot | None:
        """Reserve a slot, waiting (bounded) while other reservations of the key are
        unsettled; RateLimited when none is left. None when the class is not limited.
        Every slot returned must be `keep`-t or `release`-d."""
        lim = self.limit(cls)
        if lim is None:
            return None
        k = (cls, key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_WAIT_S
        while True:
            now = self.clock()
            decision = self._log(cls, key).take(now, lim)
            if decision.allowed:
                self._reserved[k] = self._reserved.get(k, 0) + 1
                return Slot(cls, key, now, decision)
            wait = deadline - loop.time()
            if not self._reserved.get(k) or wait <= 0:
                raise RateLimited(cls, decision)
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(k, []).append(fut)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await fut

    def release(self, slot: Slot | None) -> None:
        """Give a reserved slot back (the request did not use up the limit)."""
        if slot is None or slot.settled:
            return
        entry = self._logs.get((slot.cls, slot.key))
        if entry is not None:
            entry.remove(slot.at)
        self._settle(slot)

    async def keep(self, slot: Slot | None) -> None:
        """Keep a reserved slot as a hit, stored before this returns (a restart, even
        `kill -9`, cannot hand the attempt back)."""
        if slot is None or slot.settled:
            return
        self._settle(slot)
        if self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.add_rate_hits, [(slot.cls, slot.key, slot.at)])
        except StorageUnavailable as exc:
            log.error("rate-limit hit not stored (kept in memory): %s", exc)

    def _settle(self, slot: Slot) -> None:
        slot.settled = True
        k = (slot.cls, slot.key)
        left = self._reserved.get(k, 0) - 1
        if left > 0:
            self._reserved[k] = left
        else:
            self._reserved.pop(k, None)
        for fut in self._waiters.pop(k, []):
            if not fut.done():
                fut.set_result(None)

    def _log(self, cls: str, key: str) -> Log:
        entry = self._logs.get((cls, key))
        if entry is None:
            entry = self._logs[(cls, key)] = Log()
        return entry

    # --- storing --------------------------------------------------------------------

    def flush(self) -> None:
        """Store the batched general hits (on the loop's thread: at shutdown)."""
        pending, self._pending = self._pending, []
        if pending and self.store is not None:
            try:
                self.store.add_rate_hits(pending)
            except StorageUnavailable as exc:
                log.error("%d rate-limit hits not stored: %s", len(pending), exc)

    async def run(self) -> None:
        """Store batched hits every second; forget expired ones every minute."""
        last_prune = 0.0
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            pending, self._pending = self._pending, []
            try:
                if pending and self.store is not None:
                    await asyncio.to_thread(self.store.add_rate_hits, pending)
                now = self.clock()
                if now - last_prune >= PRUNE_INTERVAL_S:
                    last_prune = now
                    self.prune(now)
                    if self.store is not None:
                        cutoffs = {c: now - lim.window_s for c, lim in self.limits.items()}
                        await asyncio.to_thread(self.store.prune_rate_hits, cutoffs)
            except StorageUnavailable as exc:
                log.error("rate-limit hits not stored (retried): %s", exc)
                self._pending[:0] = pending
            except Exception:
                log.exception("rate-limit flush failed")

    def prune(self, now: float) -> None:
        """Forget keys whose hits have all left their windows (memory stays bounded)."""
        for k, entry in list(self._logs.items()):
            lim = self.limits.get(k[0])
            if lim is None or (not entry.live(now, lim.window_s) and k not in self._reserved):
                del self._logs[k]
