"""UserService on a real store (the run's engine; SQLite files where the file's bytes
are checked): argon2id hashing, login, tokens, revocation,
disabling, permissions, the first admin, and the domain events."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from coordinator.errors import Conflict, Forbidden, Invalid, NotFound
from coordinator.events import Event, EventBus
from coordinator.store.sql import SqlStore
from coordinator.trust.auth import AuthError, Principal, _user_principal
from coordinator.trust.users import (
    ADMIN_PASSWORD_FILE,
    LOGIN_FAILED,
    UserService,
    ensure_first_admin,
    token_id_of,
)
from tests.harness.databases import fresh_database

PASSWORD = "correct horse battery"


def cheap() -> PasswordHasher:
    """Fast parameters for tests (the production default costs 64 MiB per hash)."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Rig:
    def __init__(
        self, tmp: Path, hasher: PasswordHasher | None = None, target: str | None = None
    ) -> None:
        self.target = target or fresh_database(tmp)
        self.storage = SqlStore(self.target)
        self.events: list[Event] = []
        bus = EventBus()
        bus.subscribe(self.events.append)
        self.users = UserService(self.storage, bus, hasher=hasher or cheap())

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def stored_hash(storage: SqlStore, username: str) -> str:
    """The password hash the store holds for a user."""
    found = storage.user_by_name(username)
    assert found is not None
    return found[1]


