"""The dashboard over the real API application in-process (real SQLite, plain HTTP):
login with CSRF, the session cookie, and a fleet of 10,000 machines shown a page at a
time and searchable (no page renders every machine)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from coordinator.ui.sessions import COOKIE, LOGIN_CSRF_COOKIE
from proto.tokens import JOIN_KIND, parse_token

Client = TestClient[web.Request, web.Application]
MACHINES = 10_000


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


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def log_in(client: Client, username: str, password: str) -> tuple[int, str]:
    """The session id (or "") after posting the login form as a browser would."""
    form = await client.get("/ui/login")
    token = form.cookies[LOGIN_CSRF_COOKIE].value
    assert csrf_of(await form.text()) == token
    resp = await client.post(
        "/ui/login",
        data={"csrf": token, "username": username, "password": password},
        headers={"Cookie": f"{LOGIN_CSRF_COOKIE}={token}"},
        allow_redirects=False,
    )
    session = resp.cookies.get(COOKIE)
    return resp.status, session.value if session is not None else ""


async def test_login_needs_the_forms_csrf_token_and_the_right_password(
    served: tuple[Client, Coordinator],
) -> None:
    client, coordinator = served
    await coordinator.users.create_user("ann", "a long password", permissions=["fleet"])
    status, session = await log_in(client, "ann", "wrong password")
    assert (status, session) == (401, "")
    no_csrf = await client.post(
        "/ui/login",
        data={"username": "ann", "password": "a long password"},
        allow_redirects=False,
    )
    assert no_csrf.status == 403 and COOKIE not in no_csrf.cookies
    status, session = await log_in(client, "ann", "a long password")
    assert status == 303 and session
    cookie = {"Cookie": f"{COOKIE}={session}"}
    page = await client.get("/ui/fleet", headers=cookie)
    assert page.status == 200 and "ann" in await page.text()
    # A disabled user's session ends at once (its token is checked on every request).
    coordinator.users.set_disabled("ann", True)
    gone = await client.get("/ui/fleet", headers=cookie, allow_redirects=False)
    assert gone.status == 303 and gone.headers["Location"] == "/ui/login"


async def test_ten_thousand_machines_a_page_at_a_time_and_searchable(
    served: tuple[Client, Coordinator],
) -> None:
    client, coordinator = served
    for i in range(MACHINES):
        token = parse_token(coordinator.tokens.create_join_token(60), JOIN_KIND)
        coordinator.storage.enroll(token.id, f"m{i:05d}", serial=f"s{i}", not_after=1e12, now=1)
    await coordinator.users.create_user("ops", "a long password", permissions=["admin"])
    _, session = await log_in(client, "ops", "a long password")
    cookie = {"Cookie": f"{COOKIE}={session}"}

    first = await (await client.get("/ui/fleet", headers=cookie)).text()
    assert first.count("<tr data-machine=") == 50
    assert f"Page 1 of {MACHINES // 50} ({MACHINES} in all)" in first
    last = await (await client.get(f"/ui/fleet?page={MACHINES // 50}", headers=cookie)).text()
    assert 'data-machine="m09999"' in last and last.count("<tr data-machine=") == 50
    found = await (await client.get("/ui/fleet?q=m0424", headers=cookie)).text()
    assert found.count("<tr data-machine=") == 10  # m04240 .. m04249
    assert "Page 1 of 1 (10 in all)" in found


async def test_pages_do_not_spend_the_api_tokens_hourly_limit(
    served: tuple[Client, Coordinator],
) -> None:
    """A browser refreshes often; the per-token limit (100 an hour by default) is the
    APIs' contract and must not lock a dashboard user out after a few minutes."""
    client, coordinator = served
    assert coordinator.limiter.enabled
    await coordinator.users.create_user("ann", "a long password", permissions=["fleet"])
    _, session = await log_in(client, "ann", "a long password")
    cookie = {"Cookie": f"{COOKIE}={session}"}
    for _ in range(coordinator.config.rate_limits.token.count + 20):
        resp = await client.get("/ui/fleet", headers=cookie)
        assert resp.status == 200
