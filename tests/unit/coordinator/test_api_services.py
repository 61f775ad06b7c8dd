"""The domain services the API adapters call (machines, tokens, reports, logs) and the
HTTP conventions they share, in-process on a real SQLite store: no hub sessions, no
TLS, no processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from coordinator.api.routing import (
    ENVELOPE,
    FLEET,
    Family,
    domain_status,
    family_of,
    register,
)
from coordinator.config import CoordinatorConfig
from coordinator.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from coordinator.fleet import units as units_module
from coordinator.fleet.machines import MachineService, cluster_health, clusters_of
from coordinator.fleet.units import UnitService, put_plan
from coordinator.hub.sessions import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.models import Machine, MachineDrift, Unit
from coordinator.reports.logs import LogUnavailable, journal_machine
from coordinator.reports.service import ReportService, ReportUnavailable, merge_refreshed
from coordinator.server import Coordinator
from coordinator.store.ports import EnrollRefused
from coordinator.trust import pki
from coordinator.trust.access import MAX_TOKENS_PER_CALL, EnrolmentService, TokenService, token_ttl
from coordinator.trust.enrolment import Enroller
from proto.crypto import generate_key, make_csr
from proto.enrolment import EnrollRequest
from proto.messages import DriftEntry, Sticker
from proto.tokens import API_KIND, JOIN_KIND, parse_token, secret_matches
from proto.units import UnitOption, unit_hash
from tests.harness.databases import open_test_store


class Rig:
    """The services wired as the server wires them, over one store (the run's engine)."""

    def __init__(self, tmp: Path) -> None:
        paths = pki.init_pki(tmp / "pki", ["localhost"], ["127.0.0.1"])
        ca_cert = pki.load_cert(Path(paths.ca_cert).read_bytes())
        ca_key = pki.load_key(Path(paths.ca_key).read_bytes())
        self.ca_pin = pki.ca_pin(ca_cert)
        self.storage = open_test_store(tmp)
        enroller = Enroller(self.storage, ca_key, ca_cert, cert_ttl_s=3600)
        self.hub = Hub(self.storage, enroller, CoordinatorMetrics(), heartbeat_s=1, lost_after_s=5)
        self.deploystore = self.storage
        self.units = UnitService(self.storage, self.hub)
        self.machines = MachineService(self.storage, self.deploystore, self.hub, self.units)
        self.tokens = TokenService(self.storage, self.ca_pin, join_ttl_s=600)
        self.reports = ReportService(self.storage, self.deploystore, self.hub)
        self.metrics = CoordinatorMetrics()
        self.enrolment = EnrolmentService(enroller, self.hub, self.metrics)

    def enrol(self, machine_id: str) -> None:
        """Through the real join-token path: minted by the service, consumed by the store."""
        token = parse_token(self.tokens.create_join_token(60), JOIN_KIND)
        self.storage.enroll(token.id, machine_id, serial=machine_id, not_after=1e12, now=1)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.storage.close()


# --- machines and clusters -------------------------------------------------------------


def test_clusters_show_health_drift_and_stickers(rig: Rig) -> None:
    rig.enrol("m1")
    rig.enrol("m2")
    rig.deploystore.put_drift("m1", [DriftEntry("web.service", "missing")], 5.0, 6.0)
    rig.deploystore.put_stickers("m2", [Sticker("d1", "r7", "3", {})], 7.0)
    by_id = {c.machine.id: c for c in rig.machines.clusters()}
    assert set(by_id) == {"m1", "m2"}
    # Nobody is connected in-process: both are unreachable whatever they reported.
    assert by_id["m1"].health == "unreachable" and by_id["m1"].drift == 1
    assert by_id["m2"].deployments == {"d1": "r7"} and by_id["m2"].drift == 0
    assert rig.machines.cluster("m1").drift == 1


def test_a_revoked_or_unknown_cluster_is_not_found(rig: Rig) -> None:
    rig.enrol("m1")
    with pytest.raises(NotFound, match="cluster 'nope' does not exist"):
        rig.machines.cluster("nope")
    assert rig.storage.revoke_machine("m1", 10)
    with pytest.raises(NotFound, match="cluster 'm1'"):
        rig.machines.cluster("m1")
    assert rig.machines.clusters() == []
    assert [m.id for m in rig.machines.list_machines(include_revoked=True)] == ["m1"]
    assert rig.machines.get("m1").revoked


async def test_revoking_an_unknown_machine_is_not_found(rig: Rig) -> None:
    rig.enrol("m1")
    with pytest.raises(NotFound, match="machine 'm9' does not exist"):
        await rig.machines.revoke("m9")
    await rig.machines.revoke("m1")
    assert rig.machines.list_machines() == []
    assert rig.machines.unknown(["m1", "m9"]) == ["m9"]


def test_a_unit_that_does_not_exist_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound, match=r"unit 'a\.service' does not exist"):
        rig.units.unit("a.service")
    assert rig.units.missing(["a.service"]) == ["a.service"]
    assert rig.units.states() == []


