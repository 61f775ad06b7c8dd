"""WebOps webhooks (#21): the real API application (real SQLite, the server's
middleware) and real loopback receivers (aiohttp servers on 127.0.0.1) that check the
signature the way a receiver would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from coordinator.config import CoordinatorConfig
from coordinator.events import Event
from coordinator.server import Coordinator
from coordinator.webops import webhooks as wh

Client = TestClient[web.Request, web.Application]


def test_signature_scheme_and_replay_window() -> None:
    body = b'{"event":"deployment.completed"}'
    sig = wh.sign("s3cret", 1700000000, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert wh.verify("s3cret", "1700000000", sig, body, now=1700000010)
    assert not wh.verify("other", "1700000000", sig, body, now=1700000010)
    assert not wh.verify("s3cret", "1700000000", sig, body + b" ", now=1700000010)
    assert not wh.verify("s3cret", "1700000000", sig, body, now=1700000000 + 301)
    assert not wh.verify("s3cret", "1700000001", sig, body, now=1700000001)


def test_backoff_retry_and_names_are_pure() -> None:
    assert [wh.backoff(a, 2.0, 30.0) for a in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 16.0, 30.0]
    assert wh.retryable(0) and wh.retryable(500) and wh.retryable(429) and wh.retryable(503)
    assert not wh.retryable(404) and not wh.retryable(400)
    assert wh.event_name("webops.deployed") == "deployment.completed"
    assert wh.event_name("promotion.completed") == "promotion.completed"
    assert wh.wants([], "anything")
    assert wh.wants(["deployment."], "deployment.failed")
    assert not wh.wants(["deployment.completed"], "deployment.failed")
    assert wh.url_problem("ftp://x/") is not None
    assert wh.url_problem("http://user:pw@x/") is not None
    assert wh.url_problem("http://127.0.0.1:9/hook") is None
    assert wh.events_problem(["bad event"]) is not None


class Receiver:
    """A loopback webhook receiver answering `status` (a list: one per request, the
    last repeated), recording what it got and whether the signature verified."""

    def __init__(self, secret: str, statuses: list[int]) -> None:
        self.secret = secret
        self.statuses = statuses
        self.got: list[tuple[str, str, bool, dict[str, Any]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        valid = wh.verify(
            self.secret,
            request.headers.get(wh.TIMESTAMP_HEADER, ""),
            request.headers.get(wh.SIGNATURE_HEADER, ""),
            body,
            now=time.time(),
        )
        self.got.append(
            (
                request.headers.get(wh.EVENT_HEADER, ""),
                request.headers.get(wh.DELIVERY_HEADER, ""),
                valid,
                await request.json(),
            )
        )
        status = self.statuses[min(len(self.got), len(self.statuses)) - 1]
        return web.Response(status=status, text="ok")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def served(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[Client, dict[str, str], Coordinator]]:
    coordinator = Coordinator(
        CoordinatorConfig(state_dir=str(tmp_path / "state"), database_url=database_url)
    )
    # Fast retries for the test: 0.05 s, 0.1 s, 0.2 s...
    coordinator.webhooks.backoff_s = 0.05
    coordinator.webhooks.attempts = 4
    token, _ = coordinator.tokens.create_api_token("test")
    client = TestClient(TestServer(coordinator.api_app()))
    await client.start_server()
    # The delivery loop, as the lease holder runs it (the coordinator is not started)
    delivering = asyncio.create_task(coordinator.webhooks.run())
    try:
        yield client, {"Authorization": f"Bearer {token}"}, coordinator
    finally:
        delivering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await delivering
        await coordinator.webhooks.close()
        await client.close()
        coordinator.storage.close()


async def wait_until(check: Any, timeout: float = 30.0) -> None:
    ends = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < ends, "timed out"
        await asyncio.sleep(0.05)


async def test_a_receiver_gets_deployment_completed_signed(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    async with Receiver("s3cret", [200]) as rx:
        resp = await client.post(
            "/api/v1/webhooks/",
            headers=auth,
            json={"url": rx.url, "events": ["deployment.completed"], "secret": "s3cret"},
        )
        assert resp.status == 201, await resp.text()
        made = (await resp.json())["data"]
        assert made["secret"] == "s3cret"
        assert made["signature"]["header"] == wh.SIGNATURE_HEADER
        listed = (await (await client.get("/api/v1/webhooks/", headers=auth)).json())["data"]
        assert [h["id"] for h in listed] == [made["id"]]
        assert "secret" not in listed[0]

        # The domain's own event, as the WebOps service publishes it on a good build;
        # an event the hook did not ask for is not delivered.
        coordinator.events.publish(Event("webops.failed", subject="other"))
        coordinator.events.publish(Event("webops.deployed", subject="site", data={"b": "b1"}))
        await wait_until(lambda: len(rx.got) >= 1)
        await coordinator.webhooks.idle()
        assert len(rx.got) == 1
        event, delivery, valid, body = rx.got[0]
        assert (event, valid) == ("deployment.completed", True)
        assert body["event"] == "deployment.completed" and body["subject"] == "site"
        assert body["data"] == {"b": "b1"} and body["id"] == delivery

        resp = await client.post(f"/api/v1/webhooks/{made['id']}/test/", headers=auth)
        out = (await resp.json())["data"]
        assert resp.status == 200 and out["success"] and out["status_code"] == 200
        assert rx.got[-1][0] == wh.TEST_EVENT and rx.got[-1][2]

        log = (
            await (
                await client.get(f"/api/v1/webhooks/{made['id']}/deliveries/", headers=auth)
            ).json()
        )["data"]
        assert [(d["event"], d["status_code"]) for d in log] == [
            ("webhook.test", 200),
            ("deployment.completed", 200),
        ]

        resp = await client.delete(f"/api/v1/webhooks/{made['id']}/", headers=auth)
        assert resp.status == 200
        resp = await client.get(f"/api/v1/webhooks/{made['id']}/", headers=auth)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "RESOURCE_NOT_FOUND"


async def test_a_failing_receiver_gets_retries_in_the_delivery_log(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    async with Receiver("k", [500, 500, 200]) as rx:
        resp = await client.post(
            "/api/v1/webhooks/", headers=auth, json={"url": rx.url, "secret": "k"}
        )
        hook_id = (await resp.json())["data"]["id"]
        coordinator.events.publish(Event("webops.deployed", subject="site"))
        await wait_until(lambda: len(rx.got) >= 3)
        await coordinator.webhooks.idle()
        # The same delivery, three attempts, each signed.
        assert len({d for _, d, _, _ in rx.got}) == 1 and all(v for _, _, v, _ in rx.got)
        log = (
            await (await client.get(f"/api/v1/webhooks/{hook_id}/deliveries/", headers=auth)).json()
        )["data"]
        assert [(d["attempt"], d["status_code"], d["success"]) for d in reversed(log)] == [
            (1, 500, False),
            (2, 500, False),
            (3, 200, True),
        ]


async def test_a_receiver_that_is_down_never_blocks_the_loop(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    # A receiver that accepts and never answers: deliveries wait in their own tasks.
    hang = await asyncio.start_server(lambda r, w: asyncio.sleep(3600), "127.0.0.1", 0)
    port = hang.sockets[0].getsockname()[1]
    coordinator.webhooks.timeout_s = 60
    try:
        resp = await client.post(
            "/api/v1/webhooks/", headers=auth, json={"url": f"http://127.0.0.1:{port}/"}
        )
        assert resp.status == 201
        started = time.monotonic()
        for i in range(50):
            coordinator.events.publish(Event("webops.deployed", subject=f"d{i}"))
        assert time.monotonic() - started < 2.0  # publishing only queues
        resp = await client.get("/api/v1/webhooks/", headers=auth)  # the API still answers
        assert resp.status == 200
        await wait_until(lambda: len(coordinator.webhooks._inflight) == 50)
    finally:
        hang.close()


async def test_bad_webhooks_are_400_and_need_admin(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    for body, words in (
        ({"url": "ftp://x/"}, "http"),
        ({"url": "http://x/", "events": ["no spaces"]}, "event"),
        ({"events": []}, "url"),
    ):
        resp = await client.post("/api/v1/webhooks/", headers=auth, json=body)
        assert resp.status == 400, body
        assert words in (await resp.json())["error"]["message"]
    await coordinator.users.create_user("dev", "a-long-password-1", permissions=["deployments"])
    issued = await coordinator.users.login("dev", "a-long-password-1")
    dev = {"Authorization": f"Bearer {issued.token}"}
    resp = await client.get("/api/v1/webhooks/", headers=dev)
    assert resp.status == 403


async def test_a_deleted_webhook_gets_no_more_retries(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    coordinator.webhooks.backoff_s = 0.5
    async with Receiver("k", [500]) as rx:
        resp = await client.post("/api/v1/webhooks/", headers=auth, json={"url": rx.url})
        hook_id = (await resp.json())["data"]["id"]
        coordinator.events.publish(Event("webops.deployed", subject="site"))
        await wait_until(lambda: len(rx.got) >= 1)
        await client.delete(f"/api/v1/webhooks/{hook_id}/", headers=auth)
        await coordinator.webhooks.idle()
        assert len(rx.got) == 1


def test_a_webhook_created_through_another_coordinator_counts_here_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two coordinators on one database (#23): each reads a tenant's webhooks from
    memory for at most HOOKS_CACHE_S, so events emitted on B reach a hook made on A."""
    from coordinator.events import EventBus
    from coordinator.store.sql import SqlStore

    monkeypatch.setattr(wh, "HOOKS_CACHE_S", 0.2)
    a_store, b_store = SqlStore(tmp_path / "shared.db"), SqlStore(tmp_path / "shared.db")
    try:
        a, b = wh.WebhookService(a_store, EventBus()), wh.WebhookService(b_store, EventBus())
        assert b.hooks("default") == []  # B has read (and remembers) none
        hook = a.create("default", "https://hooks.example/in", ["deployment.completed"])
        time.sleep(0.25)
        assert [h.id for h in b.hooks("default")] == [hook.id]
        a.delete(hook)
        time.sleep(0.25)
        assert b.hooks("default") == []
    finally:
        a_store.close()
        b_store.close()


