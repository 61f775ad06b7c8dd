"""Permissions, roles and the token subset rule: pure functions, no I/O."""

from __future__ import annotations

import pytest

from coordinator.api.routing import Route, RouteTable, permission_refusal
from coordinator.errors import Forbidden, Invalid
from coordinator.trust import permissions as perms
from coordinator.trust.auth import Principal, token_holds


def test_admin_grants_everything_and_others_only_themselves() -> None:
    assert perms.allows({"admin"}, "users")
    assert perms.allows({"admin"}, "anything-at-all")
    assert perms.allows({"deployments"}, "deployments")
    assert not perms.allows({"deployments"}, "users")
    assert not perms.allows(set(), "monitoring")


def test_roles_are_the_documented_sets() -> None:
    assert perms.ROLES["admin"] == {"admin"}
    assert perms.ROLES["operator"] == {
        "deployments",
        "databases",
        "monitoring",
        "environments",
        "tasks",
        "fleet",
        "approvals",
    }
    assert perms.ROLES["developer"] == {
        "deployments",
        "databases",
        "monitoring",
        "environments",
        "tasks",
    }
    assert perms.ROLES["viewer"] == {"monitoring"}
    for role in perms.ROLES.values():
        assert role <= set(perms.PERMISSIONS)


def test_expand_takes_permissions_and_roles_and_names_unknown_ones() -> None:
    assert perms.expand(["deployments", "role:viewer"]) == {"deployments", "monitoring"}
    assert perms.expand(["operator"]) == perms.ROLES["operator"]
    # `admin` is both a permission and a role: the same either way.
    assert perms.expand(["admin"]) == perms.expand(["role:admin"]) == {"admin"}
    with pytest.raises(Invalid, match="'deploy', 'root'"):
        perms.expand(["deploy", "root", "fleet"])


def test_staff_hold_admin() -> None:
    assert perms.effective(["deployments"], is_staff=True) == {"deployments", "admin"}
    assert perms.effective(["deployments"], is_staff=False) == {"deployments"}


def test_a_token_gets_all_by_default_or_a_subset_never_more() -> None:
    held = frozenset({"deployments", "databases", "monitoring"})
    assert perms.token_permissions(held, None) == held
    assert perms.token_permissions(held, ["deployments"]) == {"deployments"}
    assert perms.token_permissions(held, ["role:viewer"]) == {"monitoring"}
    with pytest.raises(Forbidden, match="users"):
        perms.token_permissions(held, ["deployments", "users"])
    with pytest.raises(Forbidden, match="admin"):
        perms.token_permissions(held, ["admin"])
    with pytest.raises(Invalid, match="at least one"):
        perms.token_permissions(held, [])
    with pytest.raises(Invalid, match="unknown"):
        perms.token_permissions(held, ["everything"])
    # An admin may ask for anything, admin included.
    assert perms.token_permissions(frozenset({"admin"}), ["users", "fleet"]) == {"users", "fleet"}
    assert perms.token_permissions(frozenset({"admin"}), ["admin"]) == {"admin"}


def test_a_token_loses_what_its_user_lost() -> None:
    issued = frozenset({"deployments", "users"})
    assert token_holds(issued, frozenset({"deployments"})) == {"deployments"}
    assert token_holds(issued, frozenset({"admin"})) == issued
    assert token_holds(issued, frozenset()) == frozenset()


def test_ordered_is_canonical() -> None:
    assert perms.ordered({"fleet", "deployments", "admin"}) == ["deployments", "fleet", "admin"]


def test_principal_allows() -> None:
    user = Principal("user", "alice", "user", permissions=frozenset({"deployments"}))
    assert user.allows("deployments") and not user.allows("users")
    assert Principal("certificate", "admin", "admin").allows("users")


def test_route_permission_is_declared_once_per_table_and_refused_with_its_name() -> None:
    r = RouteTable(permission="fleet")

    async def handler(request: object) -> object:
        raise AssertionError

    r.get("/a", "a")(handler)  # type: ignore[arg-type]
    r.get("/b", "b", permission="admin")(handler)  # type: ignore[arg-type]
    r.get("/c", "c", permission=None)(handler)  # type: ignore[arg-type]
    r.get("/d", "d", public=True)(handler)  # type: ignore[arg-type]
    a, b, c, d = r.routes
    assert (a.permission, b.permission, c.permission, d.permission) == (
        "fleet",
        "admin",
        None,
        None,
    )

    deployer = Principal("user", "bob", "user", permissions=frozenset({"deployments"}))
    refusal = permission_refusal(a, deployer.allows)
    assert refusal is not None and "'fleet'" in refusal
    assert permission_refusal(c, deployer.allows) is None
    assert permission_refusal(None, deployer.allows) is None
    admin = Principal("token", "ci", "admin")
    assert permission_refusal(b, admin.allows) is None
    assert permission_refusal(Route("GET", "/x", "x", permission="users"), admin.allows) is None
