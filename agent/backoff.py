"""Reconnect delays: exponential with jitter, so 10,000 agents don't return in lockstep."""

from __future__ import annotations


def backoff_delay(attempt: int, *, initial: float, maximum: float, rand: float) -> float:
    """Equal jitter: half the exponential step fixed, half random (`rand` in [0, 1))."""
    step = min(maximum, initial * float(2 ** min(attempt, 32)))
    return step / 2 + rand * step / 2
