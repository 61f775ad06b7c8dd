"""The unit domain service: define units, place them, and keep machines in sync.

Every API adapter (fleet v1, v1-alpha, moorctl's routes) goes through this one
service. A change is committed first (with the affected machines' revisions bumped
in the same transaction), then pushed to the live sessions as revisioned diffs.
Machines that are offline catch up from their Hello: the coordinator compares the
revision they acknowledged with its own and sends the full state when they differ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import msgspec

from coordinator.desired import diff, machine_desired
from coordinator.hub import Hub, Session
from coordinator.models import Unit
from coordinator.storage import Storage
from proto import messages as m
from proto.messages import DesiredState, DesiredUnit
from proto.units import UnitOption, unit_hash

log = logging.getLogger(__name__)


class Sent(msgspec.Struct):
    """What the current session of a machine was last told (the base of the next diff)."""

    session_id: str
    revision: int
    units: dict[str, DesiredUnit]


class UnitService:
    def __init__(self, storage: Storage, hub: Hub) -> None:
        self.storage = storage
        self.hub = hub
        self._sent: dict[str, Sent] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        hub.on_connect.append(self._on_connect)
        hub.handlers.append(self._on_message)

    # --- commands ---------------------------------------------------------------------

    async def set_unit(
        self,
        name: str,
        options: list[UnitOption],
        desired_state: DesiredState,
        machines: Iterable[str],
    ) -> Unit:
        existing = self.storage.get_unit(name)
        unit = Unit(
            name=name,
            options=list(options),
            hash=unit_hash(options),
            desired_state=desired_state,
            machines=sorted(set(machines)),
            created_at=existing.created_at if existing else 0.0,
        )
        affected = self.storage.put_unit(unit, time.time())
        await self.push(affected)
        return self.storage.get_unit(name) or unit

    async def destroy(self, name: str) -> bool:
        placed = self.storage.delete_unit(name)
        if placed is None:
            return False
        await self.push(placed)
        return True

    # --- distribution -----------------------------------------------------------------

    async def push(self, machine_ids: Iterable[str]) -> None:
        await asyncio.gather(*(self._push_one(mid) for mid in machine_ids))

    async def _push_one(self, machine_id: str, *, full: bool = False) -> None:
        session = self.hub.sessions.get(machine_id)
        if session is None:
            return
        lock = self._locks.setdefault(machine_id, asyncio.Lock())
        async with lock:
            machine = self.storage.get_machine(machine_id)
            if machine is None:
                return
            desired = machine_desired(self.storage.list_units(machine_id=machine_id))
            sent = self._sent.get(machine_id)
            if full or sent is None or sent.session_id != session.id:
                message = m.Desired(
                    revision=machine.desired_revision,
                    full=True,
                    upserts=list(desired.values()),
                )
            else:
                if sent.revision == machine.desired_revision:
                    return
                upserts, removes = diff(sent.units, desired)
                message = m.Desired(
                    revision=machine.desired_revision,
                    base_revision=sent.revision,
                    upserts=upserts,
                    removes=removes,
                )
            try:
                await session.send(message)
            except ConnectionError:
                return
            self._sent[machine_id] = Sent(session.id, machine.desired_revision, desired)

    async def _on_connect(self, session: Session) -> None:
        hello = session.hello
        assert hello is not None
        self.storage.record_unit_states(
            session.machine_id, list(hello.snapshot), [], time.time(), replace_all=True
        )
        machine = self.storage.get_machine(session.machine_id)
        if machine is None:
            return
        if hello.applied_revision == machine.desired_revision:
            # The agent already has exactly this revision: only remember it as the base.
            desired = machine_desired(self.storage.list_units(machine_id=session.machine_id))
            self._sent[session.machine_id] = Sent(session.id, machine.desired_revision, desired)
            return
        await self._push_one(session.machine_id, full=True)

    async def _on_message(self, session: Session, message: m.Message) -> None:
        if isinstance(message, m.StateReport):
            self.storage.record_unit_states(
                session.machine_id, list(message.changes), list(message.removed), time.time()
            )
        elif isinstance(message, m.Applied):
            self.storage.set_applied_revision(session.machine_id, message.revision)
        elif isinstance(message, m.Error) and message.code == "resync":
            log.info("machine %s asked for a full resync: %s", session.machine_id, message.message)
            await self._push_one(session.machine_id, full=True)
