"""A token bucket, shared by the coordinator (agents' expensive requests) and the agent
(a WebOps app's output sent as log items). Pure: time is passed in."""

from __future__ import annotations


class TokenBucket:
    """`rate` actions a second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)
