"""The agent's side of the hub link: dial out, say Hello, heartbeat, reconnect forever.

The link never decides anything about units: it hands every message to the agent
and sends what the agent gives it. Losing the coordinator only means reconnecting
with jittered exponential backoff; nothing on the machine is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from agent.backoff import backoff_delay
from agent.identity import Identity
from agent.metrics import AgentMetrics
from agent.wsclient import HandshakeRefused, WebSocket, WsError
from proto import messages as m

log = logging.getLogger(__name__)

WELCOME_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
STABLE_SESSION_S = 30.0
"""A session that lasted this long resets the backoff."""


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
        hub_url: str = "",
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.identity = identity
        self.make_hello = make_hello
        self.on_message = on_message
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.renew_fraction = renew_fraction
        self.hub_url = hub_url or identity.link().hub_url
        self.metrics = metrics or AgentMetrics()
        self.connected = asyncio.Event()
        self._ws: WebSocket | None = None
        self._pending_key: bytes | None = None
        self._last_echo = 0.0
        self._cert_window: tuple[float, float] | None = None

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
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._session()
                log.info("link closed by the coordinator")
            except LinkRefused as exc:
                log.error("coordinator refused this agent: %s", exc)
                attempt = max(attempt, 32)
            except (WsError, OSError, TimeoutError) as exc:
                log.warning("link to %s failed: %s", self.hub_url, exc or type(exc).__name__)
            finally:
                self._ws = None
                self.connected.clear()
                self.metrics.connected.set(0)
            if time.monotonic() - started > STABLE_SESSION_S:
                attempt = 0
            delay = backoff_delay(
                attempt,
                initial=self.backoff_initial_s,
                maximum=self.backoff_max_s,
                rand=random.random(),
            )
            attempt += 1
            log.info("reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
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
        async with ws:
            self._ws = ws
            self._pending_key = None
            await ws.send_bytes(m.encode(await self.make_hello(self.hub_url)))
            welcome = await self._welcome(ws)
            self._cert_window = (welcome.cert_not_before, welcome.cert_not_after)
            self.connected.set()
            self.metrics.connected.set(1)
            log.info("connected to %s (session %s)", self.hub_url, welcome.session)
            beat = asyncio.create_task(self._heartbeat(ws, welcome.heartbeat_s))
            try:
                await self._maybe_renew()
                await self._receive(ws)
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat

    async def _welcome(self, ws: WebSocket) -> m.Welcome:
        async with asyncio.timeout(WELCOME_TIMEOUT_S):
            data = await ws.receive()
        if data is None:
            raise LinkRefused(f"no Welcome (close code {ws.close_code}: {ws.close_reason})")
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
                log.warning("no heartbeat echo for %.0f s; reconnecting", 3 * interval)
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


def _tag(message: m.Message) -> str:
    return str(type(message).__struct_config__.tag)
