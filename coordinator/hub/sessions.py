"""The agent hub: one mutual-TLS WebSocket session per machine.

The TLS layer has already verified the client certificate against the fleet CA;
here the hub checks what TLS cannot: the certificate is an agent's, not revoked, and
its CN is the machine id the Hello claims. Frames that cannot be decoded are answered
with an Error and counted; they never end the hub, and only end a session when the
WebSocket layer itself cannot continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

import aiohttp
import msgspec
from aiohttp import web

from coordinator import limits
from coordinator.hub import liveness
from coordinator.hub.relay import (
    CLOSE_GONE,
    COMMANDS,
    MAX_OPEN_PER_RELAY,
    QUESTIONS,
    Relay,
    RemoteSession,
    request_id_of,
)
from coordinator.hub.relay import HEARTBEAT_S as RELAY_HEARTBEAT_S
from coordinator.hub.statebuffer import StateBuffer
from coordinator.metrics import CoordinatorMetrics
from coordinator.models import Machine
from coordinator.store.ports import (
    ChangeFeed,
    ClusterStore,
    EnrollRefused,
    SessionStore,
    StorageUnavailable,
)
from coordinator.trust import pki
from coordinator.trust.enrolment import Enroller
from proto import messages as m
from proto.keepalive import enable_keepalive

log = logging.getLogger(__name__)

CLOSE_PROTO = 4000
CLOSE_REVOKED = 4001
CLOSE_IDENTITY = 4003
CLOSE_REPLACED = 4008
CLOSE_SILENT = 4009
CLOSE_NO_DATABASE = 1013
"""A coordinator cut off its database lets its agents go (WebSocket's "try again
later": not one of the 4000s the agent takes as a refusal), so they dial the next."""
HELLO_TIMEOUT_S = 10.0
CLAIM_EVERY_S = 10.0
"""How often a coordinator sets right what the store says of its live sessions."""
MAX_HEARTBEATS_PER_S = 500.0
MAX_RECONNECTS_PER_S = 2000.0
RECONNECT_SPREAD_MIN_S = 1.0
RECHECK_S = 5.0
"""How often a hub sharing its database compares every session's last sent desired
revision with the stored one: the safety net under the change feed (a notification
lost while the feed reconnects, or a NOTIFY that failed after its commit)."""

MessageHandler = Callable[["Session", m.Message], Awaitable[None]]
MachinesHook = Callable[[list[str]], Awaitable[None]]


def connected_line(machine_ids: list[str], named: int = 8) -> str:
    """The log's line for a batch of new sessions: a wave of thousands is a few hundred
    lines, not one per agent (each machine's `machine.up` is in the audit log). Pure."""
    if len(machine_ids) == 1:
        return f"machine {machine_ids[0]} connected"
    shown = ", ".join(machine_ids[:named])
    more = len(machine_ids) - named
    return f"{len(machine_ids)} machines connected: {shown}" + (
        f" and {more} more" if more > 0 else ""
    )


def gone(session: Session | RemoteSession) -> str:
    """Why what was asked through `session` will not be answered: the machine went away,
    or (a relay) the link to the coordinator holding its session did. Pure."""
    if isinstance(session, RemoteSession):
        return session.ended or f"the relay to coordinator {session.owner} ended"
    return f"machine {session.machine_id} disconnected"


class HubStore(SessionStore, ClusterStore, Protocol):
    """Machines, the write-behind, and which coordinator holds each machine's session."""


class Session:
    """A live agent connection; `send` is the only way to reach that machine."""

    def __init__(
        self, machine_id: str, serial: str, ws: web.WebSocketResponse, metrics: CoordinatorMetrics
    ) -> None:
        self.machine_id = machine_id
        self.serial = serial
        self.id = secrets.token_hex(8)
        self.ws = ws
        self.connected_at = time.time()
        self.last_seen = self.connected_at
        self.hello: m.Hello | None = None
        self.machine: Machine | None = None
        """The machine's stored record as read when the session was admitted, for the
        Welcome and the connect hooks (its tenant: read once per session, not once per
        hook); None once they ran, so a session does not keep it for its life."""
        self.tenant = ""
        """The machine's tenant (kept from `machine`, for the hooks of its wave)."""
        self.cert_window = (0.0, 0.0)
        self.sent_revision = -1
        """The desired revision this agent was last sent (or had at its Hello): the
        change feed's safety net compares it with the stored one."""
        self.ready = False
        """Its Hello is handled and every on_connect hook ran; its wave's `on_connected`
        hooks run after (what they derive is sent then)."""
        self._metrics = metrics
        self.expensive = limits.TokenBucket(
            limits.EXPENSIVE_RATE_PER_S, limits.EXPENSIVE_BURST, time.monotonic()
        )
        """Resyncs and certificate renewals this session may still ask for."""

    async def send(self, message: m.Message) -> None:
        await self.ws.send_bytes(m.encode(message))
        self._metrics.messages_out.labels(type(message).__struct_config__.tag).inc()
        if isinstance(message, m.Desired):
            self.sent_revision = message.revision

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])


