"""Real GitOps manifests through /api/v2, end to end: an application in the
`version / type / metadata / spec` envelope (spec.units on real systemd, spec.containers
on a real dockerd) created, deployed to the `default` group and running; identical and
comment/key-order-only PUTs are not new versions; DELETE of the deployment takes its
units off the machine; DELETE of an application in use is a 409."""

# ruff: noqa: F811  (pytest fixtures imported by name)
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proto.container import LABEL_UNIT, container_name
from tests.fleetrig import Fleet, fleet_of
from tests.fmclient import FleetManager
from tests.harness.dockerd import BUSYBOX_TAG, Dockerd
from tests.harness.fixtures import dockerd, user_systemd  # noqa: F401
from tests.harness.systemd import UserSystemd
from tests.procs import MachineRig, wait_for

pytestmark = pytest.mark.integration

UNITS_APP = """\
# GitOps managed: https://example.invalid/repo, apps/web.yaml
version: "1"
type: Application
metadata:
  name: web
  description: the web tier
  clusterGroups: [default]
  labels: [demo, nginx]
  annotations:
    fleet.scalecomputing.com/cluster-groups: "default, edge-eu"
  lifecycle: production
spec:
  units:
    - name: web.service
      contents: |
        [Service]
        ExecStart=/bin/sh -c 'while true; do echo gitops-web; sleep 1; done'
  rollout:
    min_healthy_s: 1
    timeout_s: 60
"""

# The same content: other comments, other key order, other quoting.
UNITS_APP_REORDERED = """\
spec:
  rollout: {timeout_s: 60, min_healthy_s: 1}
  units:
    - contents: "[Service]\\nExecStart=/bin/sh -c 'while true; do echo gitops-web; sleep 1; done'\\n"
      name: web.service   # reworded
metadata:
  lifecycle: production
  annotations: {fleet.scalecomputing.com/cluster-groups: "default, edge-eu"}
  labels: [demo, nginx]
  clusterGroups: [default]
  description: the web tier
  name: web
type: Application
version: '1'
"""


def create_body(text: str, name: str = "web") -> dict[str, Any]:
    """What GitOps deploy scripts send: the file byte for byte."""
    return {
        "name": name,
        "version": "1",
        "sourceConfig": text,
        "sourceType": "gitops",
        "description": "GitOps managed via https://example.invalid/repo",
    }


def deploy_to_default(fm: FleetManager, app: dict[str, Any]) -> dict[str, Any]:
    """Create `{name}-default` pinned to the manifest's version, deploy, wait for Success."""
    group = fm.default_group()
    body = {
        "name": f"{app['name']}-{group['name']}",
        "applicationId": app["id"],
        "targetGroup": group["id"],
        "applications": [
            {"id": app["id"], "name": app["name"], "version": "1", "strategy": "manual"}
        ],
    }
    dep = dict(fm.ok("POST", "/deployments", body, expect=201))
    fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    fm.wait_release(dep["id"], "Success")
    return dep


