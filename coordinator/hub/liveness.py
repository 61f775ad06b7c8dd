"""Machine liveness as a pure function: connected -> disconnected -> lost.

A machine is `disconnected` as soon as its session drops or its heartbeats stop;
only after `lost_after` seconds without a session is it `lost` (and later its units
rescheduled). Keeping the rule pure lets tests drive time directly.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from coordinator.models import MachineState


class LivenessView(msgspec.Struct, frozen=True):
    id: str
    state: MachineState
    state_since: float
    last_seen: float
    has_session: bool


class Transition(msgspec.Struct, frozen=True):
    id: str
    state: MachineState
    close_session: bool = False


def transitions(
    machines: Iterable[LivenessView],
    *,
    now: float,
    lost_after: float,
    heartbeat_timeout: float,
) -> list[Transition]:
    out: list[Transition] = []
    for m in machines:
        if m.has_session:
            if now - m.last_seen > heartbeat_timeout:
                out.append(Transition(m.id, "disconnected", close_session=True))
        elif m.state == "connected":
            out.append(Transition(m.id, "disconnected"))
        elif m.state == "disconnected" and now - m.state_since >= lost_after:
            out.append(Transition(m.id, "lost"))
    return out


ISOLATION_MARGIN_S = 10.0
"""How long after a machine is `lost` its StopWhenIsolated units stay placed on it.

Its agent stops them itself once it has been cut off for `lost_after`, counted from
the last message it got; the coordinator counts `lost_after` from the moment it saw
the session end, which is never earlier. The margin covers the rest: the agent's
once-a-second check, the stop itself (a unit whose stop takes longer may overlap for
the difference) and clock rates. Then they are placed elsewhere."""


def holds_isolated(
    state: MachineState, state_since: float, *, now: float, margin: float = ISOLATION_MARGIN_S
) -> bool:
    """Whether a machine may still run its StopWhenIsolated units (see the margin)."""
    return state == "lost" and now - state_since < margin
