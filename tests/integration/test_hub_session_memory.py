"""A session keeps what it needs for its life, not its Hello's bulk: the unit snapshot
and stickers are stored by the connect hooks and then dropped from the session (a
machine's every unit: kilobytes per agent, for as long as its session lasts, on a
coordinator holding thousands). A real hub, in process, and a real TLS WebSocket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from agent.enrol import enrol
from agent.identity import Identity
from proto import messages as m
from tests.integration.linkclient import RawLink
from tests.integration.test_ha_notify import MACHINE, coordinators_in_process


async def test_a_ready_session_keeps_the_hellos_facts_not_its_bulk(tmp_path: Path) -> None:
    async with coordinators_in_process(tmp_path) as (a, _):
        identity = Identity(tmp_path / "raw")
        await enrol(
            coordinator_url=f"https://127.0.0.1:{a.api_port}",
            token=a.tokens.create_join_token(600),
            machine_id=MACHINE,
            identity=identity,
        )
        snapshot = [
            m.UnitStatus(
                f"u{i}.service",
                hash=f"{i:040x}",
                load_state="loaded",
                active_state="active",
                sub_state="running",
                main_pid=1000 + i,
            )
            for i in range(50)
        ]
        sticker = m.Sticker("web", "r1", "1.0", {})
        hello = m.Hello(
            proto=m.PROTO_VERSION,
            machine_id=MACHINE,
            hostname="sim",
            capabilities=["docker"],
            snapshot=snapshot,
            stickers=[sticker],
        )
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(
            f"wss://127.0.0.1:{a.hub_port}/agent/v1", ssl=identity.ssl_context(), max_msg_size=0
        )
        link = RawLink(http, ws)
        try:
            await link.send(hello)
            assert isinstance(await link.recv(), m.Welcome)
            deadline = time.monotonic() + 5
            while not ((s := a.hub.sessions.get(MACHINE)) and s.ready):
                assert time.monotonic() < deadline, "no ready session"
                await asyncio.sleep(0.01)
            session = a.hub.sessions[MACHINE]
            assert session.hello is not None
            assert session.hello.snapshot == [] and session.hello.stickers == []
            assert session.hello.capabilities == ["docker"]  # its facts stay
            assert session.hello.hostname == "sim"
            assert session.machine is None
            # ... after the hooks stored what it said
            a.hub.buffer.flush()
            copies = a.units.copies(machine_id=MACHINE)
            assert sorted(c.name for c in copies) == sorted(u.name for u in snapshot)
        finally:
            await link.close()
