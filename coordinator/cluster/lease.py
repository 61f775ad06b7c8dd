"""The lease's rules, pure: how long a tenure lasts, when to renew it, and when the
holder must consider it lost without hearing from the database.

The database times the lease with its own clock: a renewal made at database time T
holds it until T + ttl. The holder cannot read that clock, but it knows T is no
earlier than the moment it sent the statement: counting `ttl` from that moment (on
its monotonic clock, which no NTP step moves) less a margin for clock rates, it stops
its singleton work before the database could hand the lease to another coordinator.
"""

from __future__ import annotations

import msgspec

LEADER = "leader"
"""The lease every piece of singleton work runs under (one leader does all of it)."""
DEFAULT_TTL_S = 10.0
DEFAULT_RENEW_S = 3.0
MAX_CLOCK_DRIFT = 0.01
"""How much faster the database's clock may run than ours (1%: generous for NTP-kept hosts)."""
MIN_MARGIN_S = 0.5
"""What a holder keeps in hand before the database's expiry beyond the clocks' drift:
the cancellation of its work takes a moment too."""


class Tenure(msgspec.Struct, frozen=True):
    """The lease as its holder sees it: the epoch it was taken at and, on the holder's
    monotonic clock, when it must stop acting on it unless renewed."""

    epoch: int
    deadline: float


def margin(ttl_s: float) -> float:
    """What is kept in hand before the database's expiry: the drift the clocks may
    accumulate over a tenure, and a little more."""
    return MIN_MARGIN_S + ttl_s * MAX_CLOCK_DRIFT


def deadline(sent_at: float, ttl_s: float) -> float:
    """The local deadline of a tenure acquired or renewed by a statement sent at
    monotonic `sent_at`: before the database's expiry (see the module)."""
    return sent_at + ttl_s - margin(ttl_s)


def lost(now: float, tenure: Tenure | None) -> bool:
    """Whether the holder must stop now (no tenure, or its deadline passed)."""
    return tenure is None or now >= tenure.deadline


def renewed(tenure: Tenure, sent_at: float, ttl_s: float) -> Tenure:
    """The tenure after a successful renewal sent at `sent_at`."""
    return msgspec.structs.replace(tenure, deadline=max(tenure.deadline, deadline(sent_at, ttl_s)))


def wait_s(now: float, last_attempt: float, renew_s: float, tenure: Tenure | None) -> float:
    """How long the lease loop sleeps: until the next renewal (or acquisition
    attempt) is due, but never past a tenure's deadline."""
    due = last_attempt + renew_s
    if tenure is not None:
        due = min(due, tenure.deadline)
    return max(0.0, due - now)


def problems(ttl_s: float, renew_s: float) -> list[str]:
    """What is wrong with a configuration's numbers (empty when fine): a renewal must
    leave time for two more attempts before the tenure's deadline."""
    out = []
    if not ttl_s > 0:
        out.append("lease_ttl_s must be positive")
    if not renew_s > 0:
        out.append("lease_renew_s must be positive")
    elif ttl_s > 0 and 2 * renew_s > ttl_s - margin(ttl_s):
        out.append("lease_renew_s must be at most half of lease_ttl_s less its margin")
    return out
