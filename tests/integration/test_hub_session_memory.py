"""A session keeps what it needs for its life, not its Hello's bulk: the unit snapshot
and stickers are stored by the connect hooks and then dropped from the session (a
machine's every unit: kilobytes per agent, for as long as its session lasts, on a
coordinator holding thousands). A real hub, in process, and a real TLS WebSocket."""

from __future__ import annotations

from pathlib import Path

from proto import messages as m
from tests.integration.test_ha_notify import MACHINE, coordinators_in_process, link_to


async def test_a_ready_session_keeps_the_hellos_facts_not_its_bulk(tmp_path: Path) -> None:
    async with coordinators_in_process(tmp_path) as (a, _):
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
        link = await link_to(a, a, tmp_path, hello)
        try:
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
