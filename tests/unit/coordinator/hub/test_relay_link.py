"""A relay between coordinators whose link goes silent (a partition between them, a
proxy that holds the connection) never holds what waits on it: the opening gives up
within OPEN_TIMEOUT_S, an open relay ends by its heartbeat, and the answering end's
send, made from the agent's own session, gives up within FORWARD_TIMEOUT_S and drops
the relay rather than stalling the session. Real sockets on loopback; the silent link
is the fault suite's TCP proxy (`LinkProxy.blackhole`)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from coordinator.hub import relay
from coordinator.hub.relay import Relay, RelayFailed, RemoteSession
from proto import messages as m
from tests.chaos.slow_link_proxy import LinkProxy

CTX = ssl.create_default_context()
"""Unused on these ws:// URLs (the relay's TLS is tested with real coordinators)."""


async def _nothing(_remote: RemoteSession, _message: m.Message) -> None:
    return None


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never says a word: its port."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_opening_a_relay_to_a_silent_coordinator_gives_up_in_time(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "OPEN_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(RelayFailed, match=r"could not be asked: no answer within 0\.5 s"):
        await RemoteSession.open(
            f"ws://127.0.0.1:{silent_server}/agent/v1",
            "m1",
            "b",
            CTX,
            _nothing,
            lambda _r: None,
        )
    assert time.monotonic() - started < 2.0


@pytest.fixture
async def relay_server() -> AsyncIterator[tuple[int, list[web.WebSocketResponse]]]:
    """An answering end that upgrades and then says nothing: (port, its sockets)."""
    sockets: list[web.WebSocketResponse] = []

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        sockets.append(ws)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get(relay.RELAY_PATH, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, sockets
    finally:
        await runner.cleanup()


async def test_an_open_relay_whose_link_goes_silent_ends_by_its_heartbeat(
    relay_server: tuple[int, list[web.WebSocketResponse]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = relay_server
    monkeypatch.setattr(relay, "HEARTBEAT_S", 0.6)
    proxy = LinkProxy(("127.0.0.1", port)).start()
    closed = asyncio.Event()
    try:
        remote = await RemoteSession.open(
            f"ws://127.0.0.1:{proxy.port}/agent/v1",
            "m1",
            "b",
            CTX,
            _nothing,
            lambda _r: closed.set(),
        )
        await asyncio.sleep(1.0)
        assert not closed.is_set()  # pings answered: the relay stays
        proxy.blackhole()
        started = time.monotonic()
        async with asyncio.timeout(5):
            await closed.wait()
        assert time.monotonic() - started < 0.6 * 2 + 0.5
        await remote.close()
    finally:
        await asyncio.to_thread(proxy.transparent)
        await asyncio.to_thread(proxy.close)


class _StuckSocket:
    """A WebSocketResponse whose peer takes nothing: every send waits forever."""

    async def send_bytes(self, _data: bytes) -> None:
        await asyncio.Event().wait()


async def test_a_forward_the_asker_does_not_take_ends_the_relay_not_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "FORWARD_TIMEOUT_S", 0.2)
    aborted: list[bool] = []
    stuck: Any = _StuckSocket()
    r = Relay("m1", stuck, lambda: aborted.append(True))
    started = time.monotonic()
    await r.forward(m.LogChunk("rid"))
    assert time.monotonic() - started < 1.0
    assert aborted == [True]
