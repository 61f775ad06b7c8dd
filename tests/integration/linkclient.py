"""A hand-driven agent link for tests that must send what a real agent never would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from agent.enrol import enrol
from agent.identity import Identity
from proto import messages as m
from tests.procs import CoordinatorProc


async def enrolled_identity(coordinator: CoordinatorProc, root: Path, machine_id: str) -> Identity:
    identity = Identity(root / f"raw-{machine_id}")
    await enrol(
        coordinator_url=coordinator.endpoint,
        token=coordinator.join_token(),
        machine_id=machine_id,
        identity=identity,
    )
    return identity


class RawLink:
    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http = http
        self.ws = ws

    @classmethod
    async def open(
        cls, coordinator: CoordinatorProc, identity: Identity | None, ssl: Any = None
    ) -> RawLink:
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(
                f"wss://127.0.0.1:{coordinator.hub_port}/agent/v1",
                ssl=ssl if identity is None else identity.ssl_context(),
                max_msg_size=0,
            )
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    async def hello(
        self, machine_id: str, proto: int = m.PROTO_VERSION, capabilities: tuple[str, ...] = ()
    ) -> m.Message:
        await self.send(
            m.Hello(
                proto=proto, machine_id=machine_id, hostname="raw", capabilities=list(capabilities)
            )
        )
        return await self.recv()

    async def send(self, message: m.Message) -> None:
        await self.ws.send_bytes(m.encode(message))

    async def recv(self, timeout: float = 5.0, skip: tuple[type, ...] = (m.Desired,)) -> m.Message:
        """The next message, skipping desired-state pushes the test is not about."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            assert msg.type == aiohttp.WSMsgType.BINARY, (
                f"expected a frame, got {msg.type} {msg.data!r} {msg.extra!r}"
            )
            message = m.decode(msg.data)
            if not isinstance(message, skip):
                return message

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close; returns the code of its close frame."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return int(msg.data)
            if msg.type in (
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()
