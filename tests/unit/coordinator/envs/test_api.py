"""The environment management document's calls, in its order, against the real API
application in-process (real SQLite, the server's middleware, real users and tokens):
status codes and shapes; then promotions with approvals and separation of duties,
freeze windows and tenancy. No agents here: rollouts start and wait (the integration
tests run them to the end on real systemd)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from proto.tokens import JOIN_KIND, parse_token
from tests.harness.databases import coordinator_database_url

MANIFEST = """\
units:
  - name: web.service
    contents: |
      [Service]
      ExecStart=/bin/sleep 3600
"""

Client = TestClient[web.Request, web.Application]


class Api:
    def __init__(self, client: Client, coordinator: Coordinator, token: str) -> None:
        self.client = client
        self.coordinator = coordinator
        self.token = token

    async def call(
        self, method: str, path: str, body: Any = None, *, expect: int = 200, token: str = ""
    ) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        resp = await self.client.request(method, path, json=body, headers=headers)
        value = await resp.json()
        assert resp.status == expect, (method, path, resp.status, value)
        return value

    async def user(self, name: str, permissions: list[str]) -> str:
        """A user made through the users API, and a token from logging in."""
        await self.call(
            "POST",
            "/api/v1/users/",
            {"username": name, "password": "correct horse 9", "permissions": permissions},
            expect=201,
        )
        resp = await self.client.post(
            "/api/v1/auth/token/", json={"username": name, "password": "correct horse 9"}
        )
        assert resp.status in (200, 201), await resp.text()
        return str((await resp.json())["data"]["token"])

    def machine(self, machine_id: str, hostname: str, tenant: str = "default") -> None:
        c = self.coordinator
        made = c.tokens.create_join_tokens(tenant=tenant)
        token = parse_token(made.tokens[0], JOIN_KIND)
        c.storage.enroll(token.id, machine_id, serial=machine_id, not_after=1e12, now=1)
        c.storage.record_hello(
            machine_id,
            hostname=hostname,
            primary_ip="10.9.0.1",
            metadata={},
            capabilities=["systemd"],
            agent_version="t",
            now=1,
        )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    coordinator = Coordinator(
        CoordinatorConfig(
            state_dir=str(tmp_path / "state"),
            # MOORAGE_TEST_DATABASE=postgresql: the run's PostgreSQL, else <state>/moorage.db
            database_url=coordinator_database_url(tmp_path / "db"),
        )
    )
    token, _ = coordinator.tokens.create_api_token("test", unlimited=True)
    client: Client = TestClient(TestServer(coordinator.api_app()))
    await client.start_server()
    try:
        yield Api(client, coordinator, token)
    finally:
        await client.close()
        coordinator.storage.close()


ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


async def test_the_documents_calls_in_order(api: Api) -> None:
    import re

    # Create Environment: 201, the documented fields (requireSod accepted on input).
    env = await api.call(
        "POST",
        "/api/v1/environments",
        {
            "name": "production",
            "displayName": "Production",
            "orderIndex": 3,
            "config": {"deploymentTimeout": 600, "healthCheckInterval": 30},
            "requiredApprovals": 2,
            "requireSod": True,
            "promotionPolicy": "default",
        },
        expect=201,
    )
    for key, value in {
        "name": "production",
        "displayName": "Production",
        "orderIndex": 3,
        "isProduction": True,
        "requiredApprovals": 2,
        "requireSeparationOfDuties": True,
    }.items():
        assert env[key] == value, key
    assert re.match(ISO, env["createdAt"]) and env["id"]
    dev = await api.call(
        "POST",
        "/api/v1/environments",
        {"name": "development", "displayName": "Development", "orderIndex": 1},
        expect=201,
    )
    assert dev["isProduction"] is False and dev["requireSeparationOfDuties"] is False
    await api.call("POST", "/api/v1/environments", {"name": "development"}, expect=409)
    bad = await api.call(
        "POST", "/api/v1/environments", {"name": "x", "requiredApprovals": -1}, expect=400
    )
    assert bad["success"] is False and bad["error"]["code"] == "VALIDATION_ERROR"
    assert "requiredApprovals" in bad["error"]["message"]

    # List Environments (by orderIndex), includeState shows currentRelease.
    listed = await api.call("GET", "/api/v1/environments?includeState=true")
    assert [e["name"] for e in listed] == ["development", "production"]
    assert listed[0]["currentRelease"] is None
    assert "currentRelease" not in (await api.call("GET", "/api/v1/environments"))[0]

    # Get / Update (partial) Environment.
    got = await api.call("GET", f"/api/v1/environments/{env['id']}")
    assert got["id"] == env["id"] and got["config"]["deploymentTimeout"] == 600
    updated = await api.call(
        "PUT", f"/api/v1/environments/{dev['id']}", {"displayName": "Dev", "requiredApprovals": 0}
    )
    assert updated["displayName"] == "Dev" and updated["name"] == "development"
    missing = await api.call("GET", "/api/v1/environments/nope", expect=404)
    assert missing["error"]["code"] == "RESOURCE_NOT_FOUND"

    # Freeze windows: create (201), list, active filter, delete ({"deleted": true}).
    window = await api.call(
        "POST",
        f"/api/v1/environments/{env['id']}/freeze-windows",
        {
            "start": "2026-01-15T00:00:00Z",
            "end": "2026-01-20T00:00:00Z",
            "reason": "Holiday freeze",
            "exceptions": ["user-uuid-1", "user-uuid-2"],
        },
        expect=201,
    )
    assert {k: window[k] for k in ("environmentId", "start", "end", "reason")} == {
        "environmentId": env["id"],
        "start": "2026-01-15T00:00:00Z",
        "end": "2026-01-20T00:00:00Z",
        "reason": "Holiday freeze",
    }
    assert window["id"] and window["createdBy"] == "token:test"
    windows = await api.call("GET", f"/api/v1/environments/{env['id']}/freeze-windows")
    assert [w["id"] for w in windows] == [window["id"]]
    assert (
        await api.call("GET", f"/api/v1/environments/{env['id']}/freeze-windows?active=true") == []
    )
    await api.call(
        "POST",
        f"/api/v1/environments/{env['id']}/freeze-windows",
        {"start": "2026-01-20T00:00:00Z", "end": "2026-01-15T00:00:00Z"},
        expect=400,
    )
    await api.call(
        "POST",
        f"/api/v1/environments/{env['id']}/freeze-windows",
        {"start": "yesterday", "end": "2026-01-15T00:00:00Z"},
        expect=400,
    )
    assert await api.call(
        "DELETE", f"/api/v1/environments/{env['id']}/freeze-windows/{window['id']}"
    ) == {"deleted": True}

    # Target groups.
    group = await api.call(
        "POST", f"/api/v1/environments/{env['id']}/target-groups", {"name": "web"}, expect=201
    )
    assert [
        g["id"] for g in await api.call("GET", f"/api/v1/environments/{env['id']}/target-groups")
    ] == [group["id"]]
    assert (await api.call("GET", f"/api/v1/target-groups/{group['id']}"))["name"] == "web"
    renamed = await api.call(
        "PUT", f"/api/v1/target-groups/{group['id']}", {"description": "front"}
    )
    assert renamed["description"] == "front"

    # Create Target: the documented body as is; no machine matches yet: unknown.
    target = await api.call(
        "POST",
        "/api/v1/targets",
        {
            "environmentId": env["id"],
            "targetGroupId": group["id"],
            "name": "prod-web-01",
            "targetType": "docker_host",
            "connection": {"host": "192.168.1.100", "port": 2375, "tlsEnabled": True},
            "labels": {"role": "web", "datacenter": "us-east-1"},
            "deploymentDirectory": "/opt/deployments",
        },
        expect=201,
    )
    assert {k: target[k] for k in ("name", "targetType", "healthStatus")} == {
        "name": "prod-web-01",
        "targetType": "docker_host",
        "healthStatus": "unknown",
    }
    assert re.match(ISO, target["createdAt"]) and target["machineId"] is None
    nomad = await api.call(
        "POST",
        "/api/v1/targets",
        {"environmentId": env["id"], "name": "jobs", "targetType": "nomad_job", "connection": {}},
        expect=201,
    )
    await api.call(
        "POST",
        "/api/v1/targets",
        {"environmentId": env["id"], "name": "x", "targetType": "mainframe"},
        expect=400,
    )
    # The group is in use now.
    await api.call("DELETE", f"/api/v1/target-groups/{group['id']}", expect=409)

    # List Targets with each filter.
    async def names(query: str) -> list[str]:
        return [t["name"] for t in await api.call("GET", "/api/v1/targets" + query)]

    assert await names("") == ["jobs", "prod-web-01"]
    assert await names(f"?environmentId={env['id']}") == ["jobs", "prod-web-01"]
    assert await names(f"?environmentId={dev['id']}") == []
    assert await names("?targetType=nomad_job") == ["jobs"]
    assert await names('?labels={"role":"web"}') == ["prod-web-01"]
    assert await names('?labels={"role":"db"}') == []
    assert await names("?healthStatus=unknown") == ["jobs", "prod-web-01"]
    await api.call("GET", "/api/v1/targets?labels=notjson", expect=400)
    await api.call("GET", "/api/v1/targets?healthStatus=sunny", expect=400)

    # Get / Update Target.
    assert (await api.call("GET", f"/api/v1/targets/{target['id']}"))["labels"]["role"] == "web"
    moved = await api.call("PUT", f"/api/v1/targets/{target['id']}", {"labels": {"role": "api"}})
    assert moved["labels"] == {"role": "api"} and moved["connection"]["port"] == 2375

    # Health check: unbound -> unknown (named why); not agent-driven -> 422.
    health = await api.call("POST", f"/api/v1/targets/{target['id']}/health-check")
    assert health["status"] == "unknown" and "192.168.1.100" in health["message"]
    assert re.match(ISO, health["checkedAt"])
    refused = await api.call("POST", f"/api/v1/targets/{nomad['id']}/health-check", expect=422)
    assert "not driven by Moorage agents" in refused["error"]["message"]
    await api.call("GET", f"/api/v1/targets/{nomad['id']}/sticker", expect=422)
    await api.call("GET", f"/api/v1/targets/{target['id']}/sticker", expect=404)
    await api.call("GET", f"/api/v1/targets/{target['id']}/drift", expect=404)

    # A machine whose primary IP is connection.host binds it.
    api.machine("m1", "web-01")
    api.coordinator.storage.record_hello(
        "m1",
        hostname="web-01",
        primary_ip="192.168.1.100",
        metadata={},
        capabilities=["systemd"],
        agent_version="t",
        now=2,
    )
    health = await api.call("POST", f"/api/v1/targets/{target['id']}/health-check")
    assert health["status"] == "unreachable" and "not connected" in health["message"]
    bound = await api.call("GET", f"/api/v1/targets/{target['id']}")
    assert bound["machineId"] == "m1" and bound["healthStatus"] == "unreachable"
    drift = await api.call("GET", f"/api/v1/targets/{target['id']}/drift")
    assert drift == {
        "hasDrift": False,
        "expected": {"releaseId": "", "digest": ""},
        "actual": {"digest": ""},
        "differences": [],
        "checkedAt": None,
    }

    # Delete: an environment with targets is 409; targets, then it: {"deleted": true}.
    conflict = await api.call("DELETE", f"/api/v1/environments/{env['id']}", expect=409)
    assert conflict["error"]["code"] == "CONFLICT" and "target" in conflict["error"]["message"]
    for t in (target, nomad):
        assert await api.call("DELETE", f"/api/v1/targets/{t['id']}") == {"deleted": True}
    assert await api.call("DELETE", f"/api/v1/target-groups/{group['id']}") == {"deleted": True}
    assert await api.call("DELETE", f"/api/v1/environments/{env['id']}") == {"deleted": True}
    await api.call("GET", f"/api/v1/environments/{env['id']}", expect=404)


async def test_promotion_needs_distinct_approvers_and_separation_of_duties(api: Api) -> None:
    c = api.coordinator
    app, _ = await c.deployments.create_application("shop", MANIFEST, version="1")
    dev = await api.call(
        "POST", "/api/v1/environments", {"name": "dev", "orderIndex": 1}, expect=201
    )
    prod = await api.call(
        "POST",
        "/api/v1/environments",
        {
            "name": "prod",
            "orderIndex": 2,
            "requiredApprovals": 2,
            "requireSeparationOfDuties": True,
            "config": {"deploymentTimeout": 120, "healthCheckInterval": 3},
        },
        expect=201,
    )
    api.machine("m1", "dev-1")
    api.machine("m2", "prod-1")
    for env, host in ((dev, "dev-1"), (prod, "prod-1")):
        await api.call(
            "POST",
            "/api/v1/targets",
            {
                "environmentId": env["id"],
                "name": host,
                "targetType": "docker_host",
                "connection": {"host": host},
            },
            expect=201,
        )
    alice = await api.user("alice", ["deployments", "environments", "approvals"])
    bob = await api.user("bob", ["approvals"])
    carol = await api.user("carol", ["approvals"])
    dave = await api.user("dave", ["environments"])

    # Into dev: no approvals needed, it starts rolling out at once.
    first = await api.call(
        "POST",
        f"/api/v1/environments/{dev['id']}/promotions",
        {"applicationId": app.id, "version": "1"},
        expect=201,
        token=alice,
    )
    assert first["status"] == "deploying" and first["releaseId"]
    # Promotion order: prod only after dev succeeded.
    early = await api.call(
        "POST",
        f"/api/v1/environments/{prod['id']}/promotions",
        {"releaseId": first["releaseId"]},
        expect=409,
        token=alice,
    )
    assert "promotion order" in early["error"]["message"]
    # The rollout engine finishes dev's release (no agent here: mark its job as done).
    release = c.deployments.release(first["releaseId"])
    for job in c.deployments.release_jobs(release):
        c.storage.update_jobs([msgspec.structs.replace(job, status="Success")])
    await c.deployments.tick(1e12)
    done = await api.call("GET", f"/api/v1/promotions/{first['id']}")
    assert done["status"] == "completed"
    state = await api.call("GET", f"/api/v1/environments/{dev['id']}?includeState=true")
    assert state["currentRelease"]["id"] == first["releaseId"]
    assert state["currentRelease"]["name"] == "shop-v1"

    asked = await api.call(
        "POST",
        f"/api/v1/environments/{prod['id']}/promotions",
        {"releaseId": first["releaseId"]},
        expect=201,
        token=alice,
    )
    assert asked["status"] == "pending_approval" and asked["approvals"] == []
    # Without the approvals permission: 403; the requester's own approval: 403.
    await api.call("POST", f"/api/v1/promotions/{asked['id']}/approve", expect=403, token=dave)
    own = await api.call(
        "POST", f"/api/v1/promotions/{asked['id']}/approve", expect=403, token=alice
    )
    assert "separation of duties" in own["error"]["message"]
    one = await api.call(
        "POST", f"/api/v1/promotions/{asked['id']}/approve", {"comment": "ok"}, token=bob
    )
    assert one["status"] == "pending_approval" and [a["name"] for a in one["approvals"]] == ["bob"]
    await api.call("POST", f"/api/v1/promotions/{asked['id']}/approve", expect=409, token=bob)
    two = await api.call("POST", f"/api/v1/promotions/{asked['id']}/approve", token=carol)
    assert (
        two["status"] == "deploying" and two["releaseId"] and two["releaseId"] != first["releaseId"]
    )
    # The promoted release carries dev's units unchanged, onto prod's machine only.
    promoted = c.deployments.release(two["releaseId"])
    assert promoted.units == c.deployments.release(first["releaseId"]).units
    # The environment's rollout settings, not the manifest's.
    assert (promoted.timeout_s, promoted.min_healthy_s) == (120.0, 3.0)
    assert [j.machine_id for j in c.deployments.release_jobs(promoted)] == ["m2"]
    await api.call("DELETE", f"/api/v1/environments/{prod['id']}", expect=409)
    listed = await api.call("GET", f"/api/v1/environments/{prod['id']}/promotions")
    assert [p["id"] for p in listed] == [asked["id"]]


async def test_a_freeze_window_refuses_unless_the_requester_is_an_exception(api: Api) -> None:
    import time

    c = api.coordinator
    app, _ = await c.deployments.create_application("shop", MANIFEST, version="1")
    dev = await api.call(
        "POST", "/api/v1/environments", {"name": "dev", "orderIndex": 1}, expect=201
    )
    api.machine("m1", "dev-1")
    await api.call(
        "POST",
        "/api/v1/targets",
        {
            "environmentId": dev["id"],
            "name": "dev-1",
            "targetType": "docker_host",
            "connection": {"host": "dev-1"},
        },
        expect=201,
    )
    alice = await api.user("alice", ["deployments", "environments"])
    erin = await api.user("erin", ["deployments", "environments"])
    erin_id = (await api.call("GET", "/api/v1/users/"))["data"][-1]["id"]
    now = time.time()

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    await api.call(
        "POST",
        f"/api/v1/environments/{dev['id']}/freeze-windows",
        {
            "start": iso(now - 60),
            "end": iso(now + 3600),
            "reason": "Holiday freeze",
            "exceptions": [erin_id],
        },
        expect=201,
    )
    active = await api.call("GET", f"/api/v1/environments/{dev['id']}/freeze-windows?active=true")
    assert len(active) == 1
    refused = await api.call(
        "POST",
        f"/api/v1/environments/{dev['id']}/promotions",
        {"applicationId": app.id},
        expect=409,
        token=alice,
    )
    assert (
        "Holiday freeze" in refused["error"]["message"]
        and iso(now + 3600) in refused["error"]["message"]
    )
    through = await api.call(
        "POST",
        f"/api/v1/environments/{dev['id']}/promotions",
        {"applicationId": app.id},
        expect=201,
        token=erin,
    )
    assert through["status"] == "deploying" and through["freezeException"] == active[0]["id"]


async def test_another_tenants_environment_is_not_found(api: Api) -> None:
    env = await api.call("POST", "/api/v1/environments", {"name": "dev"}, expect=201)
    other, _ = api.coordinator.tokens.create_api_token("b", tenant="beta", unlimited=True)
    await api.call("GET", f"/api/v1/environments/{env['id']}", expect=404, token=other)
    await api.call("DELETE", f"/api/v1/environments/{env['id']}", expect=404, token=other)
    assert await api.call("GET", "/api/v1/environments", token=other) == []
    # The same name in another tenant is fine.
    await api.call("POST", "/api/v1/environments", {"name": "dev"}, expect=201, token=other)
    # Targets, groups, windows and promotions of another tenant are not found either.
    c = api.coordinator
    app, _ = await c.deployments.create_application("shop", MANIFEST, version="1")
    api.machine("m1", "dev-1")
    target = await api.call(
        "POST",
        "/api/v1/targets",
        {"environmentId": env["id"], "name": "t", "targetType": "docker_host", "machineId": "m1"},
        expect=201,
    )
    group = await api.call(
        "POST", f"/api/v1/environments/{env['id']}/target-groups", {"name": "g"}, expect=201
    )
    p = await api.call(
        "POST",
        f"/api/v1/environments/{env['id']}/promotions",
        {"applicationId": app.id},
        expect=201,
    )
    for method, path in (
        ("GET", f"/api/v1/targets/{target['id']}"),
        ("DELETE", f"/api/v1/targets/{target['id']}"),
        ("POST", f"/api/v1/targets/{target['id']}/health-check"),
        ("GET", f"/api/v1/targets/{target['id']}/sticker"),
        ("GET", f"/api/v1/target-groups/{group['id']}"),
        ("GET", f"/api/v1/promotions/{p['id']}"),
        ("POST", f"/api/v1/promotions/{p['id']}/approve"),
        ("GET", f"/api/v1/environments/{env['id']}/freeze-windows"),
    ):
        await api.call(method, path, expect=404, token=other)
    assert await api.call("GET", "/api/v1/targets", token=other) == []
    assert await api.call("GET", "/api/v1/promotions", token=other) == []
    # Nor can another tenant's machine be named.
    other_env = (await api.call("GET", "/api/v1/environments", token=other))[0]
    refused = await api.call(
        "POST",
        "/api/v1/targets",
        {
            "environmentId": other_env["id"],
            "name": "t",
            "targetType": "docker_host",
            "machineId": "m1",
        },
        expect=400,
        token=other,
    )
    assert "machine 'm1' does not exist" in refused["error"]["message"]


async def finish_rollouts(c: Coordinator, release_id: str) -> None:
    """No agent in-process: mark the release's jobs healthy and let the engine step."""
    for job in c.deployments.release_jobs(c.deployments.release(release_id)):
        c.storage.update_jobs([msgspec.structs.replace(job, status="Success")])
    await c.deployments.tick(1e12)


