"""The identity aggregates of the store on both engines (SQLite and PostgreSQL): join
tokens and enrolment, API tokens, users and their tokens, rate-limit hits, the audit log."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from coordinator.audit import AuditLog
from coordinator.errors import Conflict
from coordinator.models import AuditEntry, AuditQuery
from coordinator.store.ports import EnrollConflict, EnrollRefused
from coordinator.store.sql import SqlStore
from proto.tokens import hash_secret

# --- join tokens and enrolment ----------------------------------------------------------------


def test_storage_refuses_a_takeover_and_keeps_the_token(store: SqlStore) -> None:
    db = store
    db.create_join_token("t1", hash_secret("s"), now=100, ttl_s=60)
    db.create_join_token("t2", hash_secret("s"), now=100, ttl_s=60)
    assert db.enroll("t1", "m1", serial="01", not_after=1000, now=101) is False
    with pytest.raises(EnrollConflict, match="already enrolled"):
        db.enroll("t2", "m1", serial="02", not_after=1000, now=102)
    machine = db.get_machine("m1")
    assert machine is not None and machine.cert_serial == "01" and machine.enrolled_at == 101
    # The refused token is still usable for another machine.
    assert db.join_token_hash("t2", now=103) == hash_secret("s")
    assert db.enroll("t2", "m2", serial="03", not_after=1000, now=103) is False


def test_bound_token_re_enrols_and_revokes_the_old_certificates(store: SqlStore) -> None:
    db = store
    db.create_join_token("t1", hash_secret("s"), now=100, ttl_s=60)
    db.enroll("t1", "m1", serial="01", not_after=1000, now=101)
    db.create_join_token("b1", hash_secret("s"), now=101, ttl_s=60, machine_id="m1")
    with pytest.raises(EnrollRefused, match="bound to machine 'm1'"):
        db.enroll("b1", "m2", serial="02", not_after=1000, now=102)
    assert db.enroll("b1", "m1", serial="03", not_after=1000, now=103) is True
    assert db.is_serial_revoked("01") and not db.is_serial_revoked("03")
    machine = db.get_machine("m1")
    assert machine is not None and machine.cert_serial == "03" and not machine.revoked
    assert db.join_token_binding("b1") == "m1"
    assert [t.machine_id for t in db.list_join_tokens()] == ["", "m1"]


def test_revoked_machine_enrols_again_with_an_ordinary_token(store: SqlStore) -> None:
    db = store
    db.create_join_token("t1", hash_secret("s"), now=100, ttl_s=60)
    db.create_join_token("t2", hash_secret("s"), now=100, ttl_s=60)
    db.enroll("t1", "m1", serial="01", not_after=1000, now=101)
    assert db.revoke_machine("m1", now=102)
    assert db.enroll("t2", "m1", serial="02", not_after=1000, now=103) is False
    machine = db.get_machine("m1")
    assert machine is not None and not machine.revoked and machine.cert_serial == "02"


def test_join_tokens_are_refused_with_the_reason_and_enrol_into_their_tenant(
    store: SqlStore,
) -> None:
    store.create_join_tokens(
        [("a1", "h1"), ("a2", "h2")], now=100, ttl_s=60, description="batch", tenant="acme"
    )
    made = store.create_join_token("d1", "h3", now=90, ttl_s=5)
    assert (made.id, made.expires_at, made.tenant) == ("d1", 95, "default")
    store.create_join_tokens([], now=100, ttl_s=60)  # nothing, and no error
    with pytest.raises(EnrollRefused, match="unknown"):
        store.join_token_hash("nope", now=100)
    with pytest.raises(EnrollRefused, match="expired"):
        store.join_token_hash("d1", now=95)
    with pytest.raises(EnrollRefused, match="already used or has expired"):
        store.enroll("d1", "m9", serial="09", not_after=1000, now=96)
    with pytest.raises(EnrollRefused, match="already used or has expired"):
        store.enroll("nope", "m9", serial="09", not_after=1000, now=96)
    assert store.join_token_hash("a1", now=100) == "h1"
    assert store.enroll("a1", "m1", serial="01", not_after=1000, now=101) is False
    with pytest.raises(EnrollRefused, match="already used"):
        store.join_token_hash("a1", now=102)
    listed = store.list_join_tokens()
    assert [t.id for t in listed] == ["d1", "a1", "a2"]  # by creation time
    used = next(t for t in listed if t.id == "a1")
    assert (used.used_at, used.used_by, used.description) == (101, "m1", "batch")
    assert [t.id for t in store.list_join_tokens(tenant="acme")] == ["a1", "a2"]
    assert store.list_join_tokens(tenant="other") == []
    assert store.join_token_binding("a2") == "" and store.join_token_binding("nope") == ""
    machine = store.get_machine("m1")
    assert machine is not None and machine.tenant == "acme"


def test_a_failed_enrolment_changes_nothing(store: SqlStore) -> None:
    """The refusal rolls the whole transaction back: the token stays unused."""
    store.create_join_token("t1", "h", now=100, ttl_s=60)
    store.create_join_token("b1", "h", now=100, ttl_s=60, machine_id="m1")
    with pytest.raises(EnrollRefused, match="bound"):
        store.enroll("b1", "m2", serial="02", not_after=1000, now=101)
    assert store.join_token_hash("b1", now=102) == "h"
    assert store.get_machine("m2") is None


# --- API tokens -------------------------------------------------------------------------------


def test_api_tokens_round_trip_with_tenants(store: SqlStore) -> None:
    made = store.create_api_token("k2", "h2", name="ci", role="admin", now=10, ttl_s=None)
    assert made.expires_at is None and made.tenant == "default" and not made.unlimited
    store.create_api_token(
        "k1", "h1", name="b", role="admin", now=11, ttl_s=60, tenant="beta", unlimited=True
    )
    found = store.api_token("k1")
    assert found is not None
    token, secret_hash = found
    assert secret_hash == "h1"
    assert (token.name, token.expires_at, token.tenant, token.unlimited) == ("b", 71, "beta", True)
    assert not token.revoked
    assert store.api_token("nope") is None
    assert [t.id for t in store.list_api_tokens()] == ["k1", "k2"]
    assert [t.id for t in store.list_api_tokens(tenant="beta")] == ["k1"]
    assert not store.set_api_token_unlimited("k1", False, tenant="default")
    assert store.set_api_token_unlimited("k1", False, tenant="beta")
    assert store.set_api_token_unlimited("k2", True)
    assert not store.set_api_token_unlimited("nope", True)
    assert not store.revoke_api_token("k1", tenant="default")
    assert store.revoke_api_token("k1", tenant="beta")
    assert store.revoke_api_token("k2")
    assert not store.revoke_api_token("nope")
    listed = {t.id: t for t in store.list_api_tokens()}
    assert listed["k1"].revoked and not listed["k1"].unlimited
    assert listed["k2"].revoked and listed["k2"].unlimited


# --- users ------------------------------------------------------------------------------------


def _user(store: SqlStore, name: str, tenants: list[str], *, now: float = 5.0) -> int:
    return store.create_user(
        name,
        email=f"{name}@example.com",
        password_hash=f"hash-{name}",
        is_staff=False,
        permissions=["deployments"],
        tenants=tenants,
        now=now,
    ).id


def test_users_round_trip_with_tenants_in_order(store: SqlStore) -> None:
    user = store.create_user(
        "alice",
        email="a@example.com",
        password_hash="h",
        is_staff=True,
        permissions=["deployments", "machines"],
        tenants=["zeta", "alpha"],
        now=7.5,
    )
    assert user.id > 0 and user.tenants == ["zeta", "alpha"]  # the first is the default
    assert user.is_staff and user.permissions == ["deployments", "machines"]
    assert user.created_at == 7.5 and user.email == "a@example.com"
    assert store.get_user(user.id) == user
    assert store.get_user(user.id + 100) is None
    found = store.user_by_name("alice")
    assert found == (user, "h")
    assert store.user_by_name("Alice") is None
    assert store.tenants() == ["alpha", "default", "zeta"]  # "default" always exists
    assert store.set_user_permissions(user.id, ["machines"])
    assert store.set_password_hash(user.id, "h2")
    assert store.set_user_disabled(user.id, True)
    assert not store.set_user_permissions(999, [])
    assert not store.set_password_hash(999, "x")
    assert not store.set_user_disabled(999, True)
    changed = store.user_by_name("alice")
    assert changed is not None
    assert changed[0].permissions == ["machines"] and changed[0].disabled and changed[1] == "h2"


def test_a_second_user_of_a_name_is_a_conflict_and_the_transaction_goes_on(
    store: SqlStore,
) -> None:
    """In a batch, the conflict leaves the batch's other writes standing (on PostgreSQL a
    failed statement would abort the whole transaction without a savepoint)."""
    first = _user(store, "alice", ["default"])
    with store.batch():
        with pytest.raises(Conflict, match="alice"):
            _user(store, "alice", ["other"])
        bob = _user(store, "bob", ["default", "other"])
    assert store.count_users() == 2
    assert store.tenants() == ["default", "other"]
    got = store.get_user(bob)
    assert got is not None and got.tenants == ["default", "other"]
    assert bob > first


def test_users_page_by_id_with_a_total(store: SqlStore) -> None:
    ids = [_user(store, f"u{i:02d}", ["default", f"t{i % 3}"]) for i in range(12)]
    _user(store, "loner", [])
    assert store.count_users() == 13
    page, total = store.list_users(offset=5, limit=4)
    assert total == 13
    assert [u.id for u in page] == ids[5:9]
    assert [u.tenants for u in page] == [["default", f"t{i % 3}"] for i in range(5, 9)]
    rest, _ = store.list_users(offset=10, limit=100)
    assert [u.username for u in rest] == ["u10", "u11", "loner"]
    assert rest[-1].tenants == []
    assert store.list_users(offset=50)[0] == []


def test_user_tokens_round_trip_and_revoke(store: SqlStore) -> None:
    uid = _user(store, "alice", ["default"])
    made = store.create_user_token(
        "ut1",
        "sh",
        user_id=uid,
        name="laptop",
        tenant="default",
        permissions=["deployments"],
        now=10,
        expires_at=20,
    )
    found = store.user_token("ut1")
    assert found == (made, "sh")
    assert store.user_token("nope") is None
    assert store.revoke_user_token("ut1")
    assert not store.revoke_user_token("nope")
    again = store.user_token("ut1")
    assert again is not None and again[0].revoked


# --- rate-limit hits --------------------------------------------------------------------------


def test_rate_hits_are_kept_in_time_order_and_pruned_by_class(store: SqlStore) -> None:
    store.add_rate_hits([])
    store.add_rate_hits(
        [("auth", "ip1", 30.0), ("token", "t", 10.0), ("auth", "ip2", 20.0), ("gone", "x", 5.0)]
    )
    assert store.rate_hits(0) == [
        ("gone", "x", 5.0),
        ("token", "t", 10.0),
        ("auth", "ip2", 20.0),
        ("auth", "ip1", 30.0),
    ]
    assert store.rate_hits(10.0) == [("auth", "ip2", 20.0), ("auth", "ip1", 30.0)]
    # auth up to 20 goes, token keeps all, a class no longer limited goes entirely.
    assert store.prune_rate_hits({"auth": 20.0, "token": 0.0}) == 2
    assert store.rate_hits(0) == [("token", "t", 10.0), ("auth", "ip1", 30.0)]
    assert store.prune_rate_hits({}) == 2
    assert store.rate_hits(0) == []


# --- audit log --------------------------------------------------------------------------------


async def test_audit_pages_by_cursor_and_filters(store: SqlStore) -> None:
    audit = AuditLog(store)
    for i in range(25):
        audit.record(
            AuditEntry(
                at=1000.0 + i,
                principal_kind="token" if i % 2 else "certificate",
                principal=f"p{i % 3}",
                method="POST" if i % 5 else "DELETE",
                path=f"/api/v2/x/{i}",
                route="/api/v2/x/{id}",
                target={"id": str(i)},
                status=201 if i % 4 else 409,
            )
        )
    got: list[AuditEntry] = []
    cursor: int | None = 0
    while cursor is not None:
        page, cursor = await audit.query(AuditQuery(limit=10, before=cursor or 0))
        got.extend(page)
    assert [e.at for e in got] == [1000.0 + i for i in reversed(range(25))]
    assert got[0].target == {"id": "24"}
    by = await audit.query(AuditQuery(principal="token:p1", status=201, method="post"))
    assert {(e.principal_kind, e.principal, e.status) for e in by[0]} == {("token", "p1", 201)}
    window = await audit.query(AuditQuery(since=1005, until=1010))
    assert sorted(e.at for e in window[0]) == [1005.0 + i for i in range(5)]
    assert len((await audit.query(AuditQuery(path_prefix="/api/v2/x/1")))[0]) == 11


def test_audit_prefixes_are_literal_and_case_sensitive(store: SqlStore) -> None:
    """A path or event prefix is matched as text: `%` and `_` are no wildcards, and case
    counts (SQLite's LIKE would get both wrong)."""
    store.append_audit(
        [
            AuditEntry(at=1, path="/api/v2/a_b/1", event="unit.started", tenant="t1"),
            AuditEntry(at=2, path="/api/v2/aXb/2", event="unit.stopped", tenant="t2"),
            AuditEntry(at=3, path="/API/v2/a_b/3", event="Unit.started", principal="alice"),
            AuditEntry(at=4, path="/api/v2/100%/4", event="unitXstarted", data={"k": "v"}),
        ]
    )
    store.append_audit([])

    def ats(**filters: object) -> list[float]:
        return [e.at for e in store.audit(AuditQuery(**filters))]  # type: ignore[arg-type]

    assert ats() == [4, 3, 2, 1]  # newest first
    assert ats(path_prefix="/api/v2/a_b") == [1]
    assert ats(path_prefix="/api/v2/100%") == [4]
    assert ats(path_prefix="/api/v2/100%/4/more") == []
    assert ats(event="unit.") == [2, 1]
    assert ats(event="unit.started") == [1]
    assert ats(tenant="t2") == [2]
    assert ats(principal="alice") == [3]
    assert ats(principal="user:alice") == []
    assert ats(limit=2) == [4, 3]
    assert ats(before=3) == [2, 1]
    entry = store.audit(AuditQuery(since=4))[0]
    assert entry.data == {"k": "v"} and entry.id > 0 and entry.target == {}


def test_identity_survives_a_reopen(new_store: Callable[..., SqlStore]) -> None:
    """What one store wrote, another store on the same database reads (a restart, or a
    second coordinator on PostgreSQL)."""
    first = new_store()
    uid = _user(first, "alice", ["default"])
    first.create_api_token("k1", "h", name="ci", role="admin", now=1, ttl_s=None)
    first.add_rate_hits([("auth", "ip", 1.0)])
    second = new_store(first.url if first.dialect == "postgresql" else first.path)
    assert second.user_by_name("alice") is not None
    assert second.get_user(uid) is not None
    assert second.api_token("k1") is not None
    assert second.rate_hits(0) == [("auth", "ip", 1.0)]
