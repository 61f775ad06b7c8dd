"""WebOps databases (#21) on a real private PostgreSQL cluster (initdb + pg_ctl on a
loopback port, torn down by the fixture), through the real API application (real
SQLite, the server's middleware). The deployment is put in the store directly (no
build); "the app" is psql connecting with the DATABASE_URL the link gave it."""

# ruff: noqa: F811  (pytest fixtures imported by name)

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from coordinator.config import CoordinatorConfig, PostgresServer
from coordinator.server import Coordinator
from coordinator.webops import databases as dbs
from coordinator.webops.records import WebDeployment
from tests.harness.fixtures import postgres, user_systemd  # noqa: F401
from tests.harness.gitrepo import git_repo
from tests.harness.postgres import PgCluster, postgres_available
from tests.harness.systemd import UserSystemd
from tests.integration.test_webops import WebRig, pypi_unreachable
from tests.procs import MachineRig, wait_for

Client = TestClient[web.Request, web.Application]


def test_names_and_urls_are_pure() -> None:
    assert dbs.name_problem("shop_1") is None
    for bad in ("Shop", "1shop", "shop-db", "a" * 41, 'x"; DROP', ""):
        assert dbs.name_problem(bad) is not None, bad
    assert dbs.pg_name("default", "shop") != dbs.pg_name("other", "shop")
    assert dbs.pg_name("default", "shop").endswith("_shop")


def read(path: str) -> bytes:
    return Path(path).read_bytes()


def mode(path: str) -> int:
    """The file's permission bits; -1 when it does not exist."""
    try:
        return Path(path).stat().st_mode & 0o777
    except FileNotFoundError:
        return -1


@pytest.fixture
async def served(
    tmp_path: Path, postgres: PgCluster
) -> AsyncIterator[tuple[Client, dict[str, str], Coordinator]]:
    server = PostgresServer(
        host=postgres.host,
        port=postgres.port,
        admin_user=postgres.admin,
        admin_password_file=str(postgres.password_file),
        bin_dir=postgres.bin_dir,
    )
    coordinator = Coordinator(CoordinatorConfig(state_dir=str(tmp_path / "state"), postgres=server))
    token, _ = coordinator.tokens.create_api_token("test", unlimited=True)
    client = TestClient(TestServer(coordinator.api_app()))
    await client.start_server()
    try:
        yield client, {"Authorization": f"Bearer {token}"}, coordinator
    finally:
        await client.close()
        coordinator.storage.close()


async def test_linked_database_backup_and_restore_by_id(
    served: tuple[Client, dict[str, str], Coordinator], postgres: PgCluster
) -> None:
    client, auth, coordinator = served
    now = time.time()
    dep = coordinator.storage.webops_create(
        WebDeployment(
            tenant="default",
            name="shop",
            repo_url="file:///srv/shop",
            machine_id="m1",
            port=8001,
            created_at=now,
            updated_at=now,
        )
    )
    resp = await client.post(
        "/api/v1/databases/", headers=auth, json={"name": "shop", "deployment_id": dep.id}
    )
    assert resp.status == 201, await resp.text()
    made = (await resp.json())["data"]
    db_id = made["id"]
    assert made["deployment"] == {"id": dep.id, "name": "shop"} and len(made["password"]) >= 24
    pg_name = made["database"]
    assert postgres.psql(f"SELECT datname FROM pg_database WHERE datname = '{pg_name}'") == pg_name

    # The deployment's DATABASE_URL is how the app reaches it: it writes and reads a row.
    env = await (await client.get(f"/api/v1/deployments/{dep.id}/env/", headers=auth)).json()
    url = env["data"]["env_vars"]["DATABASE_URL"]
    assert url == made["url"]
    postgres.psql("CREATE TABLE orders (id int PRIMARY KEY, item text)", url=url)
    postgres.psql("INSERT INTO orders VALUES (1, 'anchor')", url=url)
    assert postgres.psql("SELECT item FROM orders WHERE id = 1", url=url) == "anchor"

    # Backup: a listed artefact with id, size and checksum (of the stored pg_dump file).
    resp = await client.post(f"/api/v1/databases/{db_id}/backup/", headers=auth)
    assert resp.status == 201, await resp.text()
    backup = (await resp.json())["data"]
    stored = coordinator.storage.backups(db_id)[0]
    data = read(stored.path)
    assert backup["size"] == len(data) > 0 and data.startswith(b"PGDMP")
    assert backup["sha256"] == hashlib.sha256(data).hexdigest()
    assert mode(stored.path) == 0o600
    listed = await (await client.get(f"/api/v1/databases/{db_id}/backups/", headers=auth)).json()
    assert [b["id"] for b in listed["data"]] == [backup["id"]]

    # Drop the table; restore by backup id; the row is back.
    postgres.psql("DROP TABLE orders", url=url)
    with pytest.raises(subprocess.CalledProcessError):
        postgres.psql("SELECT item FROM orders", url=url)
    resp = await client.post(
        f"/api/v1/databases/{db_id}/restore/", headers=auth, json={"backup_id": backup["id"]}
    )
    assert resp.status == 200, await resp.text()
    assert postgres.psql("SELECT item FROM orders WHERE id = 1", url=url) == "anchor"
    resp = await client.post(
        f"/api/v1/databases/{db_id}/restore/", headers=auth, json={"backup_id": 9999}
    )
    assert resp.status == 404

    # Size and connections from PostgreSQL itself.
    metrics = await (await client.get(f"/api/v1/databases/{db_id}/metrics/", headers=auth)).json()
    assert metrics["data"]["size_bytes"] > 1 << 20 and metrics["data"]["connection_count"] >= 0

    # The WebOps CLI's view: the deployment by name, credentials on the one database.
    cli = await (await client.get("/api/databases/", headers=auth)).json()
    assert cli["databases"][0]["deployment"] == "shop"
    one = await (await client.get("/api/databases/shop/", headers=auth)).json()
    assert {"name", "username", "password", "host", "port"} <= set(one)
    assert one["password"] == made["password"]

    # Delete: 409 while linked, then forced: database and role gone, DATABASE_URL too.
    resp = await client.delete(f"/api/v1/databases/{db_id}/", headers=auth)
    assert resp.status == 409 and "linked" in (await resp.json())["error"]["message"]
    resp = await client.delete(f"/api/v1/databases/{db_id}/?force=true", headers=auth)
    assert resp.status == 200, await resp.text()
    assert postgres.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{pg_name}'") == "0"
    assert postgres.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{pg_name}'") == "0"
    assert "DATABASE_URL" not in coordinator.webops.get_id("default", dep.id).env
    assert mode(stored.path) == -1


