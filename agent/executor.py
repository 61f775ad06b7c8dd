"""Carry out a plan's steps through the backends, and remember how each unit fared.

Steps run in `agent.reconciler.ORDER` (all stops, then removes/writes/creates, the
manager reload, loads, starts); the steps of one kind run concurrently, one job
each. A manager-wide step (``reload``, no unit) goes to each backend that had a
unit step before it in the plan. Each step is logged with its reason when it runs.

A failed step never stops the others: it is logged with its reason and remembered,
with its reason, for the unit's state report (`errors`: "start failed (desired
launched, found inactive): ..."). A failed ``create`` (the runtime object of a
unit, e.g. a container whose image is missing) is remembered with the unit's hash
(`create_failed`): the reconciler does not try it again, nor start the unit, until
the unit changes or a retry pass comes, so a missing image is a reported failure and
not a loop. Units the plan could not take on (a foreign file or container) are
`conflicts`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Mapping

from agent.backends.base import Backend, BackendError, BackendUnavailable, Registry, Step
from agent.reconciler import ORDER, Plan
from proto.messages import DesiredUnit

log = logging.getLogger(__name__)

PHASES = ["stop", "remove", "write", "create", "reload", "load", "start"]
"""The ops in the order they run (`ORDER`; ops of one rank run one after the other)."""
assert sorted(PHASES, key=ORDER.__getitem__) == PHASES


class Executor:
    """Applies steps through the registry's backends; the per-unit outcome bookkeeping."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.errors: dict[str, str] = {}
        """Units whose last step failed (or whose job did not end well): why."""
        self.create_failed: dict[str, tuple[str, str]] = {}
        """Units whose runtime object could not be made: name -> (unit hash, why)."""
        self.conflicts: dict[str, str] = {}
        """Units the agent does not take on (something of their name is not its own)."""

    async def run(self, plan: Plan, desired: Mapping[str, DesiredUnit]) -> None:
        """Run the plan's steps in order; steps of one kind run concurrently."""
        touched: list[Backend] = []
        for op in PHASES:
            batch = [s for s in plan.steps if s.op == op]
            if not batch:
                continue
            calls = []
            for step in batch:
                if step.unit:
                    backend = self.registry.of(step.unit)
                    if backend not in touched:
                        touched.append(backend)
                    calls.append(self._step(backend, step, desired.get(step.unit)))
                else:
                    calls.extend(self._step(b, step, None) for b in touched)
            await asyncio.gather(*calls)

    async def _step(self, backend: Backend, step: Step, unit: DesiredUnit | None) -> None:
        name = step.unit
        if step.op == "start" and self.create_blocked(name, unit):
            return  # its runtime object could not be made: that is what is reported
        log.info("%s %s: %s", step.op, name or backend.kind, step.reason)
        try:
            outcome = await backend.apply(step, unit)
        except (BackendError, BackendUnavailable) as exc:
            log.warning("%s %s failed (%s): %s", step.op, name or backend.kind, step.reason, exc)
            if step.op == "create" and unit is not None:
                self.create_failed[name] = (
                    unit.hash,
                    f"cannot create the {backend.made_of}: {exc}",
                )
            elif name:
                self.errors[name] = f"{step.op} failed ({step.reason}): {exc}"
            return
        if outcome is None or not name:
            return
        if outcome:
            log.warning("%s %s (%s): %s", step.op, name, step.reason, outcome)
            self.errors[name] = f"{outcome} ({step.reason})"
            return
        self.errors.pop(name, None)
        if step.op in ("create", "remove"):
            self.create_failed.pop(name, None)

    def create_blocked(self, name: str, unit: DesiredUnit | None) -> bool:
        failed = self.create_failed.get(name)
        return failed is not None and unit is not None and failed[0] == unit.hash

    def blocked(self, desired: Mapping[str, DesiredUnit], spare: Collection[str]) -> set[str]:
        """Units whose create already failed for their current hash (not ``spare``)."""
        return {
            n
            for n, (unit_hash, _) in self.create_failed.items()
            if n in desired and desired[n].hash == unit_hash and n not in spare
        }

    def record(self, plan: Plan, planned: Collection[str]) -> None:
        """The conflicts of the units this plan covered replace their old ones."""
        self.conflicts = {
            n: c for n, c in self.conflicts.items() if n not in planned
        } | plan.conflicts

    def forget(self, names: Iterable[str]) -> None:
        """Units that left the desired state: nothing about them is reported any more."""
        for name in names:
            self.conflicts.pop(name, None)
            self.errors.pop(name, None)
            self.create_failed.pop(name, None)

    def changed(self, name: str) -> None:
        """A unit's desired version changed: its failed create gets a fresh try."""
        self.create_failed.pop(name, None)

    def problem(self, name: str, unit: DesiredUnit) -> str:
        """Why the unit is not run as asked, beyond its runtime: a conflict or a failed
        create at its current hash ("" if neither)."""
        if name in self.conflicts:
            return self.conflicts[name]
        failed = self.create_failed.get(name)
        return failed[1] if failed is not None and failed[0] == unit.hash else ""
