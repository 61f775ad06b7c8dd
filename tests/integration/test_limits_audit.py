"""Rate limits and the audit log against a real coordinator process over real TLS
(issue 17): the 6th failed authentication from one address in 15 minutes is 429 and
stays so across `kill -9`; 50 concurrent failures get exactly 5 through; the per-token
limit, the admin certificate's exemption, the switch; every write in the audit log
with its principal, through the API and `moorctl audit`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.trust import pki
from tests.procs import CoordinatorProc, run_sync

pytestmark = pytest.mark.integration

LIMITED = """
[rate_limits]
token = { count = 8, window_s = 3600 }
deploy = { count = 2, window_s = 3600 }
auth = { count = 5, window_s = 900 }
"""
BAD_TOKEN = "Bearer mra.abcdefghij.0123456789abcdef0123456789abcdef"
MANIFEST = """\
units:
  - name: web.service
    contents: |
      [Service]
      ExecStart=/bin/sleep 1000
"""

Reply = tuple[int, dict[str, str], bytes]


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[CoordinatorProc]:
    proc = CoordinatorProc(tmp_path / "coordinator")
    proc.config = LIMITED
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def _request(
    session: aiohttp.ClientSession,
    coord: CoordinatorProc,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    cert: bool = False,
) -> Reply:
    p = coord.paths
    ctx = pki.client_ssl_context(
        p.ca_cert, p.admin_cert if cert else None, p.admin_key if cert else None
    )
    data = None if body is None else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    async with session.request(
        method, coord.endpoint + path, headers=hdrs, data=data, ssl=ctx
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def call(
    coord: CoordinatorProc,
    method: str,
    path: str,
    *,
    source: str = "127.0.0.1",
    **kw: Any,
) -> Reply:
    """One request from `source` (any 127/8 address: a distinct client IP)."""

    async def go() -> Reply:
        conn = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=conn) as s:
            return await _request(s, coord, method, path, **kw)

    return run_sync(go)


def many(
    coord: CoordinatorProc, n: int, method: str, path: str, *, source: str, **kw: Any
) -> list[Reply]:
    """`n` requests at once from `source`, each on its own connection."""

    async def go() -> list[Reply]:
        conn = aiohttp.TCPConnector(local_addr=(source, 0), limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn) as s:
            return list(
                await asyncio.gather(*(_request(s, coord, method, path, **kw) for _ in range(n)))
            )

    return run_sync(go)


def token(coord: CoordinatorProc, name: str) -> str:
    return str(coord.api("POST", "/moorage/v1/api-tokens", {"name": name})["token"])


def bad_enrolment(coord: CoordinatorProc) -> dict[str, str]:
    return {
        "token": "mrj.aaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.cccccccccccccccc",
        "machine_id": "0123456789abcdef0123456789abcdef",
        "csr_pem": pki.make_csr(pki.generate_key(), "0123456789abcdef0123456789abcdef").decode(),
    }


def refused_enrolments(coord: CoordinatorProc) -> float:
    m = re.search(r'^moorage_enrolments_total\{result="refused"\} (\S+)$', coord.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def assert_429(reply: Reply, limit: int) -> None:
    status, headers, body = reply
    assert status == 429, (status, body)
    assert 1 <= int(headers["Retry-After"]) <= 3600
    assert headers["X-RateLimit-Limit"] == str(limit)
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) >= int(time.time())
    assert b"rate limit exceeded" in body


def test_sixth_failed_authentication_is_429_and_survives_kill_9(coord: CoordinatorProc) -> None:
    ip = "127.0.0.2"
    for _ in range(5):
        status, _, body = call(
            coord, "GET", "/moorage/v1/machines", source=ip, headers={"Authorization": BAD_TOKEN}
        )
        assert status == 401, body
    sixth = call(
        coord, "GET", "/moorage/v1/machines", source=ip, headers={"Authorization": BAD_TOKEN}
    )
    assert_429(sixth, 5)
    assert json.loads(sixth[2])["error"]["code"] == 429  # fleet's error format
    # The same address's failed enrolments share the limit, and the envelope family
    # answers with its code.
    assert_429(call(coord, "POST", "/agent/v1/enroll", source=ip, body=bad_enrolment(coord)), 5)
    envelope = call(
        coord, "GET", "/api/v2/clusters", source=ip, headers={"Authorization": BAD_TOKEN}
    )
    assert_429(envelope, 5)
    assert json.loads(envelope[2])["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    # A good token from that address is refused too (before it is checked); another
    # address and the admin certificate are not.
    good = token(coord, "ci")
    assert (
        call(
            coord,
            "GET",
            "/moorage/v1/machines",
            source=ip,
            headers={"Authorization": f"Bearer {good}"},
        )[0]
        == 429
    )
    assert (
        call(coord, "GET", "/moorage/v1/machines", headers={"Authorization": f"Bearer {good}"})[0]
        == 200
    )
    assert call(coord, "GET", "/moorage/v1/machines", source=ip, cert=True)[0] == 200

    coord.kill9()  # the acknowledged failures are on disk
    coord.start()
    assert_429(
        call(coord, "GET", "/moorage/v1/machines", source=ip, headers={"Authorization": BAD_TOKEN}),
        5,
    )
    assert_429(call(coord, "POST", "/agent/v1/enroll", source=ip, body=bad_enrolment(coord)), 5)


def test_fifty_concurrent_failures_get_exactly_five_through(coord: CoordinatorProc) -> None:
    before = refused_enrolments(coord)
    replies = many(
        coord, 50, "POST", "/agent/v1/enroll", source="127.0.0.3", body=bad_enrolment(coord)
    )
    statuses = sorted(r[0] for r in replies)
    assert statuses.count(403) == 5, statuses
    assert statuses.count(429) == 45, statuses
    # Exactly five join-token checks happened (the service counts each refusal).
    assert refused_enrolments(coord) == before + 5

    replies = many(
        coord,
        50,
        "GET",
        "/fleet/v1/machines",
        source="127.0.0.4",
        headers={"Authorization": BAD_TOKEN},
    )
    statuses = sorted(r[0] for r in replies)
    assert statuses.count(401) == 5 and statuses.count(429) == 45, statuses
    assert 'moorage_rate_limited_total{limit="auth"} 90.0' in coord.metrics()


def test_per_token_limit_admin_certificate_and_exemption(coord: CoordinatorProc) -> None:
    tok = token(coord, "busy")
    auth = {"Authorization": f"Bearer {tok}"}
    remaining = []
    for _ in range(8):
        status, headers, _ = call(coord, "GET", "/fleet/v1/machines", headers=auth)
        assert status == 200
        assert headers["X-RateLimit-Limit"] == "8"
        remaining.append(int(headers["X-RateLimit-Remaining"]))
    assert remaining == [7, 6, 5, 4, 3, 2, 1, 0]
    refused = call(coord, "GET", "/api/v2/clusters", headers={"api-key": tok})
    assert_429(refused, 8)
    assert json.loads(refused[2])["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    # Another token has its own budget; the admin certificate has none.
    assert (
        call(
            coord,
            "GET",
            "/fleet/v1/machines",
            headers={"Authorization": f"Bearer {token(coord, 'other')}"},
        )[0]
        == 200
    )
    for _ in range(20):
        status, headers, _ = call(coord, "GET", "/fleet/v1/machines", cert=True)
        assert status == 200 and "X-RateLimit-Limit" not in headers
    # An admin exempts the token; it works again, without limit headers.
    token_id = tok.split(".")[1]
    assert (
        coord.raw(
            "PATCH",
            f"/moorage/v1/api-tokens/{token_id}",
            headers={"Content-Type": "application/json"},
            data=b'{"unlimited": true}',
        )[0]
        == 204
    )
    listed = coord.api("GET", "/moorage/v1/api-tokens")["tokens"]
    assert next(t for t in listed if t["id"] == token_id)["unlimited"] is True
    for _ in range(10):
        status, headers, _ = call(coord, "GET", "/fleet/v1/machines", headers=auth)
        assert status == 200 and "X-RateLimit-Limit" not in headers
    assert (
        coord.raw(
            "PATCH",
            "/moorage/v1/api-tokens/nope",
            headers={"Content-Type": "application/json"},
            data=b'{"unlimited": true}',
        )[0]
        == 404
    )


def test_deploys_per_user(coord: CoordinatorProc) -> None:
    key = {"api-key": token(coord, "deployer")}
    assert (
        call(
            coord,
            "POST",
            "/api/v2/cluster-groups",
            headers=key,
            body={"name": "empty", "selector": {"rack": "none"}},
        )[0]
        == 201
    )
    assert (
        call(
            coord,
            "POST",
            "/api/v2/deployment-applications",
            headers=key,
            body={"name": "idle", "sourceConfig": MANIFEST},
        )[0]
        == 201
    )
    status, _, raw = call(
        coord,
        "POST",
        "/api/v2/deployments",
        headers=key,
        body={"applicationId": "idle", "clusterGroupId": "empty"},
    )
    assert status == 201, raw
    dep = json.loads(raw)["id"]
    # A refused deploy (unknown id) does not use the budget up.
    assert call(coord, "POST", "/api/v2/deployments/nope/deploy", headers=key)[0] == 404
    for left in ("1", "0"):
        status, headers, raw = call(coord, "POST", f"/api/v2/deployments/{dep}/deploy", headers=key)
        assert status == 201, raw
        assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == left
    assert_429(call(coord, "POST", f"/api/v2/deployments/{dep}/deploy", headers=key), 2)
    # The admin certificate deploys regardless.
    assert call(coord, "POST", f"/api/v2/deployments/{dep}/deploy", cert=True)[0] == 201
    # The domain's events are in the audit log, with who caused them.
    events = coord.api("GET", "/moorage/v1/audit?kind=event&event=deployment.")["entries"]
    started = [e for e in events if e["event"] == "deployment.started"]
    completed = [e for e in events if e["event"] == "deployment.completed"]
    assert len(started) == len(completed) == 3
    assert [e["actor"] for e in reversed(started)] == [
        "token:deployer",
        "token:deployer",
        "certificate:admin",
    ]
    assert {e["subject"] for e in events} == {"idle-empty"}


def test_limits_can_be_switched_off(tmp_path: Path) -> None:
    proc = CoordinatorProc(tmp_path / "coordinator")
    proc.config = LIMITED + "enabled = false\n"
    proc.start()
    try:
        for _ in range(10):
            assert (
                call(proc, "GET", "/fleet/v1/machines", headers={"Authorization": BAD_TOKEN})[0]
                == 401
            )
        auth = {"Authorization": f"Bearer {token(proc, 'free')}"}
        for _ in range(12):
            status, headers, _ = call(proc, "GET", "/fleet/v1/machines", headers=auth)
            assert status == 200 and "X-RateLimit-Limit" not in headers
    finally:
        proc.stop()


def test_every_write_is_in_the_audit_log_with_its_principal(coord: CoordinatorProc) -> None:
    tok = token(coord, "auditor")  # write 1: certificate
    bearer = {"Authorization": f"Bearer {tok}"}
    unit = {
        "desiredState": "inactive",
        "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}],
    }
    writes = [
        ("PUT", "/fleet/v1/units/a.service", bearer, unit, False, 201),
        ("PUT", "/fleet/v1/units/b.service", {}, unit, True, 201),
        ("DELETE", "/fleet/v1/units/a.service", bearer, None, False, 204),
        (
            "POST",
            "/api/v2/cluster-groups",
            {"api-key": tok},
            {"name": "g1", "selector": {}},
            False,
            201,
        ),
        ("POST", "/api/v2/cluster-groups", {}, {"name": "g2", "selector": {}}, True, 201),
        ("POST", "/moorage/v1/join-tokens", {}, {"ttl_s": 60}, True, 201),
        ("POST", "/api/v2/cluster-groups", {"Authorization": BAD_TOKEN}, {"name": "x"}, False, 401),
    ]
    for method, path, headers, body, cert, expect in writes:
        status, _, raw = call(coord, method, path, headers=headers, body=body, cert=cert)
        assert status == expect, (method, path, status, raw)
    call(coord, "GET", "/fleet/v1/units", headers=bearer)  # a read: not audited

    page = coord.api("GET", "/moorage/v1/audit?kind=request&limit=1000")
    entries = list(reversed(page["entries"]))
    seen = [
        (e["method"], e["path"], e.get("principal_kind", ""), e.get("principal", ""), e["status"])
        for e in entries
    ]
    assert seen == [
        ("POST", "/moorage/v1/api-tokens", "certificate", "admin", 201),
        ("PUT", "/fleet/v1/units/a.service", "token", "auditor", 201),
        ("PUT", "/fleet/v1/units/b.service", "certificate", "admin", 201),
        ("DELETE", "/fleet/v1/units/a.service", "token", "auditor", 204),
        ("POST", "/api/v2/cluster-groups", "token", "auditor", 201),
        ("POST", "/api/v2/cluster-groups", "certificate", "admin", 201),
        ("POST", "/moorage/v1/join-tokens", "certificate", "admin", 201),
        ("POST", "/api/v2/cluster-groups", "", "", 401),
    ], seen
    put = entries[1]
    assert put["route"] == "/fleet/v1/units/{name}" and put["target"] == {"name": "a.service"}
    assert put["tenant"] == "default" and put["client_ip"] == "127.0.0.1"
    assert page["next_cursor"] is None

    # Filters and paging.
    mine = coord.api("GET", "/moorage/v1/audit?principal=token:auditor&kind=request")["entries"]
    assert {e["principal"] for e in mine} == {"auditor"} and len(mine) == 3
    events = coord.api("GET", "/moorage/v1/audit?principal=token:auditor&kind=event")["entries"]
    assert [(e["event"], e["subject"]) for e in reversed(events)] == [
        ("unit.submitted", "a.service"),
        ("unit.destroyed", "a.service"),
    ]
    first = coord.api("GET", "/moorage/v1/audit?kind=request&limit=3")
    assert len(first["entries"]) == 3 and first["next_cursor"]
    second = coord.api(
        "GET", f"/moorage/v1/audit?kind=request&limit=3&cursor={first['next_cursor']}"
    )
    assert [e["id"] for e in second["entries"]] == [e["id"] for e in entries[::-1][3:6]]
    assert len(coord.api("GET", "/moorage/v1/audit?path=/api/v2/&status=201")["entries"]) == 2
    status, answer = coord.raw("GET", "/moorage/v1/audit?limit=0")
    assert status == 400 and b"limit" in answer
    status, answer = coord.raw("GET", "/moorage/v1/audit?colour=red")
    assert status == 400 and b"colour" in answer
    # Only an admin reads it... and the audit read itself is not a write.
    assert call(coord, "GET", "/moorage/v1/audit", headers=bearer)[0] == 200

    # `moorctl audit` prints them (a table, and JSON).
    out = coord.moorctl("audit", "--kind", "request")
    assert out.returncode == 0, out.stderr
    assert "token:auditor" in out.stdout and "/fleet/v1/units/a.service" in out.stdout
    assert "certificate:admin" in out.stdout and "401" in out.stdout
    as_json = coord.moorctl("--json", "audit", "--principal", "token:auditor", "--kind", "request")
    assert as_json.returncode == 0, as_json.stderr
    assert len(json.loads(as_json.stdout)) == 3

    # Written within a second without anyone reading it, and kept across kill -9.
    status, _, _ = call(coord, "DELETE", "/fleet/v1/units/b.service", cert=True)
    assert status == 204
    time.sleep(1.5)
    coord.kill9()
    coord.start()
    again = coord.api("GET", "/moorage/v1/audit?kind=request&limit=1000")["entries"]
    assert [e["id"] for e in again[-len(entries) :]] == [e["id"] for e in page["entries"]]
    last = again[0]
    assert (last["method"], last["path"], last["principal"]) == (
        "DELETE",
        "/fleet/v1/units/b.service",
        "admin",
    )

    # A clean stop writes what is pending at once.
    status, _, _ = call(coord, "POST", "/moorage/v1/join-tokens", body={"ttl_s": 60}, cert=True)
    assert status == 201
    coord.stop()
    coord.start()
    newest = coord.api("GET", "/moorage/v1/audit?kind=request&limit=1")["entries"][0]
    assert (newest["method"], newest["path"]) == ("POST", "/moorage/v1/join-tokens")


def test_the_sixth_failed_login_is_429_across_kill_9_and_under_50_at_once(
    coord: CoordinatorProc,
) -> None:
    """The issue's own words, on the WebOps login (`POST /api/v1/auth/token/`, declared
    `limit="auth"`): wrong passwords from one address are 401 five times, then 429 with
    Retry-After, still after a `kill -9`; 50 at once from another address get exactly
    five password checks (401) and 45 refusals."""
    wrong = {"username": "admin", "password": "not-the-password"}
    ip = "127.0.0.5"
    for _ in range(5):
        status, _, body = call(coord, "POST", "/api/v1/auth/token/", source=ip, body=wrong)
        assert status == 401, body
    sixth = call(coord, "POST", "/api/v1/auth/token/", source=ip, body=wrong)
    assert_429(sixth, 5)
    assert json.loads(sixth[2])["error"]["code"] == "RATE_LIMIT_EXCEEDED"

    coord.kill9()
    coord.start()
    assert_429(call(coord, "POST", "/api/v1/auth/token/", source=ip, body=wrong), 5)

    replies = many(coord, 50, "POST", "/api/v1/auth/token/", source="127.0.0.6", body=wrong)
    statuses = sorted(r[0] for r in replies)
    assert statuses.count(401) == 5 and statuses.count(429) == 45, statuses
