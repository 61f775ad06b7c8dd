"""Desired-state diffs, as pure functions both sides share.

Changes travel as a diff against what the machine acknowledged, so one unit change
costs one small message to the machines that unit is on, never a broadcast. The
coordinator computes `diff`; the agent applies it with `apply_diff`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from proto.messages import DesiredUnit


def diff(
    old: Mapping[str, DesiredUnit], new: Mapping[str, DesiredUnit]
) -> tuple[list[DesiredUnit], list[str]]:
    """Upserts (new or changed units, by name order) and removes (names no longer desired)."""
    upserts = [unit for name, unit in sorted(new.items()) if old.get(name) != unit]
    removes = sorted(set(old) - set(new))
    return upserts, removes


def apply_diff(
    current: Mapping[str, DesiredUnit], upserts: Iterable[DesiredUnit], removes: Iterable[str]
) -> dict[str, DesiredUnit]:
    """The agent's side of `diff`: apply(old, diff(old, new)) == new."""
    out = dict(current)
    for name in removes:
        out.pop(name, None)
    for unit in upserts:
        out[unit.name] = unit
    return out
