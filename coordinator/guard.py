"""The HTTP side of `coordinator/limits.py`: per-route body caps enforced while the
body is read (however it is framed), a deadline for the body, and listeners whose
idle and TLS-handshake timeouts close connections that never finish a request, and
that admit only a bounded number of TLS handshakes at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from aiohttp import web

from coordinator import limits
from coordinator.api.errors import ApiError

log = logging.getLogger(__name__)

ACCEPT_RETRY_S = 0.1
"""After a failed accept (out of file descriptors): try again this much later."""
SLOT_HOLD_S = 1.0
"""The longest a handshake counts against `max_handshakes` (see `Listener._open`)."""


def route_of(request: web.Request) -> str:
    """The canonical path of the matched route ("" when nothing matched)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def bounded(request: web.Request) -> web.Request:
    """The request with its route's body cap. A declared Content-Length over the cap is
    a 413 before a byte is read; a chunked body is cut off by `read` at the cap."""
    limit = limits.body_limit(request.method, route_of(request))
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body larger than {limit} bytes")
    return request.clone(client_max_size=limit)


async def read_body(request: web.Request, timeout_s: float) -> None:
    """Read (and cache, for the handler's own `read`) the body within `timeout_s`:
    413 as soon as it passes the route's cap, 408 if it does not arrive in time."""
    if not request.body_exists:
        return
    try:
        async with asyncio.timeout(timeout_s):
            await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.client_max_size
        raise ApiError(413, f"request body larger than {limit} bytes") from None
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout_s:g} s") from None


class Listener:
    """A TLS listener that admits at most `max_handshakes` handshakes at a time.

    asyncio's own server starts a handshake for every connection the kernel has
    accepted: when thousands of agents reconnect at once (a coordinator died, its
    agents fail over to this one) each handshake gets a sliver of the loop, none
    finishes before its timeout, and every agent backs off and comes again, so the
    wave never drains. Here the accept loop takes a connection only when a slot is
    free; the rest wait in the kernel's listen backlog, where waiting costs nothing,
    and the handshakes that are admitted finish at full speed.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        sockets: list[socket.socket],
        ctx: ssl.SSLContext,
        *,
        handshake_timeout_s: float,
        max_handshakes: int,
    ) -> None:
        self.sockets = sockets
        self._factory = protocol_factory
        self._ctx = ctx
        self._timeout = handshake_timeout_s
        self._slots = asyncio.Semaphore(max_handshakes)
        self._opening: set[asyncio.Task[None]] = set()
        self._accepting = [asyncio.create_task(self._accept(s)) for s in sockets]
        self.handshakes_failed = 0
        """Handshakes that failed or timed out (for tests and metrics)."""

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(lsock)
            except OSError as exc:  # EMFILE, ENOBUFS...: the connection waits in the backlog
                self._slots.release()
                log.warning("accept on %s failed: %s", lsock.getsockname(), exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._open(conn))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _open(self, conn: socket.socket) -> None:
        """The handshake, holding a slot until it is done or `SLOT_HOLD_S` passed: a
        peer that is slow (or silent on purpose) no longer counts against the others
        then; its handshake goes on until the handshake timeout."""
        handshake = asyncio.create_task(self._handshake(conn))
        try:
            await asyncio.wait({handshake}, timeout=SLOT_HOLD_S)
        except BaseException:
            handshake.cancel()
            raise
        finally:
            self._slots.release()
        try:
            await handshake
        except BaseException:
            handshake.cancel()
            raise

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ctx, ssl_handshake_timeout=self._timeout
            )
        except Exception as exc:  # a failed or slow handshake: the transport closed it
            self.handshakes_failed += 1
            log.debug("TLS handshake failed: %s", exc)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        """Stop accepting (connections already open stay, as with asyncio's servers)."""
        for task in (*self._accepting, *self._opening):
            task.cancel()
        for lsock in self.sockets:
            lsock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._opening, return_exceptions=True)


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    backlog: int,
    handshake_timeout_s: float,
    max_handshakes: int = limits.MAX_TLS_HANDSHAKES,
) -> Listener:
    """A TLS listener for `runner` on every address `host` names, whose handshakes
    must finish within the timeout (aiohttp's TCPSite leaves asyncio's default of
    60 s, with no way to change it) and are admitted a few at a time (`Listener`)."""
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            lsock = socket.socket(family, kind, proto)
            sockets.append(lsock)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: each family on its own socket
                lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # one port for every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            lsock.bind(address)
            lsock.listen(backlog)
            lsock.setblocking(False)
    except OSError:
        for lsock in sockets:
            lsock.close()
        raise
    return Listener(
        runner.server,
        sockets,
        ctx,
        handshake_timeout_s=handshake_timeout_s,
        max_handshakes=max_handshakes,
    )
