"""Questions to an agent whose session is on another coordinator (#23).

Logs, drift checks, image resolution and health checks are answered by the machine's
own agent, over its session. With several coordinators that session may be held by
another one: this coordinator then opens a relay, a WebSocket to that coordinator's
hub authenticated by this coordinator's admin certificate (from the CA they share),
and sends the question through it. The other hub hands the question to the agent and
sends back what answers it (messages carrying the question's request id). A relay
serves one request and ends with it; it ends too when the agent's session does, so a
waiting request learns at once that the machine went away.

Both ends are here: `RemoteSession` (the asking end, looks like a `Session` to the
services that ask) and `Relay` (the answering end's record of one relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from coordinator.connector import LoopConnector
from coordinator.errors import Unavailable
from proto import messages as m

log = logging.getLogger(__name__)

RELAY_PATH = "/internal/v1/relay/{machine_id}"
QUESTIONS = (m.LogRequest, m.LogCancel, m.DriftRequest, m.ImageResolve, m.HealthCheck)
"""Questions to the agent: their answers (same request id) go back through the relay."""
COMMANDS = (m.WebBuild, m.WebEnv, m.WebAction)
"""WebOps' instructions to the agent: passed on, nothing comes back through the relay
(the agent's reports are handled where its session is, from the stored deployment)."""
MAX_OPEN_PER_RELAY = 16
"""Request ids one relay may have open (it serves one request; a follow may cancel)."""
CONNECT_TIMEOUT_S = 5.0
"""The connection: TCP and the TLS handshake (aiohttp's `sock_connect` bounds both)."""
OPEN_TIMEOUT_S = 10.0
"""The whole opening (the connection, then the WebSocket upgrade): a coordinator whose
link went silent (a partition between coordinators, a proxy holding the connection)
must not hold the request that asked."""
CLOSE_GONE = 4010
"""A relay ends: the agent's session it served ended (`Hub._drop` closes it so)."""
FORWARD_TIMEOUT_S = 2.0
HEARTBEAT_S = 10.0
"""An open relay pings the other coordinator this often and ends when no pong comes
within half of it: a relay whose link went silent ends (and the request waiting on it
learns so) instead of waiting for answers that cannot come. Both ends do."""


class RelayFailed(Unavailable):
    """The coordinator holding the machine's session could not be asked."""


def relay_url(hub_url: str, machine_id: str) -> str:
    """The relay endpoint on the hub a coordinator registered (same scheme, host and
    port; the relay's path). Pure."""
    parts = urlsplit(hub_url)
    path = RELAY_PATH.format(machine_id=quote(machine_id, safe=""))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def refusal(machine_id: str, owner: str, exc: BaseException) -> str:
    """What to tell the asker when the relay could not be opened. Pure."""
    if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status == 404:
        return (
            f"machine {machine_id} is no longer connected to coordinator {owner}"
            " (it is reconnecting: try again)"
        )
    if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status == 403:
        return (
            f"coordinator {owner} refused this coordinator's certificate (do they share"
            " the fleet CA?)"
        )
    detail = str(exc) or type(exc).__name__
    return (
        f"machine {machine_id} is connected to coordinator {owner}, which could not be"
        f" asked: {detail}"
    )


def ended(machine_id: str, owner: str, code: int | None, exc: BaseException | None) -> str:
    """Why a relay ended, as told to what waited on it. Pure. Only the answering end's
    CLOSE_GONE says the machine went away; any other end is the relay's own (the other
    coordinator silent past the heartbeat, the connection reset, the other stopping),
    and the machine may well still be connected there."""
    if code == CLOSE_GONE:
        return f"machine {machine_id} disconnected from coordinator {owner}"
    detail = str(exc) if exc is not None and str(exc) else f"close code {code}"
    return (
        f"the relay to coordinator {owner}, which holds the session of machine"
        f" {machine_id}, ended: {detail}"
    )


def request_id_of(message: m.Message) -> str:
    return str(getattr(message, "request_id", "") or "")


AnswerHandler = Callable[["RemoteSession", m.Message], Awaitable[None]]
ClosedHandler = Callable[["RemoteSession"], None]


class RemoteSession:
    """The asking end: `send` a question; answers go to `on_answer`, and `on_closed`
    runs once when the relay ends (the agent's session ended, or the other coordinator
    went away)."""

    def __init__(
        self,
        machine_id: str,
        owner: str,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        on_answer: AnswerHandler,
        on_closed: ClosedHandler,
    ) -> None:
        self.machine_id = machine_id
        self.owner = owner
        """The coordinator holding the machine's session."""
        self.id = f"relay-{secrets.token_hex(8)}"
        self._http = http
        self._ws = ws
        self._on_answer = on_answer
        self._on_closed = on_closed
        self.ended = ""
        """Why the relay ended, for whoever waited on it (set before `on_closed` runs)."""
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        hub_url: str,
        machine_id: str,
        owner: str,
        ctx: ssl.SSLContext,
        on_answer: AnswerHandler,
        on_closed: ClosedHandler,
    ) -> RemoteSession:
        http = aiohttp.ClientSession(
            connector=LoopConnector(),  # not aiohttp's own: see coordinator.connector
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        )
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                ws = await http.ws_connect(
                    relay_url(hub_url, machine_id),
                    ssl=ctx,
                    max_msg_size=m.HARD_FRAME_LIMIT,
                    autoping=True,
                    heartbeat=HEARTBEAT_S,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CONNECT_TIMEOUT_S),
                )
        except TimeoutError as exc:  # aiohttp's are TimeoutErrors too
            await http.close()
            waited = (
                f"no answer to the connection (TCP, TLS) within {CONNECT_TIMEOUT_S:g} s"
                if isinstance(exc, aiohttp.ServerTimeoutError)
                else f"no answer within {OPEN_TIMEOUT_S:g} s"
            )
            raise RelayFailed(refusal(machine_id, owner, TimeoutError(waited))) from None
        except (aiohttp.ClientError, OSError) as exc:
            await http.close()
            raise RelayFailed(refusal(machine_id, owner, exc)) from None
        return cls(machine_id, owner, http, ws, on_answer, on_closed)

    async def send(self, message: m.Message) -> None:
        if self._ws.closed:
            raise ConnectionError(f"the relay to coordinator {self.owner} is closed")
        try:
            await self._ws.send_bytes(m.encode(message))
        except (aiohttp.ClientError, RuntimeError) as exc:
            raise ConnectionError(str(exc)) from exc

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.BINARY:
                    continue
                try:
                    message = m.decode(frame.data, max_size=m.HARD_FRAME_LIMIT)
                except m.FrameError as exc:
                    log.warning("relay from %s: undecodable frame: %s", self.owner, exc.message)
                    continue
                await self._on_answer(self, message)
        except Exception:
            log.exception("relay from coordinator %s failed", self.owner)
        finally:
            self.ended = ended(
                self.machine_id, self.owner, self._ws.close_code, self._ws.exception()
            )
            self._on_closed(self)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._http.close()


