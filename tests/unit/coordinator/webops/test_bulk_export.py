"""WebOps bulk actions and exports (#21) through the real API application (real SQLite,
the server's middleware); deployments are put in the store directly (no builds: what
is under test is the per-item outcome and the streaming)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from coordinator.webops import export
from coordinator.webops.records import WebDeployment

Client = TestClient[web.Request, web.Application]


def test_csv_cells_never_start_a_formula() -> None:
    assert export.csv_cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    for lead in ("+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert export.csv_cell(lead).startswith("'")
    assert export.csv_cell("site") == "site" and export.csv_cell(8001) == "8001"
    dep = WebDeployment(id=1, tenant="t", name="a", repo_url='=cmd|"/c calc"!A1, "q"')
    rows = list(csv.reader(io.StringIO((export.csv_header() + export.csv_page([dep])).decode())))
    assert rows[0][:3] == ["id", "name", "status"]
    assert rows[1][4] == '\'=cmd|"/c calc"!A1, "q"'  # quoted, comma and quotes kept
    assert export.json_page([], True) == b""


@pytest.fixture
async def served(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[Client, dict[str, str], Coordinator]]:
    coordinator = Coordinator(
        CoordinatorConfig(state_dir=str(tmp_path / "state"), database_url=database_url)
    )
    token, _ = coordinator.tokens.create_api_token("test", unlimited=True)
    client = TestClient(TestServer(coordinator.api_app()))
    await client.start_server()
    try:
        yield client, {"Authorization": f"Bearer {token}"}, coordinator
    finally:
        await client.close()
        coordinator.storage.close()


def put(coordinator: Coordinator, name: str, **kw: object) -> WebDeployment:
    now = time.time()
    dep = WebDeployment(
        tenant="default",
        name=name,
        repo_url=f"file:///srv/{name}",
        machine_id="m1",
        port=8001,
        created_at=now,
        updated_at=now,
        **kw,  # type: ignore[arg-type]
    )
    return coordinator.storage.webops_create(dep)


async def test_bulk_reports_each_result(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    a = put(coordinator, "a", status="running")
    b = put(coordinator, "b", status="running")
    c = put(coordinator, "c", status="failed")
    resp = await client.post(
        "/api/v1/deployments/bulk/",
        headers=auth,
        json={"action": "stop", "deployment_ids": [a.id, b.id, 999]},
    )
    assert resp.status == 200, await resp.text()
    out = await resp.json()
    assert out["message"] == "2 of 3 succeeded"
    results = out["data"]["results"]
    assert [(r["id"], r["success"], r["status"]) for r in results] == [
        (a.id, True, "stopped"),
        (b.id, True, "stopped"),
        (999, False, ""),
    ]
    assert results[2]["code"] == 404 and "999" in results[2]["error"]
    assert coordinator.storage.webops_get_id(a.id, "default").status == "stopped"  # type: ignore[union-attr]

    # A restart of deployments with no built unit: each refused on its own (409).
    resp = await client.post(
        "/api/v1/deployments/bulk/",
        headers=auth,
        json={"action": "restart", "deployment_ids": [a.id, b.id, c.id], "async": True},
    )
    assert resp.status == 202
    job = (await resp.json())["data"]
    assert job["total"] == 3

    async def finished() -> dict[str, object]:
        while True:
            got = await client.get(f"/api/v1/deployments/bulk/{job['job_id']}/", headers=auth)
            data: dict[str, object] = (await got.json())["data"]
            if data["status"] == "completed":
                return data
            await asyncio.sleep(0.05)

    done = await asyncio.wait_for(finished(), 30)
    assert [(r["id"], r["success"], r["code"]) for r in done["results"]] == [  # type: ignore[attr-defined]
        (a.id, False, 409),
        (b.id, False, 409),
        (c.id, False, 409),
    ]

    resp = await client.post(
        "/api/v1/deployments/bulk/",
        headers=auth,
        json={"action": "delete", "deployment_ids": [c.id]},
    )
    assert (await resp.json())["data"]["results"][0]["success"]
    assert coordinator.storage.webops_get_id(c.id, "default") is None

    for body, words in (
        ({"action": "explode", "deployment_ids": [1]}, "action"),
        ({"action": "stop", "deployment_ids": []}, "deployment_ids"),
        ({"action": "stop", "deployment_ids": [a.id, a.id]}, "duplicates"),
    ):
        resp = await client.post("/api/v1/deployments/bulk/", headers=auth, json=body)
        assert resp.status == 400, body
        assert words in (await resp.json())["error"]["message"]
    resp = await client.get("/api/v1/deployments/bulk/nope/", headers=auth)
    assert resp.status == 404


async def test_export_of_1000_deployments_streams_in_pages(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    with coordinator.storage.batch():
        for i in range(1000):
            put(coordinator, f"app-{i:04d}", domain=f"app{i}.example", status="running")
    put(coordinator, "evil", branch="=1+1")

    # JSON: one array of every deployment, without env vars.
    resp = await client.get("/api/v1/deployments/export/?format=json", headers=auth)
    assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
    items = json.loads(await resp.read())
    assert len(items) == 1001 and items[0]["name"] == "app-0000"
    assert "env_vars" not in items[0] and "env" not in items[0]

    # CSV: streamed while the store is read a page at a time; memory stays flat.
    tracemalloc.start()
    try:
        resp = await client.get("/api/v1/deployments/export/?format=csv", headers=auth)
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
        assert "Content-Length" not in resp.headers
        chunks = 0
        size = 0
        head = b""
        tail = b""
        async for chunk in resp.content.iter_chunked(4096):
            chunks += 1
            size += len(chunk)
            head = head or chunk
            tail = (tail + chunk)[-2048:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert chunks > 10
    text = head.decode()
    assert text.startswith(",".join(export.COLUMNS))
    whole = await (await client.get("/api/v1/deployments/export/?format=csv", headers=auth)).read()
    rows = list(csv.reader(io.StringIO(whole.decode())))
    assert len(rows) == 1002 and len(whole) == size
    evil = rows[-1]
    assert evil[1] == "evil" and evil[5] == "'=1+1"
    # Both sides of the request, a page at a time, peak at ~0.5 MB; with the 1,000
    # deployments read and encoded at once (PAGE = 100000) they peak at ~1.9 MB.
    assert peak < 1 << 20, (peak, size)

    resp = await client.get("/api/v1/deployments/export/?format=xml", headers=auth)
    assert resp.status == 400 and "format" in (await resp.json())["error"]["message"]
