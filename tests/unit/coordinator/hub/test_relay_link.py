"""A relay between coordinators whose link goes silent (a partition between them, a
proxy that holds the connection) never holds what waits on it: the opening gives up
within OPEN_TIMEOUT_S (its connection, TLS included, within CONNECT_TIMEOUT_S, and the
refusal says which), an open relay ends by its heartbeat, and the answering end's
send, made from the agent's own session, gives up within FORWARD_TIMEOUT_S and drops
the relay rather than stalling the session. A relay that ends tells what waited on it
why: the machine gone (the answering end's CLOSE_GONE), or the relay itself, naming
the other coordinator (not "machine disconnected": the machine is still connected
there; found by the fault suite's `coord-partition`). Real sockets on loopback; the
silent link is the fault suite's TCP proxy (`LinkProxy.blackhole`)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from coordinator.hub import relay
from coordinator.hub.relay import Relay, RelayFailed, RemoteSession
from coordinator.hub.sessions import gone
from proto import messages as m
from tests.chaos.slow_link_proxy import LinkProxy

CTX = ssl.create_default_context()
"""Unused on these ws:// URLs (the relay's TLS is tested with real coordinators)."""


async def _nothing(_remote: RemoteSession, _message: m.Message) -> None:
    return None


async def _open(
    url: str, on_closed: Callable[[RemoteSession], None] = lambda _r: None
) -> RemoteSession:
    """A relay to machine m1 on coordinator b, answers ignored."""
    return await RemoteSession.open(url, "m1", "b", CTX, _nothing, on_closed)


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
        await _open(f"ws://127.0.0.1:{silent_server}/agent/v1")
    assert time.monotonic() - started < 2.0


async def test_a_tls_handshake_left_unanswered_is_refused_naming_its_bound(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent link accepts the TCP connection (a proxy holding it) and then says
    nothing: the TLS handshake is what waits, within CONNECT_TIMEOUT_S."""
    monkeypatch.setattr(relay, "CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(relay, "OPEN_TIMEOUT_S", 5.0)
    started = time.monotonic()
    with pytest.raises(RelayFailed) as refused:
        await _open(f"wss://127.0.0.1:{silent_server}/agent/v1")
    assert time.monotonic() - started < 2.0
    assert str(refused.value) == (
        "machine m1 is connected to coordinator b, which could not be asked: no answer to "
        "the connection (TCP, TLS) within 0.5 s"
    )


def test_why_a_relay_ended_names_the_machine_gone_or_the_other_coordinator() -> None:
    assert relay.ended("m1", "b", relay.CLOSE_GONE, None) == (
        "machine m1 disconnected from coordinator b"
    )
    silent = relay.ended("m1", "b", 1006, TimeoutError("No PONG received after 5.0 seconds"))
    assert silent == (
        "the relay to coordinator b, which holds the session of machine m1, ended: "
        "No PONG received after 5.0 seconds"
    )
    assert relay.ended("m1", "b", 1006, None).endswith("ended: close code 1006")


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
        remote = await _open(f"ws://127.0.0.1:{proxy.port}/agent/v1", lambda _r: closed.set())
        await asyncio.sleep(1.0)
        assert not closed.is_set()  # pings answered: the relay stays
        proxy.blackhole()
        started = time.monotonic()
        async with asyncio.timeout(5):
            await closed.wait()
        assert time.monotonic() - started < 0.6 * 2 + 0.5
        assert remote.ended.startswith("the relay to coordinator b, which holds the session")
        assert gone(remote) == remote.ended  # what a waiting question or follow is told
        await remote.close()
    finally:
        await asyncio.to_thread(proxy.transparent)
        await asyncio.to_thread(proxy.close)


async def test_a_relay_the_answering_end_closes_as_gone_says_the_machine_went(
    relay_server: tuple[int, list[web.WebSocketResponse]],
) -> None:
    port, sockets = relay_server
    closed = asyncio.Event()
    remote = await _open(f"ws://127.0.0.1:{port}/agent/v1", lambda _r: closed.set())
    try:
        for _ in range(500):  # the server's end is listed just after the upgrade
            if sockets:
                break
            await asyncio.sleep(0.01)
        await sockets[0].close(code=relay.CLOSE_GONE, message=b"disconnected")
        async with asyncio.timeout(5):
            await closed.wait()
        assert gone(remote) == "machine m1 disconnected from coordinator b"
    finally:
        await remote.close()


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
