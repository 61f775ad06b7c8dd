"""Reconnect delays: exponential with jitter, so 10,000 agents don't return in lockstep.

A session that got a Welcome starts the count again: the next reconnect comes soon
(spread at random over the window the coordinator gave, so a restarted coordinator
is met by a stream of agents rather than a wave), and only failed attempts since then
make the delays grow.
"""

from __future__ import annotations

REFUSED = 32
"""Failure count after a refusal (revoked, unknown): the longest delay at once."""


def backoff_delay(attempt: int, *, initial: float, maximum: float, rand: float) -> float:
    """Equal jitter: half the exponential step fixed, half random (`rand` in [0, 1))."""
    step = min(maximum, initial * float(2 ** min(attempt, 32)))
    return step / 2 + rand * step / 2


def next_failures(failures: int, *, welcomed: bool, refused: bool = False) -> int:
    """Failed attempts since the last Welcome, after one more attempt ended."""
    if refused:
        return max(failures + 1, REFUSED)
    return 0 if welcomed else failures + 1


def reconnect_delay(
    failures: int, *, initial: float, maximum: float, spread: float, rand: float
) -> float:
    """How long to wait before the next attempt: after a welcomed session (no failure
    yet) a uniform pick in [0, spread) (at least `initial` wide), else backoff."""
    if failures == 0:
        return rand * min(maximum, max(initial, spread))
    return backoff_delay(failures - 1, initial=initial, maximum=maximum, rand=rand)
