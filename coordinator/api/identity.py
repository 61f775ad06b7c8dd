"""Identity over HTTP, thin adapters over `UserService`:

- `/api/v1/auth` and `/api/v1/users`: WebOps' documented surface (`spec/webops-api.md`),
  in its `{"success","data","message","pagination"}` envelope and error codes. The two
  prefixes are families of their own because the rest of `/api/v1` belongs to other
  APIs (Flotilla's task API answers `{"error": "..."}` there).
- `/moorage/v1/users`: what `moorctl user ...` drives (create, list, disable, enable,
  passwd), in Moorage's own error format.

Passwords only ever travel in request bodies; responses never carry them or their
hashes. Login is public and rate-limited (`limit="auth"`).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from aiohttp import web

from coordinator import limits
from coordinator.api.errors import ApiError, decode_body, json_response
from coordinator.api.routing import ENVELOPE, FLEET, Family, RouteTable
from coordinator.models import User
from coordinator.timefmt import iso
from coordinator.trust import permissions as perms
from coordinator.trust.auth import PRINCIPAL
from coordinator.trust.users import UserService, held_by

AUTH_PREFIX = "/api/v1/auth"
USERS_PREFIX = "/api/v1/users"
NATIVE_PREFIX = "/moorage/v1/users"
LOGIN_BODY_MAX = limits.body_limit("POST", AUTH_PREFIX + "/token/")
"""Anonymous: capped before a byte is read (coordinator/limits.py)."""
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100


# --- bodies -------------------------------------------------------------------------------


class TokenRequest(msgspec.Struct, frozen=True):
    username: str
    password: str
    name: str = ""
    expires_in: float | None = None
    """Seconds; default one day, at most 90 days."""
    permissions: list[str] | None = None
    """A subset of the user's (default: all of them); asking for more is 403."""
    tenant: str | None = None
    """For a user in several tenants; default: the user's first."""


class TokenOut(msgspec.Struct, frozen=True):
    token: str
    expires_at: str | None
    permissions: list[str]
    id: str
    name: str
    tenant: str


class VerifiedUser(msgspec.Struct, frozen=True):
    id: int | None
    username: str


class VerifyOut(msgspec.Struct, frozen=True):
    valid: bool
    kind: str
    user: VerifiedUser
    tenant: str
    permissions: list[str]
    expires_at: str | None
    token_id: str


class UserOut(msgspec.Struct, frozen=True):
    id: int
    username: str
    email: str
    is_staff: bool
    is_active: bool
    permissions: list[str]
    """Granted (staff also hold `admin` through `is_staff`)."""
    tenants: list[str]
    created_at: str | None


class UserCreate(msgspec.Struct, frozen=True):
    username: str
    password: str
    email: str = ""
    is_staff: bool = False
    permissions: list[str] = []
    """Permissions or roles (`role:operator`)."""
    tenants: list[str] = []


class PermissionsBody(msgspec.Struct, frozen=True):
    permissions: list[str]


class PermissionsOut(msgspec.Struct, frozen=True):
    user_id: int
    username: str
    permissions: list[str]
    effective: list[str]
    """What the user may do: granted, plus `admin` for staff."""


class PasswordBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    password: str


class Pagination(msgspec.Struct, frozen=True):
    page: int
    per_page: int
    total: int
    total_pages: int


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    success: bool
    data: Any
    message: str = ""
    pagination: Pagination | None = None


class UserList(msgspec.Struct, frozen=True):
    users: list[UserOut]


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        email=user.email,
        is_staff=user.is_staff,
        is_active=not user.disabled,
        permissions=user.permissions,
        tenants=user.tenants,
        created_at=iso(user.created_at),
    )


def permissions_out(user: User) -> PermissionsOut:
    return PermissionsOut(user.id, user.username, user.permissions, perms.ordered(held_by(user)))


def ok(data: object, message: str = "", status: int = 200, **kw: object) -> web.Response:
    return json_response(Envelope(True, data, message, **kw), status)  # type: ignore[arg-type]


def page_args(request: web.Request) -> tuple[int, int]:
    """`page` (from 1) and `per_page` (1 to 100), 400 naming the bad one. Pure."""
    values = {}
    for key, default, top in (
        ("page", 1, 1 << 31),
        ("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE),
    ):
        raw = request.query.get(key, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"{key} must be an integer, got {raw!r}") from None
        if not 1 <= value <= top:
            raise ApiError(400, f"{key} must be between 1 and {top}")
        values[key] = value
    return values["page"], values["per_page"]


def user_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, f"user {raw!r} does not exist")
    return int(raw)


# --- /api/v1/auth ----------------------------------------------------------------------


