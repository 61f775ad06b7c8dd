"""Machines, units, placements and what machines report (the `machines`, `units` and
`reports` modules) on both engines: every test runs once on SQLite and once on
PostgreSQL (`store` / `new_store`, conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from coordinator.models import Unit
from coordinator.store.sql import SqlStore, schema
from coordinator.store.sql.units import IN_CHUNK
from proto.messages import DriftEntry, Sticker, UnitStatus
from proto.units import UnitOption, unit_hash


def add_machines(store: SqlStore, *ids: str, tenant: str = "default") -> None:
    """Machines as enrolment leaves them (without a join token: that is another
    module's)."""
    with store.batch() as db:
        db.execute(
            sa.insert(schema.machines),
            [{"id": mid, "enrolled_at": 1.0, "tenant": tenant} for mid in ids],
        )


def unit(name: str, *machines: str, cmd: str = "x", state: str = "launched") -> Unit:
    opts = [UnitOption("Service", "ExecStart", cmd)]
    return Unit(
        name=name,
        options=opts,
        hash=unit_hash(opts),
        desired_state=state,  # type: ignore[arg-type]
        machines=list(machines),
    )


def revisions(store: SqlStore) -> dict[str, int]:
    return {m.id: m.desired_revision for m in store.list_machines(include_revoked=True)}


@pytest.mark.real_revision_floor
def test_a_revision_made_after_a_restore_is_above_every_older_one(store: SqlStore) -> None:
    """A database restored from a backup has older revisions than its agents hold; a
    change made then must not hand an agent's revision to different content."""
    add_machines(store, "m1")
    started = int(time.time() * 1000)
    store.put_unit(unit("a.service", "m1"), time.time())
    first = revisions(store)["m1"]
    assert first >= started
    store.put_unit(unit("b.service", "m1"), time.time())
    held = revisions(store)["m1"]  # what the agent holds
    assert held > first
    with store.batch() as db:  # the restore: back to the backup's revision
        db.execute(sa.update(schema.machines).values(desired_revision=first))
    store.put_unit(unit("c.service", "m1"), time.time())
    assert revisions(store)["m1"] > held


# -- machines -----------------------------------------------------------------


def test_machines_by_id_per_tenant_and_revoked_ones_on_request(store: SqlStore) -> None:
    add_machines(store, "m2", "m1", "M0")
    add_machines(store, "b1", tenant="b")
    assert [m.id for m in store.list_machines()] == ["M0", "b1", "m1", "m2"]  # bytewise
    assert [m.id for m in store.list_machines(tenant="default")] == ["M0", "m1", "m2"]
    assert [m.id for m in store.list_machines(tenant="b")] == ["b1"]
    assert store.list_machines(tenant="nobody") == []
    assert store.revoke_machine("m1", now=5)
    assert [m.id for m in store.list_machines(tenant="default")] == ["M0", "m2"]
    revoked = store.list_machines(include_revoked=True, tenant="default")
    assert [(m.id, m.revoked) for m in revoked] == [("M0", False), ("m1", True), ("m2", False)]
    assert store.get_machine("b1") is not None and store.get_machine("b1").tenant == "b"  # type: ignore[union-attr]
    assert store.get_machine("nope") is None


def test_hello_metadata_capabilities_and_states(store: SqlStore) -> None:
    add_machines(store, "m1", "m2")
    store.record_hello(
        "m1",
        hostname="h1",
        primary_ip="10.0.0.1",
        metadata={"role": "web", "zone": "a"},
        capabilities=("systemd", "docker"),
        agent_version="1.2",
        now=10,
    )
    m = store.get_machine("m1")
    assert m is not None
    assert (m.hostname, m.primary_ip, m.agent_version) == ("h1", "10.0.0.1", "1.2")
    assert (m.state, m.state_since, m.last_seen) == ("connected", 10, 10)
    assert m.metadata == {"role": "web", "zone": "a"}
    assert m.capabilities == ["systemd", "docker"]
    # operator overrides win over what the agent publishes; None removes a key
    assert store.patch_metadata("m1", {"role": "db", "zone": None, "rack": "7"})
    assert store.patch_metadata("m1", {"rack": "8"})
    assert not store.patch_metadata("nope", {"x": "y"})
    assert store.get_machine("m1").metadata == {"role": "db", "rack": "8"}  # type: ignore[union-attr]
    store.set_capabilities("m1", ["systemd"])
    assert store.get_machine("m1").capabilities == ["systemd"]  # type: ignore[union-attr]
    # a state change without `last_seen` keeps the stored one
    store.set_machine_state("m1", "lost", 20)
    m = store.get_machine("m1")
    assert m is not None and (m.state, m.state_since, m.last_seen) == ("lost", 20, 10)
    store.set_machine_state("m1", "connected", 30, last_seen=29)
    m = store.get_machine("m1")
    assert m is not None and (m.state, m.state_since, m.last_seen) == ("connected", 30, 29)
    # after a restart: only the connected ones are disconnected, and counted
    assert store.disconnect_all(40) == 1
    states = {m.id: (m.state, m.state_since) for m in store.list_machines()}
    assert states == {"m1": ("disconnected", 40), "m2": ("disconnected", 0)}
    assert store.disconnect_all(41) == 0


def test_revocation_covers_every_issued_certificate(store: SqlStore) -> None:
    add_machines(store, "m", "n")
    store.set_machine_cert("m", "01", 1000, now=101)
    store.set_machine_cert("m", "02", 2000, now=500)
    store.set_machine_cert("n", "03", 2000, now=500)
    m = store.get_machine("m")
    assert m is not None and (m.cert_serial, m.cert_not_after) == ("02", 2000)
    assert not store.is_serial_revoked("01")
    assert store.revoke_machine("m", now=600)
    assert store.is_serial_revoked("01") and store.is_serial_revoked("02")
    assert not store.is_serial_revoked("03")
    assert [x.id for x in store.list_machines()] == ["n"]
    assert store.list_machines(include_revoked=True)[0].revoked
    assert store.revoke_machine("m", now=700), "a second revocation changes nothing"
    assert not store.revoke_machine("nope", now=600)


def test_revocation_answers_are_cached_for_at_most_a_second(
    new_store: Callable[..., SqlStore],
    new_database: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """This store's own revocations take effect at once; another writer's (another
    process, or coordinator, on the same database) within REVOCATION_CACHE_S."""
    import time

    from coordinator.store.sql import core

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    target = new_database()
    db, other = new_store(target), new_store(target)
    add_machines(db, "m", "n")
    db.set_machine_cert("m", "01", 1000, now=101)
    db.set_machine_cert("n", "02", 1000, now=101)
    assert not db.is_serial_revoked("01") and not db.is_serial_revoked("02")
    db.revoke_machine("m", now=102)
    assert db.is_serial_revoked("01")
    assert not db.is_serial_revoked("02")  # read again: this store's revocation cleared it
    other.revoke_machine("n", now=103)
    assert not db.is_serial_revoked("02")  # cached, another writer
    assert other.is_serial_revoked("02")
    clock[0] += core.REVOCATION_CACHE_S
    assert db.is_serial_revoked("02")


# -- units and placements -------------------------------------------------------


def test_put_unit_bumps_old_and_new_machines(store: SqlStore) -> None:
    add_machines(store, "m1", "m2")
    assert store.put_unit(unit("a.service", "m1"), now=2) == {"m1"}
    assert store.put_unit(unit("a.service", "m2"), now=3) == {"m1", "m2"}
    assert revisions(store) == {"m1": 2, "m2": 1}
    got = store.get_unit("a.service")
    assert got is not None and got.machines == ["m2"]
    assert (got.created_at, got.updated_at) == (2, 3)
    assert [u.name for u in store.list_units(machine_id="m2")] == ["a.service"]
    assert store.list_units(machine_id="m1") == []
    assert store.delete_unit("a.service") == {"m2"}
    assert revisions(store) == {"m1": 2, "m2": 2}
    assert store.delete_unit("a.service") is None
    assert store.get_unit("a.service") is None


def test_put_units_is_one_batch_and_a_name_given_twice_ends_as_given_last(
    store: SqlStore,
) -> None:
    add_machines(store, "m1", "m2", "m3")
    store.put_unit(unit("a.service", "m1"), now=1)
    affected = store.put_units(
        [
            unit("a.service", "m2", cmd="y"),
            unit("b.service", "m3"),
            unit("a.service", "m3", cmd="z", state="inactive"),
        ],
        now=5,
    )
    assert affected == {"m1", "m2", "m3"}  # every machine either unit was or is on
    a = store.get_unit("a.service")
    assert a is not None
    assert (a.machines, a.options[0].value, a.desired_state) == (["m3"], "z", "inactive")
    assert (a.created_at, a.updated_at) == (1, 5)
    assert revisions(store) == {"m1": 2, "m2": 1, "m3": 1}
    assert store.put_units([], now=6) == set()
    assert store.put_unit(unit("c.service"), now=7) == set()
    assert store.get_unit("c.service").machines == []  # type: ignore[union-attr]


def test_set_placements_returns_the_machines_whose_units_changed(store: SqlStore) -> None:
    machines = [f"m{i}" for i in range(4)]
    add_machines(store, *machines)
    names = [f"u{i:04d}.service" for i in range(IN_CHUNK * 2 + 3)]  # several IN lists
    store.put_units([unit(n, machines[i % 3]) for i, n in enumerate(names)], now=1)
    before = revisions(store)
    # every unit on machine 0 moves to machine 3, the others stay where they are
    changes = {n: (["m3"] if i % 3 == 0 else [machines[i % 3]]) for i, n in enumerate(names)}
    assert store.set_placements(changes) == {"m0", "m3"}
    after = revisions(store)
    assert {m: after[m] - before[m] for m in machines} == {"m0": 1, "m1": 0, "m2": 0, "m3": 1}
    assert {u.name for u in store.list_units(machine_id="m0")} == set()
    assert [u.name for u in store.list_units(machine_id="m3")] == names[::3]
    assert store.set_placements({names[1]: ["m1", "m2"], names[2]: []}) == {"m2"}
    assert store.get_unit(names[1]).machines == ["m1", "m2"]  # type: ignore[union-attr]
    assert store.get_unit(names[2]).machines == []  # type: ignore[union-attr]
    assert store.set_placements({}) == set()
    with pytest.raises(sa.exc.IntegrityError):  # a unit that does not exist
        store.set_placements({"ghost.service": ["m1"]})
    assert store.get_unit(names[1]).machines == ["m1", "m2"]  # type: ignore[union-attr]


def test_units_of_two_tenants_and_the_machines_they_are_on(store: SqlStore) -> None:
    add_machines(store, "ma1", "ma2", tenant="a")
    add_machines(store, "mb1", tenant="b")
    store.put_unit(unit("web.service", "ma1", "ma2", cmd="a"), now=1, tenant="a")
    store.put_unit(unit("db.service", "ma2"), now=1, tenant="a")
    store.put_unit(unit("web.service", "mb1", cmd="b"), now=1, tenant="b")
    assert [u.name for u in store.list_units(tenant="a")] == ["db.service", "web.service"]
    assert [u.options[0].value for u in store.list_units(tenant="b")] == ["b"]
    assert store.list_units(tenant="default") == []
    everything = store.list_units()
    assert [(u.name, u.machines) for u in everything] == [
        ("db.service", ["ma2"]),
        ("web.service", ["ma1", "ma2"]),
        ("web.service", ["mb1"]),
    ]
    # a machine's units, each with every machine it is on, in its own tenant only
    on_ma2 = store.list_units(machine_id="ma2")
    assert [(u.name, u.machines) for u in on_ma2] == [
        ("db.service", ["ma2"]),
        ("web.service", ["ma1", "ma2"]),
    ]
    assert store.list_units(machine_id="ma2", tenant="b") == []
    assert [u.options[0].value for u in store.list_units(machine_id="mb1", tenant="b")] == ["b"]
    assert store.list_units(machine_id="nope") == []
    assert store.get_unit("web.service", tenant="b").machines == ["mb1"]  # type: ignore[union-attr]
    assert store.get_unit("db.service", tenant="b") is None
    assert store.delete_unit("web.service", tenant="b") == {"mb1"}
    assert store.get_unit("web.service", tenant="a").machines == ["ma1", "ma2"]  # type: ignore[union-attr]


def test_unit_heads_and_options(store: SqlStore) -> None:
    add_machines(store, "m1")
    add_machines(store, "mb", tenant="b")
    names = [f"u{i:04d}.service" for i in range(IN_CHUNK + 7)]
    store.put_units([unit(n, "m1", cmd=n) for n in names], now=1)
    store.put_unit(unit("a.service", "mb", state="inactive"), now=1, tenant="b")
    heads = store.unit_heads()
    assert [(h.tenant, h.name) for h in heads] == [
        ("b", "a.service"),
        *(("default", n) for n in names),
    ]
    assert {h.machines == ["m1"] for h in heads[1:]} == {True}
    (b,) = store.unit_heads(tenant="b")
    assert (b.name, b.desired_state, b.machines, b.pinned) == (
        "a.service",
        "inactive",
        ["mb"],
        False,
    )
    assert b.hash == unit("a.service").hash
    options = store.unit_options([*names, "missing.service"])
    assert set(options) == set(names)
    assert all(opts[0].value == name for name, opts in options.items())
    assert store.unit_options(["a.service"]) == {}  # another tenant's
    assert list(store.unit_options(["a.service"], tenant="b")) == ["a.service"]
    assert store.unit_options([]) == {}


def test_a_page_of_units_is_that_slice_of_the_list(store: SqlStore) -> None:
    add_machines(store, "m0", "m1", "m2", "m9")
    add_machines(store, "b0", tenant="b")
    for i in (7, 3, 11, 0, 5, 9, 1):  # stored out of order; pages are by name
        machines = [f"m{i % 3}", "m9"] if i % 2 else []
        store.put_unit(unit(f"u{i:02d}.service", *machines, cmd=f"/bin/sleep {i}"), 1.0)
    store.put_unit(unit("u04.service", "b0"), 1.0, tenant="b")  # counts in its tenant only
    everything = store.list_units(tenant="default")
    for limit in (1, 2, 3, 7, 10):
        for offset in range(0, 9):
            page, total = store.unit_page(offset, limit)
            assert total == 7
            assert page == everything[offset : offset + limit]
    page, total = store.unit_page(0, 10, tenant="b")
    assert total == 1 and [(u.name, u.machines) for u in page] == [("u04.service", ["b0"])]
    assert store.unit_page(0, 10, tenant="nobody") == ([], 0)


# -- what machines report -------------------------------------------------------


def sticker(deployment: str) -> Sticker:
    return Sticker(deployment=deployment, release="r1", version="1", units={})


def status(name: str, **fields: object) -> UnitStatus:
    return UnitStatus(name=name, **fields)  # type: ignore[arg-type]


def test_reported_unit_states(store: SqlStore) -> None:
    add_machines(store, "m1", "m2")
    add_machines(store, "mb", tenant="b")
    store.record_unit_states(
        "m1",
        [status("b.service", active_state="active", main_pid=12), status("a.service")],
        [],
        1.0,
    )
    store.record_unit_states("m2", [status("a.service", hash="h2")], [], 1.0)
    store.record_unit_states("mb", [status("a.service", message="b's")], [], 1.0)
    assert [(s.name, s.machine_id) for s in store.unit_states()] == [
        ("a.service", "m1"),
        ("a.service", "m2"),
        ("a.service", "mb"),
        ("b.service", "m1"),
    ]
    (b,) = store.unit_states(machine_id="m1", name="b.service")
    assert (b.active_state, b.main_pid, b.updated_at) == ("active", 12, 1.0)
    # a change replaces what the machine said before; a unit reported gone goes
    store.record_unit_states(
        "m1", [status("b.service", active_state="failed")], ["a.service", "never.service"], 2.0
    )
    (b,) = store.unit_states(machine_id="m1")
    assert (b.name, b.active_state, b.main_pid, b.updated_at) == ("b.service", "failed", 0, 2.0)
    # a tenant sees what its own machines reported
    assert [s.machine_id for s in store.unit_states(tenant="b")] == ["mb"]
    assert [s.machine_id for s in store.unit_states(tenant="default", name="a.service")] == ["m2"]
    assert store.unit_states(tenant="nobody") == []
    # a full snapshot (a Hello) replaces everything the machine reported; a name
    # given twice ends as given last
    store.record_unit_states(
        "m1",
        [status("c.service", sub_state="x"), status("c.service", sub_state="y")],
        [],
        3.0,
        replace_all=True,
    )
    assert [(s.name, s.sub_state) for s in store.unit_states(machine_id="m1")] == [
        ("c.service", "y")
    ]
    store.record_unit_states(
        "m1", [status("c.service", sub_state="p"), status("c.service", sub_state="q")], [], 4.0
    )
    assert [(s.name, s.sub_state) for s in store.unit_states(machine_id="m1")] == [
        ("c.service", "q")
    ]
    store.record_unit_states("m1", [], [], 5.0, replace_all=True)
    assert store.unit_states(machine_id="m1") == []
    assert [s.machine_id for s in store.unit_states(name="a.service")] == ["m2", "mb"]


def test_applied_revision(store: SqlStore) -> None:
    add_machines(store, "m1")
    store.set_applied_revision("m1", 7)
    store.set_applied_revision("nope", 7)
    m = store.get_machine("m1")
    assert m is not None and m.applied_revision == 7


def test_stickers_are_replaced_per_machine(store: SqlStore) -> None:
    add_machines(store, "m1", "m2")
    add_machines(store, "mb", tenant="b")
    store.put_stickers("m1", [sticker("d2"), sticker("d1")], now=1)
    store.put_stickers("m2", [sticker("d1")], now=1)
    store.put_stickers("mb", [sticker("d1")], now=1)
    assert [(s.machine_id, s.sticker.deployment) for s in store.stickers()] == [
        ("m1", "d1"),
        ("m1", "d2"),
        ("m2", "d1"),
        ("mb", "d1"),
    ]
    store.put_stickers("m1", [sticker("d3")], now=2)
    got = store.stickers("m1")
    assert [(s.sticker.deployment, s.reported_at) for s in got] == [("d3", 2)]
    assert [s.machine_id for s in store.stickers(tenant="b")] == ["mb"]
    assert store.stickers("mb", tenant="default") == []
    store.put_stickers("m1", [], now=3)
    assert store.stickers("m1") == []
    assert [s.machine_id for s in store.stickers(tenant="default")] == ["m2"]


def test_drift_is_the_last_report_per_machine(store: SqlStore) -> None:
    add_machines(store, "m2", "m1")
    add_machines(store, "mb", tenant="b")
    store.put_drift("m2", [DriftEntry("web.service", "missing")], checked_at=1, now=2)
    store.put_drift("m1", [], checked_at=1, now=2)
    store.put_drift("mb", [DriftEntry("x.service", "missing")], checked_at=1, now=2)
    store.put_drift("m2", [DriftEntry("db.service", "state_differs")], checked_at=5, now=6)
    assert [d.machine_id for d in store.drift()] == ["m1", "m2", "mb"]
    (m2,) = store.drift("m2")
    assert (m2.entries, m2.checked_at, m2.reported_at) == (
        [DriftEntry("db.service", "state_differs")],
        5,
        6,
    )
    assert [d.machine_id for d in store.drift(tenant="b")] == ["mb"]
    assert store.drift("mb", tenant="default") == []
    assert store.drift("nope") == []
