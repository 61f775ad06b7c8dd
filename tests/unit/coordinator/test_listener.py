"""The coordinator's TLS listener (`coordinator.guard.Listener`), with real TLS from the
fleet PKI and a real aiohttp app: handshakes are admitted a few at a time and all of a
wave finish; peers that never finish theirs (silent on purpose) do not keep others out;
closing stops accepting."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from coordinator import guard
from coordinator.trust import pki
from proto.tls import client_ssl_context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> pki.PkiPaths:
    return pki.init_pki(tmp_path_factory.mktemp("pki"), ["localhost"], ["127.0.0.1"])


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def serve(
    certs: pki.PkiPaths,
) -> AsyncIterator[Callable[..., Awaitable[guard.Listener]]]:
    """Starts a listener (`max_handshakes`, `timeout`) for an app that answers "ok"."""
    runners: list[web.AppRunner] = []
    listeners: list[guard.Listener] = []

    async def start(max_handshakes: int, timeout: float = 30.0) -> guard.Listener:
        app = web.Application()
        app.router.add_get("/", _ok)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        ctx = pki.server_ssl_context(
            certs.server_cert, certs.server_key, certs.ca_cert, client_certs="optional"
        )
        listener = await guard.listen(
            runner,
            "127.0.0.1",
            0,
            ctx,
            backlog=1024,
            handshake_timeout_s=timeout,
            max_handshakes=max_handshakes,
        )
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.close()
        await listener.wait_closed()
    for runner in runners:
        await runner.cleanup()


def _port(listener: guard.Listener) -> int:
    return int(listener.sockets[0].getsockname()[1])


async def _get(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return await reader.read()
    finally:
        writer.close()


def _client(certs: pki.PkiPaths) -> ssl.SSLContext:
    return client_ssl_context(Path(certs.ca_cert))


async def test_a_wave_of_handshakes_is_admitted_a_few_at_a_time_and_all_finish(
    serve: Callable[..., Awaitable[guard.Listener]], certs: pki.PkiPaths
) -> None:
    listener = await serve(max_handshakes=2)
    ctx = _client(certs)
    answers = await asyncio.gather(*(_get(_port(listener), ctx) for _ in range(60)))
    assert all(a.endswith(b"ok") for a in answers)
    assert listener.handshakes_failed == 0


async def test_silent_peers_do_not_keep_an_agent_out(
    serve: Callable[..., Awaitable[guard.Listener]], certs: pki.PkiPaths
) -> None:
    # Every slot taken by peers that connect and never say a word; the handshake
    # timeout (30 s) is far longer than the test: only SLOT_HOLD_S frees the slots.
    listener = await serve(max_handshakes=4, timeout=30.0)
    silent = [socket.create_connection(("127.0.0.1", _port(listener))) for _ in range(12)]
    try:
        started = time.monotonic()
        answer = await _get(_port(listener), _client(certs))
        assert answer.endswith(b"ok")
        # 12 silent peers hold 4 slots for at most SLOT_HOLD_S each: three turns
        assert time.monotonic() - started < 3 * guard.SLOT_HOLD_S + 10.0 < 30.0
    finally:
        for s in silent:
            s.close()


async def test_a_failed_handshake_is_counted_and_the_slot_comes_back(
    serve: Callable[..., Awaitable[guard.Listener]], certs: pki.PkiPaths
) -> None:
    listener = await serve(max_handshakes=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(listener))
    writer.write(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP on a TLS port
    await writer.drain()
    await reader.read()  # the server closed it
    writer.close()
    assert (await _get(_port(listener), _client(certs))).endswith(b"ok")
    assert listener.handshakes_failed == 1


async def test_closing_stops_accepting(
    serve: Callable[..., Awaitable[guard.Listener]], certs: pki.PkiPaths
) -> None:
    listener = await serve(max_handshakes=4)
    port = _port(listener)
    assert (await _get(port, _client(certs))).endswith(b"ok")
    listener.close()
    await listener.wait_closed()
    with pytest.raises(OSError):
        await _get(port, _client(certs))
