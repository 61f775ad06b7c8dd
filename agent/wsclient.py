"""The agent link's WebSocket client: asyncio streams with wsproto (sans-IO).

Why not aiohttp, which the coordinator uses: the agent's footprint target (RSS at most
40 MB with 500 units, DESIGN.md section 4). Importing aiohttp's client costs about
9 MiB of RSS, wsproto about 1.7 MiB. The protocol itself (handshake, framing,
masking, ping/pong, the closing handshake) is wsproto's; this module only moves bytes
between it and one TLS connection, and enforces Moorage's message size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
from collections import deque
from types import TracebackType
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from proto.keepalive import enable_keepalive

READ_SIZE = 64 * 1024
CLOSE_TOO_BIG = 1009
CLOSE_PROTOCOL = 1002
CLOSE_ABNORMAL = 1006
CLOSE_GRACE_S = 0.5
"""How long a close frame gets to leave before the connection is cut."""


class WsError(Exception):
    """The WebSocket connection failed or broke (the link reconnects)."""


class Unreachable(WsError):
    """Nothing answered at the hub's address (the TCP connect timed out, or no route to
    it): a partition or a dead host, where probing costs the coordinator nothing."""


UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EINVAL}
)
"""No route (EINVAL: what Linux answers a connect routed into a blackhole route)."""


class HandshakeRefused(WsError):
    """The server answered the upgrade with an HTTP error (e.g. 403 for a revoked
    certificate); `reason` is the body it sent."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason


class WebSocket:
    """One client connection: `receive` yields whole binary messages, None once closed."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: WSConnection,
        max_size: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = conn
        self._max_size = max_size
        self._messages: deque[bytes] = deque()
        self._partial = bytearray()
        self._oversize = False
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def connect(
        cls, url: str, *, ssl_context: ssl.SSLContext | None, max_size: int, open_timeout_s: float
    ) -> WebSocket:
        """Dial `url` (wss:// or ws://) and complete the upgrade within `open_timeout_s`."""
        parts = urlsplit(url)
        if parts.scheme not in ("wss", "ws") or not parts.hostname:
            raise WsError(f"not a WebSocket URL: {url!r}")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        deadline = asyncio.get_running_loop().time() + open_timeout_s
        # TCP first, on its own: a connect that nobody answers is `Unreachable` (the
        # link probes again soon), unlike a hub that answered and then failed or stalled
        # in TLS or the upgrade (an overloaded coordinator: the link backs off).
        try:
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_connection(
                    parts.hostname, port, limit=READ_SIZE
                )
        except TimeoutError:
            raise Unreachable(
                f"no answer from {parts.netloc} within {open_timeout_s:g} s"
            ) from None
        except OSError as exc:
            if exc.errno in UNREACHABLE_ERRNOS:
                raise Unreachable(f"{parts.netloc}: {exc.strerror or exc}") from None
            raise
        try:
            enable_keepalive(writer.get_extra_info("socket"))
            async with asyncio.timeout_at(deadline):
                if secure:
                    await writer.start_tls(
                        ssl_context or ssl.create_default_context(),
                        server_hostname=parts.hostname,
                    )
                return await cls._upgrade(reader, writer, parts.netloc, target, max_size)
        except BaseException:
            writer.close()
            raise

    @classmethod
    async def _upgrade(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        target: str,
        max_size: int,
    ) -> WebSocket:
        conn = WSConnection(ConnectionType.CLIENT)
        writer.write(conn.send(Request(host=host, target=target)))
        await writer.drain()
        status, body = 0, bytearray()
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                if status:
                    raise HandshakeRefused(status, body.decode(errors="replace").strip())
                raise WsError("the server closed the connection during the WebSocket upgrade")
            try:
                conn.receive_data(data)
                events = list(conn.events())
            except RemoteProtocolError as exc:
                raise WsError(f"bad WebSocket upgrade response: {exc}") from None
            for i, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    ws = cls(reader, writer, conn, max_size)
                    for later in events[i + 1 :]:
                        ws._handle(later)
                    return ws
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise HandshakeRefused(status, "")
                elif isinstance(event, RejectData):
                    body += event.data[:1024]
                    if event.body_finished:
                        raise HandshakeRefused(status, body.decode(errors="replace").strip())

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("the WebSocket is closed")
        try:
            self._writer.write(self._conn.send(BytesMessage(data=data)))
        except LocalProtocolError as exc:
            raise ConnectionError(f"the WebSocket is closing: {exc}") from None
        await self._writer.drain()

    async def receive(self) -> bytes | None:
        """The next binary message; None once the connection is closed (see close_code)."""
        while not self._messages:
            if self.closed:
                return None
            try:
                data = await self._reader.read(READ_SIZE)
            except (OSError, ConnectionError) as exc:
                self._finish(CLOSE_ABNORMAL, str(exc))
                return None
            if not data:
                self._finish(CLOSE_ABNORMAL, "connection lost")
                return None
            try:
                self._conn.receive_data(data)
                for event in self._conn.events():
                    self._handle(event)
            except RemoteProtocolError as exc:
                self._fail(CLOSE_PROTOCOL, f"protocol error: {exc}")
        return self._messages.popleft()

    def _handle(self, event: Event) -> None:
        if isinstance(event, BytesMessage):
            if not self._oversize:
                self._partial += event.data
                if len(self._partial) > self._max_size:
                    self._partial.clear()
                    self._oversize = True
                    self._fail(CLOSE_TOO_BIG, f"message larger than {self._max_size} bytes")
                    return
            if event.message_finished:
                if not self._oversize:
                    self._messages.append(bytes(self._partial))
                self._partial.clear()
                self._oversize = False
        elif isinstance(event, Ping):
            self._write(self._conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            self._write(self._conn.send(event.response()))
            self._finish(event.code, event.reason or "")
        # Text messages are not part of the link protocol; pongs need no answer.

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(LocalProtocolError, OSError, RuntimeError):
            self._writer.write(data)

    def _fail(self, code: int, reason: str) -> None:
        with contextlib.suppress(LocalProtocolError):
            self._write(self._conn.send(CloseConnection(code=code, reason=reason)))
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self._writer.close()
        # A TLS close waits for the peer's close_notify (up to 30 s) before the reader
        # sees EOF; a peer that is already gone must not hold the link that long.
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._writer.transport.abort)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame and drop the connection (a receive in progress returns
        None); the server's answer is not waited for."""
        if not self.closed:
            self._fail(code, reason)
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            async with asyncio.timeout(2):
                await self._writer.wait_closed()

    async def __aenter__(self) -> WebSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