async def dev_with_target(api: Api, name: str = "dev", order: int = 1, **more: Any) -> Any:
    env = await api.call(
        "POST", "/api/v1/environments", {"name": name, "orderIndex": order, **more}, expect=201
    )
    api.machine(f"m-{name}", f"{name}-1")
    await api.call(
        "POST",
        "/api/v1/targets",
        {
            "environmentId": env["id"],
            "name": f"{name}-1",
            "targetType": "docker_host",
            "connection": {"host": f"{name}-1"},
        },
        expect=201,
    )
    return env


async def test_freeze_windows_also_refuse_deploys_through_other_apis_and_are_events(
    api: Api,
) -> None:
    import time

    c = api.coordinator
    seen: list[str] = []
    c.events.subscribe(lambda e: seen.append(e.kind), ("freeze.",))
    app, _ = await c.deployments.create_application("shop", MANIFEST, version="1")
    dev = await dev_with_target(api)
    first = await api.call(
        "POST",
        f"/api/v1/environments/{dev['id']}/promotions",
        {"applicationId": app.id},
        expect=201,
    )
    await finish_rollouts(c, first["releaseId"])
    d = c.deployments.deployment("shop-dev")
    now = time.time()
    window = await api.call(
        "POST",
        f"/api/v1/environments/{dev['id']}/freeze-windows",
        {
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 5)),
            "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 600)),
            "reason": "release night",
        },
        expect=201,
    )
    assert seen == ["freeze.started"]
    refused = await api.call("POST", f"/api/v2/deployments/{d.id}/deploy", expect=409)
    assert "release night" in refused["error"]["message"]
    assert seen == ["freeze.started", "freeze.refused"]
    await api.call("DELETE", f"/api/v1/environments/{dev['id']}/freeze-windows/{window['id']}")
    assert seen[-1] == "freeze.ended"
    await api.call("POST", f"/api/v2/deployments/{d.id}/deploy", expect=201)


