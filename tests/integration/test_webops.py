"""WebOps deployments (#20) end to end: local git repositories (file:// URLs) built
and run by a real agent on a real systemd manager (and a real dockerd for the
Dockerfile app), served through the agent's own real nginx; both HTTP surfaces."""

# ruff: noqa: F811  (pytest fixtures imported by name)

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.webops import PROXY_UNIT
from tests.harness.dockerd import BUSYBOX_TAG, Dockerd
from tests.harness.fixtures import dockerd, user_systemd  # noqa: F401
from tests.harness.gitrepo import commit, git_repo
from tests.harness.systemd import UserSystemd
from tests.procs import MachineRig, free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


class WebRig(MachineRig):
    """A coordinator, agent m1 on a real systemd manager (and dockerd when given), its
    WebOps proxy (the agent's own nginx) on a loopback port."""

    def __init__(
        self, tmp: Path, systemd: UserSystemd, daemon: Dockerd | None = None, config: str = ""
    ) -> None:
        self.tmp = tmp
        self.dockerd = daemon
        self.systemd = systemd
        self.proxy = free_port()
        env = dict(systemd.agent_env())
        if daemon is not None:
            daemon.import_busybox()
            env["DOCKER_HOST"] = daemon.host
        extra = [*systemd.agent_flags(), "--webops-proxy-listen", f"127.0.0.1:{self.proxy}"]
        super().__init__(tmp, extra=extra, env=env, config=config)
        # A Moorage API token is a WebOps Bearer token on both surfaces (exempt from the
        # general limit: the test polls).
        made = self.coordinator.api(
            "POST", "/moorage/v1/api-tokens", {"name": "webops", "unlimited": True}
        )
        self.token = str(made["token"])

    @property
    def webops_dir(self) -> Path:
        return self.agent.state_dir / "webops"

    def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        tok = self.token if token is None else token
        headers = {"Content-Type": "application/json"}
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        data = None if body is None else json.dumps(body).encode()
        status, raw = self.coordinator.raw(method, path, headers=headers, data=data, cert=False)
        return status, json.loads(raw) if raw else None

    def info(self, name: str) -> dict[str, Any]:
        status, body = self.call("GET", f"/api/deployments/{name}/")
        assert status == 200, body
        return dict(body)

    def wait_status(self, name: str, want: str, timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            got = self.info(name)
            return got if got["status"] == want and not got["building"] else None

        return dict(wait_for(check, timeout, interval=0.3, what=f"{name} {want}"))

    def through_proxy(self, host: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.proxy}/", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (OSError, http.client.HTTPException):
            return 0, ""

    def through_proxy_path(self, host: str, path: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.proxy}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (OSError, http.client.HTTPException):
            return 0, ""

    def serves(self, host: str, text: str, timeout: float = 60) -> None:
        wait_for(
            lambda: (s := self.through_proxy(host))[0] == 200 and text in s[1],
            timeout,
            interval=0.3,
            what=f"{host} serving {text!r}",
        )

    def close(self) -> None:
        try:
            super().close()
        finally:
            # The agent's own nginx (started by this test's agent) by its pid file.
            pidfile = self.webops_dir / "nginx" / "nginx.pid"
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


@pytest.fixture
def rig(tmp_path: Path, user_systemd: UserSystemd) -> Iterator[WebRig]:
    r = WebRig(tmp_path, user_systemd)
    try:
        yield r
    finally:
        r.close()


def test_static_site_from_git_through_both_surfaces(rig: WebRig, tmp_path: Path) -> None:
    repo = tmp_path / "repo-site"
    url = git_repo(repo, {"index.html": "<h1>hello v1</h1>\n"})
    port = free_port()

    # Without a token: the CLI surface's own 401.
    status, body = rig.call("GET", "/api/deployments/", token="")
    assert status == 401
    assert body["error"] == "Authentication required"

    create = {
        "name": "site",
        "repo_url": url,
        "branch": "main",
        "domain": "site.test",
        "env_vars": {},
        "port": port,
    }
    status, body = rig.call("POST", "/api/deployments/create/", create)
    assert status == 201, body
    assert set(body) == {"id", "name", "status", "message"}
    dep_id = body["id"]
    # Retried create (the client retries POSTs on 5xx): the same deployment.
    status, again = rig.call("POST", "/api/deployments/create/", create)
    assert status == 201 and again["id"] == dep_id

    got = rig.wait_status("site", "running")
    assert got["project_type"] == "static"
    assert got["port"] == port
    for key in (
        "status",
        "name",
        "project_type",
        "repo_url",
        "branch",
        "created_at",
        "updated_at",
        "domain",
        "port",
        "health",
        "env_vars",
    ):
        assert key in got
    rig.serves("site.test", "hello v1")
    assert rig.through_proxy("other.test")[0] == 404  # only the deployment's domain
    wait_for(lambda: rig.info("site")["health"]["is_healthy"], 30, what="healthy")

    # Logs: oldest first, ids increasing, the build in them.
    status, body = rig.call("GET", "/api/deployments/site/logs/")
    assert status == 200
    logs = body["logs"]
    assert [i["id"] for i in logs] == sorted(i["id"] for i in logs)
    text = "\n".join(i["message"] for i in logs)
    assert "cloning" in text and "build b1 succeeded" in text
    assert set(logs[0]) == {"id", "level", "message", "created_at"}
    status, body = rig.call("GET", "/api/deployments/site/logs/?tail=2")
    assert [i["id"] for i in body["logs"]] == [i["id"] for i in logs[-2:]]

    # The same deployment on /api/v1, by id, in the envelope.
    status, body = rig.call("GET", f"/api/v1/deployments/{dep_id}/")
    assert status == 200 and body["success"] is True
    assert body["data"]["name"] == "site" and body["data"]["status"] == "running"
    status, body = rig.call("GET", "/api/v1/deployments/?status=running")
    assert [d["name"] for d in body["data"]] == ["site"]
    assert body["pagination"]["total"] == 1
    status, body = rig.call("GET", "/api/deployments/?page=1&per_page=20")
    assert body["deployments"] == body["results"] and body["pagination"]["pages"] == 1
    status, body = rig.call("GET", "/api/v1/deployments/999/")
    assert status == 404 and body["error"]["code"] == "RESOURCE_NOT_FOUND"
    status, body = rig.call("GET", "/api/deployments/nope/")
    assert status == 404 and isinstance(body["error"], str)

    # A user's token from /api/v1/auth/token/ works on both surfaces.
    rig.coordinator.api(
        "POST",
        "/moorage/v1/users",
        {"username": "dev", "password": "a long password", "permissions": ["deployments"]},
    )
    status, body = rig.call(
        "POST", "/api/v1/auth/token/", {"username": "dev", "password": "a long password"}, token=""
    )
    assert status == 201, body
    user_token = body["data"]["token"]
    assert rig.call("GET", "/api/deployments/site/", token=user_token)[0] == 200
    assert rig.call("GET", f"/api/v1/deployments/{dep_id}/", token=user_token)[0] == 200

    # moorctl drives the same surface.
    out = rig.coordinator.moorctl("--json", "webops", "list")
    assert out.returncode == 0, out.stderr
    assert [d["name"] for d in json.loads(out.stdout)] == ["site"]
    out = rig.coordinator.moorctl("webops", "info", "site")
    assert out.returncode == 0 and "running" in out.stdout, out.stderr
    out = rig.coordinator.moorctl("webops", "logs", "site", "--tail", "3")
    assert out.returncode == 0 and "succeeded" in out.stdout, out.stderr
    out = rig.coordinator.moorctl("webops", "info", "nope")
    assert out.returncode != 0 and "does not exist" in out.stderr

    # A broken commit: the redeploy fails, the old build keeps serving.
    commit(repo, {"index.html": None, "README": "no site here\n"}, "broken")
    status, body = rig.call("POST", "/api/deployments/site/redeploy/")
    assert status == 200, body
    got = rig.wait_status("site", "failed")
    assert got["live_build"] == "b1"
    rig.serves("site.test", "hello v1", timeout=5)
    status, body = rig.call("GET", "/api/deployments/site/logs/")
    assert any("build b2 failed" in i["message"] for i in body["logs"])

    # A good commit: switched over to it.
    commit(repo, {"index.html": "<h1>hello v3</h1>\n"}, "fixed")
    status, body = rig.call("POST", f"/api/v1/deployments/{dep_id}/redeploy/")
    assert status == 200, body
    rig.wait_status("site", "running")
    rig.serves("site.test", "hello v3")

    # Stop and start through the unit's desired state.
    status, body = rig.call("POST", "/api/deployments/site/stop/")
    assert status == 200 and "message" in body
    wait_for(lambda: rig.through_proxy("site.test")[0] == 502, 30, what="stopped")
    status, body = rig.call("POST", f"/api/v1/deployments/{dep_id}/start/")
    assert status == 200
    rig.serves("site.test", "hello v3")

    # /api/v1 logs with follow=true: the items so far, then new ones as they come.
    status, body = rig.call("GET", f"/api/v1/deployments/{dep_id}/logs/")
    so_far = body["data"]["logs"]
    later = threading.Timer(1.0, lambda: rig.call("POST", "/api/deployments/site/restart/"))
    later.start()
    status, lines = rig.coordinator.raw_stream(
        f"/api/v1/deployments/{dep_id}/logs/?follow=true", max_lines=len(so_far) + 1, timeout=30
    )
    later.join()
    assert status == 200
    streamed = [json.loads(line) for line in lines]
    assert [i["id"] for i in streamed[:-1]] == [i["id"] for i in so_far]
    # The next item (the app's own output comes as items too, so not always the action)
    assert streamed[-1]["id"] > max(i["id"] for i in so_far)
    status, body = rig.call("GET", f"/api/v1/deployments/{dep_id}/logs/")
    new = [i["message"] for i in body["data"]["logs"] if i["id"] > so_far[-1]["id"]]
    assert "restart requested" in new
    rig.serves("site.test", "hello v3")

    # The proxy is its own service of the machine's systemd manager, not a child in the
    # agent's cgroup (a packaged agent's stop or restart ends every process there).
    nginx = int((rig.webops_dir / "nginx" / "nginx.pid").read_text())
    assert rig.systemd.unit_property(PROXY_UNIT, "ActiveState") == "active"
    assert int(rig.systemd.unit_property(PROXY_UNIT, "MainPID")) == nginx
    assert PROXY_UNIT in Path(f"/proc/{nginx}/cgroup").read_text()

    # The agent killed: the unit and the proxy serve on; back, it reports health again.
    assert rig.agent.proc is not None
    rig.agent.proc.kill9()
    rig.serves("site.test", "hello v3", timeout=5)
    rig.agent.start()
    wait_for(lambda: "m1" in rig.coordinator.connected(), 30, what="agent back")
    rig.serves("site.test", "hello v3", timeout=5)
    assert rig.info("site")["status"] == "running"
    assert int((rig.webops_dir / "nginx" / "nginx.pid").read_text()) == nginx  # the same one

    # PUT on /api/v1: a new domain goes on the proxy through a redeploy.
    status, body = rig.call("PUT", f"/api/v1/deployments/{dep_id}/", {"domain": "www.site.test"})
    assert status == 200, body
    rig.wait_status("site", "running")
    rig.serves("www.site.test", "hello v3")
    assert rig.through_proxy("site.test")[0] == 404

    # Another tenant sees none of it.
    other = rig.coordinator.api(
        "POST", "/moorage/v1/api-tokens", {"name": "o", "tenant": "other", "unlimited": True}
    )["token"]
    assert rig.call("GET", "/api/deployments/site/", token=other)[0] == 404
    assert rig.call("GET", f"/api/v1/deployments/{dep_id}/", token=other)[0] == 404
    assert rig.call("GET", "/api/deployments/", token=other)[1]["deployments"] == []

    # Delete: unit, files, proxy entry and the deployment gone.
    unit = rig.info("site")["unit"]
    assert rig.systemd.unit_property(unit, "ActiveState") == "active"
    status, body = rig.call("DELETE", f"/api/v1/deployments/{dep_id}/")
    assert status == 200, body
    assert rig.call("GET", "/api/deployments/site/")[0] == 404
    # (a remove sent while the agent was still reconnecting is done by the agent itself
    # once it sees the unit is no longer desired)
    wait_for(lambda: not (rig.webops_dir / "site").exists(), 90, what="files removed")
    wait_for(
        lambda: rig.systemd.unit_property(unit, "LoadState") == "not-found", 30, what="unit gone"
    )
    wait_for(lambda: rig.through_proxy("www.site.test")[0] == 404, 30, what="proxy entry gone")


def pypi_unreachable() -> str | None:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return None
    except OSError as exc:
        return f"PyPI unreachable ({exc}): the python app installs gunicorn from it"


WSGI_APP = """\
import os


def application(environ, start_response):
    body = ("greeting=" + os.environ.get("GREETING", "none") + "\\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_python_app_env_and_failed_redeploy(rig: WebRig, tmp_path: Path) -> None:
    reason = pypi_unreachable()
    if reason:
        pytest.skip(reason)
    repo = tmp_path / "repo-py"
    url = git_repo(
        repo,
        {
            "wsgi.py": WSGI_APP,
            "requirements.txt": "gunicorn\n",
            ".env.example": "GREETING=\nSECRET_KEY=\n",
        },
    )
    create = {
        "name": "pyapp",
        "repo_url": url,
        "branch": "main",
        "domain": "py.test",
        "env_vars": {"GREETING": "hello"},
        "port": free_port(),
    }
    status, body = rig.call("POST", "/api/v1/deployments/", create)
    assert status == 201, body
    assert body["success"] is True
    dep_id = body["data"]["id"]
    got = rig.wait_status("pyapp", "running", timeout=300)
    assert got["project_type"] == "python"
    rig.serves("py.test", "greeting=hello")
    env_file = rig.webops_dir / "pyapp" / "env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    # gunicorn, from the app's own virtualenv, is what serves it.
    unit = got["unit"]
    assert "/venv/bin/gunicorn" in rig.systemd.unit_property(unit, "ExecStart")
    # Metrics from the unit's cgroup, as systemd accounts them.
    metrics = wait_for(
        lambda: (m := rig.info("pyapp")["metrics"])["memory_bytes"] > 0 and m,
        30,
        interval=0.5,
        what="memory accounted",
    )
    assert metrics["memory_usage"] > 1.0  # MiB: gunicorn and two workers

    # Env: validate against .env.example, set, restart: the app sees the new value.
    status, body = rig.call("GET", "/api/deployments/pyapp/env/validate/")
    assert body == {
        "valid": False,
        "missing": ["SECRET_KEY"],
        "required": ["GREETING", "SECRET_KEY"],
    }
    status, body = rig.call(
        "POST", "/api/deployments/pyapp/env/set/", {"key": "GREETING", "value": "bye"}
    )
    assert status == 200 and body["env_vars"]["GREETING"] == "bye"
    rig.serves("py.test", "greeting=hello", timeout=5)  # not before a restart
    status, body = rig.call("POST", "/api/deployments/pyapp/restart/")
    assert status == 200, body
    rig.serves("py.test", "greeting=bye")
    status, body = rig.call("GET", "/api/deployments/pyapp/env/")
    assert body == {"env_vars": {"GREETING": "bye"}}
    status, body = rig.call("GET", "/api/deployments/pyapp/project/validate/")
    assert body["all_passed"] is True, body
    # Secrets never in the logs.
    status, body = rig.call("GET", f"/api/v1/deployments/{dep_id}/logs/?lines=1000")
    assert not any("bye" in i["message"] for i in body["data"]["logs"])

    # A broken commit (a requirement that cannot be installed): the old build serves on.
    commit(repo, {"requirements.txt": "gunicorn\nmoorage-no-such-package-xyz==0.0.1\n"}, "broken")
    status, body = rig.call("POST", f"/api/v1/deployments/{dep_id}/redeploy/")
    assert status == 200, body
    got = rig.wait_status("pyapp", "failed", timeout=300)
    assert got["live_build"] == "b1"
    rig.serves("py.test", "greeting=bye", timeout=5)

    status, body = rig.call("DELETE", "/api/deployments/pyapp/")
    assert status == 200, body
    wait_for(lambda: not (rig.webops_dir / "pyapp").exists(), 30, what="files removed")
    wait_for(lambda: rig.through_proxy("py.test")[0] == 404, 30, what="proxy entry gone")


NODE_APP = """\
const http = require("http");
http
  .createServer((req, res) => res.end(`node says ${process.env.GREETING || "nothing"}\\n`))
  .listen(Number(process.env.PORT), process.env.HOST);
console.log(`listening on ${process.env.PORT}`);
"""


def test_node_app_started_by_its_start_script(rig: WebRig, tmp_path: Path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    url = git_repo(
        tmp_path / "repo-node",
        {
            "package.json": '{"name": "nodeapp", "scripts": {"start": "node server.js"}}\n',
            "server.js": NODE_APP,
        },
    )
    create = {
        "name": "nodeapp",
        "repo_url": url,
        "branch": "main",
        "domain": "node.test",
        "env_vars": {"GREETING": "hi"},
        "port": free_port(),
    }
    status, body = rig.call("POST", "/api/v1/deployments/", create)
    assert status == 201, body
    dep_id = body["data"]["id"]
    got = rig.wait_status("nodeapp", "running", timeout=120)
    assert got["project_type"] == "node"
    rig.serves("node.test", "node says hi")
    # What the running app writes is a log item too (after the build's), in order.

    def messages() -> list[str]:
        _, body = rig.call("GET", f"/api/v1/deployments/{dep_id}/logs/?lines=1000")
        return [i["message"] for i in body["data"]["logs"]]

    wait_for(
        lambda: any(f"listening on {create['port']}" in x for x in messages()),
        30,
        interval=0.5,
        what="the app's output as a log item",
    )
    assert messages().index(next(x for x in messages() if "ready (node)" in x)) < next(
        i for i, x in enumerate(messages()) if "listening on" in x
    )
    assert "npm start" in rig.systemd.unit_property(got["unit"], "ExecStart")
    status, body = rig.call(
        "POST", "/api/deployments/nodeapp/env/set/", {"key": "GREETING", "value": "bye"}
    )
    assert status == 200, body
    status, body = rig.call("POST", "/api/deployments/nodeapp/restart/")
    assert status == 200, body
    rig.serves("node.test", "node says bye")
    status, body = rig.call("DELETE", "/api/deployments/nodeapp/")
    assert status == 200, body
    wait_for(lambda: not (rig.webops_dir / "nodeapp").exists(), 30, what="files removed")


@pytest.fixture
def drig(tmp_path: Path, user_systemd: UserSystemd, dockerd: Dockerd) -> Iterator[WebRig]:
    r = WebRig(tmp_path, user_systemd, dockerd)
    try:
        yield r
    finally:
        r.close()


def test_dockerfile_app_built_on_the_machine(drig: WebRig, tmp_path: Path) -> None:
    repo = tmp_path / "repo-docker"
    dockerfile = (
        f"FROM {BUSYBOX_TAG}\n"
        "COPY index.html /www/index.html\n"
        'CMD ["/bin/sh", "-c", "exec /bin/busybox httpd -f -p 127.0.0.1:$PORT -h /www"]\n'
    )
    url = git_repo(repo, {"Dockerfile": dockerfile, "index.html": "docker v1\n"})
    status, body = drig.call(
        "POST",
        "/api/deployments/create/",
        {
            "name": "dock",
            "repo_url": url,
            "branch": "main",
            "domain": "dock.test",
            "port": free_port(),
        },
    )
    assert status == 201, body
    got = drig.wait_status("dock", "running", timeout=300)
    assert got["project_type"] == "docker"
    assert got["unit"] == "webops-dock.container"
    drig.serves("dock.test", "docker v1")
    # Memory from dockerd's stats of the container (it was 0 for Docker apps)
    wait_for(
        lambda: drig.info("dock")["metrics"]["memory_bytes"] > 0,
        30,
        interval=0.5,
        what="the container's memory accounted",
    )

    # Env set + restart: the container is made again with the new environment.
    def container_env() -> list[str]:
        assert drig.dockerd is not None
        attrs = drig.dockerd.client().api.inspect_container("moorage-webops-dock")
        return list(attrs["Config"]["Env"] or [])

    status, body = drig.call(
        "POST", "/api/deployments/dock/env/set/", {"key": "COLOUR", "value": "blue"}
    )
    assert status == 200, body
    assert "COLOUR=blue" not in container_env()
    status, body = drig.call("POST", "/api/deployments/dock/restart/")
    assert status == 200, body
    wait_for(lambda: "COLOUR=blue" in container_env(), 60, interval=0.5, what="new env")
    drig.serves("dock.test", "docker v1")

    commit(repo, {"Dockerfile": "FROM moorage-test/no-such-image:0\n"}, "broken")
    status, body = drig.call("POST", "/api/deployments/dock/redeploy/")
    assert status == 200, body
    drig.wait_status("dock", "failed", timeout=300)
    drig.serves("dock.test", "docker v1", timeout=5)

    status, body = drig.call("DELETE", "/api/deployments/dock/delete/")
    assert status == 200, body
    wait_for(lambda: drig.through_proxy("dock.test")[0] == 404, 30, what="proxy entry gone")


def test_deploys_are_rate_limited_per_user(rig: WebRig, tmp_path: Path) -> None:
    """Creates and redeploys count against the deploy limit (10 an hour per user by
    default; configurable: 3 here); over it, 429 in each surface's
    error shape."""
    rig.coordinator.stop()
    rig.coordinator.config = (
        "[rate_limits]\ntoken = { count = 100000, window_s = 3600 }\n"
        "deploy = { count = 3, window_s = 3600 }\n"
    )
    rig.coordinator.start()
    wait_for(lambda: "m1" in rig.coordinator.connected(), 30, what="agent back")
    url = git_repo(tmp_path / "repo-limit", {"index.html": "x\n"})
    for i in range(3):
        status, body = rig.call(
            "POST",
            "/api/deployments/create/",
            {"name": f"app{i}", "repo_url": url, "branch": "main", "port": free_port()},
        )
        assert status == 201, (i, body)
    status, body = rig.call(
        "POST", "/api/deployments/create/", {"name": "app10", "repo_url": url, "branch": "main"}
    )
    assert status == 429, body
    assert isinstance(body["error"], str)
    status, body = rig.call("POST", "/api/deployments/app0/redeploy/")
    assert status == 429, body
    status, body = rig.call(
        "POST", "/api/v1/deployments/", {"name": "app10", "repo_url": url, "branch": "main"}
    )
    assert status == 429 and body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert rig.call("GET", "/api/deployments/app10/")[0] == 404


DJANGO_SETTINGS = """\
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ["SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "").split(",") + ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.staticfiles"]
MIDDLEWARE = []
ROOT_URLCONF = "mysite.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
USE_TZ = True
"""

DJANGO_URLS = """\
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.urls import path


def home(request):
    return HttpResponse(f"django here; users: {User.objects.count()}")


urlpatterns = [path("", home)]
"""

DJANGO_WSGI = """\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
application = get_wsgi_application()
"""

DJANGO_MANAGE = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""


def test_django_project_migrated_and_served(rig: WebRig, tmp_path: Path) -> None:
    reason = pypi_unreachable()
    if reason:
        pytest.skip(reason)
    repo = tmp_path / "repo-dj"
    url = git_repo(
        repo, {"manage.py": DJANGO_MANAGE, "requirements.txt": "django>=4.2,<5.2\ngunicorn\n"}
    )
    (repo / "mysite").mkdir()
    commit(
        repo,
        {
            "mysite/__init__.py": "",
            "mysite/settings.py": DJANGO_SETTINGS,
            "mysite/urls.py": DJANGO_URLS,
            "mysite/wsgi.py": DJANGO_WSGI,
        },
        "the site",
    )
    status, body = rig.call(
        "POST",
        "/api/deployments/create/",
        {
            "name": "dj",
            "repo_url": url,
            "branch": "main",
            "domain": "dj.test",
            "env_vars": {"SECRET_KEY": "not-so-secret-test-key", "ALLOWED_HOSTS": "dj.test"},
            "port": free_port(),
        },
    )
    assert status == 201, body
    got = rig.wait_status("dj", "running", timeout=400)
    assert got["project_type"] == "django"
    # Migrations ran (the auth tables exist), gunicorn serves mysite.wsgi.
    rig.serves("dj.test", "django here; users: 0")
    status, body = rig.call("GET", "/api/deployments/dj/logs/")
    text = "\n".join(i["message"] for i in body["logs"])
    assert "Applying auth" in text and "mysite.wsgi:application" in text
    assert "static files copied" in text
