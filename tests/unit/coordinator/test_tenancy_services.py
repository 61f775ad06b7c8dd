"""Tenants in the domain services the API adapters call, in-process on a real store
(the run's engine, MOORAGE_TEST_DATABASE): two tenants may use the same names, each sees only its own objects, another
tenant's object is NotFound (the adapters answer 404) on get, update and delete, and
each tenant's units are scheduled only onto its own machines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.deploy.deployments import DeploymentService
from coordinator.errors import Forbidden, Invalid, NotFound
from coordinator.fleet.machines import MachineService
from coordinator.fleet.units import UnitService
from coordinator.hub.sessions import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.models import tenant_problem
from coordinator.reports.service import ReportService
from coordinator.trust import pki
from coordinator.trust.access import TokenService, mint_tenant
from coordinator.trust.enrolment import Enroller
from proto.messages import DriftEntry
from proto.tokens import JOIN_KIND, parse_token
from proto.units import UnitOption
from tests.harness.databases import open_test_store

OPTS_A = [UnitOption("Service", "ExecStart", "/bin/sleep 1")]
OPTS_B = [UnitOption("Service", "ExecStart", "/bin/sleep 2")]
MANIFEST = """\
units:
  - name: app.service
    contents: |
      [Service]
      ExecStart=/bin/sleep 300