async def test_metadata_patches_are_stored_and_rescheduled(rig: Rig) -> None:
    rig.enrol("m1")
    rig.machines.patch_metadata({"m1": {"role": "web"}})
    assert rig.machines.get("m1").metadata == {"role": "web"}
    rig.machines.patch_metadata({"m1": {"role": None}})
    assert rig.machines.get("m1").metadata == {}
    assert rig.units._pending is not None  # the reschedule is on its way
    rig.units._pending.cancel()


def test_clusters_of_is_health_over_plain_values() -> None:
    up = Machine(id="a", state="connected", capabilities=["systemd"])
    down = Machine(id="b", state="disconnected", capabilities=["docker"])
    got = clusters_of([up, down], ["a"], {"a": 2}, {"b": {"d": "r"}})
    assert [(c.health, c.drift, c.deployments) for c in got] == [
        ("drifted", 2, {}),
        ("unreachable", 0, {"d": "r"}),
    ]
    assert cluster_health("connected", True, 0, ["docker"]) == ("healthy", "")


# --- units ---------------------------------------------------------------------------------

SLEEP = [UnitOption("Service", "ExecStart", "/bin/sleep 1000")]


def test_put_plan_follows_fleets_rules() -> None:
    old = Unit(name="a.service", options=SLEEP, hash=unit_hash(SLEEP), desired_state="launched")
    other = [UnitOption("Service", "ExecStart", "/bin/sleep 2000")]
    assert put_plan("a.service", None, SLEEP, None) == ("create", "inactive")
    assert put_plan("a.service", old, other, None) == ("replace", "launched")
    assert put_plan("a.service", old, SLEEP, "loaded") == ("set_state", "loaded")
    assert put_plan("a.service", old, [], "inactive") == ("set_state", "inactive")
    with pytest.raises(Conflict, match="unit does not exist and options field empty"):
        put_plan("a.service", None, [], "launched")
    with pytest.raises(Conflict, match="must provide DesiredState"):
        put_plan("a.service", old, SLEEP, None)
    with pytest.raises(Invalid, match=r"cannot activate template 'a@\.service'"):
        put_plan("a@.service", None, SLEEP, "launched")
    assert put_plan("a@.service", None, SLEEP, None) == ("create", "inactive")
    bogus = [UnitOption("X-Fleet", "Bogus", "x")]
    with pytest.raises(Invalid, match=r"unknown \[X-Fleet\] option 'Bogus'"):
        put_plan("a@.service", None, bogus, "launched")  # checked before the template rule
    with pytest.raises(Invalid, match="Bogus"):
        put_plan("a.service", old, bogus, None)