class Hub:
    def __init__(
        self,
        storage: HubStore,
        enroller: Enroller,
        metrics: CoordinatorMetrics,
        *,
        heartbeat_s: float,
        lost_after_s: float,
        feed: ChangeFeed | None = None,
        coordinator_id: str = "",
    ) -> None:
        self.storage = storage
        self.feed = feed
        """Changes other coordinators sharing the database made (None: this one alone)."""
        self.coordinator_id = coordinator_id
        """Marked on the machines whose sessions this coordinator holds (#23)."""
        self.enroller = enroller
        self.metrics = metrics
        self.heartbeat_s = heartbeat_s
        self.lost_after_s = lost_after_s
        self.sessions: dict[str, Session] = {}
        self.disconnected_since: dict[str, float] = {}
        self.buffer = StateBuffer(storage)
        self.handlers: list[MessageHandler] = []
        """Domain services subscribe here for Applied, StateReport, LogChunk..."""
        self.on_connect: list[Callable[[Session], Awaitable[None]]] = []
        """Called with each session after its Welcome, before it is ready: for what must
        be taken from the Hello before the session drops its bulk (no store reads here:
        they go in `on_connected`, once a wave)."""
        self.on_connected: list[MachinesHook] = []
        """Called with the machines whose sessions became ready since the last call: a
        reconnect wave of thousands of agents costs a hook one read per batch, not one
        per Hello (a batch is what arrived while the previous one was handled)."""
        self._arrived: list[str] = []
        self._arrivals: asyncio.Task[None] | None = None
        self.on_state_change: list[Callable[[str, str], Awaitable[None]]] = []
        """Called with (machine id, new state) for liveness transitions (lost, ...)."""
        self.on_disconnect: list[Callable[[Session], None]] = []
        """Called when a session ends (streams waiting on that machine end too)."""
        self.relay_ssl: ssl.SSLContext | None = None
        """This coordinator's client context (admin certificate) for relays to the
        others (`coordinator.hub.relay`); None: questions go to local sessions only."""
        self.peer_stale_s = 30.0
        """A coordinator whose heartbeat is older holds no session worth relaying to."""
        self.database_lost_since: Callable[[], float | None] = lambda: None
        """Since when (wall clock) the database has not been reached (None: it is)."""
        self.let_go_after_s = float("inf")
        """How long without the database before this coordinator lets its agents go
        (`let_go`): another coordinator sharing the database takes their sessions over
        this long after its last heartbeat (`peer_stale_s`); with no other, never."""
        self.on_relay_answer: list[Callable[[RemoteSession, m.Message], Awaitable[None]]] = []
        """Services that ask agents: answers arriving through a relay (only answers:
        the agent's other messages are handled where its session is)."""
        self.on_relay_closed: list[Callable[[RemoteSession], None]] = []
        """Called when a relay ends (what waited on it ends too)."""
        self._relayed: dict[str, Relay] = {}
        """Request id -> the relay its answers go back through (the answering end)."""
        self._relays: dict[str, set[Relay]] = {}
        """Machine id -> relays open to its session here."""
        self.on_desired: list[MachinesHook] = []
        """Called with machines that have a session here and whose stored desired
        revision is not the one their session was last sent (changed by another
        coordinator, or a push was missed): send them their desired state."""
        self.on_nudge: list[MachinesHook] = []
        """Called with machines that have a session here and whose stored state another
        coordinator changed: re-derive from the store what their agents must be sent
        (task starts and stops...)."""
        self._tasks: set[asyncio.Task[object]] = set()

    # --- session lifecycle ----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = pki.peer_cert_info(request.transport)
        # In a thread: on PostgreSQL these are round trips, and while thousands of
        # agents reconnect the loop has their TLS handshakes to do meanwhile.
        try:
            refusal, machine = await asyncio.to_thread(self._refuse_peer, peer)
        except StorageUnavailable as exc:  # not a refusal: the agent tries the next hub
            self.metrics.sessions_refused.labels("storage").inc()
            raise web.HTTPServiceUnavailable(text=str(exc)) from None
        if refusal or peer is None or machine is None:
            self.metrics.sessions_refused.labels(refusal or "no_cert").inc()
            raise web.HTTPForbidden(text=refusal or "client certificate required")

        if request.transport is not None:  # a silently dropped link ends in ~11 s
            enable_keepalive(request.transport.get_extra_info("socket"))
        ws = web.WebSocketResponse(max_msg_size=m.HARD_FRAME_LIMIT, autoping=True)
        await ws.prepare(request)
        session = Session(peer.common_name, peer.serial, ws, self.metrics)
        session.machine = machine
        session.tenant = machine.tenant
        session.cert_window = (peer.not_before, peer.not_after)
        try:
            if await self._handshake(session):
                await self._serve(session)
        finally:
            await self._drop(session)
        return ws

    def _refuse_peer(self, peer: pki.CertInfo | None) -> tuple[str, Machine | None]:
        """Why this peer may not hold a session ("" if it may), and its machine."""
        if peer is None:
            return "no_cert", None
        if peer.role != pki.ROLE_AGENT:
            return "not_agent_cert", None
        if self.storage.is_serial_revoked(peer.serial):
            return "revoked", None
        machine = self.storage.get_machine(peer.common_name)
        if machine is None or machine.revoked:
            return ("unknown_machine" if machine is None else "revoked"), None
        return "", machine

    async def _handshake(self, session: Session) -> bool:
        try:
            msg = await session.ws.receive(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            await self._refuse(session, "hello_timeout", CLOSE_PROTO, "no Hello received")
            return False
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        ):
            # gone before its Hello (a reset link, an agent stopping): nothing to refuse
            log.info("machine %s went away before its Hello", session.machine_id)
            return False
        if msg.type != aiohttp.WSMsgType.BINARY:
            await self._refuse(session, "no_hello", CLOSE_PROTO, "expected a binary Hello frame")
            return False
        try:
            hello = m.decode(msg.data)
        except m.FrameError as exc:
            self.metrics.frame_errors.labels(exc.reason).inc()
            await self._refuse(session, "bad_hello", CLOSE_PROTO, exc.message)
            return False
        if not isinstance(hello, m.Hello):
            await self._refuse(session, "no_hello", CLOSE_PROTO, "the first message must be Hello")
            return False
        if hello.proto != m.PROTO_VERSION:
            await self._refuse(
                session,
                "proto_mismatch",
                CLOSE_PROTO,
                f"protocol {hello.proto} not supported (coordinator speaks {m.PROTO_VERSION})",
            )
            return False
        problem = limits.message_problem(hello)
        if problem:
            self.metrics.frame_errors.labels("out_of_range").inc()
            await self._refuse(session, "bad_hello", CLOSE_PROTO, f"invalid Hello: {problem}")
            return False
        if hello.machine_id != session.machine_id:
            await self._refuse(
                session,
                "identity_mismatch",
                CLOSE_IDENTITY,
                f"Hello names machine {hello.machine_id!r} but the certificate is for "
                f"{session.machine_id!r}",
            )
            return False
        self.metrics.messages_in.labels("hello").inc()
        session.hello = hello
        old = self.sessions.get(session.machine_id)
        self.sessions[session.machine_id] = session
        self.disconnected_since.pop(session.machine_id, None)
        session.sent_revision = hello.applied_revision
        if old is not None:
            self._background(old.close(CLOSE_REPLACED, "replaced by a newer session"))
        self.buffer.add(
            functools.partial(
                self._connected,
                session.machine_id,
                hello,
                time.time(),
            )
        )
        self.metrics.agents_connected.set(len(self.sessions))
        await session.send(
            m.Welcome(
                m.PROTO_VERSION,
                session.id,
                self.heartbeat_for(len(self.sessions)),
                cert_not_before=session.cert_window[0],
                cert_not_after=session.cert_window[1],
                lost_after_s=self.lost_after_s,
                reconnect_spread_s=self.reconnect_spread_for(len(self.sessions)),
                desired_revision=session.machine.desired_revision if session.machine else -1,
            )
        )
        log.debug("machine %s connected (session %s)", session.machine_id, session.id)
        for hook in self.on_connect:
            await hook(session)
        # What the hooks needed of the Hello and the admitted record is taken: keep the
        # machine's facts, not its every unit's state and sticker, nor the record
        # (kilobytes a session, per agent, for as long as the session lasts).
        session.hello = msgspec.structs.replace(hello, snapshot=[], stickers=[])
        session.machine = None
        session.ready = True
        self._arrived.append(session.machine_id)
        if self._arrivals is None or self._arrivals.done():
            self._arrivals = asyncio.create_task(self._connected_waves())
        return True

    async def _connected_waves(self) -> None:
        """Hand the `on_connected` hooks what arrived, a batch at a time, until none is
        left; sessions that ended meanwhile are left out."""
        while self._arrived:
            await asyncio.sleep(0)  # the Hellos handled in this turn of the loop join
            batch = sorted({mid for mid in self._arrived if self._ready(mid)})
            self._arrived.clear()
            if batch:
                log.info("%s", connected_line(batch))
                await self._wave(batch)

    async def _wave(self, batch: list[str]) -> None:
        """The `on_connected` hooks over one batch. Without the database they cannot
        derive what the agents must be sent: the batch's sessions end ("try again
        later"), and their agents come back for it, as when a Hello's own read fails."""
        for hook in self.on_connected:
            try:
                await hook(batch)
            except StorageUnavailable as exc:
                log.warning("%d new session(s) closed: %s", len(batch), exc)
                for mid in batch:
                    if (session := self.sessions.get(mid)) is not None:
                        self._background(session.close(CLOSE_NO_DATABASE, "database unavailable"))
                return
            except Exception:
                log.exception("hook %s failed for %d machine(s)", hook, len(batch))

    def _connected(self, machine_id: str, hello: m.Hello, now: float) -> None:
        """One buffered write: the machine is connected, to this coordinator."""
        self.storage.record_hello(
            machine_id,
            hostname=hello.hostname,
            primary_ip=hello.primary_ip,
            metadata=hello.metadata,
            capabilities=hello.capabilities,
            agent_version=hello.agent_version,
            now=now,
            session_owner=self.coordinator_id,
        )

    def _disconnected(self, machine_id: str, now: float, last_seen: float) -> None:
        """One buffered write: the session this coordinator held ended."""
        self.storage.drop_session(machine_id, self.coordinator_id, now, last_seen=last_seen)

    async def _refuse(self, session: Session, reason: str, code: int, message: str) -> None:
        self.metrics.sessions_refused.labels(reason).inc()
        log.warning("refusing agent %s: %s", session.machine_id, message)
        with contextlib.suppress(ConnectionError):
            await session.send(m.Error(reason, message))
        await session.close(code, message)

    async def _serve(self, session: Session) -> None:
        ws = session.ws
        async for msg in ws:
            session.last_seen = time.time()
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self._on_frame(session, msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await self._frame_error(session, "undecodable", "text frames are not accepted")
            elif msg.type == aiohttp.WSMsgType.ERROR:
                exc = ws.exception()
                too_big = isinstance(exc, aiohttp.WebSocketError) and exc.code == 1009
                self.metrics.frame_errors.labels("too_large" if too_big else "transport").inc()
                log.warning("session of %s failed: %s", session.machine_id, exc)

    async def _on_frame(self, session: Session, data: bytes) -> None:
        try:
            message = m.decode(data)
        except m.FrameError as exc:
            await self._frame_error(session, exc.reason, exc.message)
            return
        self.metrics.messages_in.labels(type(message).__struct_config__.tag).inc()
        problem = limits.message_problem(message)
        if problem:
            await self._frame_error(session, "out_of_range", problem)
            return
        if limits.is_expensive(message) and not session.expensive.take(time.monotonic()):
            self.metrics.frame_errors.labels("rate_limited").inc()
            wait = session.expensive.retry_after()
            with contextlib.suppress(ConnectionError):
                await session.send(
                    m.Error("rate_limited", f"too many requests; retry in {wait:.1f} s")
                )
            return
        if isinstance(message, m.Heartbeat):
            with contextlib.suppress(ConnectionError):  # the echo of a link closing now
                await session.send(message)
        elif isinstance(message, m.CertRenew):
            await self._renew(session, message)
        rid = request_id_of(message)
        relay = self._relayed.get(rid) if rid else None
        if relay is not None and relay.machine_id == session.machine_id:
            await relay.forward(message)
            if rid not in relay.open:
                self._relayed.pop(rid, None)
        for handler in self.handlers:
            try:
                await handler(session, message)
            except StorageUnavailable as exc:  # reported once by the store itself
                log.debug(
                    "%s from %s not stored: %s", type(message).__name__, session.machine_id, exc
                )
            except Exception:
                log.exception(
                    "handler failed on %s from %s", type(message).__name__, session.machine_id
                )

    async def _frame_error(self, session: Session, reason: str, message: str) -> None:
        self.metrics.frame_errors.labels(reason).inc()
        log.warning("frame from %s refused (%s): %s", session.machine_id, reason, message)
        with contextlib.suppress(ConnectionError):
            await session.send(m.Error(f"frame_{reason}", message))

    async def _renew(self, session: Session, req: m.CertRenew) -> None:
        try:
            cert = self.enroller.renew(session.machine_id, req.csr_pem)
        except EnrollRefused as exc:
            await session.send(m.Error("renew_refused", str(exc)))
            return
        await session.send(m.CertIssued(cert))
        log.info("renewed the certificate of %s", session.machine_id)

    async def _drop(self, session: Session) -> None:
        if self.sessions.get(session.machine_id) is session:
            del self.sessions[session.machine_id]
            self.disconnected_since[session.machine_id] = time.time()
            for hook in self.on_disconnect:
                hook(session)
            # Disconnected unless its agent reached another coordinator meanwhile.
            self.buffer.add(
                functools.partial(
                    self._disconnected, session.machine_id, time.time(), session.last_seen
                )
            )
            self.metrics.agents_connected.set(len(self.sessions))
            log.info("machine %s disconnected", session.machine_id)
            for relay in self._relays.pop(session.machine_id, set()):
                self._background(relay.ws.close(code=CLOSE_GONE, message=b"disconnected"))
        if not session.ws.closed:
            await session.ws.close()

    def reconnect_spread_for(self, fleet_size: int) -> float:
        """Agents spread their first reconnect after a session over this window, so a
        restarted hub takes at most about MAX_RECONNECTS_PER_S sessions a second."""
        return max(RECONNECT_SPREAD_MIN_S, fleet_size / MAX_RECONNECTS_PER_S)

    def heartbeat_for(self, fleet_size: int) -> float:
        """Nomad's rule: the interval grows with the fleet so the hub never handles more
        than MAX_HEARTBEATS_PER_S beats, however many machines there are."""
        return max(self.heartbeat_s, fleet_size / MAX_HEARTBEATS_PER_S)

    # --- questions to agents wherever their session is (#23) -------------------------------

    def connected_ids(self) -> set[str]:
        """Machines with a session anywhere: here (exactly), or on another coordinator
        (as stored: that coordinator's write-behind lags by a flush)."""
        return set(self.sessions) | self.storage.sessions_elsewhere(self.coordinator_id)

    async def reach(self, machine_id: str) -> Session | RemoteSession | None:
        """The machine's session here, else a relay to the coordinator holding it (the
        caller closes it when done), else None (connected nowhere). Raises RelayFailed
        when the coordinator holding it cannot be asked."""
        session = self.sessions.get(machine_id)
        if session is not None or self.relay_ssl is None:
            return session
        route = await asyncio.to_thread(self.storage.session_route, machine_id, self.peer_stale_s)
        if route is None or route[0] == self.coordinator_id or not route[1]:
            return None
        return await RemoteSession.open(
            route[1], machine_id, route[0], self.relay_ssl, self._relay_answer, self._relay_closed
        )

    @contextlib.asynccontextmanager
    async def reaching(self, machine_id: str) -> AsyncIterator[Session | RemoteSession | None]:
        """`reach`, and the relay (if it is one) closed when the block ends, however."""
        session = await self.reach(machine_id)
        try:
            yield session
        finally:
            if isinstance(session, RemoteSession):
                await session.close()

    async def _relay_answer(self, remote: RemoteSession, message: m.Message) -> None:
        for handler in self.on_relay_answer:
            try:
                await handler(remote, message)
            except Exception:
                log.exception("relayed %s from %s failed", type(message).__name__, remote.owner)

    def _relay_closed(self, remote: RemoteSession) -> None:
        for hook in self.on_relay_closed:
            hook(remote)

    async def serve_relay(self, request: web.Request) -> web.StreamResponse:
        """The answering end: another coordinator's questions to an agent whose session
        is here. Only coordinators (admin certificates of the fleet's CA) may ask, only
        questions pass, and the relay ends with the session."""
        peer = pki.peer_cert_info(request.transport)
        if peer is None or peer.role != pki.ROLE_ADMIN:
            raise web.HTTPForbidden(text="relays are for coordinators (an admin certificate)")
        if await asyncio.to_thread(self.storage.is_serial_revoked, peer.serial):
            raise web.HTTPForbidden(text="certificate revoked")
        machine_id = request.match_info["machine_id"]
        session = self.sessions.get(machine_id)
        if session is None or not session.ready:
            raise web.HTTPNotFound(text=f"machine {machine_id} has no session here")
        ws = web.WebSocketResponse(
            max_msg_size=m.MAX_FRAME, autoping=True, heartbeat=RELAY_HEARTBEAT_S
        )
        await ws.prepare(request)
        transport = request.transport
        relay = Relay(machine_id, ws, transport.abort if transport is not None else lambda: None)
        self._relays.setdefault(machine_id, set()).add(relay)
        try:
            await self._relay_questions(session, relay)
        finally:
            mine = self._relays.get(machine_id)
            if mine is not None:
                mine.discard(relay)
                if not mine:
                    del self._relays[machine_id]
            for rid in relay.open:
                self._relayed.pop(rid, None)
            if self.sessions.get(machine_id) is session:
                for rid in relay.follows:
                    with contextlib.suppress(ConnectionError):
                        await session.send(m.LogCancel(rid))
            await ws.close()
        return ws

    async def _relay_questions(self, session: Session, relay: Relay) -> None:
        async for frame in relay.ws:
            if frame.type != aiohttp.WSMsgType.BINARY:
                return
            try:
                question = m.decode(frame.data)
            except m.FrameError as exc:
                log.warning("relay for %s: %s", session.machine_id, exc.message)
                return
            if limits.message_problem(question):
                log.warning("relay for %s: %s refused", session.machine_id, type(question))
                return
            if isinstance(question, COMMANDS):
                pass  # passed on; nothing comes back
            elif not isinstance(question, QUESTIONS):
                log.warning("relay for %s: %s refused", session.machine_id, type(question))
                return
            elif not isinstance(question, m.LogCancel):
                rid = question.request_id
                if len(relay.open) >= MAX_OPEN_PER_RELAY or rid in self._relayed:
                    return
                relay.open.add(rid)
                self._relayed[rid] = relay
                if isinstance(question, m.LogRequest) and question.follow:
                    relay.follows.add(rid)
            elif question.request_id in relay.open:
                relay.follows.discard(question.request_id)
            else:
                continue  # not this relay's request
            if self.sessions.get(session.machine_id) is not session:
                return
            try:
                await session.send(question)
            except ConnectionError:
                return

    # --- operator actions -------------------------------------------------------------

    def end_session(self, machine_id: str, code: int, reason: str) -> None:
        """Close the machine's live session, if any, without waiting for the peer. A
        session on another coordinator ends there once it sees its certificate revoked
        (`announce`); ending one is only ever asked for with its certificate revoked."""
        session = self.sessions.get(machine_id)
        if session is not None:
            self._background(session.close(code, reason))
        else:
            self.announce([machine_id])

    async def revoke(self, machine_id: str) -> bool:
        """Refuse the machine's certificates from now on and end its live session
        (here, or on another coordinator through the change feed)."""
        if not self.storage.revoke_machine(machine_id, time.time()):
            return False
        session = self.sessions.get(machine_id)
        if session is not None:
            self._background(session.close(CLOSE_REVOKED, "certificate revoked"))
        else:
            self.announce([machine_id])
        return True

    def _background(self, coro: Coroutine[Any, Any, object]) -> None:
        """Closing handshakes wait on the peer; an API call must not wait with them."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- several coordinators (#23) ---------------------------------------------------------

    def announce(self, machine_ids: Iterable[str]) -> None:
        """Tell the other coordinators that these machines' stored state changed (the
        change is committed): those of them without a session here may have one there.
        Best effort: a failure is logged, and the agent gets the change when it
        connects again (or from the safety net, for desired state)."""
        elsewhere = sorted({mid for mid in machine_ids if mid not in self.sessions})
        if self.feed is None or not elsewhere:
            return
        try:
            self.feed.announce(elsewhere)
        except StorageUnavailable as exc:
            log.warning("could not tell other coordinators about %s: %s", elsewhere[:5], exc)

    async def nudge(self, machine_ids: Iterable[str]) -> None:
        """Another coordinator changed these machines' stored state: send the agents with
        a session here what they now miss, as if the change had been made here."""
        here = sorted({mid for mid in machine_ids if self._ready(mid)})
        if not here:
            return
        await self.recheck(here)
        await self._call(self.on_nudge, here)

    async def recheck(self, machine_ids: Iterable[str] | None = None) -> None:
        """Compare the stored desired revision of these machines (default: every
        session here) with what their sessions were last sent (one query): the stale
        ones are pushed (`on_desired`); sessions of revoked machines or certificates
        end. Needs the feed (it reads through it); does nothing without one."""
        if self.feed is None:
            return
        ids = list(self.sessions) if machine_ids is None else list(machine_ids)
        sessions = {mid: s for mid in ids if (s := self.sessions.get(mid)) and s.ready}
        if not sessions:
            return
        revisions = self.storage.desired_revisions(sessions)
        revoked = self.feed.revoked_serials(s.serial for s in sessions.values())
        stale: list[str] = []
        for mid, session in sessions.items():
            if mid not in revisions or session.serial in revoked:
                log.info("machine %s was revoked or re-enrolled elsewhere; closing", mid)
                self._background(session.close(CLOSE_REVOKED, "certificate revoked"))
            elif revisions[mid] != session.sent_revision:
                stale.append(mid)
        if stale:
            await self._call(self.on_desired, stale)

    async def follow_changes(self, recheck_s: float = RECHECK_S) -> None:
        """Act on what other coordinators change (the feed's batches), and recheck every
        session every `recheck_s` seconds. Returns at once on a database no other
        coordinator shares."""
        if self.feed is None or not self.feed.shared:
            return
        await asyncio.gather(self._follow(self.feed), self._recheck_loop(recheck_s))

    async def _follow(self, feed: ChangeFeed) -> None:
        while True:  # the feed reconnects by itself; this only outlives its bugs
            try:
                async with contextlib.aclosing(feed.changes()) as changes:
                    async for batch in changes:
                        await self._on_changes(batch)
            except Exception:
                log.exception("the change feed failed; following it again in 1 s")
            await asyncio.sleep(1.0)

    async def _on_changes(self, batch: list[str] | None) -> None:
        try:
            if batch is None:  # (re)connected: anything may have been missed
                await self.recheck()
                await self._call(self.on_nudge, sorted(filter(self._ready, self.sessions)))
            else:
                await self.nudge(batch)
        except StorageUnavailable as exc:
            log.warning("could not act on other coordinators' changes: %s", exc)
        except Exception:
            log.exception("acting on other coordinators' changes failed")

    async def _recheck_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.recheck()
            except StorageUnavailable as exc:
                log.warning("session recheck skipped: %s", exc)
            except Exception:
                log.exception("session recheck failed")

    def _ready(self, machine_id: str) -> bool:
        session = self.sessions.get(machine_id)
        return session is not None and session.ready

    @staticmethod
    async def _call(hooks: list[MachinesHook], machine_ids: list[str]) -> None:
        for hook in hooks:
            try:
                await hook(machine_ids)
            except Exception:
                log.exception("hook %s failed for %d machine(s)", hook, len(machine_ids))

    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            await session.close(aiohttp.WSCloseCode.GOING_AWAY, "coordinator shutting down")

    # --- liveness -----------------------------------------------------------------------

    async def liveness_loop(self, interval_s: float = 1.0) -> None:
        """This coordinator's sessions: close those whose heartbeats stopped (every
        coordinator, for the sessions it holds); every `CLAIM_EVERY_S`, store as its own
        and connected any the store says otherwise (`claim_sessions`)."""
        claimed = time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.let_go(time.time())
                self.check_sessions(time.time())
                if time.monotonic() - claimed >= CLAIM_EVERY_S:
                    claimed = time.monotonic()
                    await self.claim_sessions()
            except StorageUnavailable:
                pass  # logged by the store's health
            except Exception:
                log.exception("session check failed")

    async def claim_sessions(self) -> int:
        """Set right what the store says of this coordinator's live sessions (ready ones:
        a Hello's own write claims the others)."""
        seen_at = time.time()
        ready = [mid for mid, s in self.sessions.items() if s.ready]
        if not ready:
            return 0
        fixed = await asyncio.to_thread(
            functools.partial(
                self.storage.claim_sessions,
                self.coordinator_id,
                ready,
                time.time(),
                seen_at=seen_at,
            )
        )
        if fixed:
            log.warning("%d session(s) here were stored as elsewhere or gone: claimed", fixed)
        return fixed

    async def lost_loop(self, coordinator_stale_s: float, interval_s: float = 1.0) -> None:
        """Singleton work (the leader's): machines no coordinator holds a session of
        become `lost` after `lost_after_s`; sessions held by a coordinator whose
        heartbeat stopped for `coordinator_stale_s` end first."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                now = time.time()
                self.reap_orphans(now, coordinator_stale_s)
                await self.check_lost(now)
            except StorageUnavailable:
                pass  # logged by the store's health (or the lease is lost: we stop)
            except Exception:
                log.exception("liveness check failed")

    def load_liveness(self) -> None:
        """Machines without a session and since when (from the store, at start-up)."""
        self.disconnected_since = {
            mach.id: mach.state_since
            for mach in self.storage.list_machines()
            if mach.state == "disconnected" and mach.id not in self.sessions
        }

    async def check_liveness(self, now: float) -> None:
        """One coordinator's whole check (a lone coordinator, and tests): its sessions,
        then `lost`."""
        self.check_sessions(now)
        await self.check_lost(now)

    def let_go(self, now: float) -> int:
        """Close every session here once the database has been out of reach for
        `let_go_after_s` (found by the fault suite's pg-partition: a coordinator cut off
        its database kept answering its agents' heartbeats, so they stayed, while the
        coordinator that took the lease counted them disconnected and then lost, and
        moved their units). Closed, they dial the next coordinator; this one refuses
        new sessions (503) until the database answers again. How many were closed."""
        since = self.database_lost_since()
        if since is None or now - since < self.let_go_after_s or not self.sessions:
            return 0
        log.warning(
            "the database has not been reached for %.0f s: letting %d agent(s) go to a"
            " coordinator that reaches it",
            now - since,
            len(self.sessions),
        )
        for session in list(self.sessions.values()):
            self._background(
                session.close(CLOSE_NO_DATABASE, "this coordinator cannot reach its database")
            )
        return len(self.sessions)

    def check_sessions(self, now: float) -> None:
        """Close this coordinator's sessions whose heartbeats stopped."""
        views = [
            liveness.LivenessView(mid, "connected", s.connected_at, s.last_seen, True)
            for mid, s in self.sessions.items()
        ]
        for t in liveness.transitions(
            views,
            now=now,
            lost_after=self.lost_after_s,
            heartbeat_timeout=3 * self.heartbeat_for(len(self.sessions)),
        ):
            if t.close_session and t.id in self.sessions:
                log.warning("machine %s missed its heartbeats; closing its session", t.id)
                self._background(self.sessions[t.id].close(CLOSE_SILENT, "heartbeats missed"))

    def reap_orphans(self, now: float, coordinator_stale_s: float) -> None:
        """End the sessions of coordinators whose heartbeat stopped (killed or cut off):
        their machines are disconnected from now, and lost later unless they connect
        again (to any coordinator)."""
        for mid in self.storage.disconnect_orphans(
            now, coordinator_stale_s, alive=self.coordinator_id
        ):
            log.info("machine %s: its coordinator is gone; disconnected", mid)
            if mid not in self.sessions:
                self.disconnected_since[mid] = now

    async def check_lost(self, now: float) -> None:
        """From the stored state, which every coordinator writes: a machine is lost once
        it has been disconnected for `lost_after_s` with no coordinator holding a
        session of it. A machine connected to another coordinator is never lost here."""
        # Every queued write first (a `disconnected` among them): never out of order.
        if not self.buffer.flush():
            return
        # Only those disconnected long enough: after a restart under thousands of
        # agents, all of them are disconnected until they are back, read every second.
        since = dict(self.storage.unowned_disconnected(before=now - self.lost_after_s))
        views = [
            liveness.LivenessView(mid, "disconnected", at, at, False)
            for mid, at in since.items()
            if mid not in self.sessions
        ]
        for t in liveness.transitions(
            views, now=now, lost_after=self.lost_after_s, heartbeat_timeout=float("inf")
        ):
            if t.state != "lost":
                continue
            # Stored only if nothing changed since (a session on any coordinator); a
            # failed write is retried on the next check.
            try:
                marked = self.storage.mark_lost(t.id, now, since[t.id])
            except StorageUnavailable:
                return
            self.disconnected_since.pop(t.id, None)
            if not marked:
                continue
            log.info("machine %s is now lost", t.id)
            for hook in self.on_state_change:
                await hook(t.id, t.state)
