"""A wave of agents connecting (a coordinator restarted under its fleet) costs the
connect hooks a few store reads per batch of sessions, not several per Hello: the
stored desired revisions, the builds in progress and each tenant's targets are read
once for what arrived together. And what the batch decides is still exact: an agent
whose stored revision moved is sent its whole desired state, one that holds it is
sent nothing. A real hub, in process, real TLS WebSockets, a real SQLite store.
Last, what the machines say of a session the hub holds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.enrol import enrol
from agent.identity import Identity
from coordinator.server import Coordinator
from coordinator.store.ports import StorageUnavailable
from coordinator.store.sql import SqlStore
from coordinator.store.sql.core import bump
from proto import messages as m
from tests.integration.linkclient import RawLink
from tests.integration.test_ha_notify import (
    MACHINE,
    coordinators_in_process,
    eventually,
    link_to,
    quiet,
)

pytestmark = pytest.mark.integration

AGENTS = 16
COUNTED = ("desired_revisions", "get_machine", "targets_of", "webops_building")


async def _enrolled(c: Coordinator, root: Path, machine_id: str) -> Identity:
    identity = Identity(root / machine_id)
    await enrol(
        coordinator_url=f"https://127.0.0.1:{c.api_port}",
        token=c.tokens.create_join_token(600),
        machine_id=machine_id,
        identity=identity,
    )
    return identity


async def _hello(c: Coordinator, identity: Identity, machine_id: str) -> RawLink:
    """Connected, Hello sent (holding revision 0), Welcome received."""
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(
        f"wss://127.0.0.1:{c.hub_port}/agent/v1", ssl=identity.ssl_context(), max_msg_size=0
    )
    link = RawLink(http, ws)
    await link.send(m.Hello(proto=m.PROTO_VERSION, machine_id=machine_id, hostname=machine_id))
    assert isinstance(await link.recv(), m.Welcome)
    return link


def _count(store: Any, calls: Counter[str], hold: threading.Event) -> None:
    """Count the store's reads; the first revisions read waits for `hold` (in its
    worker thread), so every other Hello arrives while the first batch is handled."""

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            if name == "desired_revisions" and calls[name] == 1:
                assert hold.wait(20)
            return real(*args, **kwargs)

        return call

    for name in COUNTED:
        setattr(store, name, counted(name, getattr(store, name)))


async def test_a_wave_of_hellos_is_read_for_once_per_batch(tmp_path: Path) -> None:
    async with coordinators_in_process(tmp_path) as (c, _):
        ids = [f"wave-{i:02d}" for i in range(AGENTS)]
        identities = [await _enrolled(c, tmp_path, mid) for mid in ids]
        moved = set(ids[::2])  # their stored revision is past what the agent holds
        assert isinstance(c.storage, SqlStore)
        with c.storage.batch() as db:
            bump(db, moved)
        revision = c.storage.desired_revisions(moved)
        assert len(revision) == len(moved) and 0 not in revision.values()

        calls: Counter[str] = Counter()
        hold = threading.Event()
        _count(c.storage, calls, hold)
        links: list[RawLink] = []
        try:
            links = list(
                await asyncio.gather(
                    *(_hello(c, i, mid) for i, mid in zip(identities, ids, strict=True))
                )
            )
            await eventually(
                lambda: all((s := c.hub.sessions.get(mid)) and s.ready for mid in ids), 10
            )
            hold.set()
            for mid, link in zip(ids, links, strict=True):
                if mid in moved:
                    desired = await link.recv(skip=(m.Heartbeat,))
                    assert isinstance(desired, m.Desired)
                    assert desired.full and desired.revision == revision[mid]
            for mid, link in zip(ids, links, strict=True):
                if mid not in moved:
                    await quiet(link)

            # The first batch (what arrived before its read ended) and the rest: two of
            # each read, for 16 Hellos. The machine is read once per Hello to admit it,
            # and once more for each agent sent its desired state.
            assert calls["desired_revisions"] == 2, calls
            assert calls["targets_of"] == 2, calls
            assert calls["webops_building"] == 2, calls
            assert calls["get_machine"] == AGENTS + len(moved), calls
        finally:
            hold.set()
            for link in links:
                await link.close()


async def test_a_wave_the_database_fails_is_sent_to_try_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the hooks would derive cannot be read: the sessions end with "try again
    later" (1013), not left without their desired state."""
    async with coordinators_in_process(tmp_path) as (c, _):
        identity = await _enrolled(c, tmp_path, "unlucky")

        def unavailable(machine_ids: object) -> dict[str, int]:
            raise StorageUnavailable("unreachable", "the test took it away")

        monkeypatch.setattr(c.storage, "desired_revisions", unavailable)
        link = await _hello(c, identity, "unlucky")
        try:
            assert await link.closed() == 1013
        finally:
            await link.close()


async def test_a_connected_machine_is_seen_at_its_last_heartbeat(tmp_path: Path) -> None:
    """The store keeps `last_seen` as of the Hello (heartbeats are not written); the
    API's machines say when the coordinator holding the session last heard from it, so
    a connected machine is never shown as seen long ago."""
    async with coordinators_in_process(tmp_path) as (c, _):
        link = await link_to(c, c, tmp_path)
        try:
            c.hub.buffer.flush()
            stored = c.storage.get_machine(MACHINE)
            assert stored is not None
            await asyncio.sleep(0.3)
            await link.send(m.Heartbeat(seq=1, sent_at=time.time()))
            await link.recv(skip=(m.Desired,))  # its echo: the heartbeat was handled
            seen = c.machines.get(MACHINE).last_seen
            assert seen >= stored.last_seen + 0.3
            assert c.storage.get_machine(MACHINE) == stored  # nothing written for it
            listed = {mach.id: mach for mach in c.machines.list_machines()}
            assert listed[MACHINE].last_seen == seen
        finally:
            await link.close()
