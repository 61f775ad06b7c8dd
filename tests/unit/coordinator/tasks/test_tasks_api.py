"""The task API in-process: the real application (server middleware, real SQLite) over
plain HTTP, no agents. What needs an agent is in tests/integration/test_tasks.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from tests.harness.databases import coordinator_database_url

Client = TestClient[web.Request, web.Application]


class Api:
    def __init__(self, client: Client, token: str, coordinator: Coordinator) -> None:
        self.client = client
        self.auth = {"Authorization": f"Bearer {token}"}
        self.coordinator = coordinator

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        resp = await self.client.request(
            method, path, data=data, headers={**self.auth, **(headers or {})}
        )
        text = await resp.read()
        value = json.loads(text) if text and resp.content_type == "application/json" else text
        return resp.status, value, resp.headers


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    coordinator = Coordinator(
        CoordinatorConfig(
            state_dir=str(tmp_path / "state"),
            # MOORAGE_TEST_DATABASE=postgresql: the run's PostgreSQL, else <state>/moorage.db
            database_url=coordinator_database_url(tmp_path / "db"),
        )
    )
    token, _ = coordinator.tokens.create_api_token("test")
    client = TestClient(TestServer(coordinator.api_app()))
    await client.start_server()
    try:
        yield Api(client, token, coordinator)
    finally:
        await client.close()
        coordinator.storage.close()


async def create(api: Api, alias: str, **fields: Any) -> dict[str, Any]:
    status, body, _ = await api.call(
        "POST", "/api/v1/task", {"alias": alias, "image": "alpine:3", **fields}
    )
    assert status == 200, body
    return dict(body)


async def test_definitions_crud_by_id_and_alias(api: Api) -> None:
    made = await create(
        api,
        "hello",
        group_name="team",
        command="echo hi\necho there",
        memory=64,
        cpu=100,
        tags=["t1"],
    )
    assert made["definition_id"].startswith("team-") and made["env"] == []
    assert (made["memory"], made["cpu"], made["tags"]) == (64, 100, ["t1"])
    did = made["definition_id"]
    for path in (f"/api/v1/task/{did}", "/api/v6/task/alias/hello"):
        status, body, headers = await api.call("GET", path)
        assert status == 200 and body == made
        assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, body, _ = await api.call(
        "PUT", f"/api/v1/task/{did}", {"image": "busybox", "memory": 0}
    )
    assert status == 200 and body["image"] == "busybox" and body["memory"] == 64
    assert body["command"] == "echo hi\necho there"
    status, body, _ = await api.call("DELETE", f"/api/v1/task/{did}")
    assert (status, body) == (200, {"deleted": True})
    status, body, _ = await api.call("GET", f"/api/v1/task/{did}")
    assert (status, body) == (404, {"error": f"Definition with ID {did} not found"})
    status, body, _ = await api.call("GET", "/api/v1/task/alias/hello")
    assert (status, body) == (404, {"error": "Definition with alias hello not found"})


async def test_errors_are_flotillas_flat_body(api: Api) -> None:
    status, body, headers = await api.call("POST", "/api/v1/task", {})
    assert status == 400
    assert body == {"error": "string [image] must be specified\nstring [alias] must be specified"}
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    await create(api, "dup")
    status, body, _ = await api.call("POST", "/api/v1/task", {"alias": "dup", "image": "x"})
    assert (status, body) == (409, {"error": "Definition with alias dup already exists"})
    status, body, _ = await api.call("POST", "/api/v1/task", raw=b'{"alias": ')
    assert status == 400 and body["error"].startswith("request body is not valid JSON")
    status, body, _ = await api.call("GET", "/api/v1/task?limit=lots")
    assert status == 400 and "limit" in body["error"]
    status, body, _ = await api.call("GET", "/api/v1/history?sort_by=nope")
    assert status == 400 and "sort_by" in body["error"]


async def test_bodies_without_a_json_content_type_and_keys_in_any_case(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/task",
        data=b'{"ALIAS": "curl", "Image": "alpine", "Env": [{"Name": "A", "VALUE": "1"}]}',
        headers={**api.auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 200
    body = await resp.json()
    assert (body["alias"], body["image"], body["env"]) == (
        "curl",
        "alpine",
        [{"name": "A", "value": "1"}],
    )
    did = body["definition_id"]
    status, run, _ = await api.call(
        "PUT", f"/api/v6/task/{did}/execute", {"RUN_TAGS": {"OWNER_ID": "me"}}
    )
    assert status == 200 and run["run_tags"] == {"owner_id": "me"}


async def test_list_echoes_its_filters_as_arrays(api: Api) -> None:
    await create(api, "hello", group_name="a")
    await create(api, "help", group_name="b", tags=["x"])
    await create(api, "other", group_name="c")
    status, body, _ = await api.call(
        "GET", "/api/v1/task?alias=hel&limit=1&sort_by=alias&order=desc"
    )
    assert status == 200
    assert body["total"] == 2 and [d["alias"] for d in body["definitions"]] == ["help"]
    assert (body["limit"], body["offset"], body["sort_by"], body["order"]) == (
        1,
        0,
        "alias",
        "desc",
    )
    assert body["alias"] == ["hel"] and body["env_filters"] == {}
    status, body, _ = await api.call("GET", "/api/v1/task")
    assert (body["limit"], body["sort_by"], body["order"]) == (1024, "group_name", "asc")
    status, body, _ = await api.call("GET", "/api/v1/groups")
    assert body == {"total": 3, "groups": ["a", "b", "c"]}
    status, body, _ = await api.call("GET", "/api/v1/tags")
    assert body == {"total": 1, "tags": ["x"]}
    status, body, _ = await api.call("GET", "/api/v1/clusters")
    assert body == {"clusters": ["default"]}


async def test_execute_queues_a_run_and_stop_makes_a_queued_run_stopped(api: Api) -> None:
    made = await create(api, "job", memory=32, env=[{"name": "A", "value": "1"}])
    did = made["definition_id"]
    status, body, _ = await api.call("PUT", f"/api/v4/task/{did}/execute", {})
    assert (status, body) == (400, {"error": "run_tags must exist in body and contain [owner_id]"})
    status, run, _ = await api.call(
        "PUT",
        f"/api/v1/task/{did}/execute",
        {"env": [{"name": "B", "value": "2"}], "command": "echo override"},
    )
    assert status == 200, run
    assert run["status"] == "QUEUED" and run["cluster"] == "default"
    assert run["instance"] == {"instance_id": "", "dns_name": ""} and run["pod_events"] == []
    assert run["description"] == "job" and run["command"] == "echo override"
    names = {e["name"]: e["value"] for e in run["env"]}
    assert names == {"A": "1", "B": "2", "FLOTILLA_RUN_ID": run["run_id"]}
    assert run["queued_at"].endswith("Z") and "." in run["queued_at"]
    rid = run["run_id"]
    status, body, headers = await api.call("GET", f"/api/v6/{rid}/status")
    assert status == 200 and body["status"] == "QUEUED" and headers["ETag"] == '"QUEUED-unknown"'
    status, _, _ = await api.call(
        "GET", f"/api/v6/{rid}/status", headers={"If-None-Match": '"QUEUED-unknown"'}
    )
    assert status == 304
    for _ in range(2):  # always terminated, also once it is stopped
        status, body, _ = await api.call("DELETE", f"/api/v1/task/{did}/history/{rid}")
        assert (status, body) == (200, {"terminated": True})
    for path in (
        f"/api/v1/task/{did}/history/{rid}",
        f"/api/v1/task/history/{rid}",
        f"/api/v1/history/{rid}",
    ):
        status, body, _ = await api.call("GET", path)
        assert status == 200 and body["status"] == "STOPPED" and body["finished_at"], path
    status, body, _ = await api.call("GET", f"/api/v1/{rid}/logs")
    assert status == 200 and body["log"] == "" and body["last_seen"] != ""
    status, again, _ = await api.call("GET", f"/api/v1/{rid}/logs?last_seen={body['last_seen']}")
    assert again == body
    status, body, _ = await api.call("GET", f"/api/v1/{rid}/events")
    assert [e["reason"] for e in body["pod_events"]] == ["Queued", "Stopped"]
    status, body, _ = await api.call("GET", "/api/v1/history/00000000-0000-4000-8000-000000000000")
    assert (status, body) == (
        404,
        {"error": "Run with id 00000000-0000-4000-8000-000000000000 not found"},
    )
    status, body, _ = await api.call("PUT", f"/api/v1/task/{did}/execute", {"cluster": "nope"})
    assert (status, body) == (400, {"error": "cluster [nope] does not exist"})


async def test_history_filters_sorts_and_echoes(api: Api) -> None:
    did = (await create(api, "h"))["definition_id"]
    other = (await create(api, "o"))["definition_id"]
    runs = []
    for i in range(3):
        status, run, _ = await api.call(
            "PUT", f"/api/v1/task/{did}/execute", {"env": [{"name": "N", "value": str(i)}]}
        )
        runs.append(run["run_id"])
    await api.call("PUT", f"/api/v1/task/{other}/execute", {})
    await api.call("DELETE", f"/api/v1/task/{did}/history/{runs[0]}")
    status, body, _ = await api.call(
        "GET", f"/api/v1/task/{did}/history?status=QUEUED&status=PENDING"
    )
    assert status == 200 and body["total"] == 2
    assert body["definition_id"] == [did] and body["status"] == ["QUEUED", "PENDING"]
    assert (body["sort_by"], body["order"], body["env_filters"]) == ("started_at", "desc", {})
    status, body, _ = await api.call("GET", "/api/v1/history?env=N|2")
    assert [r["run_id"] for r in body["history"]] == [runs[2]] and body["env"] == ["N|2"]
    status, body, _ = await api.call("GET", "/api/v1/history?sort_by=run_id&order=asc&limit=2")
    assert body["total"] == 4 and len(body["history"]) == 2
    ids = [r["run_id"] for r in body["history"]]
    assert ids == sorted(ids)
    status, body, _ = await api.call("GET", "/api/v1/history?status=bogus")
    assert status == 400


async def test_task_paths_leave_other_families_under_api_v1_alone(api: Api) -> None:
    # Paths another family owns under /api/v1 (issue #17's auth and users) match no
    # task route: run ids are uuid4s, and no task route starts with those words.
    for path in (
        "/api/v1/users/logs",
        "/api/v1/users/00000000-0000-4000-8000-000000000000",
        "/api/v1/auth/login",
        "/api/v1/auth/00000000-0000-4000-8000-000000000000/logs",
    ):
        for method in ("GET", "POST", "PUT", "DELETE"):
            resolved = await api.client.app.router.resolve(
                make_mocked_request(method, path, app=api.client.app)
            )
            assert resolved.http_exception is not None, (method, path)
    ours = await api.client.app.router.resolve(
        make_mocked_request("GET", "/api/v1/00000000-0000-4000-8000-000000000000/logs")
    )
    assert ours.http_exception is None
    status, body, _ = await api.call("GET", "/api/v1/health")
    assert (status, body) == (200, {"healthy": True})
    status, body, _ = await api.call("GET", "/api/v1/not-a-run/logs")
    assert status == 404 and body == {"error": "Not Found"}
