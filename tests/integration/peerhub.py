"""A stand-in for the coordinator's hub, for tests of what a real agent says on its link.

It listens where the coordinator's hub did, with the coordinator's own TLS material
(server certificate, client certificates required and checked against its CA), so an
agent enrolled with that coordinator connects to it as to the real hub. It answers
Hello with a Welcome and heartbeats with their echo, records everything else, and lets
the test send any message or drop the session (a coordinator restart, as the agent
sees it). It runs its own event loop in a thread, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from typing import Any

from aiohttp import WSMsgType, web

from coordinator.trust import pki
from proto import messages as m


class PeerHub:
    def __init__(self, paths: pki.PkiPaths, port: int, *, heartbeat_s: float = 1.0) -> None:
        self.paths = paths
        self.port = port
        self.heartbeat_s = heartbeat_s
        self.hellos: list[m.Hello] = []
        self.received: list[m.Message] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._ws: web.WebSocketResponse | None = None

    # -- control (from the test's thread)

    def start(self) -> PeerHub:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def send(self, message: m.Message) -> bool:
        """Send on the current session; False if there is none."""
        return bool(self._call(self._send(message)))

    def drop(self) -> None:
        """Close the current session (the agent reconnects and says Hello again)."""
        self._call(self._drop())

    @property
    def connected(self) -> bool:
        ws = self._ws
        return ws is not None and not ws.closed

    def messages(self) -> list[m.Message]:
        with self._lock:
            return list(self.received)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- the hub (on its loop)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/agent/v1", self._session)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        ctx = pki.server_ssl_context(
            self.paths.server_cert,
            self.paths.server_key,
            self.paths.ca_cert,
            client_certs="required",
        )
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def _stop(self) -> None:
        await self._drop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _send(self, message: m.Message) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        await ws.send_bytes(m.encode(message))
        return True

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            await ws.close()

    async def _session(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=m.HARD_FRAME_LIMIT, autoping=True)
        await ws.prepare(request)
        first = await ws.receive(timeout=10)
        hello = m.decode(first.data) if first.type == WSMsgType.BINARY else None
        if not isinstance(hello, m.Hello):
            await ws.close()
            return ws
        with self._lock:
            self.hellos.append(hello)
        old, self._ws = self._ws, ws
        if old is not None and not old.closed:
            await old.close()
        await ws.send_bytes(
            m.encode(
                m.Welcome(
                    proto=m.PROTO_VERSION,
                    session=secrets.token_hex(8),
                    heartbeat_s=self.heartbeat_s,
                )
            )
        )
        async for frame in ws:
            if frame.type != WSMsgType.BINARY:
                continue
            message = m.decode(frame.data)
            if isinstance(message, m.Heartbeat):
                await ws.send_bytes(frame.data)
                continue
            with self._lock:
                self.received.append(message)
        return ws