async def test_deliveries_wait_in_the_database_for_whoever_holds_the_lease(
    tmp_path: Path,
) -> None:
    """An event on coordinator A (which is not delivering: it does not hold the lease,
    or it died right after) is delivered by B's loop from the shared outbox, once."""
    from coordinator.events import EventBus
    from coordinator.store.sql import SqlStore

    a_store, b_store = SqlStore(tmp_path / "shared.db"), SqlStore(tmp_path / "shared.db")
    a = wh.WebhookService(a_store, EventBus())
    b = wh.WebhookService(b_store, EventBus(), poll_s=0.05)
    delivering: asyncio.Task[None] | None = None
    try:
        async with Receiver("k", [200]) as rx:
            hook = a.create("default", rx.url, ["deployment.completed"], "k")
            a._on_event(Event("webops.deployed", subject="site"))
            a._on_event(Event("webops.deployed", subject="site2"))
            assert a_store.outbox_count() == 2 and rx.got == []
            delivering = asyncio.create_task(b.run())
            await wait_until(lambda: len(rx.got) == 2, timeout=10)
            await b.idle()
            assert [(g[0], g[2], g[3]["subject"]) for g in rx.got] == [
                ("deployment.completed", True, "site"),
                ("deployment.completed", True, "site2"),
            ]
            assert len({g[1] for g in rx.got}) == 2  # a delivery id each
            assert [d.ok for d in a.deliveries(hook)] == [True, True]
            assert a_store.outbox_count() == 0
    finally:
        if delivering is not None:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivering
        await b.close()
        a_store.close()
        b_store.close()
