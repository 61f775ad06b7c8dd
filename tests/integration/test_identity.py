"""Users, logins, user tokens and permissions (#17) against a real coordinator process
over real TLS: `moorage-coordinator init` makes the first admin, who logs in over
`/api/v1/auth/token/`; tokens carry a subset of the user's permissions, which every
route's declaration is checked against (403 PERMISSION_DENIED); revoked tokens and
disabled users get 401; `moorctl user` drives the same service."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ROOT, CoordinatorProc

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProc]:
    state = tmp_path_factory.mktemp("identity") / "coordinator"
    proc = CoordinatorProc(state)
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator",
            "init",
            "--config",
            str(empty_config(state)),
            "--state-dir",
            str(state),
            *(["--database-url", proc.database_url] if proc.database_url else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert init.returncode == 0, init.stderr
    password_file = state / "admin.password"
    assert f"password in {password_file}" in init.stdout, init.stdout
    assert password_file.read_text().strip() not in init.stdout + init.stderr
    assert password_file.stat().st_mode & 0o777 == 0o600
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def empty_config(state: Path) -> Path:
    path = state.parent / "coordinator-empty.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def call(
    coord: CoordinatorProc,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
) -> tuple[int, Any]:
    """A request without a client certificate, with a Bearer token if given."""
    headers = dict(JSON)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    status, raw = coord.raw(method, path, headers=headers, data=data, cert=False)
    return status, json.loads(raw) if raw else None


def login(coord: CoordinatorProc, username: str, password: str, **extra: Any) -> tuple[int, Any]:
    return call(
        coord,
        "POST",
        "/api/v1/auth/token/",
        body={"username": username, "password": password, **extra},
    )


def token_of(coord: CoordinatorProc, username: str, password: str, **extra: Any) -> str:
    status, body = login(coord, username, password, **extra)
    assert status == 201, body
    assert body["success"] is True
    return str(body["data"]["token"])


def test_the_first_admin_logs_in_and_manages_users(coord: CoordinatorProc) -> None:
    password = (coord.state_dir / "admin.password").read_text().strip()
    admin = token_of(coord, "admin", password, name="setup")
    status, body = call(coord, "GET", "/api/v1/auth/verify/", admin)
    assert status == 200, body
    assert body["data"]["user"]["username"] == "admin"
    assert body["data"]["permissions"] == ["admin"]

    status, body = call(
        coord,
        "POST",
        "/api/v1/users/",
        admin,
        {
            "username": "carol",
            "email": "carol@example.com",
            "password": "carol's password",
            "is_staff": False,
            "permissions": ["deployments", "monitoring"],
        },
    )
    assert status == 201, body
    carol = body["data"]
    assert carol["username"] == "carol" and carol["permissions"] == ["deployments", "monitoring"]
    assert "password" not in json.dumps(body).replace('"password":', "")  # no hash, no clear

    status, body = call(
        coord,
        "POST",
        "/api/v1/users/",
        admin,
        {"username": "carol", "email": "", "password": "another one"},
    )
    assert status == 409 and body["error"]["code"] == "CONFLICT", body
    status, body = call(
        coord, "POST", "/api/v1/users/", admin, {"username": "dave", "password": "short"}
    )
    assert status == 400 and "at least 8" in body["error"]["message"], body

    status, body = call(coord, "GET", "/api/v1/users/?page=1&per_page=1", admin)
    assert status == 200, body
    assert body["pagination"]["total"] >= 2 and len(body["data"]) == 1

    path = f"/api/v1/users/{carol['id']}/permissions/"
    status, body = call(coord, "PUT", path, admin, {"permissions": ["role:developer"]})
    assert status == 200, body
    status, body = call(coord, "GET", path, admin)
    assert body["data"]["permissions"] == [
        "deployments",
        "databases",
        "monitoring",
        "environments",
        "tasks",
    ]
    status, body = call(coord, "GET", "/api/v1/users/999999/permissions/", admin)
    assert status == 404, body


def test_a_deployments_token_is_denied_users_works_on_api_v2_and_dies_on_revoke(
    coord: CoordinatorProc,
) -> None:
    coord.api(
        "POST",
        "/moorage/v1/users",
        {"username": "alice", "password": "alice's password", "permissions": ["role:operator"]},
    )
    token = token_of(coord, "alice", "alice's password", permissions=["deployments"])
    assert token.startswith("mut.")

    status, body = call(coord, "GET", "/api/v1/auth/verify/", token)
    assert status == 200, body
    assert body["data"]["permissions"] == ["deployments"]
    assert body["data"]["tenant"] == "default" and body["data"]["expires_at"]

    status, body = call(coord, "GET", "/api/v1/users/", token)
    assert status == 403, body
    assert body["success"] is False
    assert body["error"]["code"] == "PERMISSION_DENIED"
    assert "'users'" in body["error"]["message"]

    # The fleet family says the same in its own format.
    status, body = call(coord, "GET", "/fleet/v1/machines", token)
    assert status == 403 and "'fleet'" in body["error"]["message"], body

    status, body = call(coord, "GET", "/api/v2/deployments", token)
    assert status == 200, body

    # More than the user holds: refused, naming what is missing.
    status, body = login(coord, "alice", "alice's password", permissions=["users"])
    assert status == 403 and body["error"]["code"] == "PERMISSION_DENIED", body
    assert "users" in body["error"]["message"]

    status, body = call(coord, "DELETE", f"/api/v1/auth/token/{token}/", token)
    assert status == 200, body
    status, body = call(coord, "GET", "/api/v2/deployments", token)
    assert status == 401, body
    status, body = call(coord, "GET", "/api/v1/auth/verify/", token)
    assert status == 401 and body["error"]["code"] == "AUTHENTICATION_REQUIRED", body


def test_wrong_passwords_and_disabled_users_get_401(coord: CoordinatorProc) -> None:
    out = subprocess.run(
        coord.moorctl_argv(
            "user", "create", "bob", "--permission", "deployments", "--password-stdin"
        ),
        input="bob's password\n",
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "user bob created" in out.stdout

    status, raw = coord.raw(
        "POST", "/api/v1/auth/token/", headers=JSON, data=b"{" + b" " * (1 << 20) + b"}", cert=False
    )
    assert status == 413, raw

    status, wrong = login(coord, "bob", "not bob's password")
    assert status == 401, wrong
    status, unknown = login(coord, "nobody-at-all", "not bob's password")
    assert status == 401, unknown
    assert wrong["error"]["message"] == unknown["error"]["message"]

    token = token_of(coord, "bob", "bob's password")
    assert call(coord, "GET", "/api/v2/deployments", token)[0] == 200

    out = coord.moorctl("user", "disable", "bob")
    assert out.returncode == 0, out.stderr
    status, body = call(coord, "GET", "/api/v2/deployments", token)
    assert status == 401, body
    status, body = login(coord, "bob", "bob's password")
    assert status == 401, body

    listed = coord.moorctl("--json", "user", "list")
    assert listed.returncode == 0, listed.stderr
    users = {u["username"]: u for u in json.loads(listed.stdout)}
    assert users["bob"]["is_active"] is False and users["bob"]["permissions"] == ["deployments"]
    table = coord.moorctl("user", "list")
    assert "bob" in table.stdout and "disabled" in table.stdout

    coord.moorctl("user", "enable", "bob")
    out = subprocess.run(
        coord.moorctl_argv("user", "passwd", "bob", "--password-stdin"),
        input="bob's new password\n",
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert login(coord, "bob", "bob's password")[0] == 401
    token = token_of(coord, "bob", "bob's new password")
    assert call(coord, "GET", "/api/v2/deployments", token)[0] == 200
    # ... and a `deployments` user may not manage users through moorage's routes either.
    status, body = call(coord, "GET", "/moorage/v1/users", token)
    assert status == 403 and "'users'" in body["error"]["message"], body

    assert coord.proc is not None
    log = coord.proc.log()
    for secret in ("bob's password", "bob's new password", token):
        assert secret not in log