"""


class Rig:
    """The services wired as the server wires them, over one database."""

    def __init__(self, tmp: Path) -> None:
        paths = pki.init_pki(tmp / "pki", ["localhost"], ["127.0.0.1"])
        ca_cert = pki.load_cert(Path(paths.ca_cert).read_bytes())
        ca_key = pki.load_key(Path(paths.ca_key).read_bytes())
        self.storage = open_test_store(tmp)
        enroller = Enroller(self.storage, ca_key, ca_cert, cert_ttl_s=3600)
        self.hub = Hub(self.storage, enroller, CoordinatorMetrics(), heartbeat_s=1, lost_after_s=5)
        self.units = UnitService(self.storage, self.hub)
        self.machines = MachineService(self.storage, self.storage, self.hub, self.units)
        self.tokens = TokenService(self.storage, pki.ca_pin(ca_cert), join_ttl_s=600)
        self.reports = ReportService(self.storage, self.storage, self.hub)

    def enrol(self, machine_id: str, tenant: str) -> None:
        """With a join token minted in `tenant`, as the tenant's API would; connected."""
        made = self.tokens.create_join_tokens(tenant=tenant)
        token = parse_token(made.tokens[0], JOIN_KIND)
        self.storage.enroll(token.id, machine_id, serial=machine_id, not_after=1e12, now=1)
        self.storage.record_hello(
            machine_id,
            hostname=machine_id,
            primary_ip="127.0.0.1",
            metadata={},
            capabilities=["systemd"],
            agent_version="t",
            now=1,
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    r.enrol("ma", "a")
    r.enrol("mb", "b")
    try:
        yield r
    finally:
        r.storage.close()


async def test_units_of_one_name_in_two_tenants_each_on_its_own_machines(rig: Rig) -> None:
    u = rig.units
    assert await u.apply("web.service", OPTS_A, "launched", tenant="a") == "create"
    assert await u.apply("web.service", OPTS_B, "launched", tenant="b") == "create"
    await u.put("only-a.service", OPTS_A, "launched", tenant="a")
    assert u.unit("web.service", tenant="a").machines == ["ma"]
    assert u.unit("web.service", tenant="b").machines == ["mb"]
    assert u.unit("web.service", tenant="b").options == OPTS_B
    assert [x.name for x in u.list_units(tenant="a")] == ["only-a.service", "web.service"]
    assert [x.name for x in u.list_units(tenant="b")] == ["web.service"]
    assert u.list_units() == []  # the default tenant has none, and no machine either
    # another tenant's unit: not found on get, update and delete
    assert u.get("only-a.service", tenant="b") is None
    with pytest.raises(NotFound):
        u.unit("only-a.service", tenant="b")
    assert await u.set_desired_state("only-a.service", "inactive", tenant="b") is None
    assert not await u.destroy("only-a.service", tenant="b")
    assert u.missing(["only-a.service", "web.service"], tenant="b") == ["only-a.service"]
    # pinning onto another tenant's machine: that machine is not found
    with pytest.raises(NotFound, match="machine 'ma'"):
        await u.put("x.service", OPTS_B, "launched", machines=["ma"], tenant="b")
    assert u.get("x.service", tenant="b") is None
    # a machine is told only its own tenant's units
    assert {n: d.hash for n, d in rig.units.desired_for("mb").items()} == {
        "web.service": u.unit("web.service", tenant="b").hash
    }
    assert set(rig.units.desired_for("ma")) == {"only-a.service", "web.service"}
    # destroying B's unit leaves A's of the same name
    assert await u.destroy("web.service", tenant="b")
    assert u.unit("web.service", tenant="a").machines == ["ma"]
    # a unit that fits none of its tenant's machines says why, in its own tenant only
    pinned_elsewhere = [*OPTS_B, UnitOption("X-Fleet", "MachineID", "ma")]
    await u.put("elsewhere.service", pinned_elsewhere, "launched", tenant="b")
    placed = u.unit("elsewhere.service", tenant="b")
    assert placed.machines == [] and placed.unschedulable


async def test_machines_and_reports_of_another_tenant_are_not_found(rig: Rig) -> None:
    m = rig.machines
    assert [x.id for x in m.list_machines(tenant="a")] == ["ma"]
    assert m.get("ma", tenant="a").tenant == "a"
    with pytest.raises(NotFound):
        m.get("ma", tenant="b")
    with pytest.raises(NotFound):
        m.cluster("ma", tenant="b")
    assert [c.machine.id for c in m.clusters(tenant="b")] == ["mb"]
    assert m.unknown(["ma", "mb"], tenant="b") == ["ma"]
    with pytest.raises(NotFound):
        m.patch_metadata({"ma": {"k": "v"}}, tenant="b")
    with pytest.raises(NotFound):
        await m.revoke("ma", tenant="b")
    assert not m.get("ma", tenant="a").revoked
    rig.storage.put_drift("ma", [DriftEntry("web.service", "missing")], 1, 2)
    assert [d.machine_id for d in rig.reports.drift(tenant="a")] == ["ma"]
    assert rig.reports.drift(tenant="b") == []
    with pytest.raises(NotFound):
        rig.reports.drift("ma", tenant="b")
    with pytest.raises(NotFound):
        rig.reports.stickers("ma", tenant="b")


def test_tokens_of_another_tenant(rig: Rig) -> None:
    _, token_a = rig.tokens.create_api_token("ci", tenant="a")
    _, token_b = rig.tokens.create_api_token("ci", tenant="b")
    assert [t.id for t in rig.tokens.api_tokens(tenant="a")] == [token_a.id]
    with pytest.raises(NotFound):
        rig.tokens.revoke_api_token(token_a.id, tenant="b")
    rig.tokens.revoke_api_token(token_b.id, tenant="b")
    # a join token bound to another tenant's machine would take it over: not found
    with pytest.raises(NotFound, match="machine 'ma'"):
        rig.tokens.create_join_tokens(machine_id="ma", tenant="b")
    rig.tokens.create_join_tokens(machine_id="ma", tenant="a")
    with pytest.raises(Invalid, match="tenant"):
        rig.tokens.create_api_token("x", tenant="Bad Name")


def test_who_may_mint_a_token_in_which_tenant() -> None:
    assert mint_tenant("default", "", is_admin=True) == "default"
    assert mint_tenant("a", "", is_admin=True) == "a"
    assert mint_tenant("a", "a", is_admin=False) == "a"
    assert mint_tenant("default", "b", is_admin=True) == "b"
    with pytest.raises(Forbidden):
        mint_tenant("a", "b", is_admin=True)
    with pytest.raises(Forbidden):
        mint_tenant("default", "b", is_admin=False)
    with pytest.raises(Invalid):
        mint_tenant("default", "../x", is_admin=True)
    assert tenant_problem("team-1.prod") == ""
    assert tenant_problem("") and tenant_problem("A") and tenant_problem("x" * 64)


async def test_groups_applications_deployments_of_the_same_names(rig: Rig) -> None:
    d = DeploymentService(rig.storage, rig.storage, rig.units, rig.hub)
    made = {}
    for tenant in ("a", "b"):
        group, _ = d.create_group("g", selector={}, tenant=tenant)
        app, _ = await d.create_application("web", MANIFEST, tenant=tenant)
        dep, created = d.create_deployment("dep", "web", "default", tenant=tenant)
        assert created and dep.tenant == tenant
        made[tenant] = (group, app, dep)
    (group_a, app_a, dep_a), (_, app_b, dep_b) = made["a"], made["b"]
    assert app_a.id != app_b.id and dep_a.id != dep_b.id
    assert dep_a.group_id != dep_b.group_id  # each tenant's own built-in group
    assert [g.name for g in d.groups(tenant="b")] == ["default", "g"]
    assert [x.id for x in d.applications(tenant="a")] == [app_a.id]
    assert [x.id for x in d.deployments(tenant="b")] == [dep_b.id]
    assert d.deployments() == [] and d.applications() == []
    assert d.application("web", tenant="b").id == app_b.id
    # each tenant's default group holds only its own machines
    assert [x.id for x in d.group_members(d.group("default", tenant="a"))] == ["ma"]
    assert [x.id for x in d.group_members(d.group("g", tenant="b"))] == []
    # B: every one of A's objects is not found, by id or by name, on read, update, delete
    for ref in (group_a.id,):
        with pytest.raises(NotFound):
            d.group(ref, tenant="b")
        with pytest.raises(NotFound):
            await d.update_group(ref, description="x", tenant="b")
        with pytest.raises(NotFound):
            d.delete_group(ref, tenant="b")
    with pytest.raises(NotFound):
        d.application(app_a.id, tenant="b")
    with pytest.raises(NotFound):
        await d.update_application(app_a.id, source_config=None, description="x", tenant="b")
    with pytest.raises(NotFound):
        d.delete_application(app_a.id, tenant="b")
    with pytest.raises(NotFound):
        d.deployment(dep_a.id, tenant="b")
    with pytest.raises(NotFound):
        d.update_deployment(dep_a.id, application_version="1", tenant="b")
    with pytest.raises(NotFound):
        await d.delete_deployment(dep_a.id, tenant="b")
    with pytest.raises(NotFound):
        await d.deploy(dep_a.id, tenant="b")
    with pytest.raises(NotFound):
        d.releases(dep_a.id, tenant="b")
    # nor can B point its deployment at A's application or group
    with pytest.raises(Invalid, match="applicationId"):
        d.create_deployment("x", app_a.id, "default", tenant="b")
    with pytest.raises(Invalid, match="clusterGroupId"):
        d.create_deployment("x", "web", group_a.id, tenant="b")
    # A's objects are as A made them
    assert d.group(group_a.id, tenant="a").description == ""
    assert d.deployment("dep", tenant="a").id == dep_a.id
    await d.delete_deployment(dep_b.id, tenant="b")
    assert d.deployment(dep_a.id, tenant="a").id == dep_a.id
