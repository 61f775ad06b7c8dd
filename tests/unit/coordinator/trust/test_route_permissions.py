"""The permission check in the server's middleware, in-process over the real API
application (real SQLite, plain HTTP): every route declares what it needs, and the
declaration is enforced for every method that reaches the route (HEAD as GET, the
any-method routes too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from coordinator.api.routing import FAMILIES
from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from coordinator.trust import permissions as perms

Client = TestClient[web.Request, web.Application]
ANY_CALLER = {
    "/openapi.json",
    "/api/v1/auth/verify/",
    "/api/v1/auth/token/{token}/",
    "/api/status/",
    "/ui",
    "/ui/",
    "/ui/logout",
    "/ui/events",
}
"""Routes any authenticated caller may use (what they return is theirs to see)."""


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Client, Coordinator]]:
    coordinator = Coordinator(CoordinatorConfig(state_dir=str(tmp_path / "state")))
    coordinator.users.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    client = TestClient(TestServer(coordinator.api_app()))
    await client.start_server()
    try:
        yield client, coordinator
    finally:
        await client.close()
        coordinator.storage.close()


async def user_token(coordinator: Coordinator, name: str, *granted: str) -> dict[str, str]:
    await coordinator.users.create_user(name, "a long password", permissions=list(granted))
    issued = await coordinator.users.login(name, "a long password")
    return {"Authorization": f"Bearer {issued.token}"}


async def test_every_route_declares_a_known_permission_or_is_public(
    served: tuple[Client, Coordinator],
) -> None:
    client, _ = served
    undeclared = []
    for family in client.app[FAMILIES]:
        for route in family.routes:
            if route.public:
                assert route.permission is None, route.path
            elif route.permission is None:
                undeclared.append(route.path)
            else:
                assert route.permission in perms.PERMISSIONS, (route.path, route.permission)
    assert set(undeclared) == ANY_CALLER


async def test_denied_for_every_method_that_reaches_the_route(
    served: tuple[Client, Coordinator],
) -> None:
    client, coordinator = served
    deployer = await user_token(coordinator, "dee", "deployments")
    for method, path in (
        ("GET", "/fleet/v1/machines"),
        ("HEAD", "/fleet/v1/machines"),
        ("POST", "/fleet/v1/discovery"),  # registered for any method
        ("GET", "/moorage/v1/units"),
        ("GET", "/moorage/v1/api-tokens"),
        ("GET", "/metrics"),
        ("GET", "/moorage/v1/users"),
    ):
        resp = await client.request(method, path, headers=deployer)
        assert resp.status == 403, (method, path)
        if method != "HEAD":
            assert "permission" in (await resp.json())["error"]["message"], path
    resp = await client.get("/api/v1/users/", headers=deployer)
    body = await resp.json()
    assert resp.status == 403 and body["error"]["code"] == "PERMISSION_DENIED"
    assert body["error"]["message"] == "permission denied: this route needs the 'users' permission"
    assert (await client.get("/api/v2/clusters", headers=deployer)).status == 200
    assert (await client.head("/api/v2/clusters", headers=deployer)).status == 200

    viewer = await user_token(coordinator, "vee", "role:viewer")
    assert (await client.get("/metrics", headers=viewer)).status == 200
    assert (await client.get("/moorage/v1/drift", headers=viewer)).status == 200
    assert (await client.get("/api/v2/clusters", headers=viewer)).status == 403
    # Unknown routes stay 404 and wrong methods 405, whoever asks.
    assert (await client.get("/fleet/v1/nothing", headers=viewer)).status == 404
    assert (await client.delete("/metrics", headers=viewer)).status == 405

    operator = await user_token(coordinator, "opal", "role:operator")
    assert (await client.get("/fleet/v1/machines", headers=operator)).status == 200
    assert (await client.get("/moorage/v1/api-tokens", headers=operator)).status == 403
    admin_token, _ = coordinator.tokens.create_api_token("ci")
    admin = {"Authorization": f"Bearer {admin_token}"}
    for path in ("/fleet/v1/machines", "/moorage/v1/api-tokens", "/api/v1/users/", "/metrics"):
        assert (await client.get(path, headers=admin)).status == 200, path