@pytest.fixture
def one(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_of(tmp_path, ("m1",))


def test_envelope_with_units_deploys_and_deleting_the_deployment_removes_them(
    one: Fleet,
) -> None:
    fm = FleetManager(one.coordinator)
    unit_file = one.systemds["m1"].unit_dir / "web.service"

    app = fm.ok("POST", "/deployment-applications", create_body(UNITS_APP), expect=201)
    assert app["sourceConfig"] == UNITS_APP  # byte for byte, comments kept
    assert (app["type"], app["form"], app["version"], app["units"]) == (
        "Application",
        "envelope",
        "1",
        ["web.service"],
    )
    assert app["metadata"] == {
        "name": "web",
        "description": "the web tier",
        "clusterGroups": ["default", "edge-eu"],
        "labels": [{"key": "demo", "value": ""}, {"key": "nginx", "value": ""}],
        "annotations": {"fleet.scalecomputing.com/cluster-groups": "default, edge-eu"},
        "lifecycle": "production",
    }
    # an identical PUT, then one differing only in comments and key order: no new version
    for text in (UNITS_APP, UNITS_APP_REORDERED):
        same = fm.ok("PUT", f"/deployment-applications/{app['id']}", create_body(text))
        assert (same["version"], same["versions"], same["sourceConfig"]) == (
            "1",
            ["1"],
            UNITS_APP,
        )
    # new content under the same `version:` would change what version "1" deploys
    changed = UNITS_APP.replace("gitops-web", "gitops-web2")
    status, err = fm.call("PUT", f"/deployment-applications/{app['id']}", create_body(changed))
    assert status == 409 and "already has a version '1'" in err["message"], err
    # only Application is deployable
    status, err = fm.call(
        "POST",
        "/deployment-applications",
        create_body(UNITS_APP.replace("type: Application", "type: ContainerDefinition"), "cd"),
    )
    assert status == 400 and "only type Application is" in err["message"], err

    dep = deploy_to_default(fm, app)
    assert one.active_on("web.service") == {"m1"}
    assert "gitops-web" in unit_file.read_text()
    shown = one.moorctl("app", "show", "web").stdout
    assert "cluster groups: default, edge-eu" in shown and "lifecycle:      production" in shown
    assert shown.endswith(UNITS_APP)
    assert one.moorctl("app", "show", "--source", "web").stdout == UNITS_APP

    status, err = fm.call("DELETE", f"/deployment-applications/{app['id']}")
    assert status == 409 and "web-default" in err["message"], err

    assert fm.call("DELETE", f"/deployments/{dep['id']}")[0] == 204
    wait_for(lambda: not unit_file.exists(), what="web.service removed from m1")
    wait_for(lambda: one.active_on("web.service") == set(), what="web.service stopped")
    assert fm.call("GET", f"/deployments/{dep['id']}")[0] == 404
    assert fm.call("DELETE", f"/deployment-applications/{app['id']}")[0] == 204


# --- containers -------------------------------------------------------------------------

CONTAINER_APP = f"""\
version: "1"
type: Application
metadata:
  name: shop
  clusterGroup: default
  labels: {{tier: front}}
spec:
  containers:
    - name: shop
      image: {BUSYBOX_TAG}
      command: ["/bin/sh", "-c"]
      args: ["trap 'exit 0' TERM; echo \\"$GREETING\\" > /data/hello; sleep 3600 & wait"]
      env:
        - {{name: GREETING, value: hello from gitops}}
      mounts:
        - {{hostPath: "{{data}}", mountPath: /data}}
      network: none
  rollout:
    min_healthy_s: 1
    timeout_s: 60
"""


class DockerRig(MachineRig):
    """A coordinator and agent m1 on a real systemd manager and a real dockerd."""

    def __init__(self, tmp: Path, systemd: UserSystemd, daemon: Dockerd) -> None:
        self.dockerd = daemon
        daemon.import_busybox()
        env = {**systemd.agent_env(), "DOCKER_HOST": daemon.host}
        super().__init__(tmp, extra=systemd.agent_flags(), env=env)
        self.fm = FleetManager(self.coordinator)


@pytest.fixture
def drig(tmp_path: Path, user_systemd: UserSystemd, dockerd: Dockerd) -> Iterator[DockerRig]:
    r = DockerRig(tmp_path, user_systemd, dockerd)
    try:
        yield r
    finally:
        r.close()


def test_envelope_with_containers_runs_them_without_unit_syntax(
    drig: DockerRig, tmp_path: Path
) -> None:
    fm = drig.fm
    data = tmp_path / "shop-data"
    data.mkdir()
    text = CONTAINER_APP.replace("{data}", str(data))
    # no name in the request: the manifest's metadata.name names the application
    body = {"sourceConfig": text, "sourceType": "gitops"}
    app = fm.ok("POST", "/deployment-applications", body, expect=201)
    assert (app["name"], app["version"], app["units"]) == ("shop", "1", ["shop.container"])
    assert app["metadata"]["labels"] == [{"key": "tier", "value": "front"}]
    same = fm.ok("PUT", f"/deployment-applications/{app['id']}", create_body(text, "shop"))
    assert same["versions"] == ["1"]

    dep = deploy_to_default(fm, app)
    docker = drig.dockerd.client()
    container = docker.api.inspect_container(container_name("shop.container"))
    assert container["State"]["Running"] is True
    assert container["Config"]["Cmd"] == [
        "/bin/sh",
        "-c",
        "trap 'exit 0' TERM; echo \"$GREETING\" > /data/hello; sleep 3600 & wait",
    ]
    assert "GREETING=hello from gitops" in container["Config"]["Env"]
    assert container["Config"]["Labels"][LABEL_UNIT] == "shop.container"
    wait_for(lambda: (data / "hello").exists(), what="the container wrote through its mount")
    assert (data / "hello").read_text() == "hello from gitops\n"

    assert fm.call("DELETE", f"/deployment-applications/{app['id']}")[0] == 409
    assert fm.call("DELETE", f"/deployments/{dep['id']}")[0] == 204
    wait_for(
        # the low-level list: the high-level one inspects each, racing the removal
        lambda: not docker.api.containers(all=True, filters={"label": LABEL_UNIT}),
        timeout=30,
        what="the container removed",
    )
    assert fm.call("DELETE", f"/deployment-applications/{app['id']}")[0] == 204
