"""Contract tests of /fleet/v1 and /v1-alpha against a real coordinator process,
for every endpoint and status code in spec/fleet-v1-notes.md."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from proto.units import parse_unit_file, serialize, unit_hash
from tests.integration.linkclient import RawLink, enrolled_identity
from tests.procs import CoordinatorProc

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
SLEEP = [{"section": "Service", "name": "ExecStart", "value": "/usr/bin/sleep 3000"}]


def put(
    c: CoordinatorProc, name: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, raw = c.raw(
        "PUT", f"/fleet/v1/units/{name}?alt=json", headers=headers or JSON, data=data
    )
    return status, json.loads(raw) if raw else None


def get(c: CoordinatorProc, path: str) -> tuple[int, Any]:
    status, raw = c.raw("GET", path)
    return status, json.loads(raw) if raw else None


def err(body: Any) -> str:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["message"])


def test_discovery(coordinator: CoordinatorProc) -> None:
    status, doc = get(coordinator, "/fleet/v1/discovery?alt=json")
    assert status == 200 and doc["id"] == "fleet:v1"
    assert set(doc["resources"]) == {"Machines", "Units", "UnitState"}
    assert coordinator.raw("POST", "/fleet/v1/discovery")[0] == 400
    assert get(coordinator, "/v1-alpha/discovery")[1]["id"] == "fleet:v1-alpha"


def test_put_state_machine(coordinator: CoordinatorProc) -> None:
    c = coordinator
    # 415 on anything but JSON
    status, body = put(
        c, "a.service", {"name": "a.service", "options": SLEEP}, {"Content-Type": "text/plain"}
    )
    assert status == 415 and body["error"]["code"] == 415
    # 400: bad JSON, name mismatch, invalid name, invalid desiredState
    assert put(c, "a.service", b"{not json")[0] == 400
    status, body = put(c, "a.service", {"name": "b.service", "options": SLEEP})
    assert status == 400 and "differs" in err(body)
    for bad in ("a", "a.nope", "@a.service", "a%20b.service", "x" * 257 + ".service"):
        assert put(c, bad, {"options": SLEEP})[0] == 400, bad
    assert put(c, "a.service", {"options": SLEEP, "desiredState": "running"})[0] == 400
    # 409: a new unit without options
    status, body = put(c, "a.service", {"name": "a.service"})
    assert status == 409 and err(body) == "unit does not exist and options field empty"
    # 400: invalid or forbidden [X-Fleet]
    xbad = [
        *SLEEP,
        {"section": "X-Fleet", "name": "MachineID", "value": "m1"},
        {"section": "X-Fleet", "name": "Global", "value": "true"},
    ]
    status, body = put(c, "a.service", {"options": xbad})
    assert status == 400 and "MachineID" in err(body) and "Global" in err(body)
    # 201 create, desiredState defaults to inactive
    assert put(c, "a.service", {"name": "a.service", "options": SLEEP})[0] == 201
    status, unit = get(c, "/fleet/v1/units/a.service")
    assert status == 200
    assert unit == {
        "name": "a.service",
        "options": SLEEP,
        "desiredState": "inactive",
        "currentState": "inactive",
        "machineID": "",
    }
    # 409: existing unit, no desiredState (and no new options)
    status, body = put(c, "a.service", {"name": "a.service"})
    assert status == 409 and "DesiredState" in err(body)
    assert put(c, "a.service", {"name": "a.service", "options": SLEEP})[0] == 409
    # 204: state change (same options or none)
    assert put(c, "a.service", {"desiredState": "loaded"})[0] == 204
    assert put(c, "a.service", {"options": SLEEP, "desiredState": "launched"})[0] == 204
    assert get(c, "/fleet/v1/units/a.service")[1]["desiredState"] == "launched"
    # 201: different options replace the unit and keep its desired state
    other = [{"section": "Service", "name": "ExecStart", "value": "/usr/bin/sleep 1"}]
    assert put(c, "a.service", {"options": other})[0] == 201
    replaced = get(c, "/fleet/v1/units/a.service")[1]
    assert replaced["options"] == other and replaced["desiredState"] == "launched"


def test_templates(coordinator: CoordinatorProc) -> None:
    c = coordinator
    assert put(c, "web@.service", {"options": SLEEP, "desiredState": "launched"})[0] == 400
    assert put(c, "web@.service", {"options": SLEEP})[0] == 201
    status, body = put(c, "web@.service", {"desiredState": "launched"})
    assert status == 400 and "template" in err(body)
    assert put(c, "web@.service", {"desiredState": "inactive"})[0] == 204
    # an instance, addressed URL-encoded as fleetctl sends it
    assert (
        put(
            c,
            "web%401.service",
            {"name": "web@1.service", "options": SLEEP, "desiredState": "launched"},
        )[0]
        == 201
    )
    status, unit = get(c, "/fleet/v1/units/web%401.service")
    assert status == 200 and unit["name"] == "web@1.service"
    assert put(c, "web@.mount", {"options": SLEEP})[0] == 400


def test_get_delete_and_404s(coordinator: CoordinatorProc) -> None:
    c = coordinator
    status, body = get(c, "/fleet/v1/units/missing.service")
    assert status == 404 and err(body) == "unit does not exist"
    assert c.raw("DELETE", "/fleet/v1/units/missing.service")[0] == 404
    assert put(c, "d.service", {"options": SLEEP})[0] == 201
    assert c.raw("DELETE", "/fleet/v1/units/d.service")[0] == 204
    assert get(c, "/fleet/v1/units/d.service")[0] == 404
    assert c.raw("POST", "/fleet/v1/units")[0] == 405
    assert c.raw("PUT", "/fleet/v1/machines", headers=JSON, data=b"[]")[0] == 405
    assert c.raw("GET", "/fleet/v1/nothing-here")[0] == 404


def test_paging_across_250_units(coordinator: CoordinatorProc) -> None:
    c = coordinator
    names = [f"u{i:03d}.service" for i in range(250)]
    for name in reversed(names):
        assert put(c, name, {"options": SLEEP})[0] == 201
    seen: list[str] = []
    path = "/fleet/v1/units?alt=json"
    pages = 0
    while True:
        status, body = get(c, path)
        assert status == 200
        seen += [u["name"] for u in body["units"]]
        pages += 1
        token = body.get("nextPageToken")
        if not token:
            break
        path = f"/fleet/v1/units?alt=json&nextPageToken={token}"
    assert seen == names and pages == 3
    assert get(c, "/fleet/v1/units?nextPageToken=garbage!")[0] == 400
    zero = base64.urlsafe_b64encode(b"\x64\x00\x00\x00").decode()
    assert get(c, f"/fleet/v1/units?nextPageToken={zero}")[0] == 400
    two = "/fleet/v1/units?nextPageToken=ZAACAA==&nextPageToken=ZAACAA=="
    assert get(c, two)[0] == 400
    assert len(get(c, "/fleet/v1/units?nextPageToken=ZAACAA==")[1]["units"]) == 100
    small = base64.urlsafe_b64encode(b"\x0a\x00\x03\x00").decode()  # limit 10, page 3
    assert [
        u["name"] for u in get(c, f"/fleet/v1/units?nextPageToken={small}")[1]["units"]
    ] == names[20:30]


def test_machines_patch_metadata(coordinator: CoordinatorProc, tmp_path: Path) -> None:
    c = coordinator

    async def connect() -> RawLink:
        identity = await enrolled_identity(c, tmp_path, "box1")
        link = await RawLink.open(c, identity)
        await link.hello("box1")
        return link

    import asyncio

    async def scenario() -> None:
        link = await connect()
        try:
            ops = [
                {"op": "add", "path": "/box1/metadata/role", "value": "web"},
                {"op": "add", "path": "/box1/metadata/zone", "value": {"value": "a"}},
            ]
            assert (
                c.raw("PATCH", "/fleet/v1/machines", headers=JSON, data=json.dumps(ops).encode())[0]
                == 204
            )
            listed = get(c, "/fleet/v1/machines")[1]["machines"]
            assert listed == [
                {"id": "box1", "primaryIP": "", "metadata": {"role": "web", "zone": "a"}}
            ]
            ops = [
                {"op": "replace", "path": "/box1/metadata/role", "value": "db"},
                {"op": "remove", "path": "/box1/metadata/zone"},
            ]
            assert (
                c.raw("PATCH", "/fleet/v1/machines", headers=JSON, data=json.dumps(ops).encode())[0]
                == 204
            )
            assert get(c, "/fleet/v1/machines")[1]["machines"][0]["metadata"] == {"role": "db"}
            for bad in (
                [{"op": "move", "path": "/box1/metadata/a", "value": "x"}],
                [{"op": "add", "path": "/box1/meta/a", "value": "x"}],
                [{"op": "add", "path": "/box1/metadata/bad key", "value": "x"}],
                [{"op": "add", "path": "/box1/metadata/a"}],
                [{"op": "add", "path": "/nobody/metadata/a", "value": "x"}],
                {"not": "a list"},
            ):
                status, raw = c.raw(
                    "PATCH", "/fleet/v1/machines", headers=JSON, data=json.dumps(bad).encode()
                )
                assert status == 400, bad
                assert json.loads(raw)["error"]["message"]
        finally:
            await link.close()

    asyncio.run(scenario())


def test_state_endpoints(coordinator: CoordinatorProc) -> None:
    c = coordinator
    assert put(c, "s.service", {"options": SLEEP})[0] == 201
    status, body = get(c, "/fleet/v1/state/s.service")
    assert status == 200 and body == {"name": "s.service"}
    assert get(c, "/fleet/v1/state/nope.service")[0] == 404
    status, body = get(c, "/fleet/v1/state?unitName=s.service&machineID=x")
    assert status == 200 and body.get("states", []) == []


def test_hash_matches_fleets_example(coordinator: CoordinatorProc) -> None:
    assert (
        unit_hash(parse_unit_file("[Service]\nExecStart=/usr/bin/sleep 3000\n"))
        == "248b997d6becee1b835b7ec7d9c8e68d7dd24623"
    )


def test_v1_alpha(coordinator: CoordinatorProc) -> None:
    c = coordinator
    assert put(c, "alpha.service", {"options": SLEEP, "desiredState": "loaded"})[0] == 201
    status, body = get(c, "/v1-alpha/units")
    assert status == 200
    (unit,) = body["units"]
    assert base64.b64decode(unit["fileContents"]).decode() == serialize(
        parse_unit_file("[Service]\nExecStart=/usr/bin/sleep 3000\n")
    )
    assert unit["fileHash"] == "248b997d6becee1b835b7ec7d9c8e68d7dd24623"
    assert unit["desiredState"] == "loaded" and unit["currentState"] == "inactive"
    assert "nextPageToken" not in body
    assert get(c, "/v1-alpha/machines")[0] == 200
    bad = json.dumps({"units": [{"name": "alpha.service"}, {"name": "ghost.service"}]}).encode()
    status, raw = c.raw("DELETE", "/v1-alpha/units", headers=JSON, data=bad)
    assert status == 400 and b"ghost.service" in raw
    assert get(c, "/fleet/v1/units/alpha.service")[0] == 200  # nothing deleted on a 400
    good = json.dumps({"units": [{"name": "alpha.service"}]}).encode()
    status, raw = c.raw("DELETE", "/v1-alpha/units", headers=JSON, data=good)
    assert status == 204 and raw == b""
    assert get(c, "/fleet/v1/units/alpha.service")[0] == 404


def test_authentication_on_fleet_routes(coordinator: CoordinatorProc) -> None:
    c = coordinator
    for path in (
        "/fleet/v1/units",
        "/fleet/v1/machines",
        "/fleet/v1/state",
        "/v1-alpha/units",
        "/fleet/v1/discovery",
        "/openapi.json",
    ):
        status, raw = c.raw("GET", path, cert=False)
        assert status == 401, path
        assert json.loads(raw)["error"]["code"] == 401
        bad = {"Authorization": "Bearer mat.0000000000000000.0000"}
        assert c.raw("GET", path, cert=False, headers=bad)[0] == 401


def test_openapi_covers_every_route(coordinator: CoordinatorProc) -> None:
    status, doc = get(coordinator, "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    documented = {(p, meth.upper()) for p, ops in doc["paths"].items() for meth in ops}
    from coordinator.config import CoordinatorConfig
    from coordinator.server import Coordinator

    app = Coordinator(
        CoordinatorConfig(state_dir=str(coordinator.state_dir.parent / "openapi-probe"))
    ).api_app()
    from coordinator.api.routing import DECLARED

    declared = app[DECLARED]
    served = {
        (r.resource.canonical, r.method)
        for r in app.router.routes()
        if r.method not in ("HEAD", "*")
        and r.resource is not None
        # the dashboard's pages (/ui/) are declared undocumented: they are not an API
        and declared[r.resource][r.method].documented
    }
    assert served - documented == set()
    pages = [r for r in app.router.routes() if r.resource and r.resource.canonical[:3] == "/ui"]
    assert pages, "the dashboard's routes are served (and left out of the document)"
    assert doc["paths"]["/fleet/v1/units/{name}"]["put"]["requestBody"]


def test_unplaceable_unit_is_placed_when_a_fitting_machine_appears(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    import asyncio

    from proto import messages as m

    c = coordinator
    opts = [*SLEEP, {"section": "X-Fleet", "name": "MachineID", "value": "late"}]
    assert put(c, "waiting.service", {"options": opts, "desiredState": "launched"})[0] == 201
    assert get(c, "/fleet/v1/units/waiting.service")[1]["machineID"] == ""

    async def scenario() -> m.Message:
        identity = await enrolled_identity(c, tmp_path, "late")
        link = await RawLink.open(c, identity)
        try:
            assert isinstance(await link.hello("late", capabilities=("systemd",)), m.Welcome)
            return await link.recv(skip=())
        finally:
            await link.close()

    desired = asyncio.run(scenario())
    assert isinstance(desired, m.Desired)
    pushed = desired.upserts[-1] if desired.upserts else None
    assert pushed is not None and pushed.name == "waiting.service"
    assert get(c, "/fleet/v1/units/waiting.service")[1]["machineID"] == "late"


def test_machine_that_gains_docker_gets_container_units(
    coordinator: CoordinatorProc, tmp_path: Path
) -> None:
    import asyncio

    from proto import messages as m

    c = coordinator
    opts = [
        {"section": "Container", "name": "Image", "value": "busybox:1"},
        {"section": "Container", "name": "Network", "value": "none"},
    ]
    assert put(c, "box.container", {"options": opts, "desiredState": "launched"})[0] == 201

    async def scenario() -> str:
        identity = await enrolled_identity(c, tmp_path, "late-docker")
        link = await RawLink.open(c, identity)
        try:
            assert isinstance(await link.hello("late-docker", capabilities=("systemd",)), m.Welcome)
            await asyncio.sleep(0.6)  # a scheduling pass runs; nothing fits yet
            assert get(c, "/fleet/v1/units/box.container")[1]["machineID"] == ""
            await link.send(m.Facts(["systemd", "docker"]))
            while True:
                message = await link.recv(skip=(), timeout=5)
                if isinstance(message, m.Desired) and any(
                    u.name == "box.container" for u in message.upserts
                ):
                    return "placed"
        finally:
            await link.close()

    assert asyncio.run(scenario()) == "placed"
    machine = c.api("GET", "/moorage/v1/machines/late-docker")
    assert machine["capabilities"] == ["systemd", "docker"]
