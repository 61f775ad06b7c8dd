"""Unit logs through the agent link: no SSH, and a follow survives nothing but itself.

A request gets an id; the agent answers with LogChunks carrying journal cursors, so a
client that reconnects can resume from the last cursor it saw without gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

from coordinator.errors import Conflict, Invalid, NotFound, Unavailable
from coordinator.hub.relay import RelayFailed, RemoteSession
from coordinator.hub.sessions import Hub, Session, gone
from coordinator.models import Unit
from proto import messages as m

FIRST_CHUNK_TIMEOUT_S = 30.0


class LogUnavailable(Unavailable):
    pass


def journal_machine(name: str, unit: Unit | None, machine: str = "") -> str:
    """The machine whose journal to read for a unit: the one asked for, else the only
    one the unit is on (a unit on several needs `machine`). Pure."""
    if unit is None:
        raise NotFound(f"unit {name!r} does not exist")
    if machine:
        return machine
    if not unit.machines:
        raise Conflict(f"unit {name} is not scheduled on any machine")
    if len(unit.machines) > 1:
        raise Invalid(
            f"unit {name} runs on {len(unit.machines)} machines"
            f" ({', '.join(unit.machines)}); pass machine=ID"
        )
    return unit.machines[0]


class LogService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._queues: dict[str, asyncio.Queue[m.LogChunk | None]] = {}
        self._sessions: dict[str, str] = {}
        """request id -> the session (or relay) it was sent through."""
        hub.handlers.append(self._on_message)
        hub.on_disconnect.append(self._on_disconnect)
        hub.on_relay_answer.append(self._on_message)
        hub.on_relay_closed.append(self._on_disconnect)

    def _on_disconnect(self, session: Session | RemoteSession) -> None:
        """A follow must not hang when its machine goes away (or the relay to the
        coordinator holding its session): end it with the reason."""
        for request_id, session_id in list(self._sessions.items()):
            queue = self._queues.get(request_id)
            if session_id == session.id and queue is not None:
                queue.put_nowait(m.LogChunk(request_id, done=True, error=gone(session)))

    async def _on_message(self, session: Session | RemoteSession, message: m.Message) -> None:
        if isinstance(message, m.LogChunk):
            queue = self._queues.get(message.request_id)
            if queue is not None:
                queue.put_nowait(message)

    async def stream(
        self, machine_id: str, unit: str, *, lines: int, follow: bool, cursor: str = ""
    ) -> AsyncIterator[m.LogChunk]:
        async with contextlib.AsyncExitStack() as stack:
            try:  # a relay is closed with the stack: the other end cancels a follow
                session = await stack.enter_async_context(self.hub.reaching(machine_id))
            except RelayFailed as exc:
                raise LogUnavailable(str(exc)) from None
            if session is None:
                raise LogUnavailable(f"machine {machine_id} is not connected")
            request_id = secrets.token_hex(8)
            queue: asyncio.Queue[m.LogChunk | None] = asyncio.Queue()
            self._queues[request_id] = queue
            self._sessions[request_id] = session.id
            try:
                await session.send(
                    m.LogRequest(request_id, unit, lines=lines, follow=follow, cursor=cursor)
                )
                first = True
                while True:
                    timeout = FIRST_CHUNK_TIMEOUT_S if (first or not follow) else None
                    try:
                        async with asyncio.timeout(timeout):
                            chunk = await queue.get()
                    except TimeoutError:
                        raise LogUnavailable(
                            f"machine {machine_id} did not answer in time"
                        ) from None
                    first = False
                    if chunk is None:
                        return
                    yield chunk
                    if chunk.done:
                        return
            finally:
                self._queues.pop(request_id, None)
                self._sessions.pop(request_id, None)
                if follow and session is self.hub.sessions.get(machine_id):
                    with contextlib.suppress(ConnectionError):
                        await session.send(m.LogCancel(request_id))
