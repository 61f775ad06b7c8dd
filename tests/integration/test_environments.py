"""Environments end to end: a real coordinator, three real agents each on its own real
systemd manager (one machine per environment), users made through the users API.

dev -> staging -> production: one release promoted through three environments by the
rollout engine; production needs two approvals with separation of duties. A freeze
window refuses a promotion and lets its exception through, both in the audit log.
Editing a unit file on a target shows in GET /targets/{id}/drift within 5 s, and GET
/targets/{id}/sticker matches the agent's sticker file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleetrig import Fleet, fleet_of
from tests.procs import CoordinatorProc, wait_for

pytestmark = pytest.mark.integration

MACHINES = ("m1", "m2", "m3")
ENVS = (("dev", "m1"), ("staging", "m2"), ("production", "m3"))
DETECT_S = 5.0
PASSWORD = "correct horse battery 9"

MANIFEST = """\
units:
  - name: web.service
    contents: |
      [Unit]
      Description=environments test
      [Service]
      ExecStart=/bin/sleep 3600
rollout:
  batch_size: 1
  min_healthy_s: 1
  timeout_s: 60
"""


def call(
    coord: CoordinatorProc, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    data = None if body is None else json.dumps(body).encode()
    status, raw = coord.raw(method, path, headers=headers, data=data, cert=False)
    return status, json.loads(raw) if raw else None


class Env:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.coord = fleet.coordinator
        self.ids: dict[str, int] = {}
        # The first user is made with the admin certificate; the rest through the API.
        made = self.coord.api(
            "POST",
            "/api/v1/users/",
            {"username": "ops", "password": PASSWORD, "permissions": ["admin"]},
        )
        assert made["success"] is True, made
        self.admin = self.login("ops", PASSWORD)

    def login(self, username: str, password: str) -> str:
        status, body = self.coord.raw(
            "POST",
            "/api/v1/auth/token/",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"username": username, "password": password}).encode(),
            cert=False,
        )
        assert status == 201, body
        return str(json.loads(body)["data"]["token"])

    def user(self, name: str, permissions: list[str]) -> str:
        status, body = call(
            self.coord,
            "POST",
            "/api/v1/users/",
            self.admin,
            {"username": name, "password": PASSWORD, "permissions": permissions},
        )
        assert status == 201, body
        self.ids[name] = body["data"]["id"]
        return self.login(name, PASSWORD)

    def api(
        self, method: str, path: str, body: Any = None, *, expect: int = 200, token: str = ""
    ) -> Any:
        status, value = call(self.coord, method, path, token or self.admin, body)
        assert status == expect, (method, path, status, value)
        return value

    def promoted(self, promotion_id: str, timeout: float = 90) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            p = self.api("GET", f"/api/v1/promotions/{promotion_id}")
            assert p["status"] != "failed", p
            return p if p["status"] == "completed" else None

        return dict(
            wait_for(done, timeout, interval=0.3, what=f"promotion {promotion_id} completed")
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    for fleet in fleet_of(tmp_path, MACHINES):
        yield Env(fleet)


def test_promotion_chain_freeze_drift_and_stickers(env: Env) -> None:
    coord = env.coord
    app = coord.api(
        "POST",
        "/api/v2/deployment-applications",
        {"name": "shop", "version": "1", "sourceConfig": MANIFEST, "sourceType": "git"},
    )
    envs: dict[str, dict[str, Any]] = {}
    targets: dict[str, dict[str, Any]] = {}
    for i, (name, machine) in enumerate(ENVS):
        body: dict[str, Any] = {
            "name": name,
            "orderIndex": i + 1,
            "config": {"deploymentTimeout": 60},
        }
        if name == "production":
            body |= {"requiredApprovals": 2, "requireSod": True}
        envs[name] = env.api("POST", "/api/v1/environments", body, expect=201)
        targets[name] = env.api(
            "POST",
            "/api/v1/targets",
            {
                "environmentId": envs[name]["id"],
                "name": f"{name}-01",
                "targetType": "compose_host",
                "connection": {"host": "10.0.0.1"},
                "machineId": machine,
            },
            expect=201,
        )
        assert targets[name]["machineId"] == machine
    alice = env.user("alice", ["deployments", "environments", "approvals"])
    bob = env.user("bob", ["approvals"])
    carol = env.user("carol", ["approvals"])
    erin = env.user("erin", ["deployments", "environments"])

    # dev: the application version is cut into a release and rolled out at once.
    dev = env.api(
        "POST",
        f"/api/v1/environments/{envs['dev']['id']}/promotions",
        {"applicationId": app["id"], "version": "1"},
        expect=201,
        token=alice,
    )
    dev = env.promoted(dev["id"])
    # staging: the release from dev (its units unchanged).
    staging = env.api(
        "POST",
        f"/api/v1/environments/{envs['staging']['id']}/promotions",
        {"releaseId": dev["releaseId"]},
        expect=201,
        token=alice,
    )
    staging = env.promoted(staging["id"])
    assert env.fleet.active_on("web.service") == {"m1", "m2"}

    # production: two approvals, separation of duties.
    prod = env.api(
        "POST",
        f"/api/v1/environments/{envs['production']['id']}/promotions",
        {"releaseId": staging["releaseId"]},
        expect=201,
        token=alice,
    )
    assert prod["status"] == "pending_approval"
    own = env.api("POST", f"/api/v1/promotions/{prod['id']}/approve", expect=403, token=alice)
    assert own["error"]["code"] == "PERMISSION_DENIED"
    assert "separation of duties" in own["error"]["message"]
    assert env.api("POST", f"/api/v1/promotions/{prod['id']}/approve", token=bob)["status"] == (
        "pending_approval"
    )
    assert env.fleet.active_on("web.service") == {"m1", "m2"}
    assert env.api("POST", f"/api/v1/promotions/{prod['id']}/approve", token=carol)["status"] == (
        "deploying"
    )
    prod = env.promoted(prod["id"])
    assert env.fleet.active_on("web.service") == {"m1", "m2", "m3"}
    state = env.api("GET", f"/api/v1/environments/{envs['production']['id']}?includeState=true")
    assert state["currentRelease"]["id"] == prod["releaseId"]
    assert state["currentRelease"]["name"] == "shop-v1"
    assert [a["name"] for a in prod["approvals"]] == ["bob", "carol"]
    # moorctl shows the same (admin certificate).
    listed = {e["name"]: e for e in env.fleet.json("env", "list", "--state")}
    assert listed["production"]["currentRelease"]["id"] == prod["releaseId"]
    table = env.fleet.moorctl("env", "list", "--state").stdout
    assert "production" in table and "shop-v1" in table
    shown = env.fleet.json("env", "promotions", "production")
    assert [p["status"] for p in shown] == ["completed"]

    # Health check: the agent answers now.
    health = env.api("POST", f"/api/v1/targets/{targets['production']['id']}/health-check")
    assert health["status"] == "healthy", health
    assert "systemd running" in health["message"] and "1 unit(s)" in health["message"]

    # The sticker is the agent's sticker file.
    deployment = "shop-production"
    sticker_file = env.fleet.tmp / "agent-m3" / "stickers" / f"{deployment}.json"
    on_disk = wait_for(
        lambda: json.loads(sticker_file.read_text()) if sticker_file.exists() else None,
        30,
        what="sticker file on m3",
    )

    def sticker_matches() -> dict[str, Any] | None:
        s = env.api("GET", f"/api/v1/targets/{targets['production']['id']}/sticker")
        return s if s["releaseId"] == on_disk["release"] else None

    sticker = wait_for(sticker_matches, 30, what="sticker reported")
    assert sticker["releaseId"] == prod["releaseId"] == on_disk["release"]
    assert {c["componentName"]: c["digest"] for c in sticker["components"]} == {
        name: f"sha256:{u['sha256']}" for name, u in on_disk["units"].items()
    }
    assert sticker["deployedBy"] == "alice"

    # Drift: edit the unit file on production's machine; the API shows it within 5 s.
    drift = env.api("GET", f"/api/v1/targets/{targets['production']['id']}/drift")
    assert drift["hasDrift"] is False and drift["expected"]["releaseId"] == prod["releaseId"]
    unit_file = env.fleet.systemds["m3"].unit_dir / "web.service"
    unit_file.write_text(unit_file.read_text() + "# edited by hand\n")
    started = time.monotonic()

    def drifted() -> dict[str, Any] | None:
        d = env.api("GET", f"/api/v1/targets/{targets['production']['id']}/drift")
        return d if d["hasDrift"] else None

    drift = wait_for(drifted, DETECT_S, interval=0.1, what="drift through the API")
    assert time.monotonic() - started <= DETECT_S
    assert [d["component"] for d in drift["differences"]] == ["web.service"]
    assert drift["actual"]["digest"] != drift["expected"]["digest"]

    # A freeze window refuses alice; erin, listed in its exceptions, gets through.
    now = time.time()
    window = env.api(
        "POST",
        f"/api/v1/environments/{envs['dev']['id']}/freeze-windows",
        {
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)),
            "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
            "reason": "Holiday freeze",
            "exceptions": [str(env.ids["erin"])],
        },
        expect=201,
    )
    refused = env.api(
        "POST",
        f"/api/v1/environments/{envs['dev']['id']}/promotions",
        {"applicationId": app["id"]},
        expect=409,
        token=alice,
    )
    assert "Holiday freeze" in refused["error"]["message"]
    through = env.api(
        "POST",
        f"/api/v1/environments/{envs['dev']['id']}/promotions",
        {"applicationId": app["id"]},
        expect=201,
        token=erin,
    )
    assert through["freezeException"] == window["id"]

    promotions_path = f"/api/v1/environments/{envs['dev']['id']}/promotions"

    def audited() -> tuple[list[Any], list[Any]] | None:
        events = coord.api("GET", "/moorage/v1/audit?event=freeze.")["entries"]
        requests = coord.api("GET", f"/moorage/v1/audit?kind=request&path={promotions_path}")[
            "entries"
        ]
        kinds = {e["event"] for e in events}
        if {"freeze.refused", "freeze.exception_used", "freeze.started"} <= kinds and len(
            requests
        ) >= 2:
            return events, requests
        return None

    events, requests = wait_for(audited, 15, what="freeze refusal and exception audited")
    refusal = next(e for e in events if e["event"] == "freeze.refused")
    exception = next(e for e in events if e["event"] == "freeze.exception_used")
    assert refusal["actor"] == "user:alice" and refusal["data"]["window"] == window["id"]
    assert exception["actor"] == "user:erin" and exception["data"]["window"] == window["id"]
    assert {(r["principal"], r["status"]) for r in requests[:2]} == {("alice", 409), ("erin", 201)}
