"""WebOps webhooks and bulk actions (#21) over real builds: a real agent on a real
systemd manager builds three static sites (local git repositories) behind its own
nginx; a signed-webhook receiver on loopback (in this process) gets their
`deployment.completed`; a bulk restart reports each of the three."""

# ruff: noqa: F811  (pytest fixtures imported by name)

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.webops import webhooks as wh
from tests.harness.fixtures import user_systemd  # noqa: F401
from tests.harness.gitrepo import git_repo
from tests.integration.test_webops import WebRig, rig  # noqa: F401
from tests.procs import wait_for


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.got: list[tuple[str, bool, dict[str, Any]]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        valid = wh.verify(
            self.server.secret,
            self.headers.get(wh.TIMESTAMP_HEADER, ""),
            self.headers.get(wh.SIGNATURE_HEADER, ""),
            body,
            now=time.time(),
        )
        with self.server.lock:
            self.server.got.append((self.headers.get(wh.EVENT_HEADER, ""), valid, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver("hook-secret")
    thread = threading.Thread(target=rx.serve_forever, daemon=True)
    thread.start()
    try:
        yield rx
    finally:
        rx.shutdown()
        rx.server_close()


def test_webhook_and_bulk_restart_over_real_builds(
    rig: WebRig, receiver: Receiver, tmp_path: Path
) -> None:
    status, body = rig.call(
        "POST",
        "/api/v1/webhooks/",
        {"url": receiver.url, "events": ["deployment.completed"], "secret": "hook-secret"},
    )
    assert status == 201, body
    ids = []
    for n in (1, 2, 3):
        url = git_repo(tmp_path / f"repo{n}", {"index.html": f"<h1>site {n}</h1>\n"})
        status, body = rig.call(
            "POST",
            "/api/v1/deployments/",
            {"name": f"site{n}", "repo_url": url, "domain": f"site{n}.test"},
        )
        assert status == 201, body
        ids.append(body["data"]["id"])
    for n in (1, 2, 3):
        rig.wait_status(f"site{n}", "running")
        rig.serves(f"site{n}.test", f"site {n}")

    def delivered() -> list[tuple[str, bool, dict[str, Any]]] | None:
        with receiver.lock:
            got = list(receiver.got)
        return got if len(got) >= 3 else None

    got = wait_for(delivered, 60, interval=0.2, what="three deployment.completed")
    assert sorted(body["subject"] for _, _, body in got) == ["site1", "site2", "site3"]
    assert all(event == "deployment.completed" and valid for event, valid, _ in got)

    status, body = rig.call(
        "POST", "/api/v1/deployments/bulk/", {"action": "restart", "deployment_ids": ids}
    )
    assert status == 200, body
    results = body["data"]["results"]
    assert [(r["id"], r["name"], r["success"]) for r in results] == [
        (ids[0], "site1", True),
        (ids[1], "site2", True),
        (ids[2], "site3", True),
    ]
    assert body["message"] == "3 of 3 succeeded"
    for n in (1, 2, 3):
        rig.serves(f"site{n}.test", f"site {n}")  # back after the restart