async def test_bad_requests_and_permissions(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    resp = await client.post("/api/v1/databases/", headers=auth, json={"name": "Bad-Name"})
    assert resp.status == 400 and "database name" in (await resp.json())["error"]["message"]
    resp = await client.post(
        "/api/v1/databases/", headers=auth, json={"name": "x", "deployment_id": 42}
    )
    assert resp.status == 404
    resp = await client.post("/api/v1/databases/", headers=auth, json={"name": "twice"})
    assert resp.status == 201
    resp = await client.post("/api/v1/databases/", headers=auth, json={"name": "twice"})
    assert resp.status == 409
    await coordinator.users.create_user("dev", "a-long-password-1", permissions=["deployments"])
    issued = await coordinator.users.login("dev", "a-long-password-1")
    resp = await client.get(
        "/api/v1/databases/", headers={"Authorization": f"Bearer {issued.token}"}
    )
    assert resp.status == 403


WSGI_DB_APP = """\
import os
import subprocess


def sql(text):
    done = subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", os.environ["DATABASE_URL"],
         "-c", text],
        capture_output=True, text=True, timeout=30,
    )
    return (done.stdout if done.returncode == 0 else "error: " + done.stderr).strip()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/write":
        sql("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text)")
        body = sql("INSERT INTO notes VALUES (1, 'moored') ON CONFLICT DO NOTHING") or "written"
    else:
        body = "notes=" + sql("SELECT body FROM notes WHERE id = 1")
    data = (body + "\\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
"""


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_a_deployed_app_reads_its_row_back_after_a_restore(
    tmp_path: Path, user_systemd: UserSystemd, postgres: PgCluster
) -> None:
    """The must-show: a real python deployment (built and run by a real agent) with a
    linked database writes a row; backup; the table is dropped; restore by backup id;
    the app reads the row again."""
    reason = pypi_unreachable()
    if reason:
        pytest.skip(reason)
    config = f"""
[postgres]
host = "{postgres.host}"
port = {postgres.port}
admin_user = "{postgres.admin}"
admin_password_file = "{postgres.password_file}"
bin_dir = "{postgres.bin_dir}"
"""
    rig = WebRig(tmp_path, user_systemd, config=config)
    try:
        url = git_repo(
            tmp_path / "repo-db",
            {"wsgi.py": WSGI_DB_APP, "requirements.txt": "gunicorn\n"},
        )
        status, body = rig.call("POST", "/api/v1/databases/", {"name": "notes"})
        assert status == 201, body
        db_id = body["data"]["id"]
        status, body = rig.call(
            "POST",
            "/api/v1/deployments/",
            {"name": "notes", "repo_url": url, "domain": "notes.test"},
        )
        assert status == 201, body
        dep_id = body["data"]["id"]
        status, body = rig.call(
            "POST", f"/api/v1/databases/{db_id}/link/", {"deployment_id": dep_id}
        )
        assert status == 200, body
        rig.wait_status("notes", "running", timeout=300)
        status, body = rig.call("POST", f"/api/v1/deployments/{dep_id}/restart/")
        assert status == 200, body  # the env (DATABASE_URL) applies on a restart
        wait_for(
            lambda: rig.through_proxy_path("notes.test", "/write")[1].strip() == "written",
            60,
            interval=0.5,
            what="the app wrote its row",
        )
        rig.serves("notes.test", "notes=moored")

        status, body = rig.call("POST", f"/api/v1/databases/{db_id}/backup/")
        assert status == 201, body
        backup_id = body["data"]["id"]
        db_url = rig.call("GET", f"/api/v1/databases/{db_id}/")[1]["data"]["url"]
        postgres.psql("DROP TABLE notes", url=db_url)
        rig.serves("notes.test", "notes=error")
        status, body = rig.call(
            "POST", f"/api/v1/databases/{db_id}/restore/", {"backup_id": backup_id}
        )
        assert status == 200, body
        rig.serves("notes.test", "notes=moored")
    finally:
        rig.close()


PG_UNIT = "webops-postgresql.service"


def test_the_server_runs_as_a_moorage_unit(tmp_path: Path, user_systemd: UserSystemd) -> None:
    """`[postgres] unit`: PostgreSQL is a unit the fleet runs (a real agent on a real
    systemd manager). Databases are made where it is reported active; while it is not
    running, every database operation is a 503 naming it, and a database's details
    still read; its data outlives a stop and start of the unit."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    pg = PgCluster()
    rig: MachineRig | None = None
    try:
        pg.init()
        config = f"""
[postgres]
unit = "{PG_UNIT}"
port = {pg.port}
admin_user = "{pg.admin}"
admin_password_file = "{pg.password_file}"
bin_dir = "{pg.bin_dir}"
"""
        rig = MachineRig(
            tmp_path, extra=user_systemd.agent_flags(), env=user_systemd.agent_env(), config=config
        )
        token = rig.coordinator.api(
            "POST", "/moorage/v1/api-tokens", {"name": "dbs", "unlimited": True}
        )["token"]

        def call(method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
            data = None if body is None else json.dumps(body).encode()
            status, raw = rig.coordinator.raw(
                method,
                path,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                data=data,
                cert=False,
            )
            return status, json.loads(raw)

        # Not submitted yet: a 503 that says what to do.
        status, body = call("POST", "/api/v1/databases/", {"name": "shop"})
        assert status == 503, body
        assert f"{PG_UNIT} is not running on any machine" in body["error"]["message"]

        rig.put(PG_UNIT, pg.unit_text("m1"))
        rig.wait_state(PG_UNIT, "active", timeout=60)

        def made() -> dict[str, Any] | None:
            status, body = call("POST", "/api/v1/databases/", {"name": "shop"})
            return body["data"] if status == 201 else None  # the server may still start

        db = wait_for(made, 60, interval=0.5, what="a database on the unit's server")
        url = db["url"]
        assert f"@127.0.0.1:{pg.port}/" in url  # the machine's address (loopback here)
        pg.psql("CREATE TABLE orders (id int PRIMARY KEY, item text)", url=url)
        pg.psql("INSERT INTO orders VALUES (1, 'anchor')", url=url)
        status, body = call("POST", f"/api/v1/databases/{db['id']}/backup/")
        assert status == 201, body
        backup_id = body["data"]["id"]
        pg.psql("DROP TABLE orders", url=url)
        status, body = call(
            "POST", f"/api/v1/databases/{db['id']}/restore/", {"backup_id": backup_id}
        )
        assert status == 200, body
        assert pg.psql("SELECT item FROM orders WHERE id = 1", url=url) == "anchor"

        # The unit stopped: operations say so; the database's details still read.
        rig.put(PG_UNIT, pg.unit_text("m1"), state="loaded")
        rig.wait_state(PG_UNIT, "inactive", timeout=60)
        status, body = call("GET", f"/api/v1/databases/{db['id']}/metrics/")
        assert status == 503, body
        assert f"{PG_UNIT} is not running (m1 inactive)" in body["error"]["message"]
        status, body = call("GET", f"/api/v1/databases/{db['id']}/")
        assert status == 200 and body["data"]["url"] == url

        # Started again: its data is still there.
        rig.put(PG_UNIT, pg.unit_text("m1"))
        rig.wait_state(PG_UNIT, "active", timeout=60)
        wait_for(
            lambda: call("GET", f"/api/v1/databases/{db['id']}/metrics/")[0] == 200,
            60,
            interval=0.5,
            what="metrics from the restarted server",
        )
        assert pg.psql("SELECT item FROM orders WHERE id = 1", url=url) == "anchor"
    finally:
        try:
            if rig is not None:
                rig.close()
        finally:
            pg.stop()