async def test_apply_creates_replaces_and_keeps_pinning(rig: Rig) -> None:
    rig.enrol("m1")
    await rig.units.put("p.service", SLEEP, "launched", machines=["m1"])
    other = [UnitOption("Service", "ExecStart", "/bin/sleep 2000")]
    assert await rig.units.apply("p.service", other, None) == "replace"
    unit = rig.units.unit("p.service")
    assert unit.pinned and unit.machines == ["m1"] and unit.hash == unit_hash(other)
    assert await rig.units.apply("p.service", [], "inactive") == "set_state"
    assert rig.units.unit("p.service").desired_state == "inactive"
    assert await rig.units.apply("n.service", SLEEP, None) == "create"
    assert rig.units.unit("n.service").desired_state == "inactive"


async def test_the_parsed_xfleet_cache_keeps_only_versions_that_exist(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every replace leaves a version behind: a pass drops them once they outnumber the
    live ones, so a long-lived coordinator's cache is bounded by its units."""
    monkeypatch.setattr(units_module, "XFLEET_CACHE_SLACK", 2)
    versions = []
    for i in range(8):
        options = [UnitOption("Service", "ExecStart", f"/bin/sleep {i}")]
        versions.append(unit_hash(options))
        await rig.units.put("v.service", options, "launched")
    await rig.units.put("w.service", SLEEP, "launched")
    live = {versions[-1], unit_hash(SLEEP)}
    cache = rig.units._xfleet
    assert live <= set(cache) and len(cache) <= 2 * len(live) + 2
    await rig.units.reschedule()  # views of every live version are still there
    assert rig.units.unit("v.service").unschedulable == "no machine is connected"


# --- tokens ------------------------------------------------------------------------------


def test_join_tokens_are_stored_hashed_and_bound(rig: Rig) -> None:
    made = rig.tokens.create_join_tokens(count=3, description="rack 4")
    assert len(made.tokens) == 3 and len(set(made.tokens)) == 3
    parsed = [parse_token(t, JOIN_KIND) for t in made.tokens]
    assert all(p.pin == rig.ca_pin[: len(p.pin)] for p in parsed)
    bound = rig.tokens.create_join_tokens(machine_id="m7")
    token = parse_token(bound.tokens[0], JOIN_KIND)
    # Bound to m7: the store refuses it for another machine.
    with pytest.raises(EnrollRefused):
        rig.storage.enroll(token.id, "m8", serial="s", not_after=1e12, now=1)
    rig.storage.enroll(token.id, "m7", serial="s", not_after=1e12, now=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl_s": 0}, "ttl_s must be between 1 and 2592000 seconds"),
        ({"ttl_s": 1e9}, "ttl_s must be between"),
        ({"count": 0}, f"count must be between 1 and {MAX_TOKENS_PER_CALL}"),
        ({"count": MAX_TOKENS_PER_CALL + 1}, "count must be between"),
        ({"machine_id": "-bad"}, "machine_id: "),
        ({"machine_id": "m1", "count": 2}, "a token bound to a machine is created alone"),
    ],
)
def test_join_token_requests_are_checked(rig: Rig, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        rig.tokens.create_join_tokens(**kwargs)  # type: ignore[arg-type]
    assert rig.storage.list_join_tokens() == []


def test_api_tokens_round_trip(rig: Rig) -> None:
    plain, record = rig.tokens.create_api_token("ci", 3600)
    token = parse_token(plain, API_KIND)
    stored = rig.storage.api_token(token.id)
    assert stored is not None and secret_matches(token.secret, stored[1])
    assert plain not in repr(rig.tokens.api_tokens())
    assert record.expires_at is not None and [t.name for t in rig.tokens.api_tokens()] == ["ci"]
    rig.tokens.revoke_api_token(record.id)
    assert [t.revoked for t in rig.tokens.api_tokens()] == [True]
    with pytest.raises(NotFound, match="API token 'nope' does not exist"):
        rig.tokens.revoke_api_token("nope")
    with pytest.raises(Invalid, match="name must not be empty"):
        rig.tokens.create_api_token("  ")
    assert token_ttl(None, 60) == 60


def test_enrolment_refusals_are_domain_errors(rig: Rig) -> None:
    csr = make_csr(generate_key(), "m1").decode()
    with pytest.raises(Forbidden, match="not a Moorage join token"):
        rig.enrolment.enroll(EnrollRequest("nope", "m1", csr), ["wss://h/agent/v1"])
    token = rig.tokens.create_join_token(60)
    answer = rig.enrolment.enroll(EnrollRequest(token, "m1", csr), ["wss://h/agent/v1"])
    assert answer.machine_id == "m1" and answer.hub_url == "wss://h/agent/v1"
    assert "BEGIN CERTIFICATE" in answer.cert_pem and answer.ca_pem == rig.enrolment.ca_pem
    with pytest.raises(Forbidden, match="join token was already used"):
        rig.enrolment.enroll(EnrollRequest(token, "m1", csr), ["wss://h/agent/v1"])
    # Another token may not take over the enrolled machine: a conflict, not a refusal.
    other = rig.tokens.create_join_token(60)
    with pytest.raises(Conflict):
        rig.enrolment.enroll(EnrollRequest(other, "m1", csr), ["wss://h/agent/v1"])
    counted = {
        s.labels["result"]: s.value
        for metric in rig.metrics.registry.collect()
        if metric.name == "moorage_enrolments"
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert counted == {"ok": 1.0, "refused": 3.0}


# --- reports and logs ----------------------------------------------------------------------


def test_reports_refuse_an_unknown_machine(rig: Rig) -> None:
    rig.enrol("m1")
    rig.deploystore.put_drift("m1", [], 1.0, 2.0)
    assert [d.machine_id for d in rig.reports.drift()] == ["m1"]
    assert rig.reports.stickers("m1") == []
    with pytest.raises(NotFound, match="machine 'zz' does not exist"):
        rig.reports.drift("zz")
    with pytest.raises(NotFound):
        rig.reports.stickers("zz")


async def test_refreshing_drift_of_no_connected_machine_keeps_the_stored(rig: Rig) -> None:
    rig.enrol("m1")
    rig.deploystore.put_drift("m1", [], 1.0, 2.0)
    merged, unreachable = await rig.reports.refresh_all_drift(0.1)
    assert [d.machine_id for d in merged] == ["m1"] and unreachable == {}
    with pytest.raises(ReportUnavailable) as caught:
        await rig.reports.refresh_drift("m1", 0.1)
    assert isinstance(caught.value, Unavailable) and not caught.value.timed_out


def test_merge_refreshed_splits_answers_from_the_unreachable() -> None:
    fresh = MachineDrift(machine_id="a", entries=[], checked_at=1.0, reported_at=2.0)
    late = ReportUnavailable("timeout", "machine b did not answer")
    got = merge_refreshed(["a", "b"], [fresh, late])
    assert got == ({"a": fresh}, {"b": "machine b did not answer"})
    assert late.timed_out
    with pytest.raises(RuntimeError):
        merge_refreshed(["c"], [RuntimeError("bug")])


def test_the_journal_machine_is_the_one_asked_or_the_only_one() -> None:
    one = Unit(name="a.service", options=[], hash="", machines=["m1"])
    two = Unit(name="b.service", options=[], hash="", machines=["m1", "m2"])
    assert journal_machine("a.service", one) == "m1"
    assert journal_machine("b.service", two, "m2") == "m2"
    with pytest.raises(NotFound, match=r"unit 'x\.service' does not exist"):
        journal_machine("x.service", None)
    with pytest.raises(Conflict, match="not scheduled on any machine"):
        journal_machine("c.service", Unit(name="c.service", options=[], hash=""))
    with pytest.raises(Invalid, match=r"runs on 2 machines \(m1, m2\); pass machine=ID"):
        journal_machine("b.service", two)
    assert issubclass(LogUnavailable, Unavailable)


# --- conventions -----------------------------------------------------------------------------


def test_domain_errors_map_to_statuses_once() -> None:
    timed_out = ReportUnavailable("timeout", "slow")
    cases = [
        (NotFound("x"), 404),
        (Conflict("x"), 409),
        (Invalid("x"), 400),
        (Forbidden("x"), 403),
        (Unavailable("x"), 503),
        (timed_out, 504),
    ]
    assert [domain_status(exc) for exc, _ in cases] == [status for _, status in cases]


def test_the_family_owning_a_path_is_the_longest_prefix() -> None:
    app = web.Application()
    register(app, [Family("", FLEET), Family("/api/v2", ENVELOPE), Family("/moorage/v1", FLEET)])
    assert family_of(app, "/api/v2/clusters").conventions is ENVELOPE
    assert family_of(app, "/api/v2").conventions is ENVELOPE
    assert family_of(app, "/api/v2x").conventions is FLEET
    assert family_of(app, "/api/v1/tasks").conventions is FLEET
    assert family_of(app, "/moorage/v1/units").conventions is FLEET


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], str]]:
    """The real API application (real SQLite, the server's middleware) over plain HTTP."""
    coordinator = Coordinator(CoordinatorConfig(state_dir=str(tmp_path / "state")))
    token, _ = coordinator.tokens.create_api_token("test")
    client = TestClient(TestServer(coordinator.api_app()))
    await client.start_server()
    try:
        yield client, token
    finally:
        await client.close()
        coordinator.storage.close()


