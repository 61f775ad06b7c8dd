"""What agents report about deployments: version stickers, drift, image digests.

Stickers and drift are observations like unit states: they go through the hub's
write-behind buffer (every agent sends its stickers again in its next Hello, and its
whole drift after every reconnect), so a burst of reports costs a few transactions.
The coordinator never makes them up: a sticker or a drift entry is only ever what a
machine said. Two questions are asked of an agent on demand, each answered by a
message carrying the request's id: `DriftRequest` (a fresh drift check) and
`ImageResolve` (pin image references to digests when a release is cut). A waiter
ends with `ReportUnavailable` when its machine is not connected, its session ends, or
the answer does not come in time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from coordinator.errors import NotFound, Unavailable
from coordinator.events import EventBus
from coordinator.hub.relay import RelayFailed, RemoteSession
from coordinator.hub.sessions import Hub, Session, gone
from coordinator.models import DEFAULT_TENANT, MachineDrift, MachineSticker
from coordinator.store.ports import MachineStore, ReportStore
from proto import messages as m

log = logging.getLogger(__name__)

T = TypeVar("T")


class ReportUnavailable(Unavailable):
    """The machine cannot answer now; ``reason`` is "not_connected", "disconnected",
    "timeout" or "unreachable" (its session is on a coordinator that could not be
    asked); the message says which machine and why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.timed_out = reason == "timeout"


class _Waiter:
    def __init__(
        self,
        machine_id: str,
        session_id: str,
        future: asyncio.Future[m.Message],
        kind: type[Any] | tuple[type[Any], ...] = (),
    ):
        self.machine_id = machine_id
        self.session_id = session_id
        self.future = future
        self.kind = kind
        """The message type that answers the question; others with its id are ignored."""


