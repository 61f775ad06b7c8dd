"""Singletons on a machine cut off from the coordinator, as pure functions.

Moorage never stops a unit because the coordinator is away - except a unit that
opted in with `[X-Fleet] StopWhenIsolated=true`. Once the agent has heard nothing
from the coordinator for `lost_after` (the coordinator's own threshold, sent in
Welcome and persisted), the coordinator may call the machine lost and, a margin
later, start the unit elsewhere; so the agent stops it first. It is wanted again
only when a session is back and the agent holds the coordinator's current desired
state (a Welcome naming the revision it has, or a Desired applied in that session):
if the unit moved meanwhile, that state no longer has it, and it stays stopped.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from proto.messages import DesiredUnit
from proto.units import stops_when_isolated


def is_isolated(*, connected: bool, since_contact: float, lost_after: float) -> bool:
    """Cut off for long enough that the coordinator may have moved this machine's units."""
    return not connected and lost_after > 0 and since_contact >= lost_after


def isolation_clock(
    *, contact_at: float, in_session: bool, now_wall: float, now_mono: float
) -> float:
    """Where the isolation clock starts at agent start-up (monotonic time).

    After a session that ended (`contact_at`: when the coordinator was last heard) the
    clock goes on from then, so a reboot inside a partition does not start it over.
    If the agent died in a session (kill -9), when the coordinator was last heard is
    unknown; it counts from now rather than stop a singleton on a mere restart."""
    if in_session or contact_at <= 0:
        return now_mono
    return now_mono - max(0.0, now_wall - contact_at)


def held(desired: Mapping[str, DesiredUnit]) -> dict[str, DesiredUnit]:
    """The desired state while isolated: StopWhenIsolated units wanted `loaded` (the
    unit file stays, the unit is stopped); every other unit untouched."""
    out = dict(desired)
    for name, unit in desired.items():
        if unit.desired_state == "launched" and _opted_in(unit):
            out[name] = msgspec.structs.replace(unit, desired_state="loaded")
    return out


def opted_in(desired: Mapping[str, DesiredUnit]) -> list[str]:
    return sorted(name for name, unit in desired.items() if _opted_in(unit))


def _opted_in(unit: DesiredUnit) -> bool:
    try:
        return stops_when_isolated(unit.options)
    except ValueError:
        return False  # refused at submit; an old coordinator's unit stays as it was
