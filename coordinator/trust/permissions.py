"""Permissions and roles, as pure values and functions (no I/O).

A permission is named after what it allows; `admin` grants every other. A role is a
named set of permissions, a shorthand when granting: it is expanded on the way in and
never stored, so changing what a role means does not silently change who holds what.
A token carries a subset of its user's permissions, never more.
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.errors import Forbidden, Invalid
from coordinator.trust.auth import PERM_ADMIN

DEPLOYMENTS = "deployments"
DATABASES = "databases"
MONITORING = "monitoring"
USERS = "users"
ENVIRONMENTS = "environments"
APPROVALS = "approvals"
TASKS = "tasks"
FLEET = "fleet"
ADMIN = PERM_ADMIN

PERMISSIONS: tuple[str, ...] = (
    DEPLOYMENTS,
    DATABASES,
    MONITORING,
    USERS,
    ENVIRONMENTS,
    APPROVALS,
    TASKS,
    FLEET,
    ADMIN,
)
"""Every permission a route may declare and a user may hold."""

ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({ADMIN}),
    "operator": frozenset(
        {DEPLOYMENTS, DATABASES, MONITORING, ENVIRONMENTS, TASKS, FLEET, APPROVALS}
    ),
    "developer": frozenset({DEPLOYMENTS, DATABASES, MONITORING, ENVIRONMENTS, TASKS}),
    "viewer": frozenset({MONITORING}),
}
"""Named sets. `viewer` is read-only by holding only `monitoring` (health, metrics,
reports): there is no separate read permission."""

ROLE_PREFIX = "role:"


def allows(held: Iterable[str], permission: str) -> bool:
    """`admin` grants everything; otherwise the permission must be held."""
    granted = frozenset(held)
    return ADMIN in granted or permission in granted


def expand(names: Iterable[str]) -> frozenset[str]:
    """Permissions from names that are permissions or roles (`role:operator`, or a bare
    role name that is not also a permission). Invalid naming every unknown name."""
    out: set[str] = set()
    unknown: list[str] = []
    for raw in names:
        name = raw.strip()
        role = name.removeprefix(ROLE_PREFIX)
        if name in PERMISSIONS:
            out.add(name)
        elif role in ROLES:
            out |= ROLES[role]
        else:
            unknown.append(raw)
    if unknown:
        raise Invalid(
            f"unknown permission(s) {', '.join(sorted(map(repr, unknown)))}; known: "
            f"{', '.join(PERMISSIONS)} and roles {', '.join(f'role:{r}' for r in ROLES)}"
        )
    return frozenset(out)


def effective(permissions: Iterable[str], *, is_staff: bool) -> frozenset[str]:
    """What a user may do: what they were granted, plus `admin` for staff."""
    held = frozenset(permissions)
    return held | {ADMIN} if is_staff else held


def token_permissions(held: frozenset[str], requested: Iterable[str] | None) -> frozenset[str]:
    """The permissions a new token carries: all the user's when none are asked for;
    otherwise the ones asked for, which must each be allowed by what the user holds
    (`admin` held allows asking for any). Asking for more is Forbidden, naming what is
    missing; an empty request is Invalid (a token that can do nothing is a mistake)."""
    if requested is None:
        return held
    wanted = expand(requested)
    if not wanted:
        raise Invalid("permissions must name at least one permission (or be omitted)")
    missing = sorted(p for p in wanted if not allows(held, p))
    if missing:
        raise Forbidden(
            f"permission(s) {', '.join(missing)} cannot be granted: the user does not hold them"
        )
    return wanted


def ordered(permissions: Iterable[str]) -> list[str]:
    """In the canonical order of PERMISSIONS (stable output for clients and tests)."""
    held = frozenset(permissions)
    return [p for p in PERMISSIONS if p in held]
