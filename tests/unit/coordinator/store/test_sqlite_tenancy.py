"""Tenants in the store: the same names in two tenants, each tenant's reads see only
its own rows (on the run's engine, `MOORAGE_TEST_DATABASE`), and an SQLite database of
the schema before tenants is upgraded with everything in `default` (keys, cascades and
references intact). Groups, applications and deployments of two tenants:
test_store_deploy.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.exc

from coordinator.models import MachineGroup, Unit
from coordinator.store.ports import Conflict
from coordinator.store.sql import SqlStore as Storage
from coordinator.store.sql.legacy import LEGACY_MIGRATIONS as MIGRATIONS
from coordinator.store.sql.migrate import head
from proto.messages import DriftEntry, Sticker
from proto.tokens import hash_secret
from proto.units import UnitOption, unit_hash
from tests.harness.databases import open_test_store

OPTS_A = [UnitOption("Service", "ExecStart", "/bin/sleep 1")]
OPTS_B = [UnitOption("Service", "ExecStart", "/bin/sleep 2")]


def enrol(db: Storage, machine_id: str, tenant: str) -> None:
    token = f"t-{machine_id}"
    db.create_join_token(token, hash_secret("s"), now=1, ttl_s=60, tenant=tenant)
    db.enroll(token, machine_id, serial=machine_id, not_after=1e12, now=2)


def unit(name: str, options: list[UnitOption], machines: list[str]) -> Unit:
    return Unit(name=name, options=options, hash=unit_hash(options), machines=machines)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Storage]:
    store = open_test_store(tmp_path)
    enrol(store, "ma", "a")
    enrol(store, "mb", "b")
    yield store
    store.close()


def test_a_machine_belongs_to_the_tenant_of_its_join_token(db: Storage) -> None:
    assert [(m.id, m.tenant) for m in db.list_machines()] == [("ma", "a"), ("mb", "b")]
    assert [m.id for m in db.list_machines(tenant="a")] == ["ma"]
    assert db.list_machines(tenant="default") == []
    assert [t.tenant for t in db.list_join_tokens(tenant="b")] == ["b"]


def test_units_of_the_same_name_in_two_tenants(db: Storage) -> None:
    assert db.put_unit(unit("web.service", OPTS_A, ["ma"]), 1, tenant="a") == {"ma"}
    assert db.put_unit(unit("web.service", OPTS_B, ["mb"]), 1, tenant="b") == {"mb"}
    got_a, got_b = db.get_unit("web.service", tenant="a"), db.get_unit("web.service", tenant="b")
    assert got_a is not None and got_b is not None
    assert (got_a.options, got_a.machines) == (OPTS_A, ["ma"])
    assert (got_b.options, got_b.machines) == (OPTS_B, ["mb"])
    assert db.get_unit("web.service") is None  # the default tenant has none
    assert [u.name for u in db.list_units(tenant="a")] == ["web.service"]
    assert db.list_units(tenant="default") == []
    # what a machine runs is its tenant's unit, never the other's of the same name
    assert [u.options for u in db.list_units(machine_id="mb")] == [OPTS_B]
    heads = db.unit_heads()
    assert [(h.tenant, h.name, h.machines) for h in heads] == [
        ("a", "web.service", ["ma"]),
        ("b", "web.service", ["mb"]),
    ]
    assert db.unit_options(["web.service"], tenant="b") == {"web.service": OPTS_B}
    # placements and deletes touch one tenant's unit only
    assert db.set_placements({"web.service": []}, tenant="b") == {"mb"}
    assert db.get_unit("web.service", tenant="a").machines == ["ma"]  # type: ignore[union-attr]
    assert db.delete_unit("web.service", tenant="default") is None
    assert db.delete_unit("web.service", tenant="b") == set()
    assert db.get_unit("web.service", tenant="b") is None
    assert db.get_unit("web.service", tenant="a") is not None


def test_reports_and_states_are_read_through_the_tenants_machines(db: Storage) -> None:
    db.put_drift("ma", [DriftEntry("web.service", "missing")], 1, 2)
    db.put_stickers("ma", [Sticker("d", "r", "1", {})], 3)
    assert [d.machine_id for d in db.drift(tenant="a")] == ["ma"]
    assert db.drift(tenant="b") == [] and db.drift("ma", tenant="b") == []
    assert [s.machine_id for s in db.stickers(tenant="a")] == ["ma"]
    assert db.stickers(tenant="b") == []
    assert [d.machine_id for d in db.drift()] == ["ma"]  # None: every tenant's


def test_api_tokens_live_in_a_tenant(db: Storage) -> None:
    for token_id, tenant in (("k1", "a"), ("k2", "b")):
        db.create_api_token(
            token_id, hash_secret("s"), name=tenant, role="admin", now=1, ttl_s=None, tenant=tenant
        )
    found = db.api_token("k1")
    assert found is not None and found[0].tenant == "a"
    assert [t.id for t in db.list_api_tokens(tenant="b")] == ["k2"]
    assert not db.revoke_api_token("k1", tenant="b")
    assert db.revoke_api_token("k1", tenant="a")


def test_a_database_before_tenants_is_upgraded_into_the_default_tenant(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA foreign_keys=ON")
    # every migration before the tenants one (others may follow it)
    before = next(i for i, script in enumerate(MIGRATIONS) if "CREATE TABLE units_t" in script)
    assert "tenant" not in "".join(MIGRATIONS[:before])
    for script in MIGRATIONS[:before]:
        raw.executescript(script)
    raw.execute(f"PRAGMA user_version={before}")
    raw.executescript(
        """
        INSERT INTO machines (id, enrolled_at) VALUES ('m1', 1);
        INSERT INTO api_tokens (id, name, role, secret_hash, created_at) VALUES
            ('k', 'ops', 'admin', 'h', 1);
        INSERT INTO units (name, options, hash, desired_state, created_at, updated_at, pinned)
            VALUES ('web.service', '[]', 'h1', 'launched', 1, 2, 1);
        INSERT INTO placements (unit, machine_id) VALUES ('web.service', 'm1');
        INSERT INTO applications (id, name, created_at, updated_at) VALUES ('a1', 'web', 1, 1);
        INSERT INTO application_versions (application_id, number, label, source_config,
            digest, created_at) VALUES ('a1', 1, '1', 'units: []', 'd', 1);
        INSERT INTO machine_groups (id, name, created_at, updated_at) VALUES ('g1', 'g', 1, 1);
        INSERT INTO deployments (id, name, application_id, group_id, created_at, updated_at)
            VALUES ('d1', 'web-g', 'a1', 'g1', 1, 1);
        INSERT INTO releases (id, deployment_id, seq, body, status, created_at, updated_at)
            VALUES ('r1', 'd1', 1, '{}', 'Success', 1, 1);
        INSERT INTO deployment_targets (deployment_id, machine_id, release_id)
            VALUES ('d1', 'm1', 'r1');
        """
    )
    raw.close()

    db = Storage(path)
    assert db.schema_version == head()
    machine = db.get_machine("m1")
    assert machine is not None and machine.tenant == "default"
    got = db.get_unit("web.service")
    assert got is not None and (got.machines, got.pinned, got.hash) == (["m1"], True, "h1")
    assert [u.name for u in db.list_units(machine_id="m1")] == ["web.service"]
    token = db.api_token("k")
    assert token is not None and token[0].tenant == "default"
    assert db.application_by_name("web") is not None
    assert {g.name for g in db.list_groups(tenant="default")} == {"default", "g"}
    dep = db.deployment_by_name("web-g")
    assert dep is not None and (dep.tenant, dep.group_id) == ("default", "g1")
    assert db.machine_targets("m1") == [("web-g", "r1")]
    # the rebuilt tables keep their references: foreign keys are on and enforced again
    assert db.db.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert db.db.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    with pytest.raises(sqlalchemy.exc.IntegrityError), db.batch() as tx:
        tx.exec_driver_sql(
            "INSERT INTO placements (tenant, unit, machine_id) VALUES ('x', 'no', 'm')"
        )
    # deleting cascades as before: a unit's placements, a deployment's releases and targets
    assert db.delete_unit("web.service") == {"m1"}
    assert db.db.exec_driver_sql("SELECT COUNT(*) FROM placements").scalar() == 0
    assert db.delete_deployment("d1") == {"m1"}
    assert db.db.exec_driver_sql("SELECT COUNT(*) FROM releases").scalar() == 0
    assert db.db.exec_driver_sql("SELECT COUNT(*) FROM deployment_targets").scalar() == 0
    # names are unique per tenant now, not across tenants
    db.put_group(MachineGroup(id="g2", name="g", tenant="other"))
    with pytest.raises(Conflict):
        db.put_group(MachineGroup(id="g3", name="g"))
    indexes = {
        r[0] for r in db.db.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='index'")
    }
    assert {"machines_by_tenant", "placements_by_machine", "deployments_by_tenant"} <= indexes
