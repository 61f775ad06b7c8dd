"""The GitOps Fleet Manager API (/api/v2) against a real coordinator and real agents on
real systemd: the seed document's workflow, 409s, paging, and a rolling rollout over
four machines in which one machine's unit fails."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.deploy.manifest import parse_manifest
from proto.units import unit_file_sha256, unit_hash
from tests.fleetrig import Fleet, fleet_of
from tests.fmclient import FleetManager
from tests.procs import wait_for

pytestmark = pytest.mark.integration

MANIFEST = """\
# GitOps managed: https://example.invalid/repo (comments are kept byte for byte)
units:
  - name: web.service
    contents: |
      [Service]
      ExecStart=/bin/sh -c 'while true; do echo {word}; sleep 1; done'
rollout:
  batch_size: 2
  min_healthy_s: 1
  timeout_s: 60
"""

FAILS_ON_MARKED = """\
units:
  - name: web.service
    contents: |
      [Service]
      ExecStart=/bin/sh -c 'test -e %h/fail-v2 && exit 3; while true; do echo v2; sleep 1; done'
rollout:
  batch_size: 2
  min_healthy_s: 1
  timeout_s: 60
"""


@pytest.fixture
def one(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_of(tmp_path, ("m1",))


@pytest.fixture
def four(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_of(tmp_path, ("m1", "m2", "m3", "m4"))


def test_seed_workflow_and_concurrent_deploy(one: Fleet) -> None:
    fm = FleetManager(one.coordinator)
    # 1. health check, with both ways of presenting the key
    clusters = fm.ok("GET", "/clusters")
    assert clusters["next"] is None
    assert [(c["id"], c["health"]) for c in clusters["items"]] == [("m1", "healthy")]
    assert fm.call("GET", "/clusters", header="bearer")[0] == 200
    status, body = one.coordinator.raw("GET", "/api/v2/clusters", cert=False)
    assert status == 401 and body and json.loads(body)["success"] is False

    # 2-3. list, create, update applications
    assert fm.ok("GET", "/deployment-applications?limit=50") == {"items": [], "next": None}
    text = MANIFEST.format(word="web-v1")
    create = {
        "name": "web",
        "version": "1",
        "sourceConfig": text,
        "sourceType": "gitops",
        "description": "GitOps managed via https://example.invalid/repo",
    }
    app = fm.ok("POST", "/deployment-applications", create, expect=201)
    assert app["sourceConfig"] == text and app["version"] == "1" and app["id"]
    again = fm.ok("POST", "/deployment-applications", create, expect=201)
    assert again["id"] == app["id"]  # a retried create makes no second application
    assert len(fm.all_items("/deployment-applications")) == 1
    comment_only = text.replace("# GitOps", "# (reworded) GitOps")
    same = fm.ok(
        "PUT",
        f"/deployment-applications/{app['id']}",
        {**create, "version": "", "sourceConfig": comment_only},
    )
    assert same["version"] == "1" and same["sourceConfig"] == text
    status, err = fm.call(
        "PUT",
        f"/deployment-applications/{app['id']}",
        {**create, "sourceConfig": "units:\n  - name: web.service\n    contents: 3\n"},
    )
    assert status == 400 and "line 3" in err["message"] and "units[0]" in err["message"]
    assert fm.ok("GET", f"/deployment-applications/{app['id']}")["version"] == "1"

    # 4. cluster groups; 5-6. create and update the deployment
    group = fm.default_group()
    assert group["members"] == ["m1"]
    assert fm.ok("GET", "/deployments?limit=50")["items"] == []
    deployment_body = {
        "name": f"web-{group['name']}",
        "applicationId": app["id"],
        "targetGroup": group["id"],
        "applications": [{"id": app["id"], "name": "web", "version": "1", "strategy": "manual"}],
    }
    dep = fm.ok("POST", "/deployments", deployment_body, expect=201)
    assert (dep["name"], dep["status"], dep["clusterGroupId"]) == (
        "web-default",
        "Created",
        group["id"],
    )
    assert dep["applications"] == [app["id"]]
    assert fm.ok("POST", "/deployments", deployment_body, expect=201)["id"] == dep["id"]
    dep = fm.ok("PUT", f"/deployments/{dep['id']}", deployment_body)
    assert fm.ok("GET", f"/deployments/{dep['id']}")["applicationId"] == app["id"]

    # 7. deploy; a second deploy while the first runs is a 409
    release = fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    assert release["status"] == "Running"
    status, err = fm.call("POST", f"/deployments/{dep['id']}/deploy")
    assert status == 409 and "already has a release running" in err["message"]
    assert fm.call("DELETE", f"/deployments/{dep['id']}")[0] == 409
    assert fm.call("DELETE", f"/deployment-applications/{app['id']}")[0] == 409

    # 8. releases: an array, oldest first, the latest last
    releases = fm.wait_release(dep["id"], "Success")
    assert [r["id"] for r in releases] == [release["id"]]
    options = parse_manifest(text).units[0].options
    (unit,) = releases[-1]["units"]
    assert unit == {
        "name": "web.service",
        "hash": unit_hash(options),
        "sha256": unit_file_sha256(options),
    }
    jobs = fm.ok("GET", f"/deployment-releases/{release['id']}/jobs")
    assert [(j["clusterId"], j["status"]) for j in jobs] == [("m1", "Success")]
    assert one.active_on("web.service") == {"m1"}
    assert fm.ok("GET", f"/deployments/{dep['id']}")["status"] == "Success"

    # another deployment may not put a unit of the same name on the same machine
    twin = fm.ok(
        "POST", "/deployment-applications", {"name": "twin", "sourceConfig": text}, expect=201
    )
    twin_dep = fm.ok(
        "POST", "/deployments", {"applicationId": "twin", "clusterGroupId": "default"}, expect=201
    )
    status, err = fm.call("POST", f"/deployments/{twin_dep['id']}/deploy")
    assert status == 409, err
    assert "web.service is already on machine m1 from deployment 'web-default'" in err["message"]
    assert fm.call("DELETE", f"/deployments/{twin_dep['id']}")[0] == 204
    assert fm.call("DELETE", f"/deployment-applications/{twin['id']}")[0] == 204

    # a new version, then deploy it
    v2 = fm.ok(
        "PUT",
        f"/deployment-applications/{app['id']}",
        {**create, "version": "", "sourceConfig": MANIFEST.format(word="web-v2")},
    )
    assert v2["version"] == "2" and v2["versions"] == ["1", "2"]
    fm.ok(
        "PUT",
        f"/deployments/{dep['id']}",
        {**deployment_body, "applications": [{"id": app["id"], "version": "2"}]},
    )
    fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    releases = fm.wait_release(dep["id"], "Success")
    assert [r["applicationVersion"] for r in releases] == ["1", "2"]
    assert "web-v2" in (one.systemds["m1"].unit_dir / "web.service").read_text()

    # deleting removes its units from the machine
    assert fm.call("DELETE", f"/deployments/{dep['id']}")[0] == 204
    wait_for(
        lambda: not (one.systemds["m1"].unit_dir / "web.service").exists(), what="unit removed"
    )
    assert fm.call("GET", f"/deployments/{dep['id']}")[0] == 404
    assert fm.call("DELETE", f"/deployment-applications/{app['id']}")[0] == 204


def test_bad_input_and_paging(one: Fleet) -> None:
    fm = FleetManager(one.coordinator)
    status, err = fm.call("POST", "/deployment-applications", {"name": "x"})
    assert (
        status == 400
        and "sourceConfig" in err["message"]
        and err["error"]["code"] == "VALIDATION_ERROR"
    )
    status, _ = one.coordinator.raw(
        "POST",
        "/api/v2/deployment-applications",
        headers={"api-key": fm.key, "content-type": "text/plain"},
        data=b"name: x",
        cert=False,
    )
    assert status == 415
    assert fm.call("GET", "/deployments/nope")[0] == 404
    assert fm.call("POST", "/deployments/nope/deploy")[0] == 404
    status, err = fm.call(
        "POST", "/deployments", {"applicationId": "nope", "clusterGroupId": "default"}
    )
    assert status == 400 and "applicationId" in err["message"]
    assert fm.call("GET", "/clusters?limit=zero")[0] == 400
    assert fm.call("GET", "/clusters?cursor=@@@")[0] == 400

    # a unit name is one unit per machine: a fleet unit of that name blocks the deploy
    fleet_unit = {
        "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 300"}],
        "machines": ["m1"],
    }
    one.coordinator.api("PUT", "/moorage/v1/units/clash.service", fleet_unit)
    clash = MANIFEST.format(word="c").replace("web.service", "clash.service")
    app = fm.ok(
        "POST", "/deployment-applications", {"name": "clash", "sourceConfig": clash}, expect=201
    )
    dep = fm.ok(
        "POST", "/deployments", {"applicationId": "clash", "targetGroup": "default"}, expect=201
    )
    status, err = fm.call("POST", f"/deployments/{dep['id']}/deploy")
    assert (
        status == 409 and "clash.service is already on machine m1 as a fleet unit" in err["message"]
    )
    assert fm.ok("GET", f"/deployments/{dep['name']}")["status"] == "Created"
    assert fm.call("DELETE", f"/deployments/{dep['id']}")[0] == 204
    assert fm.call("DELETE", f"/deployment-applications/{app['id']}")[0] == 204

    for i in range(5):
        fm.ok(
            "POST",
            "/cluster-groups",
            {"name": f"rack-{i}", "selector": {"rack": str(i)}},
            expect=201,
        )
    status, err = fm.call("POST", "/cluster-groups", {"name": "rack-0", "selector": {"rack": "9"}})
    assert status == 409 and "rack-0" in err["message"]
    first = fm.ok("GET", "/cluster-groups?limit=2")
    assert len(first["items"]) == 2 and first["next"].startswith("https://127.0.0.1:")
    names = [g["name"] for g in fm.all_items("/cluster-groups?limit=2")]
    assert names == ["default", "rack-0", "rack-1", "rack-2", "rack-3", "rack-4"]
    assert len(fm.ok("GET", "/cluster-groups?limit=1000")["items"]) == 6  # capped at 200
    default = fm.default_group()
    assert fm.call("DELETE", f"/cluster-groups/{default['id']}")[0] == 400
    # a group without machines: the release succeeds at once, for members to come
    app = fm.ok(
        "POST",
        "/deployment-applications",
        {"name": "idle", "sourceConfig": MANIFEST.format(word="i")},
        expect=201,
    )
    dep = fm.ok(
        "POST", "/deployments", {"applicationId": "idle", "clusterGroupId": "rack-4"}, expect=201
    )
    assert dep["name"] == "idle-rack-4"
    release = fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    assert release["status"] == "Success" and release["progress"]["total"] == 0
    assert "no machines" in release["message"]
    assert fm.call("DELETE", f"/cluster-groups/{dep['clusterGroupId']}")[0] == 409
    assert fm.call("DELETE", f"/deployments/{dep['id']}")[0] == 204
    assert fm.call("DELETE", f"/deployment-applications/{app['id']}")[0] == 204
    rack = next(g for g in fm.all_items("/cluster-groups") if g["name"] == "rack-0")
    assert fm.ok("PUT", f"/cluster-groups/{rack['id']}", {"clusterIds": ["m1"]})["members"] == [
        "m1"
    ]
    assert fm.call("DELETE", f"/cluster-groups/{rack['id']}")[0] == 204


def test_rollout_stops_after_a_failed_batch(four: Fleet) -> None:
    """Batches of two over four machines; m2's unit fails with v2: the rollout stops
    after the first batch and m3, m4 keep v1."""
    fm = FleetManager(four.coordinator)
    app = fm.ok(
        "POST",
        "/deployment-applications",
        {"name": "web", "sourceConfig": MANIFEST.format(word="v1"), "sourceType": "gitops"},
        expect=201,
    )
    group = fm.default_group()
    dep = fm.ok(
        "POST",
        "/deployments",
        {"applicationId": app["id"], "clusterGroupId": group["id"]},
        expect=201,
    )
    assert dep["name"] == "web-default"
    v1 = fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    assert (v1["batches"], v1["batchSize"]) == (2, 2)
    fm.wait_release(dep["id"], "Success")
    assert four.active_on("web.service") == {"m1", "m2", "m3", "m4"}
    v1_text = (four.systemds["m3"].unit_dir / "web.service").read_text()

    (Path(four.systemds["m2"].env["HOME"]) / "fail-v2").touch()
    fm.ok(
        "PUT",
        f"/deployment-applications/{app['id']}",
        {"name": "web", "sourceConfig": FAILS_ON_MARKED},
    )
    started = time.monotonic()
    v2 = fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    releases = fm.wait_release(dep["id"], "Failed")
    assert time.monotonic() - started < 30
    latest = releases[-1]
    assert (
        latest["id"] == v2["id"]
        and "m2" in latest["message"]
        and "web.service failed" in latest["message"]
    )
    assert latest["progress"] == {
        "total": 4,
        "pending": 2,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
    }
    jobs = {j["clusterId"]: j for j in fm.ok("GET", f"/deployment-releases/{v2['id']}/jobs")}
    assert {k: (j["batch"], j["status"]) for k, j in jobs.items()} == {
        "m1": (1, "Success"),
        "m2": (1, "Failed"),
        "m3": (2, "Created"),
        "m4": (2, "Created"),
    }
    assert fm.ok("GET", f"/deployments/{dep['id']}")["status"] == "Failed"
    # the other batch keeps the old release, untouched
    for mid in ("m3", "m4"):
        assert (four.systemds[mid].unit_dir / "web.service").read_text() == v1_text
    assert four.active_on("web.service") == {"m1", "m3", "m4"}
    assert "v2" in (four.systemds["m1"].unit_dir / "web.service").read_text()
    # the deployment is free again: a fixed version goes out everywhere
    (Path(four.systemds["m2"].env["HOME"]) / "fail-v2").unlink()
    fm.ok(
        "PUT",
        f"/deployment-applications/{app['id']}",
        {"name": "web", "sourceConfig": MANIFEST.format(word="v3")},
    )
    fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    fm.wait_release(dep["id"], "Success")
    assert four.active_on("web.service") == {"m1", "m2", "m3", "m4"}
    # The domain events of all this, in the audit log (issue 17).
    audit = four.coordinator.api("GET", "/moorage/v1/audit?kind=event&limit=1000")["entries"]
    seen = [(e["event"], e["subject"], e.get("data", {}).get("batch")) for e in reversed(audit)]
    story = [x for x in seen if x[0].startswith(("deployment.", "rollout."))]
    assert story == [
        ("deployment.started", "web-default", None),
        ("rollout.batch", "web-default", "1"),
        ("rollout.batch", "web-default", "2"),
        ("deployment.completed", "web-default", None),
        ("deployment.started", "web-default", None),
        ("rollout.batch", "web-default", "1"),
        ("deployment.failed", "web-default", None),
        ("deployment.started", "web-default", None),
        ("rollout.batch", "web-default", "1"),
        ("rollout.batch", "web-default", "2"),
        ("deployment.completed", "web-default", None),
    ], story
    assert {s for k, s, _ in seen if k == "machine.up"} == {"m1", "m2", "m3", "m4"}
    assert next(e for e in audit if e["event"] == "deployment.started")["actor"].startswith(
        "token:"
    )


ROLLBACK = """\
units:
  - name: web.service
    contents: |
      [Service]
      ExecStart=/bin/sh -c 'test -e %h/fail-{word} && exit 3; while true; do echo {word}; sleep 1; done'
