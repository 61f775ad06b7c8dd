"""Questions to an agent whose session is on the other coordinator (#23): logs, health
checks and drift refreshes asked through coordinator A reach an agent connected to B
through a relay (a WebSocket from A to B's hub, A's admin certificate of the shared
CA), and the answers come back; the relay ends with the agent's session (a waiting
question learns it at once) and a follow cancelled on A is cancelled on the agent.
B's relay endpoint takes only coordinators and only questions. And webhook delivery,
singleton work: an event on the follower is delivered by the leader, from the outbox.

Two real coordinators in one process on one SQLite file (as in test_ha_notify), real
TLS; the agent is a `RawLink` (the protocol by hand, so the test sees each message).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from agent.enrol import enrol
from agent.identity import Identity
from coordinator.events import Event
from coordinator.hub.relay import RemoteSession, relay_url
from coordinator.reports.logs import LogUnavailable
from coordinator.reports.service import ReportUnavailable
from coordinator.server import Coordinator
from coordinator.trust import pki
from coordinator.webops import webhooks as wh
from proto import messages as m
from tests.integration.linkclient import RawLink
from tests.integration.test_ha_notify import coordinators_in_process

pytestmark = pytest.mark.integration

MACHINE = "on-b"


def pair(tmp: Path) -> contextlib.AbstractAsyncContextManager[tuple[Coordinator, Coordinator]]:
    """Two coordinators on one SQLite file, each registering `localhost` in its hub URL."""
    return coordinators_in_process(tmp, server_names=["localhost"])


async def agent_on(b: Coordinator, a: Coordinator, root: Path) -> tuple[RawLink, Identity]:
    """Enrolled through A, its session on B, and A can see where it is."""
    identity = Identity(root / "agent")
    await enrol(
        coordinator_url=f"https://127.0.0.1:{a.api_port}",
        token=a.tokens.create_join_token(600),
        machine_id=MACHINE,
        identity=identity,
    )
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(
        f"wss://127.0.0.1:{b.hub_port}/agent/v1", ssl=identity.ssl_context(), max_msg_size=0
    )
    link = RawLink(http, ws)
    await link.send(m.Hello(proto=m.PROTO_VERSION, machine_id=MACHINE, hostname="sim"))
    assert isinstance(await link.recv(), m.Welcome)
    deadline = time.monotonic() + 5
    while a.storage.session_route(MACHINE, 30.0) is None:  # B's write-behind landed
        assert time.monotonic() < deadline, "A never saw the session on B"
        await asyncio.sleep(0.05)
    return link, identity


async def answer(link: RawLink) -> m.Message:
    """The next question from the coordinator (pushes and heartbeats skipped)."""
    return await link.recv(skip=(m.Desired, m.Heartbeat))


async def test_health_check_and_drift_refresh_through_a_reach_the_agent_on_b(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (a, b):
        link, _ = await agent_on(b, a, tmp_path)
        try:
            asking = asyncio.create_task(a.reports.health_check(MACHINE, ["web.service"]))
            question = await answer(link)
            assert isinstance(question, m.HealthCheck) and question.units == ["web.service"]
            await link.send(
                m.HealthReport(
                    question.request_id, backends={"systemd": ""}, units={"web.service": "active"}
                )
            )
            report = await asyncio.wait_for(asking, 5)
            assert report.units == {"web.service": "active"}

            asking_drift = asyncio.create_task(a.reports.refresh_drift(MACHINE))
            question = await answer(link)
            assert isinstance(question, m.DriftRequest)
            entry = m.DriftEntry(unit="web.service", kind="file_changed", message="edited")
            await link.send(m.DriftReport([entry], request_id=question.request_id, checked_at=1.0))
            drift = await asyncio.wait_for(asking_drift, 5)
            assert [e.unit for e in drift.entries] == ["web.service"]
            # B stored it (the agent's session is there), so every coordinator shows it
            await asyncio.sleep(0.5)
            b.hub.buffer.flush()
            assert [d.machine_id for d in a.reports.drift(MACHINE)] == [MACHINE]
            # the relays ended with their requests
            assert not b.hub._relays and not b.hub._relayed
        finally:
            await link.close()


async def test_a_log_follow_through_a_streams_and_its_cancel_reaches_the_agent(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (a, b):
        link, _ = await agent_on(b, a, tmp_path)
        try:
            stream = cast(
                AsyncGenerator[m.LogChunk, None],
                a.logs.stream(MACHINE, "web.service", lines=10, follow=True),
            )

            async def first_chunk() -> m.LogChunk:
                return await anext(stream)

            first = asyncio.create_task(first_chunk())
            request = await answer(link)
            assert isinstance(request, m.LogRequest) and request.follow
            line = m.LogLine(cursor="c1", message="hello from b's agent", timestamp=1.0)
            await link.send(m.LogChunk(request.request_id, lines=[line]))
            chunk = await asyncio.wait_for(first, 5)
            assert [ln.message for ln in chunk.lines] == ["hello from b's agent"]
            await stream.aclose()  # the reader went away on A
            cancel = await answer(link)
            assert isinstance(cancel, m.LogCancel) and cancel.request_id == request.request_id
        finally:
            await link.close()


async def test_a_waiting_question_ends_when_the_session_on_b_does(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b):
        link, _ = await agent_on(b, a, tmp_path)
        asking = asyncio.create_task(a.reports.refresh_drift(MACHINE, timeout_s=30.0))
        assert isinstance(await answer(link), m.DriftRequest)
        started = time.monotonic()
        await link.close()
        with pytest.raises(ReportUnavailable) as refused:
            await asyncio.wait_for(asking, 10)
        assert refused.value.reason == "disconnected"
        assert refused.value.message == (
            f"machine {MACHINE} disconnected from coordinator {b.coordinator_id}"
        )
        assert time.monotonic() - started < 10  # not the question's 30 s timeout
        # connected nowhere now: a clear refusal, for logs too
        deadline = time.monotonic() + 5
        while a.storage.session_route(MACHINE, 30.0) is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        with pytest.raises(ReportUnavailable) as nowhere:
            await a.reports.health_check(MACHINE, [])
        assert nowhere.value.reason == "not_connected"
        with pytest.raises(LogUnavailable, match="not connected"):
            await anext(a.logs.stream(MACHINE, "web.service", lines=1, follow=False))


async def test_the_relay_endpoint_takes_only_coordinators_and_only_questions(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (a, b):
        link, identity = await agent_on(b, a, tmp_path)
        url = relay_url(f"wss://localhost:{b.hub_port}/agent/v1", MACHINE)
        try:
            async with aiohttp.ClientSession() as http:
                # the agent's own certificate is not a coordinator's
                with pytest.raises(aiohttp.WSServerHandshakeError) as agent_cert:
                    await http.ws_connect(url, ssl=identity.ssl_context())
                assert agent_cert.value.status == 403
                admin = pki.client_ssl_context(
                    a.paths.ca_cert, a.paths.admin_cert, a.paths.admin_key
                )
                # a machine with no session on B
                with pytest.raises(aiohttp.WSServerHandshakeError) as elsewhere:
                    await http.ws_connect(relay_url(url, "nobody"), ssl=admin)
                assert elsewhere.value.status == 404
                # anything but a question ends the relay, and never reaches the agent
                ws = await http.ws_connect(url, ssl=admin)
                await ws.send_bytes(m.encode(m.Desired(revision=99, full=True)))
                closing = await ws.receive(timeout=5)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                await ws.close()
            with pytest.raises(TimeoutError):
                await link.recv(timeout=0.5, skip=(m.Heartbeat,))
        finally:
            await link.close()


async def test_the_fleet_wide_view_and_webops_commands_reach_the_agent_on_b(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (a, b):
        link, _ = await agent_on(b, a, tmp_path)
        try:
            # A holds no session for it, but counts it as connected (and places on it)
            assert MACHINE not in a.hub.sessions
            assert MACHINE in a.hub.connected_ids() and MACHINE in b.hub.connected_ids()
            assert [c.connected for c in a.machines.clusters()] == [True]
            # WebOps' instructions are passed on; nothing comes back through the relay
            remote = await a.hub.reach(MACHINE)
            assert isinstance(remote, RemoteSession) and remote.owner == b.coordinator_id
            await remote.send(m.WebEnv("site", {"GREETING": "hello"}))
            await remote.close()
            got = await answer(link)
            assert got == m.WebEnv("site", {"GREETING": "hello"})
            assert not b.hub._relayed
        finally:
            await link.close()


async def test_an_event_on_the_follower_is_delivered_by_the_leader(tmp_path: Path) -> None:
    """Webhook delivery is singleton work (#23): the follower stores the delivery, the
    lease holder sends it, signed, once."""
    got: list[tuple[str, bool]] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        ok = wh.verify(
            "k",
            request.headers.get(wh.TIMESTAMP_HEADER, ""),
            request.headers.get(wh.SIGNATURE_HEADER, ""),
            body,
            now=time.time(),
        )
        got.append((request.headers.get(wh.EVENT_HEADER, ""), ok))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with pair(tmp_path) as (a, b):
            leader, follower = (a, b) if a.leader.leading else (b, a)
            assert not follower.leader.leading
            follower.webhooks.create(
                "default", f"http://127.0.0.1:{port}/hook", ["deployment.completed"], "k"
            )
            follower.events.publish(Event("webops.deployed", subject="site"))
            assert follower.storage.outbox_count() == 1
            deadline = time.monotonic() + 10
            while not got:
                assert time.monotonic() < deadline, "the leader never delivered it"
                await asyncio.sleep(0.05)
            await leader.webhooks.idle()
            assert got == [("deployment.completed", True)]
    finally:
        await runner.cleanup()


async def test_a_coordinator_that_cannot_be_reached_is_a_clear_refusal(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b):
        link, _ = await agent_on(b, a, tmp_path)
        try:
            hub_listener = b._servers[1]  # B's hub stops listening; its session row stays
            hub_listener.close()
            await hub_listener.wait_closed()
            started = time.monotonic()
            with pytest.raises(ReportUnavailable) as refused:
                await a.reports.health_check(MACHINE, ["web.service"])
            assert refused.value.reason == "unreachable"
            assert f"connected to coordinator {b.coordinator_id}" in str(refused.value)
            assert time.monotonic() - started < 10  # refused, not a hang
            with pytest.raises(LogUnavailable, match="could not be asked"):
                await anext(a.logs.stream(MACHINE, "web.service", lines=1, follow=False))
        finally:
            await link.close()


def test_why_a_relay_could_not_be_opened_is_said_plainly() -> None:
    from yarl import URL

    from coordinator.hub.relay import refusal

    def handshake(status: int) -> aiohttp.WSServerHandshakeError:
        info = aiohttp.RequestInfo(URL("wss://b/"), "GET", {}, URL("wss://b/"))  # type: ignore[arg-type]
        return aiohttp.WSServerHandshakeError(info, (), status=status, message="x")

    assert "no longer connected to coordinator B" in refusal("m1", "B", handshake(404))
    assert "share the fleet CA" in refusal("m1", "B", handshake(403))
    assert "could not be asked: boom" in refusal("m1", "B", OSError("boom"))