class ReportService:
    def __init__(
        self,
        storage: MachineStore,
        deploystore: ReportStore,
        hub: Hub,
        events: EventBus | None = None,
    ) -> None:
        self.events = events if events is not None else EventBus()
        self._drift_seen: dict[str, frozenset[tuple[str, str]]] = {}
        """Each machine's last drift (unit, kind), so only a change is an event."""
        self.storage = storage
        self.deploystore = deploystore
        self.hub = hub
        self._waiters: dict[str, _Waiter] = {}
        hub.handlers.append(self._on_message)
        hub.on_connect.append(self._on_connect)
        hub.on_disconnect.append(self._on_disconnect)
        hub.on_relay_answer.append(self._on_relay_answer)
        hub.on_relay_closed.append(self._on_disconnect)

    # --- what agents send ---------------------------------------------------------------

    async def _on_connect(self, session: Session) -> None:
        """Hello carries every sticker on the machine: the set replaces what was stored."""
        hello = session.hello
        assert hello is not None
        self._store_stickers(session.machine_id, hello.stickers)

    async def _on_message(self, session: Session, message: m.Message) -> None:
        if isinstance(message, m.Stickers):
            self._store_stickers(session.machine_id, message.stickers)
        elif isinstance(message, m.DriftReport):
            self.hub.buffer.add(
                functools.partial(
                    self.deploystore.put_drift,
                    session.machine_id,
                    list(message.entries),
                    message.checked_at,
                    time.time(),
                )
            )
            self._drift_event(session.machine_id, message.entries)
            if message.request_id:
                self._answer(session, message.request_id, message)
        elif isinstance(message, m.ImageResolved | m.HealthReport):
            self._answer(session, message.request_id, message)

    def _drift_event(self, machine_id: str, entries: list[m.DriftEntry]) -> None:
        """drift.detected when a machine reports drift it did not report before,
        drift.resolved when its drift is gone."""
        now = frozenset((e.unit, e.kind) for e in entries)
        before = self._drift_seen.get(machine_id, frozenset())
        if now == before:
            return
        if now:
            self._drift_seen[machine_id] = now
        else:
            self._drift_seen.pop(machine_id, None)
        if now - before:
            self.events.emit(
                "drift.detected",
                subject=machine_id,
                entries=len(now),
                units=sorted({unit for unit, _ in now}),
            )
        elif not now:
            self.events.emit("drift.resolved", subject=machine_id)

    def _store_stickers(self, machine_id: str, stickers: list[m.Sticker]) -> None:
        self.hub.buffer.add(
            functools.partial(self.deploystore.put_stickers, machine_id, stickers, time.time())
        )

    async def _on_relay_answer(self, remote: RemoteSession, message: m.Message) -> None:
        """An answer from a machine whose session is on another coordinator (it stored
        the drift report and told of it; here it only answers the question)."""
        answers = m.DriftReport | m.ImageResolved | m.HealthReport
        if isinstance(message, answers) and message.request_id:
            self._answer(remote, message.request_id, message)

    def _answer(
        self, session: Session | RemoteSession, request_id: str, message: m.Message
    ) -> None:
        waiter = self._waiters.get(request_id)
        if waiter is None or waiter.machine_id != session.machine_id:
            return  # late (the asker gave up) or not this machine's question
        if not isinstance(message, waiter.kind):
            return  # an answer of another type, carrying this question's id
        if not waiter.future.done():
            waiter.future.set_result(message)

    def _on_disconnect(self, session: Session | RemoteSession) -> None:
        """Questions to a machine that went away end now, with the reason."""
        for waiter in list(self._waiters.values()):
            if waiter.session_id == session.id and not waiter.future.done():
                waiter.future.set_exception(ReportUnavailable("disconnected", gone(session)))

    # --- what the API reads ------------------------------------------------------------

    def check_machine(self, machine_id: str | None, *, tenant: str = DEFAULT_TENANT) -> None:
        """A filter naming a machine must name one of `tenant`'s (NotFound otherwise,
        also for another tenant's)."""
        if machine_id is None:
            return
        machine = self.storage.get_machine(machine_id)
        if machine is None or machine.tenant != tenant:
            raise NotFound(f"machine {machine_id!r} does not exist")

    def drift(
        self, machine_id: str | None = None, *, tenant: str = DEFAULT_TENANT
    ) -> list[MachineDrift]:
        """Each of the tenant's machines' last drift report, or one machine's (NotFound
        if unknown)."""
        self.check_machine(machine_id, tenant=tenant)
        return self.deploystore.drift(machine_id, tenant=tenant)

    def stickers(
        self, machine_id: str | None = None, *, tenant: str = DEFAULT_TENANT
    ) -> list[MachineSticker]:
        """Version stickers as the tenant's machines last reported them."""
        self.check_machine(machine_id, tenant=tenant)
        return self.deploystore.stickers(machine_id, tenant=tenant)

    async def refresh_all_drift(
        self, timeout_s: float = 5.0, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[MachineDrift], dict[str, str]]:
        """Ask every connected machine of the tenant at once; the stored report stands in
        for a machine that did not answer. Returns every report by machine id, and who
        was unreachable with the reason."""
        mine = {mach.id for mach in self.storage.list_machines(tenant=tenant)}
        machines = sorted(mid for mid in self.hub.sessions if mid in mine)
        answers = await asyncio.gather(
            *(self.refresh_drift(mid, timeout_s) for mid in machines), return_exceptions=True
        )
        fresh, unreachable = merge_refreshed(machines, answers)
        stored = {d.machine_id: d for d in self.deploystore.drift(tenant=tenant)}
        merged = stored | fresh
        return [merged[k] for k in sorted(merged)], unreachable

    # --- questions to agents --------------------------------------------------------------

    async def refresh_drift(self, machine_id: str, timeout_s: float = 5.0) -> MachineDrift:
        """Ask the machine for a fresh drift check and return (and store) its answer."""
        reply = await self._ask(
            machine_id, lambda rid: m.DriftRequest(rid), m.DriftReport, timeout_s, "drift check"
        )
        return MachineDrift(
            machine_id=machine_id,
            entries=list(reply.entries),
            checked_at=reply.checked_at,
            reported_at=time.time(),
        )

    async def resolve_images(
        self, machine_id: str, images: list[str], timeout_s: float = 60.0
    ) -> m.ImageResolved:
        """Digests (and exact references) of image references, as the machine's dockerd
        resolves them (pulling what it lacks); per-image failures are in ``errors``."""
        return await self._ask(
            machine_id,
            lambda rid: m.ImageResolve(rid, list(images)),
            m.ImageResolved,
            timeout_s,
            "image resolution",
        )

    async def health_check(
        self, machine_id: str, units: list[str], timeout_s: float = 10.0
    ) -> m.HealthReport:
        """Ask the machine's agent now whether its runtimes answer and what state these
        units are in."""
        return await self._ask(
            machine_id,
            lambda rid: m.HealthCheck(rid, list(units)),
            m.HealthReport,
            timeout_s,
            "health check",
        )

    async def _ask(
        self,
        machine_id: str,
        make: Callable[[str], m.Message],
        kind: type[T],
        timeout_s: float,
        what: str,
    ) -> T:
        try:
            async with self.hub.reaching(machine_id) as session:
                if session is None:
                    raise ReportUnavailable(
                        "not_connected", f"machine {machine_id} is not connected"
                    )
                request_id = secrets.token_hex(8)
                future: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
                self._waiters[request_id] = _Waiter(machine_id, session.id, future, kind)
                try:
                    try:
                        await session.send(make(request_id))
                    except ConnectionError:
                        raise ReportUnavailable(
                            "disconnected", f"machine {machine_id} disconnected"
                        ) from None
                    try:
                        async with asyncio.timeout(timeout_s):
                            reply = await future
                    except TimeoutError:
                        raise ReportUnavailable(
                            "timeout",
                            f"machine {machine_id} did not answer the {what} in {timeout_s:g} s",
                        ) from None
                finally:
                    self._waiters.pop(request_id, None)
        except RelayFailed as exc:  # the coordinator holding its session cannot be asked
            raise ReportUnavailable("unreachable", str(exc)) from None
        if not isinstance(reply, kind):  # _answer only accepts `kind`; never on the wire
            raise ReportUnavailable("invalid", f"machine {machine_id} answered the {what} wrongly")
        return reply


def merge_refreshed(
    machines: list[str], answers: list[MachineDrift | BaseException]
) -> tuple[dict[str, MachineDrift], dict[str, str]]:
    """Split gathered answers into fresh reports and unreachable machines' reasons; any
    other failure is a bug and is raised. Pure."""
    fresh: dict[str, MachineDrift] = {}
    unreachable: dict[str, str] = {}
    for mid, answer in zip(machines, answers, strict=True):
        if isinstance(answer, MachineDrift):
            fresh[mid] = answer
        elif isinstance(answer, ReportUnavailable):
            unreachable[mid] = answer.message
        else:
            raise answer
    return fresh, unreachable
