"""A GitOps client of the Fleet Manager API (/api/v2) for tests, as real pipelines use it."""

from __future__ import annotations

import json
from typing import Any

from tests.procs import CoordinatorProc, wait_for


class FleetManager:
    """A GitOps client: an API key, JSON in and out, status codes kept."""

    def __init__(self, coordinator: CoordinatorProc) -> None:
        self.coordinator = coordinator
        self.key = str(
            self.coordinator.api("POST", "/moorage/v1/api-tokens", {"name": "gitops"})["token"]
        )

    def aimed_at(self, coordinator: CoordinatorProc) -> FleetManager:
        """The same client (its API key) aimed at another coordinator."""
        twin = FleetManager.__new__(FleetManager)
        twin.coordinator = coordinator
        twin.key = self.key
        return twin

    def call(
        self, method: str, path: str, body: Any = None, *, header: str = "api-key"
    ) -> tuple[int, Any]:
        headers = {"accept": "application/json"}
        if header == "api-key":
            headers["api-key"] = self.key
        else:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None
        if body is not None:
            headers["content-type"] = "application/json"
            data = json.dumps(body).encode()
        status, raw = self.coordinator.raw(
            method, "/api/v2" + path, headers=headers, data=data, cert=False
        )
        return status, (json.loads(raw) if raw else None)

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, value = self.call(method, path, body)
        assert status == expect, (method, path, status, value)
        return value

    def all_items(self, path: str) -> list[Any]:
        """Follow `next` like the GitOps scripts do."""
        items: list[Any] = []
        url: str | None = path
        while url:
            page = self.ok("GET", url)
            items.extend(page["items"])
            nxt = page.get("next")
            url = nxt.split("/api/v2", 1)[1] if nxt else None
        return items

    def default_group(self) -> dict[str, Any]:
        groups = self.ok("GET", "/cluster-groups?limit=200")["items"]
        return next(g for g in groups if g["name"] == "default")

    def wait_release(self, deployment_id: str, status: str, timeout: float = 60) -> Any:
        def done() -> Any:
            releases = self.ok("GET", f"/deployments/{deployment_id}/releases")
            return releases if releases and releases[-1]["status"] == status else None

        return wait_for(done, timeout, interval=0.2, what=f"release {status}")