async def test_each_family_renders_domain_errors_its_own_way(
    served: tuple[TestClient[web.Request, web.Application], str],
) -> None:
    client, token = served
    auth = {"Authorization": f"Bearer {token}"}
    resp = await client.get("/api/v2/clusters/nope", headers=auth)
    assert resp.status == 404
    assert await resp.json() == {
        "success": False,
        "error": {
            "code": "RESOURCE_NOT_FOUND",
            "status": 404,
            "message": "cluster 'nope' does not exist",
        },
        "message": "cluster 'nope' does not exist",
    }
    resp = await client.get("/moorage/v1/machines/nope", headers=auth)
    assert resp.status == 404
    assert await resp.json() == {"error": {"code": 404, "message": "machine 'nope' does not exist"}}
    resp = await client.post("/moorage/v1/join-tokens", headers=auth, json={"count": 0})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"].startswith("count must be between")
    resp = await client.get("/api/v2/nothing-here", headers=auth)
    assert resp.status == 404 and (await resp.json())["success"] is False


async def test_only_routes_declared_public_are_served_unauthenticated(
    served: tuple[TestClient[web.Request, web.Application], str],
) -> None:
    client, _ = served
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/agent/v1/ca")).status == 200
    for path in ("/metrics", "/openapi.json", "/moorage/v1/machines"):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    resp = await client.get("/api/v2/clusters")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "AUTHENTICATION_REQUIRED"


async def test_the_document_lists_exactly_the_registered_routes(
    served: tuple[TestClient[web.Request, web.Application], str],
) -> None:
    client, token = served
    resp = await client.get("/openapi.json", headers={"Authorization": f"Bearer {token}"})
    doc = await resp.json()
    documented = {(path, meth.upper()) for path, ops in doc["paths"].items() for meth in ops}
    registered = {
        (r.resource.canonical, "GET" if r.method == "*" else r.method)
        for r in client.app.router.routes()
        if r.method != "HEAD"
        and r.resource is not None
        and not r.resource.canonical.startswith("/ui")  # the dashboard: pages, not an API
    }
    assert documented == registered
    envelope = doc["paths"]["/api/v2/clusters"]["get"]["responses"]["400"]
    assert envelope["content"]["application/json"]["schema"]["$ref"].endswith("/EnvelopeError")
    public = doc["paths"]["/healthz"]["get"]
    assert public["security"] == [] and "401" not in public["responses"]