def auth_routes(users: UserService) -> Family:
    r = RouteTable()

    @r.post(
        AUTH_PREFIX + "/token/",
        "Log in with username and password: a token with (a subset of) the user's permissions",
        request=TokenRequest,
        response=Envelope,
        ok=201,
        errors=(400, 401, 403, 415, 429),
        public=True,
        limit="auth",
    )
    async def create_token(request: web.Request) -> web.Response:
        body = await decode_body(request, TokenRequest, max_bytes=LOGIN_BODY_MAX)
        issued = await users.login(
            body.username,
            body.password,
            name=body.name,
            expires_in=body.expires_in,
            permissions=body.permissions,
            tenant=body.tenant,
        )
        rec = issued.record
        out = TokenOut(
            issued.token, iso(rec.expires_at), rec.permissions, rec.id, rec.name, rec.tenant
        )
        return ok(out, "token created", 201)

    @r.get(
        AUTH_PREFIX + "/verify/",
        "Who the presented token (or certificate) acts as",
        response=Envelope,
        errors=(401,),
    )
    async def verify(request: web.Request) -> web.Response:
        principal = request[PRINCIPAL]
        expires = None
        if principal.token_id and principal.kind == "user":
            expires = iso(users.token(principal.token_id).expires_at)
        out = VerifyOut(
            valid=True,
            kind=principal.kind,
            user=VerifiedUser(principal.user_id, principal.name),
            tenant=principal.tenant,
            permissions=perms.ordered(principal.permissions),
            expires_at=expires,
            token_id=principal.token_id,
        )
        return ok(out, "token is valid")

    @r.delete(
        AUTH_PREFIX + "/token/{token}/",
        "Revoke a user token (given whole or by id): one's own, or any with 'users'",
        response=Envelope,
        errors=(400, 401, 403, 404),
    )
    async def revoke(request: web.Request) -> web.Response:
        record = users.revoke(request.match_info["token"], actor=request[PRINCIPAL])
        return ok({"id": record.id, "revoked": True}, "token revoked")

    return Family(AUTH_PREFIX, ENVELOPE, r.routes)


# --- /api/v1/users ----------------------------------------------------------------------


def users_routes(users: UserService) -> Family:
    r = RouteTable(permission=perms.USERS)

    @r.get(
        USERS_PREFIX + "/",
        "Users, by id",
        response=Envelope,
        errors=(400,),
        query=("page", "per_page"),
    )
    async def list_users(request: web.Request) -> web.Response:
        page, per_page = page_args(request)
        found, total = users.list_users(offset=(page - 1) * per_page, limit=per_page)
        pagination = Pagination(page, per_page, total, max(1, math.ceil(total / per_page)))
        return ok([user_out(u) for u in found], pagination=pagination)

    @r.post(
        USERS_PREFIX + "/",
        "Create a user (409 if the username is taken)",
        request=UserCreate,
        response=Envelope,
        ok=201,
        errors=(400, 409, 415),
    )
    async def create_user(request: web.Request) -> web.Response:
        body = await decode_body(request, UserCreate, max_bytes=LOGIN_BODY_MAX)
        user = await create(users, body, request)
        return ok(user_out(user), "user created", 201)

    @r.get(
        USERS_PREFIX + "/{id}/",
        "One user",
        response=Envelope,
        errors=(404,),
    )
    async def get_user(request: web.Request) -> web.Response:
        return ok(user_out(users.get(user_id(request))))

    @r.get(
        USERS_PREFIX + "/{id}/permissions/",
        "A user's permissions",
        response=Envelope,
        errors=(404,),
    )
    async def get_permissions(request: web.Request) -> web.Response:
        return ok(permissions_out(users.get(user_id(request))))

    @r.put(
        USERS_PREFIX + "/{id}/permissions/",
        "Replace a user's permissions (names or roles)",
        request=PermissionsBody,
        response=Envelope,
        errors=(400, 404, 415),
    )
    async def put_permissions(request: web.Request) -> web.Response:
        body = await decode_body(request, PermissionsBody)
        user = users.set_permissions(user_id(request), body.permissions, actor=request[PRINCIPAL])
        return ok(permissions_out(user), "permissions updated")

    return Family(USERS_PREFIX, ENVELOPE, r.routes)


async def create(users: UserService, body: UserCreate, request: web.Request) -> User:
    return await users.create_user(
        body.username,
        body.password,
        email=body.email,
        is_staff=body.is_staff,
        permissions=body.permissions,
        tenants=body.tenants,
        actor=request[PRINCIPAL],
    )


# --- /moorage/v1/users (moorctl) ----------------------------------------------------------


def native_routes(users: UserService) -> Family:
    r = RouteTable(permission=perms.USERS)

    @r.get(NATIVE_PREFIX, "Every user", response=UserList)
    async def list_all(request: web.Request) -> web.Response:
        found, _ = users.list_users(limit=1 << 30)
        return json_response(UserList([user_out(u) for u in found]))

    @r.post(
        NATIVE_PREFIX,
        "Create a user",
        request=UserCreate,
        response=UserOut,
        ok=201,
        errors=(400, 409, 415),
    )
    async def create_user(request: web.Request) -> web.Response:
        body = await decode_body(request, UserCreate, max_bytes=LOGIN_BODY_MAX)
        return json_response(user_out(await create(users, body, request)), 201)

    @r.post(
        NATIVE_PREFIX + "/{username}/disable",
        "Disable a user: no login, and their tokens are refused",
        response=UserOut,
        errors=(404,),
    )
    async def disable(request: web.Request) -> web.Response:
        name = request.match_info["username"]
        return json_response(user_out(users.set_disabled(name, actor=request[PRINCIPAL])))

    @r.post(
        NATIVE_PREFIX + "/{username}/enable",
        "Enable a disabled user again",
        response=UserOut,
        errors=(404,),
    )
    async def enable(request: web.Request) -> web.Response:
        name = request.match_info["username"]
        return json_response(user_out(users.set_disabled(name, False, actor=request[PRINCIPAL])))

    @r.put(
        NATIVE_PREFIX + "/{username}/password",
        "Set a user's password",
        request=PasswordBody,
        ok=204,
        errors=(400, 404, 415),
    )
    async def passwd(request: web.Request) -> web.Response:
        body = await decode_body(request, PasswordBody, max_bytes=LOGIN_BODY_MAX)
        await users.set_password(
            request.match_info["username"], body.password, actor=request[PRINCIPAL]
        )
        return web.Response(status=204)

    return Family(NATIVE_PREFIX, FLEET, r.routes)


def routes(users: UserService) -> list[Family]:
    return [auth_routes(users), users_routes(users), native_routes(users)]
