"""Reconnect delays and which hub to dial next: exponential with jitter, so 10,000
agents don't return in lockstep, and failover across the coordinators' hubs (#23).

A session that got a Welcome starts the count again: the next reconnect comes soon
(spread at random over the window the coordinator gave, so a restarted coordinator
is met by a stream of agents rather than a wave) and goes to the same hub first (a
restart is likelier than a loss); only failed attempts since then make the delays
grow, and each failure moves on to the next hub of the list. The delays grow once per
round of the list, not per attempt, so a dead coordinator costs one short wait before
the next one is tried. A refusal (revoked, unknown machine) is never retried soon, on
this hub or the next: every coordinator of a fleet shares the same trust, so the others
are unlikely to judge differently and must not be asked in a hot loop. An attempt that
nothing answered at all (no TCP connection: a partition, a dead host) waits at most
`PROBE_MAX_S` more: it loads no coordinator, and the machine should be back as soon as
its link is.
"""

from __future__ import annotations

from typing import NamedTuple

REFUSED = 32
"""Failure count after a refusal (revoked, unknown): the longest delays at once."""
PROBE_MAX_S = 2.0
"""The longest wait before dialling again after an attempt nobody answered (a
partition, a dead host): such an attempt already took its connect timeout and cost the
coordinator nothing, so backing off further would only make the machine come back
later than its link does (up to the longest backoff after a long partition; the fault
suite measures convergence within 10 s of the heal)."""


class Dial(NamedTuple):
    """The next attempt: which hub of the list, and how long to wait before it."""

    hub: int
    """Index in the list of hubs."""
    failures: int
    """Failed attempts since the last Welcome (REFUSED or more after a refusal)."""
    delay: float


def backoff_delay(attempt: int, *, initial: float, maximum: float, rand: float) -> float:
    """Equal jitter: half the exponential step fixed, half random (`rand` in [0, 1)).

    Not full jitter (all of the step random): an agent hammering a restarting
    coordinator with refused connects would draw several near-zero delays in a row,
    climb the exponent in a fraction of a second and then sleep most of a 16 s step
    after the coordinator is back (tests/integration/test_link_faults.py saw 13.8 s).
    The fixed half ties the step to the time already waited: the extra wait after an
    outage is never more than about the outage itself."""
    step = min(maximum, initial * float(2 ** min(attempt, 32)))
    return step / 2 + rand * step / 2


def next_failures(failures: int, *, welcomed: bool, refused: bool = False) -> int:
    """Failed attempts since the last Welcome, after one more attempt ended."""
    if refused:
        return max(failures + 1, REFUSED)
    return 0 if welcomed else failures + 1


def reconnect_delay(
    failures: int,
    *,
    initial: float,
    maximum: float,
    spread: float,
    rand: float,
    hubs: int = 1,
    refused: bool = False,
) -> float:
    """How long to wait before the next attempt: after a welcomed session (no failure
    yet) a uniform pick in [0, spread) (at least `initial` wide); after a refusal at
    least half the longest delay; else backoff growing once per round of `hubs`."""
    if refused:  # the longest step, whatever the count and the number of hubs
        return backoff_delay(REFUSED, initial=initial, maximum=maximum, rand=rand)
    if failures == 0:
        return rand * min(maximum, max(initial, spread))
    rounds = (failures - 1) // max(1, hubs)
    return backoff_delay(rounds, initial=initial, maximum=maximum, rand=rand)


def next_dial(
    index: int,
    failures: int,
    *,
    hubs: int,
    welcomed: bool,
    refused: bool,
    initial: float,
    maximum: float,
    spread: float,
    rand: float,
    unreachable: bool = False,
) -> Dial:
    """After an attempt on hub `index` of `hubs` ended: the hub that worked stays first;
    a failure or refusal moves to the next, round the list. `unreachable`: nothing
    answered the attempt (see `PROBE_MAX_S`)."""
    count = max(1, hubs)
    failures = next_failures(failures, welcomed=welcomed, refused=refused)
    hub = index % count if welcomed else (index + 1) % count
    delay = reconnect_delay(
        failures,
        initial=initial,
        maximum=maximum,
        spread=spread,
        rand=rand,
        hubs=count,
        refused=refused,
    )
    if unreachable and not refused and not welcomed:
        delay = min(delay, PROBE_MAX_S / 2 + rand * PROBE_MAX_S / 2)
    return Dial(hub, failures, delay)