def on_disk(db: Path) -> bytes:
    """The database file and its write-ahead log, as bytes."""
    wal = Path(str(db) + "-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


ADMIN = Principal("certificate", "admin", "admin")


async def test_passwords_are_stored_as_argon2id_and_never_in_clear(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On an SQLite file: its bytes (and its write-ahead log's) are searched."""
    path = tmp_path / "m.db"
    rig = Rig(tmp_path, target=str(path))
    caplog.set_level(logging.DEBUG)
    user = await rig.users.create_user(
        "alice", PASSWORD, email="alice@example.com", permissions=["deployments"]
    )
    assert user.username == "alice" and user.tenants == ["default"]
    assert user.permissions == ["deployments"] and not user.is_staff
    stored = stored_hash(rig.storage, "alice")
    assert stored.startswith("$argon2id$")
    assert PASSWORD.encode() not in on_disk(path)
    assert PASSWORD not in caplog.text
    issued = await rig.users.login("alice", PASSWORD)
    secret = issued.token.split(".")[2]
    assert secret.encode() not in on_disk(path)
    assert issued.token not in caplog.text


async def test_bad_users_are_refused_with_the_field_named(rig: Rig) -> None:
    with pytest.raises(Invalid, match="at least 8"):
        await rig.users.create_user("bob", "short")
    with pytest.raises(Invalid, match="username"):
        await rig.users.create_user("bad name", PASSWORD)
    with pytest.raises(Invalid, match="email"):
        await rig.users.create_user("bob", PASSWORD, email="not-an-email")
    with pytest.raises(Invalid, match="unknown permission"):
        await rig.users.create_user("bob", PASSWORD, permissions=["root"])
    await rig.users.create_user("bob", PASSWORD)
    with pytest.raises(Conflict, match="already exists"):
        await rig.users.create_user("bob", PASSWORD)


async def test_login_failures_say_the_same_thing(rig: Rig) -> None:
    await rig.users.create_user("alice", PASSWORD, permissions=["deployments"])
    messages = []
    for username, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
        with pytest.raises(AuthError) as caught:
            await rig.users.login(username, password)
        assert caught.value.status == 401
        messages.append(str(caught.value))
    assert messages == [LOGIN_FAILED, LOGIN_FAILED]
    rig.users.set_disabled("alice", actor=ADMIN)
    with pytest.raises(AuthError, match=LOGIN_FAILED):
        await rig.users.login("alice", PASSWORD)


async def test_a_token_carries_a_subset_tenant_and_expiry(rig: Rig) -> None:
    await rig.users.create_user(
        "alice", PASSWORD, permissions=["role:developer"], tenants=["team-a", "team-b"]
    )
    before = time.time()
    issued = await rig.users.login(
        "alice", PASSWORD, name="cli", expires_in=3600, permissions=["deployments"]
    )
    assert issued.token.startswith("mut.") and len(issued.token) >= 10
    record = issued.record
    assert record.permissions == ["deployments"] and record.name == "cli"
    assert record.tenant == "team-a"
    assert before + 3600 <= record.expires_at <= time.time() + 3600
    other = await rig.users.login("alice", PASSWORD, tenant="team-b")
    assert other.record.tenant == "team-b"
    assert other.record.permissions == [
        "deployments",
        "databases",
        "monitoring",
        "environments",
        "tasks",
    ]
    with pytest.raises(Forbidden, match="tenant 'team-c'"):
        await rig.users.login("alice", PASSWORD, tenant="team-c")
    with pytest.raises(Forbidden, match="users"):
        await rig.users.login("alice", PASSWORD, permissions=["deployments", "users"])
    with pytest.raises(Invalid, match="expires_in"):
        await rig.users.login("alice", PASSWORD, expires_in=10 * 365 * 86400)

    principal = _user_principal(issued.token, rig.storage)
    assert principal.kind == "user" and principal.name == "alice"
    assert principal.permissions == {"deployments"} and principal.tenant == "team-a"
    assert principal.user_id == record.user_id and principal.token_id == record.id
    assert principal.allows("deployments") and not principal.allows("users")


async def test_revoke_disable_and_lost_permissions_take_effect_at_once(rig: Rig) -> None:
    alice = await rig.users.create_user("alice", PASSWORD, permissions=["deployments", "users"])
    await rig.users.create_user("bob", PASSWORD, permissions=["deployments"])
    a1 = await rig.users.login("alice", PASSWORD)
    a2 = await rig.users.login("alice", PASSWORD)
    b1 = await rig.users.login("bob", PASSWORD)
    bob = _user_principal(b1.token, rig.storage)

    # bob may not revoke alice's token; he may revoke his own (whole token or id)
    with pytest.raises(Forbidden):
        rig.users.revoke(a1.token, actor=bob)
    rig.users.revoke(b1.record.id, actor=bob)
    with pytest.raises(AuthError, match="revoked"):
        _user_principal(b1.token, rig.storage)
    # alice holds `users`: she may revoke anyone's
    b2 = await rig.users.login("bob", PASSWORD)
    rig.users.revoke(b2.token, actor=_user_principal(a1.token, rig.storage))
    with pytest.raises(NotFound):
        rig.users.revoke("0123456789abcdef", actor=ADMIN)
    with pytest.raises(Invalid):
        rig.users.revoke("mut.zz.zz", actor=ADMIN)

    # a wrong secret for a real id is refused
    forged = ".".join([*a1.token.split(".")[:2], "0" * 40])
    with pytest.raises(AuthError, match="invalid token"):
        _user_principal(forged, rig.storage)

    # permissions taken away: the token loses them too
    rig.users.set_permissions(alice.id, ["deployments"], actor=ADMIN)
    assert _user_principal(a2.token, rig.storage).permissions == {"deployments"}

    rig.users.set_disabled("alice", actor=ADMIN)
    with pytest.raises(AuthError, match="disabled"):
        _user_principal(a2.token, rig.storage)
    rig.users.set_disabled("alice", False, actor=ADMIN)
    assert _user_principal(a2.token, rig.storage).name == "alice"


async def test_changed_password_and_rehash_on_new_parameters(tmp_path: Path) -> None:
    old = Rig(tmp_path, PasswordHasher(time_cost=1, memory_cost=512, parallelism=1))
    await old.users.create_user("alice", PASSWORD)
    first = stored_hash(old.storage, "alice")
    assert "m=512," in first
    old.storage.close()

    new = Rig(
        tmp_path, PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1), target=old.target
    )
    await new.users.login("alice", PASSWORD)
    second = stored_hash(new.storage, "alice")
    assert "m=1024,t=2," in second and second != first
    await new.users.login("alice", PASSWORD)  # the new hash verifies

    await new.users.set_password("alice", "another password", actor=ADMIN)
    with pytest.raises(AuthError):
        await new.users.login("alice", PASSWORD)
    await new.users.login("alice", "another password")
    with pytest.raises(Invalid, match="at least 8"):
        await new.users.set_password("alice", "x", actor=ADMIN)


async def test_domain_events_name_what_happened(rig: Rig) -> None:
    alice = await rig.users.create_user("alice", PASSWORD, permissions=["deployments"])
    issued = await rig.users.login("alice", PASSWORD)
    rig.users.set_permissions(alice.id, ["role:viewer"], actor=ADMIN)
    await rig.users.set_password("alice", "a new password", actor=ADMIN)
    rig.users.revoke(issued.token, actor=ADMIN)
    rig.users.set_disabled("alice", actor=ADMIN)
    assert rig.kinds() == [
        "user.created",
        "token.created",
        "user.permissions_changed",
        "user.password_changed",
        "token.revoked",
        "user.disabled",
    ]
    changed = rig.events[2]
    assert changed.subject == "alice" and changed.actor == "certificate:admin"
    assert changed.data == {"before": ["deployments"], "after": ["monitoring"]}
    assert all(PASSWORD not in repr(e) and "a new password" not in repr(e) for e in rig.events)
    assert all(issued.token not in repr(e) for e in rig.events)


async def test_list_pages_and_lookups(rig: Rig) -> None:
    for i in range(5):
        await rig.users.create_user(f"user{i}", PASSWORD)
    page, total = rig.users.list_users(offset=2, limit=2)
    assert total == 5 and [u.username for u in page] == ["user2", "user3"]
    assert rig.users.get(page[0].id).username == "user2"
    with pytest.raises(NotFound):
        rig.users.get(999)
    with pytest.raises(NotFound):
        rig.users.named("nobody")


async def test_the_first_admin_once_with_a_private_password_file(rig: Rig, tmp_path: Path) -> None:
    path = await ensure_first_admin(rig.users, tmp_path)
    assert path == tmp_path / ADMIN_PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert len(password) >= 20
    issued = await rig.users.login("admin", password)
    assert issued.record.permissions == ["admin"]
    assert await ensure_first_admin(rig.users, tmp_path) is None
    assert path.read_text().strip() == password


def test_token_ids() -> None:
    assert token_id_of("mut.0123abcd.00ff") == "0123abcd"
    assert token_id_of("0123abcd") == "0123abcd"
    with pytest.raises(Invalid):
        token_id_of("../etc")