class Relay:
    """The answering end of one relay: the request ids it has open."""

    def __init__(
        self, machine_id: str, ws: web.WebSocketResponse, abort: Callable[[], None]
    ) -> None:
        self.machine_id = machine_id
        self.ws = ws
        self.abort = abort
        """Drops the relay's connection at once (no closing handshake to wait on)."""
        self.open: set[str] = set()
        self.follows: set[str] = set()
        """Log follows among them: cancelled on the agent when the relay ends."""

    async def forward(self, message: m.Message) -> None:
        """An answer to the asking coordinator (a closed relay drops it). It is sent
        from the agent's session, which waits for it: an asker whose link went silent
        (its buffers full) would stall the session, heartbeats and all, so a send that
        does not get through within FORWARD_TIMEOUT_S ends the relay instead."""
        if isinstance(message, m.LogChunk) and message.done:
            self.open.discard(message.request_id)
            self.follows.discard(message.request_id)
        try:
            async with asyncio.timeout(FORWARD_TIMEOUT_S):
                await self.ws.send_bytes(m.encode(message))
        except TimeoutError:
            log.warning(
                "relay for %s: the asking coordinator took nothing for %g s; ending it",
                self.machine_id,
                FORWARD_TIMEOUT_S,
            )
            self.abort()
        except (ConnectionError, RuntimeError):
            pass