async def test_auto_promote_from_promotes_after_success_below(api: Api) -> None:
    import asyncio

    c = api.coordinator
    kinds: list[str] = []
    c.events.subscribe(lambda e: kinds.append(e.kind), ("promotion.",))
    app, _ = await c.deployments.create_application("shop", MANIFEST, version="1")
    dev = await dev_with_target(api)
    qa = await dev_with_target(api, "qa", 2, autoPromoteFrom="dev")
    first = await api.call(
        "POST",
        f"/api/v1/environments/{dev['id']}/promotions",
        {"applicationId": app.id},
        expect=201,
    )
    await finish_rollouts(c, first["releaseId"])
    for _ in range(100):
        found = await api.call("GET", f"/api/v1/environments/{qa['id']}/promotions")
        if found and found[0]["status"] != "pending_approval":
            break
        await asyncio.sleep(0.05)
    assert len(found) == 1 and found[0]["auto"] is True
    assert found[0]["status"] == "deploying" and found[0]["sourceReleaseId"] == first["releaseId"]
    assert kinds[:3] == ["promotion.requested", "promotion.completed", "promotion.requested"]


async def test_a_renamed_environment_keeps_its_deployment(api: Api) -> None:
    c = api.coordinator
    app, _ = await c.deployments.create_application("shop", MANIFEST, version="1")
    dev = await dev_with_target(api)
    first = await api.call(
        "POST",
        f"/api/v1/environments/{dev['id']}/promotions",
        {"applicationId": app.id},
        expect=201,
    )
    await finish_rollouts(c, first["releaseId"])
    await api.call("PUT", f"/api/v1/environments/{dev['id']}", {"name": "development"})
    again = await api.call(
        "POST", "/api/v1/environments/development/promotions", {"applicationId": app.id}, expect=201
    )
    assert again["status"] == "deploying"
    assert c.deployments.release(again["releaseId"]).deployment_id == (
        c.deployments.release(first["releaseId"]).deployment_id
    )


async def test_a_hello_reads_the_fleet_only_while_a_target_is_unbound(api: Api) -> None:
    """Binding runs on every agent's Hello: without an unbound agent-driven target it
    must not read every machine, or a reconnect wave of n agents reads n² rows."""
    service = api.coordinator.environments
    listed: list[str] = []
    real = service.deployments.machines

    def counting(*, tenant: str = "default") -> list[Any]:
        listed.append(tenant)
        return list(real(tenant=tenant))

    service.deployments.machines = counting  # type: ignore[method-assign]
    api.machine("m1", "web-01")
    await service._bind("default")
    assert listed == []

    env = await api.call("POST", "/api/v1/environments", {"name": "staging"}, expect=201)
    body = {"environmentId": env["id"], "targetType": "docker_host"}
    target = await api.call(
        "POST",
        "/api/v1/targets",
        {**body, "name": "t1", "connection": {"host": "web-01"}},
        expect=201,
    )
    assert target["machineId"] == "m1" and listed == ["default"]  # bound: read once
    await service._bind("default")
    assert listed == ["default"]  # bound now: a Hello reads no machine
