"""Tenants against a real coordinator process (#17): two admin API tokens in tenants A and
B; A creates objects through every API family (fleet v1, v1-alpha, /moorage/v1,
/api/v2, reports) and B gets 404 on each of them and never sees them in a list, while
both may use the same names; each tenant's units go only to the machines enrolled
with its own join tokens; the default tenant (the admin certificate, fleetctl's
routes) is as it was.

The machines are hand-driven agent links (real enrolment, real mutual TLS, real
frames, heartbeats kept) in a thread of their own, so what the hub pushes to each
machine is observed exactly.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from agent.enrol import enrol
from agent.identity import Identity
from proto import messages as m
from proto.units import UnitOption, unit_hash
from tests.integration.linkclient import RawLink
from tests.procs import CoordinatorProc, wait_for

pytestmark = pytest.mark.integration

SLEEP_A = [{"section": "Service", "name": "ExecStart", "value": "/usr/bin/sleep 3000"}]
SLEEP_B = [{"section": "Service", "name": "ExecStart", "value": "/usr/bin/sleep 4000"}]
MANIFEST = """\
units:
  - name: app.service
    contents: |
      [Service]
      ExecStart=/bin/sleep 300
rollout:
  batch_size: 1
  min_healthy_s: 1
  timeout_s: 600
"""


class Tenant:
    """A client acting with one API token, so in that token's tenant."""

    def __init__(self, c: CoordinatorProc, name: str) -> None:
        self.c = c
        self.name = name
        made = c.api("POST", "/moorage/v1/api-tokens", {"name": name, "tenant": name})
        assert made["tenant"] == name
        self.token = str(made["token"])
        self.token_id = str(made["id"])

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "accept": "application/json"}
        data = None
        if body is not None:
            headers["content-type"] = "application/json"
            data = json.dumps(body).encode()
        status, raw = self.c.raw(method, path, headers=headers, data=data, cert=False)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, value = self.call(method, path, body)
        assert status == expect, (self.name, method, path, status, value)
        return value

    def status(self, method: str, path: str, body: Any = None) -> int:
        return self.call(method, path, body)[0]


class Machine:
    """An enrolled machine's agent link, kept alive (heartbeats) in its own thread and
    loop; it records the desired units the hub pushes (name -> hash)."""

    def __init__(self, c: CoordinatorProc, root: Path, machine_id: str, join_token: str) -> None:
        self.c = c
        self.id = machine_id
        self.desired: dict[str, str] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._link: RawLink | None = None
        self._stop: asyncio.Event | None = None
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete,
            args=(self._run(root, join_token, started),),
            daemon=True,
        )
        self._thread.start()
        started.result(timeout=30)

    async def _run(self, root: Path, join_token: str, started: Future[None]) -> None:
        try:
            identity = Identity(root / f"agent-{self.id}")
            await enrol(
                coordinator_url=self.c.endpoint,
                token=join_token,
                machine_id=self.id,
                identity=identity,
            )
            self._link = await RawLink.open(self.c, identity)
            self._stop = asyncio.Event()
            welcome = await self._link.hello(self.id, capabilities=("systemd",))
            assert isinstance(welcome, m.Welcome), welcome
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        beat = asyncio.create_task(self._beat())
        try:
            while not self._stop.is_set():
                try:
                    message = await self._link.recv(timeout=0.5, skip=())
                except TimeoutError:
                    continue
                if isinstance(message, m.Desired):
                    with self._lock:
                        if message.full:
                            self.desired = {}
                        for name in message.removes:
                            self.desired.pop(name, None)
                        for unit in message.upserts:
                            self.desired[unit.name] = unit.hash
                    await self._link.send(m.Applied(message.revision))
        finally:
            beat.cancel()
            await self._link.close()

    async def _beat(self) -> None:
        seq = 0
        assert self._link is not None
        while True:
            seq += 1
            await self._link.send(m.Heartbeat(seq, time.time()))
            await asyncio.sleep(0.5)

    def send(self, message: m.Message) -> None:
        assert self._link is not None
        asyncio.run_coroutine_threadsafe(self._link.send(message), self._loop).result(10)

    def units(self) -> dict[str, str]:
        with self._lock:
            return dict(self.desired)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def hash_of(options: list[dict[str, str]]) -> str:
    return unit_hash([UnitOption(o["section"], o["name"], o["value"]) for o in options])


def names(items: list[dict[str, Any]], key: str = "name") -> list[str]:
    return sorted(str(i[key]) for i in items)


