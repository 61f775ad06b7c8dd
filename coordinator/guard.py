"""The HTTP side of `coordinator/limits.py`: per-route body caps enforced while the
body is read (however it is framed), a deadline for the body, and listeners whose
idle and TLS-handshake timeouts close connections that never finish a request.
"""

from __future__ import annotations

import asyncio
import ssl

from aiohttp import web

from coordinator import limits
from coordinator.api.errors import ApiError


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


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    backlog: int,
    handshake_timeout_s: float,
) -> asyncio.Server:
    """A TLS listener for `runner` whose handshakes must finish within the timeout
    (aiohttp's TCPSite leaves asyncio's default of 60 s, with no way to change it)."""
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        runner.server,
        host,
        port,
        ssl=ctx,
        backlog=backlog,
        reuse_address=True,
        ssl_handshake_timeout=handshake_timeout_s,
    )
