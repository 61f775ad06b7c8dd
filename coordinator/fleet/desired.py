"""Per-machine desired state and its diffs, as pure functions.

A machine is told only about units placed on it whose desired state is not
`inactive` (fleet: an inactive unit is not on any machine). Changes travel as a diff
against what the machine acknowledged, so one unit change costs one small message to
the machines that unit is on, never a broadcast.
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.models import Unit
from proto.messages import DesiredUnit


def machine_desired(units: Iterable[Unit]) -> dict[str, DesiredUnit]:
    return {
        u.name: DesiredUnit(
            name=u.name, options=list(u.options), desired_state=u.desired_state, hash=u.hash
        )
        for u in units
        if u.desired_state != "inactive"
    }
