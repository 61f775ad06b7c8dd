"""The dashboard (/ui/) end to end, in a real browser: Debian's headless Chromium driven
by Playwright, against a real coordinator and two real agents on real systemd managers.

Log in; the fleet page lists the test machines; start a unit from the units page and
see it turn active without the page reloading; a user without the `users` permission
sees no admin link and the server refuses the page. The tests take the screenshots the
README shows: into a temporary folder, or into docs/screenshots/ with
`MOORAGE_SCREENSHOTS=docs` (so an ordinary run leaves the tree unchanged)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleetrig import Fleet, fleet_of
from tests.fmclient import FleetManager
from tests.harness.dockerd import Dockerd
from tests.harness.fixtures import dockerd  # noqa: F401
from tests.procs import wait_for
from tests.taskrig import TaskRig, counting

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery 9"
SHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("MOORAGE_SCREENSHOTS") == "docs"
    else Path(tempfile.mkdtemp(prefix="moorage-screenshots-"))
)
if SHOTS.parent.name != "docs":
    atexit.register(shutil.rmtree, SHOTS, True)
UNIT = "web.service"
LOGIN_FORM = b'id="password"'


def browser_missing() -> str:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright missing (pip install -e .[test])"
    return ""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    yield from fleet_of(tmp_path, ("m1", "m2"))


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def make_user(fleet: Fleet | TaskRig, name: str, permissions: list[str]) -> None:
    made = fleet.coordinator.api(
        "POST",
        "/api/v1/users/",
        {"username": name, "password": PASSWORD, "permissions": permissions},
    )
    assert made["success"] is True, made


def login(browser: Any, fleet: Fleet | TaskRig, username: str, home: str = "fleet") -> Any:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{fleet.coordinator.endpoint}/ui/")
    assert page.url.endswith("/ui/login"), page.url
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"**/ui/{home}")
    return page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def test_login_fleet_and_start_a_unit_live(fleet: Fleet, browser: Any) -> None:
    make_user(fleet, "ops", ["admin"])
    (fleet.workdir / UNIT).write_text(
        "[Unit]\nDescription=dashboard test\n[Service]\nExecStart=/bin/sleep 3600\n"
    )
    fleet.moorctl("submit", UNIT)

    page = login(browser, fleet, "ops")
    rows = page.locator("tr[data-machine]")
    wait_for(lambda: rows.count() == 2, timeout=30, what="two machines listed")
    assert {rows.nth(i).get_attribute("data-machine") for i in range(2)} == {"m1", "m2"}
    assert page.locator("tr[data-machine='m1'] td.state-connected").count() == 1
    shot(page, "fleet.png")

    # Search narrows the table (server-side, paged).
    page.get_by_label("Search machines").fill("m2")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/ui/fleet?q=m2*")
    assert page.locator("tr[data-machine]").count() == 1

    page.get_by_role("link", name="Units").click()
    page.wait_for_url("**/ui/units")
    page.evaluate("window.__notReloaded = true")
    assert fleet.active_on(UNIT) == set()
    page.get_by_role("button", name=f"Start {UNIT}").click()
    state = page.locator(f"[data-unit-state^='{UNIT}@']")
    state.first.wait_for()
    page.wait_for_function(
        "name => [...document.querySelectorAll('[data-unit-state]')]"
        ".some(e => e.getAttribute('data-unit-state').startsWith(name + '@')"
        " && e.textContent.trim() === 'active')",
        arg=UNIT,
        timeout=60_000,
    )
    assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
    assert len(fleet.active_on(UNIT)) == 1  # really running on one machine's systemd
    shot(page, "units.png")

    # The machine's page: its units with their state, and a unit's journal tail.
    (host,) = fleet.active_on(UNIT)
    page.goto(f"{fleet.coordinator.endpoint}/ui/fleet/{host}")
    assert page.locator(f"[data-unit-state='{UNIT}@{host}']").text_content() == "active"
    page.get_by_role("link", name="journal").first.click()
    page.wait_for_url(f"**/ui/fleet/{host}?unit=*")
    assert page.get_by_role("heading", name=f"Journal of {UNIT} (last 50 lines)").count() == 1
    assert "Started web.service" in (page.locator("pre").text_content() or "")
    assert page.get_by_text("No drift reported.").count() == 1
    shot(page, "machine.png")
    page.goto(f"{fleet.coordinator.endpoint}/ui/units")
    page.evaluate("window.__notReloaded = true")

    # Stop it again from the UI: inactive on screen and in systemd.
    page.get_by_role("button", name=f"Stop {UNIT}").click()
    page.wait_for_function(
        "name => [...document.querySelectorAll('[data-unit-state]')]"
        ".every(e => !e.getAttribute('data-unit-state').startsWith(name + '@')"
        " || e.textContent.trim() !== 'active')",
        arg=UNIT,
        timeout=60_000,
    )
    wait_for(lambda: fleet.active_on(UNIT) == set(), timeout=30, what="unit stopped")
    assert page.evaluate("window.__notReloaded") is True

    # The admin sees the users page.
    page.get_by_role("link", name="Users").click()
    page.wait_for_url("**/ui/users")
    assert page.get_by_role("cell", name="ops", exact=True).count() == 1
    shot(page, "users.png")

    # The audit log shows the start and stop made from the dashboard, by whom.
    page.get_by_role("link", name="Audit log").click()
    page.wait_for_url("**/ui/audit")
    starts = page.locator("tr[data-audit]", has_text=f"POST /ui/units/{UNIT}/start")
    assert starts.count() == 1 and "user:ops" in (starts.text_content() or "")
    shot(page, "audit.png")
    page.get_by_role("link", name="WebOps").click()
    page.wait_for_url("**/ui/webops")
    assert page.get_by_text("No WebOps deployments.").count() == 1


def test_permissions_session_cookie_and_csrf(fleet: Fleet, browser: Any) -> None:
    make_user(fleet, "ops", ["admin"])
    make_user(fleet, "fleeter", ["fleet"])
    coord = fleet.coordinator

    page = login(browser, fleet, "fleeter")
    assert page.get_by_role("link", name="Fleet").count() == 1
    assert page.get_by_role("link", name="Users").count() == 0
    assert page.get_by_role("link", name="Audit log").count() == 0
    for admin_page, needs in (
        ("users", "users"),
        ("audit", "admin"),
        ("environments", "environments"),
    ):
        response = page.goto(f"{coord.endpoint}/ui/{admin_page}")
        assert response is not None and response.status == 403, admin_page
        assert f"needs the '{needs}' permission" in response.text()

    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["moorage_session"]
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
    assert session["path"] == "/ui"

    # The cookie works on /ui/ only: an API route does not take it.
    headers = {"Cookie": f"moorage_session={session['value']}"}
    status, _ = coord.raw("GET", "/fleet/v1/machines", headers=headers, cert=False)
    assert status == 401
    status, text = coord.raw("GET", "/ui/fleet", headers=headers, cert=False)
    assert status == 200 and b"m1" in text and LOGIN_FORM not in text
    # ... and a Bearer token does not open the dashboard.
    token_status, body = coord.raw(
        "POST",
        "/api/v1/auth/token/",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"username": "ops", "password": PASSWORD}).encode(),
        cert=False,
    )
    assert token_status == 201, body
    bearer = {"Authorization": f"Bearer {json.loads(body)['data']['token']}"}
    status, text = coord.raw("GET", "/ui/users", headers=bearer, cert=False)
    assert status == 200 and LOGIN_FORM in text  # sent to the login form

    # A form posted without the session's CSRF token is refused.
    form = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    status, _ = coord.raw(
        "POST", "/ui/units/x.service/start", headers=form, data=b"csrf=wrong", cert=False
    )
    assert status == 403
    # A wrong password: 401 and the form again.
    other = browser.new_context(ignore_https_errors=True).new_page()
    other.goto(f"{coord.endpoint}/ui/login")
    other.get_by_label("Username").fill("fleeter")
    other.get_by_label("Password").fill("not the password")
    with other.expect_response(
        lambda r: r.url.endswith("/ui/login") and r.request.method == "POST"
    ) as info:
        other.get_by_role("button", name="Log in").click()
    assert info.value.status == 401
    assert other.get_by_role("alert").text_content() == "invalid username or password"

    # Logging out ends the session on the server: the old cookie no longer works.
    page.goto(f"{coord.endpoint}/ui/fleet")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/ui/login")
    status, text = coord.raw("GET", "/ui/fleet", headers=headers, cert=False)
    assert status == 200 and LOGIN_FORM in text


@pytest.fixture
def rig(tmp_path: Path, dockerd: Dockerd) -> Iterator[TaskRig]:  # noqa: F811
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    r = TaskRig(tmp_path, dockerd)
    try:
        yield r
    finally:
        r.close()


def test_a_running_tasks_log_grows_on_screen(rig: TaskRig, browser: Any) -> None:
    make_user(rig, "runner", ["tasks"])
    command, whole = counting(40, "0.25")
    run_id = rig.execute(rig.define("counter", command))
    page = login(browser, rig, "runner", home="tasks")
    page.get_by_role("link", name=run_id[:8]).click()
    page.wait_for_url(f"**/ui/tasks/runs/{run_id}")
    page.evaluate("window.__notReloaded = true")
    log = page.locator("#log")
    page.wait_for_function("() => document.getElementById('log').textContent.includes('line 3\\n')")
    early = len(log.text_content() or "")
    assert "line 40" not in (log.text_content() or ""), "the run finished before the page showed it"
    rig_status = rig.run(run_id)["status"]
    assert rig_status in ("PENDING", "RUNNING"), rig_status
    page.wait_for_function(
        "() => document.getElementById('log').textContent.includes('line 20\\n')", timeout=60_000
    )
    assert len(log.text_content() or "") > early
    shot(page, "task-run.png")
    page.wait_for_function(
        "() => document.querySelector('[data-run-status]').textContent.trim() === 'STOPPED'",
        timeout=60_000,
    )
    page.wait_for_function(
        "() => document.getElementById('log').textContent.includes('line 40\\n')", timeout=30_000
    )
    assert log.text_content() == whole  # each line once, in order
    assert page.evaluate("window.__notReloaded") is True


ROLLOUT = """\
units:
  - name: site.service
    contents: |
      [Service]
      ExecStart=/bin/sh -c 'while true; do echo up; sleep 1; done'
