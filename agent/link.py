"""The agent's side of the hub link: dial out, say Hello, heartbeat, reconnect forever.

The link never decides anything about units: it hands every message to the agent
and sends what the agent gives it. Losing the coordinator only means reconnecting
with jittered exponential backoff, to the next coordinator's hub when there are
several (`agent.backoff.next_dial`); nothing on the machine is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from agent.backoff import next_dial
from agent.identity import Identity, LinkStatus
from agent.metrics import AgentMetrics
from agent.wsclient import CLOSE_ABNORMAL, HandshakeRefused, Unreachable, WebSocket, WsError
from proto import messages as m
from proto.enrolment import unique_urls

log = logging.getLogger(__name__)

WELCOME_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
"""TCP and TLS connect plus the WebSocket upgrade; a black hole is given up on sooner."""


class LinkRefused(Exception):
    """The coordinator will not talk to this identity (revoked, unknown): back off long."""


class Link:
    def __init__(
        self,
        identity: Identity,
        *,
        make_hello: Callable[[str], Awaitable[m.Hello]],
        on_message: Callable[[m.Message], Awaitable[None]],
        backoff_initial_s: float,
        backoff_max_s: float,
        renew_fraction: float,
        hub_urls: Sequence[str] = (),
        metrics: AgentMetrics | None = None,
        on_welcome: Callable[[m.Welcome], Awaitable[None]] | None = None,
    ) -> None:
        self.identity = identity
        self.make_hello = make_hello
        self.on_message = on_message
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.renew_fraction = renew_fraction
        self.hub_urls = unique_urls(list(hub_urls)) or identity.link().urls()
        """The coordinators' hubs, in order (configured, else from enrolment)."""
        self._index = 0
        self.metrics = metrics or AgentMetrics()
        self.connected = asyncio.Event()
        self._ws: WebSocket | None = None
        self._pending_key: bytes | None = None
        self._last_echo = 0.0
        self._cert_window: tuple[float, float] | None = None
        self.on_welcome = on_welcome
        self.last_contact = time.monotonic()
        """When the coordinator was last heard from (monotonic): isolation is measured
        from here."""
        self._welcomed = False
        self._spread_s = backoff_initial_s * 2
        self._closed_by_us = ""

    @property
    def hub_url(self) -> str:
        """The hub being dialled, or connected to."""
        return self.hub_urls[self._index]

    async def send(self, message: m.Message) -> bool:
        """Send if connected; False means the caller must rely on the next Hello."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_bytes(m.encode(message))
        except (ConnectionError, RuntimeError, OSError):
            return False
        self.metrics.messages_out.labels(_tag(message)).inc()
        return True

    async def run(self) -> None:
        failures = 0
        self._save_status("", 0.0)
        while True:
            self._welcomed = False
            refused = unreachable = False
            try:
                log.info("%s", await self._session())
            except LinkRefused as exc:
                log.error("coordinator %s refused this agent: %s", self.hub_url, exc)
                refused = True
            except (WsError, OSError, TimeoutError) as exc:
                log.warning("link to %s failed: %s", self.hub_url, describe(exc))
                unreachable = isinstance(exc, Unreachable)
            finally:
                self._ws = None
                self.connected.clear()
                self.metrics.connected.set(0)
            if self._welcomed:
                self._save_status("", time.time())
            dial = next_dial(
                self._index,
                failures,
                hubs=len(self.hub_urls),
                welcomed=self._welcomed,
                refused=refused,
                initial=self.backoff_initial_s,
                maximum=self.backoff_max_s,
                spread=self._spread_s,
                rand=random.random(),
                unreachable=unreachable,
            )
            self._index, failures = dial.hub, dial.failures
            log.info("reconnecting to %s in %.1f s", self.hub_url, dial.delay)
            await asyncio.sleep(dial.delay)

    def _save_status(self, connected: str, since: float) -> None:
        """For `moorage-agent status`; a failed write never harms the link."""
        try:
            self.identity.save_status(LinkStatus(self.hub_urls, connected, since))
        except OSError as exc:
            log.warning("cannot write the link status: %s", exc)

    async def _session(self) -> str:
        """One session, from dialling to its end; returns how it ended, for the log."""
        try:
            ws = await WebSocket.connect(
                self.hub_url,
                ssl_context=self.identity.ssl_context(),
                max_size=m.HARD_FRAME_LIMIT,
                open_timeout_s=CONNECT_TIMEOUT_S,
            )
        except HandshakeRefused as exc:
            if exc.status in (401, 403):
                raise LinkRefused(str(exc)) from None
            raise
        except TimeoutError:
            raise WsError(f"no connection within {CONNECT_TIMEOUT_S:g} s") from None
        async with ws:
            self._pending_key = None
            self._closed_by_us = ""
            await ws.send_bytes(m.encode(await self.make_hello(self.hub_url)))
            try:
                welcome = await self._welcome(ws)
            except TimeoutError:
                raise WsError(f"no Welcome within {WELCOME_TIMEOUT_S:g} s") from None
            # Only now may others `send`: before, a message of theirs (a task run that
            # ended while the agent was down) could overtake the Hello, and the hub
            # refuses a session whose first message is not one (found by the fault suite:
            # the agent then waited out the longest backoff).
            self._ws = ws
            self._welcomed = True
            self.last_contact = time.monotonic()
            if welcome.reconnect_spread_s > 0:
                self._spread_s = welcome.reconnect_spread_s
            self._cert_window = (welcome.cert_not_before, welcome.cert_not_after)
            if self.on_welcome is not None:
                await self.on_welcome(welcome)
            self.connected.set()
            self.metrics.connected.set(1)
            self._save_status(self.hub_url, time.time())
            log.info("connected to %s (session %s)", self.hub_url, welcome.session)
            beat = asyncio.create_task(self._heartbeat(ws, welcome.heartbeat_s))
            try:
                await self._maybe_renew()
                await self._receive(ws)
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
            return session_end(self._closed_by_us, ws.close_code, ws.close_reason)

    async def _welcome(self, ws: WebSocket) -> m.Welcome:
        async with asyncio.timeout(WELCOME_TIMEOUT_S):
            data = await ws.receive()
        if data is None:
            why = f"no Welcome (close code {ws.close_code}: {ws.close_reason or 'no reason'})"
            if ws.close_code is not None and 4000 <= ws.close_code < 5000:
                raise LinkRefused(why)  # the hub's own refusals (protocol, identity)
            raise WsError(why)  # a hub going away mid-handshake: an ordinary retry
        try:
            reply = m.decode(data)
        except m.FrameError as exc:
            raise LinkRefused(f"undecodable Welcome: {exc.message}") from None
        if isinstance(reply, m.Error):
            raise LinkRefused(f"{reply.code}: {reply.message}")
        if not isinstance(reply, m.Welcome):
            raise LinkRefused(f"expected Welcome, got {type(reply).__name__}")
        return reply

    async def _receive(self, ws: WebSocket) -> None:
        while (data := await ws.receive()) is not None:
            try:
                message = m.decode(data)
            except m.FrameError as exc:
                self.metrics.frame_errors.inc()
                log.warning("refused a frame from the coordinator: %s", exc.message)
                await self.send(m.Error(f"frame_{exc.reason}", exc.message))
                continue
            self.metrics.messages_in.labels(_tag(message)).inc()
            self.last_contact = time.monotonic()
            if isinstance(message, m.Heartbeat):
                self._last_echo = time.monotonic()
            elif isinstance(message, m.CertIssued):
                self._install_cert(message)
            elif isinstance(message, m.Error):
                if message.code == "renew_refused":
                    self._pending_key = None
                log.warning("coordinator reported %s: %s", message.code, message.message)
            else:
                await self.on_message(message)

    async def _heartbeat(self, ws: WebSocket, interval: float) -> None:
        """Beat every interval; three intervals without an echo means the coordinator is gone."""
        self._last_echo = time.monotonic()
        seq = 0
        while not ws.closed:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_echo > 3 * interval:
                self._closed_by_us = f"no heartbeat echo for {3 * interval:.0f} s"
                await ws.close()
                return
            seq += 1
            await self.send(m.Heartbeat(seq, time.time()))
            await self._maybe_renew()

    async def _maybe_renew(self) -> None:
        if self._pending_key is not None or not self.identity.needs_renewal(
            self.renew_fraction, self._cert_window
        ):
            return
        from proto import crypto  # loaded only for the rare renewal

        key = crypto.generate_key()
        csr = crypto.make_csr(key, self.identity.cert_info().common_name)
        self._pending_key = crypto.key_pem(key)
        if not await self.send(m.CertRenew(csr.decode())):
            self._pending_key = None
            return
        log.info("certificate expires soon; renewal requested")

    def _install_cert(self, issued: m.CertIssued) -> None:
        key = self._pending_key
        self._pending_key = None
        if key is None:
            log.warning("ignoring a certificate that was not requested")
            return
        self.identity.install(key, issued.cert_pem.encode())
        info = self.identity.cert_info()
        self._cert_window = (info.not_before, info.not_after)
        log.info("installed renewed certificate (serial %s)", info.serial)


def describe(exc: BaseException) -> str:
    """An exception as a log reason that is never empty."""
    text = str(exc)
    if isinstance(exc, TimeoutError):
        return text or "timed out"
    return text or type(exc).__name__


def session_end(closed_by_us: str, code: int | None, reason: str) -> str:
    """Who ended a session that had started, and why (the log line)."""
    if closed_by_us:
        return f"closed the link: {closed_by_us}"
    if code is None or code == CLOSE_ABNORMAL:
        return f"link lost: {reason or 'connection lost'}"
    return f"link closed by the coordinator (code {code}{': ' + reason if reason else ''})"


def _tag(message: m.Message) -> str:
    return str(type(message).__struct_config__.tag)
