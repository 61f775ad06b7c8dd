"""moorctl as a new user meets it, against a real coordinator and a real agent on real
systemd: `submit` of many files is one request, global options after the subcommand,
`journal` of a unit on no machine in CLI words, and /api/v2 health."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleetrig import Fleet, fleet_of
from tests.fmclient import FleetManager
from tests.procs import AgentProc, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def one(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_of(tmp_path, ("m1",))


def requests_to(coordinator: CoordinatorProc, method: str, route: str) -> int:
    """Requests the coordinator served on a route, from its own request metrics."""
    pattern = (
        rf'^moorage_api_request_seconds_count\{{method="{method}",route="{re.escape(route)}",'
        r"[^}]*\} (\S+)"
    )
    return sum(int(float(n)) for n in re.findall(pattern, coordinator.metrics(), re.M))


def test_submit_of_many_files_is_one_request_and_json_goes_anywhere(one: Fleet) -> None:
    names = [f"b{i:03d}.service" for i in range(200)]
    for i, name in enumerate(names):
        (one.workdir / name).write_text(f"[Service]\nExecStart=/bin/sleep {1000 + i}\n")
    (one.workdir / "t@.service").write_text("[Service]\nExecStart=/bin/sleep %i\n")
    (one.workdir / "b000.service").write_text("[Service]\nExecStart=/bin/sleep 1\n")
    one.moorctl("submit", "b000.service")  # submitted before: left as it was
    before = {
        route: requests_to(one.coordinator, "PUT", route)
        for route in ("/moorage/v1/units", "/fleet/v1/units/{name}")
    }
    gets = requests_to(one.coordinator, "GET", "/fleet/v1/units/{name}")

    out = one.moorctl("submit", *names, "t@7.service")
    lines = out.stdout.splitlines()
    assert lines[0] == "Unit b000.service already submitted"
    assert lines[1:] == [f"Unit {n} submitted" for n in names[1:]] + ["Unit t@7.service submitted"]
    assert requests_to(one.coordinator, "PUT", "/moorage/v1/units") == (
        before["/moorage/v1/units"] + 1
    )
    assert (
        requests_to(one.coordinator, "PUT", "/fleet/v1/units/{name}")
        == (before["/fleet/v1/units/{name}"])
    )
    assert requests_to(one.coordinator, "GET", "/fleet/v1/units/{name}") == gets

    files = one.json("list-unit-files")
    assert len(files) == 201 and {u["desiredState"] for u in files} == {"inactive"}
    first = next(u for u in files if u["name"] == "b000.service")
    assert first["options"][0]["value"] == "/bin/sleep 1"  # not replaced by the batch
    # global options after the subcommand, as people type them
    after = one.moorctl("list-unit-files", "--json")
    assert after.stdout == one.moorctl("--json", "list-unit-files").stdout
    assert one.moorctl("list-units", "--json").stdout.strip() == "[]"

    again = one.moorctl("submit", "b001.service", "b002.service").stdout
    assert again == "Unit b001.service already submitted\nUnit b002.service already submitted\n"
    # a name with no file and not in the cluster: fleetctl's message
    missing = one.moorctl("submit", "nothing.service", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_journal_of_a_unit_on_no_machine_and_health(one: Fleet) -> None:
    (one.workdir / "hello.service").write_text("[Service]\nExecStart=/bin/sleep 300\n")
    one.moorctl("submit", "hello.service")
    out = one.moorctl("journal", "hello.service", check=False)
    assert out.returncode == 1
    assert out.stderr.startswith("moorctl: hello.service is not scheduled on any machine")
    assert "machine=" not in out.stderr
    status, body = one.coordinator.raw("GET", "/moorage/v1/units/hello.service/journal")
    assert status == 409 and b"not scheduled on any machine" in body

    fm = FleetManager(one.coordinator)
    (cluster,) = fm.ok("GET", "/clusters")["items"]
    assert (cluster["health"], cluster["healthReason"]) == ("healthy", "")
    assert cluster["capabilities"] == ["systemd"]

    # a machine whose agent reaches neither systemd nor Docker can run nothing
    nowhere = one.tmp / "nowhere"
    (nowhere / "run").mkdir(parents=True)
    bare = AgentProc(
        one.tmp,
        "bare",
        one.coordinator,
        extra=["--systemd-scope", "user", "--unit-dir", str(nowhere / "units")],
        env={
            "XDG_RUNTIME_DIR": str(nowhere / "run"),
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={nowhere}/no-bus",
            "DOCKER_HOST": f"unix://{nowhere}/no-docker.sock",
        },
    )
    assert bare.enroll(one.coordinator.join_token()).returncode == 0
    bare.start()
    try:
        wait_for(lambda: "bare" in one.coordinator.connected(), what="bare agent connected")
        cluster = fm.ok("GET", "/clusters/bare")
        assert cluster["capabilities"] == [] and cluster["health"] == "unhealthy"
        assert "can run nothing" in cluster["healthReason"]
    finally:
        bare.stop()