rollout:
  batch_size: 1
  min_healthy_s: 2
  timeout_s: 60
"""


def test_deploy_a_release_and_watch_the_rollout_live(fleet: Fleet, browser: Any) -> None:
    fm = FleetManager(fleet.coordinator)
    app = fm.ok(
        "POST",
        "/deployment-applications",
        {"name": "site", "version": "1", "sourceConfig": ROLLOUT, "sourceType": "gitops"},
        expect=201,
    )
    group = fm.default_group()
    dep = fm.ok(
        "POST",
        "/deployments",
        {"name": "site-prod", "applicationId": app["id"], "targetGroup": group["id"]},
        expect=201,
    )
    make_user(fleet, "deployer", ["deployments"])
    page = login(browser, fleet, "deployer", home="deployments")
    page.get_by_role("link", name="site-prod").click()
    page.wait_for_url(f"**/ui/deployments/{dep['id']}")
    page.evaluate(
        "window.__notReloaded = true; window.__kinds = [];"
        "document.addEventListener('moorage:event', e => window.__kinds.push(e.detail.kind))"
    )
    page.get_by_role("button", name="Deploy").click()
    status = page.locator("[data-release-status]")
    page.wait_for_function(
        "() => { const s = document.querySelector('[data-release-status]');"
        " return s && s.textContent.trim() === 'Success'; }",
        timeout=90_000,
    )
    kinds = page.evaluate("window.__kinds")
    assert "deployment.started" in kinds and "rollout.batch" in kinds, kinds
    assert "deployment.completed" in kinds, kinds
    assert page.evaluate("window.__notReloaded") is True
    assert status.text_content() == "Success"
    jobs = page.locator("tr[data-job]")
    assert jobs.count() == 2
    assert [jobs.nth(i).locator("td").nth(2).text_content() for i in range(2)] == [
        "Success",
        "Success",
    ]
    assert fleet.active_on("site.service") == {"m1", "m2"}
    shot(page, "rollout.png")


def test_approve_a_promotion_as_a_second_user_not_as_the_requester(
    fleet: Fleet, browser: Any
) -> None:
    coord = fleet.coordinator
    app = coord.api(
        "POST",
        "/api/v2/deployment-applications",
        {"name": "shop", "version": "1", "sourceConfig": ROLLOUT, "sourceType": "git"},
    )
    prod = coord.api(
        "POST",
        "/api/v1/environments",
        {"name": "production", "orderIndex": 1, "requiredApprovals": 1, "requireSod": True},
    )
    coord.api(
        "POST",
        "/api/v1/targets",
        {
            "environmentId": prod["id"],
            "name": "prod-01",
            "targetType": "compose_host",
            "connection": {"host": "10.0.0.1"},
            "machineId": "m1",
        },
    )
    # A freeze window from the day after tomorrow: on the calendar, no bar to today's promotion.
    day = 86400
    starts = (int(time.time()) // day + 2) * day
    coord.api(
        "POST",
        f"/api/v1/environments/{prod['id']}/freeze-windows",
        {
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(starts)),
            "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(starts + day - 1)),
            "reason": "Holiday freeze",
        },
    )
    make_user(fleet, "alice", ["deployments", "environments", "approvals"])
    make_user(fleet, "bob", ["environments", "approvals"])
    status, body = coord.raw(
        "POST",
        "/api/v1/auth/token/",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"username": "alice", "password": PASSWORD}).encode(),
        cert=False,
    )
    assert status == 201, body
    alice_token = json.loads(body)["data"]["token"]
    status, body = coord.raw(
        "POST",
        f"/api/v1/environments/{prod['id']}/promotions",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {alice_token}"},
        data=json.dumps({"applicationId": app["id"], "version": "1"}).encode(),
        cert=False,
    )
    assert status == 201, body
    promotion = json.loads(body)
    assert promotion["status"] == "pending_approval"

    # The requester's own approve is refused by the service (separation of duties).
    alice = login(browser, fleet, "alice", home="deployments")
    alice.get_by_role("link", name="Environments").click()
    alice.wait_for_url("**/ui/environments")
    row = alice.locator(f"tr[data-promotion='{promotion['id']}']")
    row.get_by_role("button", name="Approve").click()
    alert = alice.locator("#flash")
    alice.wait_for_function("() => document.getElementById('flash').textContent.length > 0")
    assert "Refused (403)" in (alert.text_content() or "")
    calendar = alice.locator("table.calendar tr", has_text="production").locator("td")
    assert [calendar.nth(i).get_attribute("title") for i in range(4)] == [
        None,
        None,
        "Holiday freeze",
        None,
    ]
    assert "separation of duties" in (alert.text_content() or "")
    assert coord.api("GET", f"/api/v1/promotions/{promotion['id']}")["status"] == (
        "pending_approval"
    )
    shot(alice, "approval-refused.png")
    alice.evaluate("window.__notReloaded = true")

    # A second user approves: the promotion rolls out; the requester's page follows live.
    bob = login(browser, fleet, "bob", home="environments")
    bob.locator(f"tr[data-promotion='{promotion['id']}']").get_by_role(
        "button", name="Approve"
    ).click()
    alice.wait_for_function(
        "id => { const r = document.querySelector(`tr[data-promotion='${id}'] [data-promotion-status]`);"
        " return r && r.textContent.trim() === 'completed'; }",
        arg=promotion["id"],
        timeout=90_000,
    )
    assert alice.evaluate("window.__notReloaded") is True
    done = coord.api("GET", f"/api/v1/promotions/{promotion['id']}")
    assert done["status"] == "completed" and [a["name"] for a in done["approvals"]] == ["bob"]
    assert fleet.active_on("site.service") == {"m1"}
    assert alice.locator("tr[data-env='production']").get_by_text("shop").count() == 1
    shot(alice, "environments.png")