rollout:
  batch_size: 1
  min_healthy_s: {healthy}
  timeout_s: 60
  rollback_on_failure: true
"""


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_of(tmp_path, ("m1", "m2"))


def test_rollback_restart_and_new_members(two: Fleet) -> None:
    fm = FleetManager(two.coordinator)
    unit_file = {mid: sd.unit_dir / "web.service" for mid, sd in two.systemds.items()}
    app = fm.ok(
        "POST",
        "/deployment-applications",
        {"name": "web", "sourceConfig": ROLLBACK.format(word="v1", healthy=1)},
        expect=201,
    )
    dep = fm.ok(
        "POST", "/deployments", {"applicationId": app["id"], "targetGroup": "default"}, expect=201
    )
    v1 = fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    fm.wait_release(dep["id"], "Success")
    v1_text = unit_file["m1"].read_text()

    # v2 fails on m1, the first batch: m1 goes back to v1, m2 never sees v2
    (Path(two.systemds["m1"].env["HOME"]) / "fail-v2").touch()
    fm.ok(
        "PUT",
        f"/deployment-applications/{app['id']}",
        {"sourceConfig": ROLLBACK.format(word="v2", healthy=1)},
    )
    v2 = fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    failed = fm.wait_release(dep["id"], "Failed")[-1]
    assert failed["rolledBack"] is True and failed["previousReleaseId"] == v1["id"]
    assert "rolled back to release" in failed["message"]
    wait_for(lambda: unit_file["m1"].read_text() == v1_text, what="m1 back on v1")
    wait_for(lambda: two.active_on("web.service") == {"m1", "m2"}, what="both running v1")
    assert unit_file["m2"].read_text() == v1_text
    jobs = fm.ok("GET", f"/deployment-releases/{v2['id']}/jobs")
    assert [(j["clusterId"], j["status"]) for j in jobs] == [("m1", "Failed"), ("m2", "Created")]

    # kill -9 of the coordinator in the middle of a rollout: it resumes where it was
    fm.ok(
        "PUT",
        f"/deployment-applications/{app['id']}",
        {"sourceConfig": ROLLBACK.format(word="v3", healthy=3)},
    )
    v3 = fm.ok("POST", f"/deployments/{dep['id']}/deploy", expect=201)
    wait_for(lambda: "v3" in unit_file["m1"].read_text(), what="v3 on m1")
    two.coordinator.kill9()
    two.coordinator.start()
    wait_for(lambda: two.coordinator.connected() == {"m1", "m2"}, timeout=30, what="agents back")
    releases = fm.wait_release(dep["id"], "Success", timeout=60)
    assert releases[-1]["id"] == v3["id"] and releases[-1]["progress"]["succeeded"] == 2
    assert all("v3" in f.read_text() for f in unit_file.values())

    # a machine that joins the group gets the deployment's current release
    two.add_machine("m3")
    wait_for(lambda: "m3" in two.active_on("web.service"), timeout=30, what="m3 runs web")
    assert "v3" in (two.systemds["m3"].unit_dir / "web.service").read_text()


def test_moorctl_apps_groups_deploy_and_rollout_status(one: Fleet) -> None:
    manifest = one.workdir / "web.yaml"
    manifest.write_text(MANIFEST.format(word="cli-v1"))
    out = one.moorctl("app", "push", "web", str(manifest)).stdout
    assert "Application web: version 1 (created)" in out
    assert "(unchanged)" in one.moorctl("app", "push", "web", str(manifest)).stdout
    assert one.moorctl("app", "show", "--source", "web").stdout == manifest.read_text()
    assert one.moorctl("app", "show", "web").stdout.endswith(manifest.read_text())
    assert [a["name"] for a in one.json("app", "list")] == ["web"]

    out = one.moorctl(
        "group", "create", "racked", "--selector", "rack=r1", "--machine", "m1"
    ).stdout
    assert "Group racked holds 1 machine(s)" in out
    table = one.moorctl("group", "list").stdout
    assert "default" in table and "(every machine)" in table and "rack=r1" in table
    bad = one.moorctl("group", "create", "oops", "--selector", "norack", check=False)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr

    out = one.moorctl("deployment", "create", "web", "--group", "racked").stdout
    assert "Deployment web-racked created (Created)" in out
    again = one.moorctl("deployment", "create", "web", "--group", "racked").stdout
    assert "Deployment web-racked already exists (Created)" in again and "created" not in again
    assert "No release yet" in one.moorctl("rollout", "status", "web-racked").stdout
    out = one.moorctl("deploy", "web-racked").stdout
    assert "Success" in out and "1/1 machines done" in out and "m1" in out
    assert one.active_on("web.service") == {"m1"}
    status = one.json("rollout", "status", "web-racked")
    assert status["release"]["status"] == "Success" and status["jobs"][0]["clusterId"] == "m1"
    in_use = one.moorctl("group", "delete", "racked", check=False)
    assert in_use.returncode == 1 and "used by deployment" in in_use.stderr

    # a failing version: deploy exits 1, rollout status shows why
    manifest.write_text(MANIFEST.format(word="x").replace("while true", "exit 4; while true"))
    assert "version 2 (new version)" in one.moorctl("app", "push", "web", str(manifest)).stdout
    failed = one.moorctl("deploy", "web-racked", check=False)
    assert failed.returncode == 1 and "Failed" in failed.stdout
    status = one.moorctl("rollout", "status", "web-racked", check=False)
    assert status.returncode == 1 and "web.service failed" in status.stdout
    rows = one.moorctl("releases", "web-racked").stdout.splitlines()
    assert len(rows) == 3 and "Success" in rows[1] and "Failed" in rows[2]
    assert "Failed" in one.moorctl("deployment", "list").stdout
    one.moorctl("deployment", "delete", "web-racked")
    wait_for(lambda: not (one.systemds["m1"].unit_dir / "web.service").exists(), what="removed")
    assert "Group racked deleted" in one.moorctl("group", "delete", "racked").stdout