def test_tenant_b_gets_404_for_every_object_of_tenant_a(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    c = coordinator
    a, b = Tenant(c, "tenant-a"), Tenant(c, "tenant-b")
    # A machine enrolled with a tenant's join token belongs to that tenant.
    join_a = a.ok("POST", "/moorage/v1/join-tokens", {}, expect=201)["token"]
    join_b = b.ok("POST", "/moorage/v1/join-tokens", {}, expect=201)["token"]
    ma = Machine(c, tmp_path, "ma", join_a)
    mb = Machine(c, tmp_path, "mb", join_b)
    try:
        _scenario(c, a, b, ma, mb)
    finally:
        ma.close()
        mb.close()


def _scenario(c: CoordinatorProc, a: Tenant, b: Tenant, ma: Machine, mb: Machine) -> None:
    # --- A creates through every family; B uses the same unit name -------------------------
    put = {"options": SLEEP_A, "desiredState": "launched"}
    assert a.status("PUT", "/fleet/v1/units/web.service", put) == 201
    assert b.status("PUT", "/fleet/v1/units/web.service", {**put, "options": SLEEP_B}) == 201
    a.ok("PUT", "/moorage/v1/units/native.service", {"options": SLEEP_A, "machines": ["ma"]})
    a.ok(
        "PUT",
        "/moorage/v1/units",
        {"units": [{"name": "batch.service", "options": SLEEP_A}]},
    )
    group = a.ok("POST", "/api/v2/cluster-groups", {"name": "g", "selector": {}}, expect=201)
    app = a.ok(
        "POST", "/api/v2/deployment-applications", {"name": "app", "sourceConfig": MANIFEST}, 201
    )
    dep = a.ok(
        "POST",
        "/api/v2/deployments",
        {"name": "dep", "applicationId": app["id"], "targetGroup": "default"},
        expect=201,
    )
    release = a.ok("POST", f"/api/v2/deployments/{dep['id']}/deploy", expect=201)
    ma.send(m.DriftReport([m.DriftEntry("web.service", "missing")], checked_at=time.time()))
    ma.send(m.Stickers([m.Sticker("dep", "r1", "1", {})]))

    # --- each tenant's units go to its own machine only, each with its own content -------
    wait_for(
        lambda: (
            ma.units().get("web.service") == hash_of(SLEEP_A)
            and {"native.service", "batch.service", "app.service"} <= set(ma.units())
        ),
        30,
        what="A's units on A's machine",
    )
    wait_for(lambda: mb.units() == {"web.service": hash_of(SLEEP_B)}, 30, what="B's unit on mb")
    assert a.ok("GET", "/fleet/v1/units/web.service")["machineID"] == "ma"
    assert b.ok("GET", "/fleet/v1/units/web.service")["machineID"] == "mb"
    assert b.ok("GET", "/fleet/v1/units/web.service")["options"] == SLEEP_B
    assert not set(mb.units()) & {"native.service", "batch.service", "app.service"}

    # --- B: every object of A is 404 (or the family's own "does not exist") --------------
    for path in (
        "/fleet/v1/units/native.service",
        "/fleet/v1/state/native.service",
        "/v1-alpha/units/native.service",
        "/moorage/v1/units/native.service",
        "/moorage/v1/units/batch.service",
        "/moorage/v1/machines/ma",
        "/api/v2/clusters/ma",
        f"/api/v2/cluster-groups/{group['id']}",
        "/api/v2/cluster-groups/g",
        f"/api/v2/deployment-applications/{app['id']}",
        "/api/v2/deployment-applications/app",
        f"/api/v2/deployments/{dep['id']}",
        "/api/v2/deployments/dep",
        f"/api/v2/deployments/{dep['id']}/releases",
        f"/api/v2/deployment-releases/{release['id']}",
        f"/api/v2/deployment-releases/{release['id']}/jobs",
        "/moorage/v1/drift?machine=ma",
        "/moorage/v1/stickers?machine=ma",
    ):
        assert b.status("GET", path) == 404, path
        assert a.status("GET", path) == 200, path  # A sees its own
    # the journal of B's own unit on A's machine: that machine is not found for B
    assert b.status("GET", "/moorage/v1/units/web.service/journal?machine=ma") == 404
    assert b.status("GET", "/moorage/v1/units/native.service/journal") == 404
    for method, path, body in (
        ("DELETE", "/fleet/v1/units/native.service", None),
        ("DELETE", "/moorage/v1/units/native.service", None),
        ("PUT", "/moorage/v1/units/x.service", {"options": SLEEP_B, "machines": ["ma"]}),
        ("POST", "/moorage/v1/machines/ma/revoke", None),
        ("DELETE", f"/moorage/v1/api-tokens/{a.token_id}", None),
        ("POST", "/moorage/v1/join-tokens", {"machine_id": "ma"}),
        ("PUT", f"/api/v2/cluster-groups/{group['id']}", {"description": "mine now"}),
        ("DELETE", f"/api/v2/cluster-groups/{group['id']}", None),
        ("PUT", f"/api/v2/deployment-applications/{app['id']}", {"description": "x"}),
        ("DELETE", f"/api/v2/deployment-applications/{app['id']}", None),
        ("PUT", f"/api/v2/deployments/{dep['id']}", {"applicationVersion": "1"}),
        ("DELETE", f"/api/v2/deployments/{dep['id']}", None),
        ("POST", f"/api/v2/deployments/{dep['id']}/deploy", None),
    ):
        status, body_out = b.call(method, path, body)
        # /moorage/v1's pin check names the machine as unknown (400), like any unknown id
        expected = 400 if path == "/moorage/v1/units/x.service" else 404
        assert status == expected, (method, path, status, body_out)
    # fleet's own rules for a unit that does not exist: 409 without options, 400 for
    # v1-alpha's destroy, 400 for a metadata patch of an unknown machine
    assert b.status("PUT", "/fleet/v1/units/native.service", {"desiredState": "inactive"}) == 409
    gone = {"units": [{"name": "native.service"}]}
    assert b.status("DELETE", "/v1-alpha/units", gone) == 400
    patch = [{"op": "add", "path": "/ma/metadata/owner", "value": "b"}]
    assert b.status("PATCH", "/fleet/v1/machines", patch) == 400
    # a tenant's admin cannot mint a token in another tenant; the operator can (moorctl)
    assert b.status("POST", "/moorage/v1/api-tokens", {"name": "x", "tenant": "tenant-a"}) == 403
    made = c.moorctl("--json", "api-token", "create", "--name", "c", "--tenant", "tenant-c")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["tenant"] == "tenant-c"
    b.token = json.loads(made.stdout)["token"]  # a third tenant, empty: sees nothing of A
    assert b.ok("GET", "/fleet/v1/units")["units"] == []
    assert b.status("GET", "/fleet/v1/units/native.service") == 404
    b.token = b.ok("POST", "/moorage/v1/api-tokens", {"name": "c"}, 201)["token"]  # in c
    assert b.ok("GET", "/moorage/v1/api-tokens")["tokens"][0]["tenant"] == "tenant-c"
    b = Tenant(c, "tenant-b")  # back to B (a new token of B)

    # --- the task API (#19): A's definitions and runs are 404 to B, never in B's lists ---
    job = a.ok("POST", "/api/v6/task", {"alias": "job", "image": "busybox", "command": "true"})
    run = a.ok(
        "PUT", f"/api/v6/task/{job['definition_id']}/execute", {"run_tags": {"owner_id": "a"}}
    )
    task_calls: list[tuple[str, str, Any]] = [
        ("GET", f"/api/v6/task/{job['definition_id']}", None),
        ("GET", "/api/v6/task/alias/job", None),
        ("PUT", f"/api/v6/task/{job['definition_id']}", {"image": "alpine"}),
        ("PUT", f"/api/v6/task/{job['definition_id']}/execute", {"run_tags": {"owner_id": "b"}}),
        ("GET", f"/api/v6/history/{run['run_id']}", None),
        ("GET", f"/api/v6/{run['run_id']}/status", None),
        ("GET", f"/api/v6/{run['run_id']}/logs", None),
        ("GET", f"/api/v6/{run['run_id']}/events", None),
        ("DELETE", f"/api/v6/task/{job['definition_id']}/history/{run['run_id']}", None),
        ("DELETE", f"/api/v6/task/{job['definition_id']}", None),
    ]
    for method, path, body in task_calls:
        status, body_out = b.call(method, path, body)
        assert status == 404, (method, path, status, body_out)
    assert b.ok("GET", "/api/v6/task")["total"] == 0
    assert b.ok("GET", "/api/v6/history")["total"] == 0
    assert a.ok("GET", "/api/v6/history")["total"] == 1
    # B's own definition may use the same alias
    b.ok("POST", "/api/v6/task", {"alias": "job", "image": "busybox"})

    # --- B's lists never show A's objects ------------------------------------------------
    assert names(b.ok("GET", "/fleet/v1/units")["units"]) == ["web.service"]
    assert names(b.ok("GET", "/v1-alpha/units")["units"]) == ["web.service"]
    assert names(b.ok("GET", "/moorage/v1/units")["units"]) == ["web.service"]
    assert names(b.ok("GET", "/fleet/v1/machines")["machines"], "id") == ["mb"]
    assert names(b.ok("GET", "/v1-alpha/machines")["machines"], "id") == ["mb"]
    assert names(b.ok("GET", "/moorage/v1/machines?all=1")["machines"], "id") == ["mb"]
    assert {s["machineID"] for s in b.ok("GET", "/fleet/v1/state").get("states", [])} <= {"mb"}
    assert {s["machine_id"] for s in b.ok("GET", "/moorage/v1/unit-states")["states"]} <= {"mb"}
    assert names(b.ok("GET", "/api/v2/clusters")["items"], "id") == ["mb"]
    assert names(b.ok("GET", "/api/v2/cluster-groups")["items"]) == ["default"]
    assert b.ok("GET", "/api/v2/deployment-applications")["items"] == []
    assert b.ok("GET", "/api/v2/deployments")["items"] == []
    assert b.ok("GET", "/moorage/v1/drift")["machines"] == []
    assert b.ok("GET", "/moorage/v1/stickers")["stickers"] == []
    assert names(b.ok("GET", "/moorage/v1/api-tokens")["tokens"]) == ["tenant-b", "tenant-b"]
    # ... while A sees them
    assert names(a.ok("GET", "/fleet/v1/units")["units"]) == [
        "batch.service",
        "native.service",
        "web.service",
    ]
    assert names(a.ok("GET", "/api/v2/cluster-groups")["items"]) == ["default", "g"]
    wait_for(
        lambda: [r["machine_id"] for r in a.ok("GET", "/moorage/v1/drift")["machines"]] == ["ma"],
        15,
        what="A's drift report",
    )
    wait_for(
        lambda: (
            [s["machine_id"] for s in a.ok("GET", "/moorage/v1/stickers")["stickers"]] == ["ma"]
        ),
        15,
        what="A's sticker",
    )
    assert b.ok("GET", "/moorage/v1/drift")["machines"] == []

    # --- names are per tenant: B may create what A has, without learning it exists ------
    b.ok("POST", "/api/v2/cluster-groups", {"name": "g", "selector": {}}, expect=201)
    app_b = b.ok(
        "POST", "/api/v2/deployment-applications", {"name": "app", "sourceConfig": MANIFEST}, 201
    )
    assert app_b["id"] != app["id"]
    dep_b = b.ok(
        "POST",
        "/api/v2/deployments",
        {"name": "dep", "applicationId": "app", "targetGroup": "default"},
        expect=201,
    )
    assert dep_b["id"] != dep["id"]
    # B cannot point a deployment at A's application or group by id either
    assert b.status("POST", "/api/v2/deployments", {"applicationId": app["id"]}) == 400
    # A's objects are untouched by everything B did
    assert a.ok("GET", f"/api/v2/deployments/{dep['id']}")["name"] == "dep"
    assert a.ok("GET", "/fleet/v1/units/native.service")["name"] == "native.service"
    assert a.ok("GET", "/moorage/v1/machines/ma")["revoked"] is False
    assert names(a.ok("GET", "/moorage/v1/api-tokens")["tokens"]) == ["tenant-a"]

    # --- the default tenant (admin certificate, fleetctl's routes) sees none of it ------
    status, raw = c.raw("GET", "/fleet/v1/units")
    assert status == 200 and json.loads(raw) == {"units": []}
    status, raw = c.raw("GET", "/fleet/v1/machines")
    assert status == 200 and json.loads(raw) == {"machines": []}
    status, raw = c.raw("GET", "/fleet/v1/units/web.service")
    assert status == 404
    fleet_body = json.dumps(put).encode()
    headers = {"Content-Type": "application/json"}
    assert c.raw("PUT", "/fleet/v1/units/web.service", headers=headers, data=fleet_body)[0] == 201
    assert c.raw("PUT", "/fleet/v1/units/web.service", headers=headers, data=fleet_body)[0] == 204
    status, raw = c.raw("GET", "/fleet/v1/units/web.service")
    assert status == 200 and json.loads(raw)["machineID"] == ""  # no machine of its own
    assert c.raw("DELETE", "/fleet/v1/units/web.service")[0] == 204
    assert a.ok("GET", "/fleet/v1/units/web.service")["machineID"] == "ma"
    assert ma.units().get("web.service") == hash_of(SLEEP_A)
