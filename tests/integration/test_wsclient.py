"""The agent's WebSocket client against a real aiohttp WebSocket server over real TLS
(certificates from Moorage's PKI) on loopback: messages, limits, pings, refusals,
close codes, and a peer that vanishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent.wsclient import HandshakeRefused, WebSocket, WsError
from coordinator.trust import pki

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    def __init__(self, tmp: Path) -> None:
        self.paths = pki.init_pki(tmp / "pki", ["localhost"], ["127.0.0.1"])
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self, handler: Handler) -> None:
        app = web.Application()
        app.router.add_get("/ws", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        ctx = pki.server_ssl_context(
            self.paths.server_cert,
            self.paths.server_key,
            self.paths.ca_cert,
            client_certs="optional",
        )
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"wss://127.0.0.1:{port}/ws?x=1"

    async def connect(self, max_size: int = 1 << 20) -> WebSocket:
        ctx = pki.client_ssl_context(self.paths.ca_cert)
        return await WebSocket.connect(
            self.url, ssl_context=ctx, max_size=max_size, open_timeout_s=5
        )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    s = Server(tmp_path)
    try:
        yield s
    finally:
        if s.runner is not None:
            await s.runner.cleanup()


async def test_messages_both_ways_and_a_clean_close(server: Server) -> None:
    got: list[bytes] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        assert request.query["x"] == "1"
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            got.append(msg.data)
            await ws.send_bytes(msg.data[::-1])
            if len(got) == 3:
                await ws.close(code=4008, message=b"replaced")
        return ws

    await server.start(echo)
    ws = await server.connect()
    for payload in (b"one", b"x" * 200_000, b""):
        await ws.send_bytes(payload)
        assert await ws.receive() == payload[::-1]
    assert await ws.receive() is None
    assert (ws.closed, ws.close_code, ws.close_reason) == (True, 4008, "replaced")
    assert got == [b"one", b"x" * 200_000, b""]
    with pytest.raises(ConnectionError):
        await ws.send_bytes(b"late")


async def test_pings_are_answered(server: Server) -> None:
    pongs: list[bytes] = []

    async def pinger(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=5)
        if msg.type == aiohttp.WSMsgType.PONG:
            pongs.append(msg.data)
        await ws.send_bytes(b"done")
        await ws.close()
        return ws

    await server.start(pinger)
    ws = await server.connect()
    assert await ws.receive() == b"done"
    assert pongs == [b"are you there"]


async def test_a_message_over_the_limit_closes_with_1009(server: Server) -> None:
    async def flood(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"small")
        await ws.send_bytes(b"y" * 5000)
        await ws.receive()
        return ws

    await server.start(flood)
    ws = await server.connect(max_size=4096)
    assert await ws.receive() == b"small"
    assert await ws.receive() is None
    assert ws.close_code == 1009 and "4096" in ws.close_reason


async def test_a_refused_upgrade_says_why(server: Server) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPForbidden(text="revoked")

    await server.start(refuse)
    with pytest.raises(HandshakeRefused) as err:
        await server.connect()
    assert err.value.status == 403 and err.value.reason == "revoked"


async def test_a_peer_that_vanishes_ends_receive(server: Server) -> None:
    async def vanish(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.abort()
        return ws

    await server.start(vanish)
    ws = await server.connect()
    async with asyncio.timeout(5):
        assert await ws.receive() is None
    assert ws.close_code == 1006


async def test_our_close_ends_a_pending_receive_promptly(server: Server) -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive(timeout=30)  # says nothing; returns once the client closes
        return ws

    await server.start(silent)
    ws = await server.connect()
    reader = asyncio.create_task(ws.receive())
    await asyncio.sleep(0.1)
    async with asyncio.timeout(3):
        await ws.close()
        assert await reader is None


async def test_bad_urls_and_unreachable_servers(tmp_path: Path) -> None:
    with pytest.raises(WsError, match="not a WebSocket URL"):
        await WebSocket.connect("https://x/", ssl_context=None, max_size=1, open_timeout_s=1)
    with pytest.raises(OSError):
        await WebSocket.connect("ws://127.0.0.1:1/", ssl_context=None, max_size=1, open_timeout_s=1)
