"""Who is calling the API: an admin client certificate or a Bearer token, never nobody.

TLS (CERT_OPTIONAL against the fleet CA) has already verified any certificate the
client presented; this module decides whether that certificate, or the token in the
`Authorization` header, grants access. Agent certificates grant none: agents speak
only on the hub.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import msgspec
from aiohttp import web

from coordinator.models import DEFAULT_TENANT
from coordinator.store.ports import TrustStore
from coordinator.trust import pki
from proto.tokens import (
    API_KIND,
    USER_KIND,
    TokenFormatError,
    parse_token,
    secret_matches,
    token_kind,
)

ROLE_ADMIN = "admin"
ROLE_USER = "user"
PERM_ADMIN = "admin"
"""Grants every permission."""


class Principal(msgspec.Struct, frozen=True):
    """Who a request acts as, and in which tenant (exactly one per request)."""

    kind: str  # "certificate" | "token" | "user"
    name: str
    role: str
    tenant: str = DEFAULT_TENANT
    permissions: frozenset[str] = frozenset({PERM_ADMIN})
    user_id: int | None = None
    """Set for a user's token (#17); None for the admin certificate and admin tokens."""
    token_id: str = ""
    unlimited: bool = False
    """Exempt from the per-token general rate limit (a flag an admin sets on a token)."""

    @property
    def label(self) -> str:
        """`kind:name`, as the audit log and events' `actor` name a principal."""
        return f"{self.kind}:{self.name}"

    def allows(self, permission: str) -> bool:
        """`admin` grants everything; otherwise the permission must be held. Pure."""
        return PERM_ADMIN in self.permissions or permission in self.permissions


class AuthError(Exception):
    """401 by default: no usable credentials; 403: credentials fine but not for the API."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


PRINCIPAL = web.RequestKey("principal", Principal)
"""Who the request acts as, set by the server's middleware for every non-public route."""


def presents_token(request: web.Request) -> bool:
    """Whether the request offers a token (a guess, until checked): what counts against
    the client IP's limit of failed authentications."""
    return bool(request.headers.get("Authorization") or request.headers.get("api-key"))


def admin_certificate(request: web.Request, storage: TrustStore) -> Principal | None:
    """The admin certificate's principal when the request presents one (unrevoked):
    the operator's break-glass, never rate-limited, even on public routes."""
    peer = pki.peer_cert_info(request.transport)
    if peer is None or peer.role != pki.ROLE_ADMIN or storage.is_serial_revoked(peer.serial):
        return None
    return Principal("certificate", peer.common_name, ROLE_ADMIN)


def authenticate(request: web.Request, storage: TrustStore) -> Principal:
    """Return the caller or raise AuthError with a message safe to show the client."""
    if presents_token(request):
        header = request.headers.get("Authorization", "")
        api_key = request.headers.get("api-key", "")
        return _token_principal(header, api_key, storage)
    peer = pki.peer_cert_info(request.transport)
    if peer is not None:
        if peer.role != pki.ROLE_ADMIN:
            raise AuthError(f"certificate role {peer.role!r} may not use the API", 403)
        if storage.is_serial_revoked(peer.serial):
            raise AuthError("certificate revoked", 403)
        return Principal("certificate", peer.common_name, ROLE_ADMIN)
    raise AuthError(
        "authentication required: a client certificate or an Authorization: Bearer token"
    )


class _Revocable(Protocol):
    @property
    def revoked(self) -> bool: ...

    @property
    def expires_at(self) -> float | None: ...


_R = TypeVar("_R", bound=_Revocable)


def _valid(value: str, kind: str, lookup: Callable[[str], tuple[_R, str] | None]) -> _R:
    """The stored record of a presented token of `kind` whose secret matches, not
    revoked and not expired; AuthError otherwise (the same words for an unknown id and
    a wrong secret)."""
    try:
        token = parse_token(value.strip(), kind)
    except TokenFormatError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    found = lookup(token.id)
    if found is None or not secret_matches(token.secret, found[1]):
        raise AuthError("invalid token")
    record = found[0]
    if record.revoked:
        raise AuthError("token revoked")
    if record.expires_at is not None and record.expires_at <= time.time():
        raise AuthError("token expired")
    return record


def _token_principal(header: str, api_key: str, storage: TrustStore) -> Principal:
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("Authorization header must be 'Bearer <token>'")
    else:
        value = api_key
    if token_kind(value) == USER_KIND:
        return _user_principal(value, storage)
    record = _valid(value, API_KIND, storage.api_token)
    return Principal(
        "token",
        record.name,
        record.role,
        tenant=record.tenant,
        token_id=record.id,
        unlimited=record.unlimited,
    )


def user_token_principal(value: str, storage: TrustStore) -> Principal:
    """The principal of a user token held server-side (the dashboard's session keeps
    the token its login issued): the same checks as a Bearer user token."""
    return _user_principal(value, storage)


def _user_principal(value: str, storage: TrustStore) -> Principal:
    """A user's token: valid while not revoked, not expired and the user not disabled;
    it carries what it was issued with, but never more than the user holds now."""
    record = _valid(value, USER_KIND, storage.user_token)
    user = storage.get_user(record.user_id)
    if user is None or user.disabled:
        raise AuthError("user disabled")
    held = frozenset(user.permissions) | ({PERM_ADMIN} if user.is_staff else set())
    permissions = token_holds(frozenset(record.permissions), held)
    return Principal(
        "user",
        user.username,
        ROLE_ADMIN if PERM_ADMIN in permissions else ROLE_USER,
        tenant=record.tenant,
        permissions=permissions,
        user_id=user.id,
        token_id=record.id,
    )


def token_holds(issued: frozenset[str], held: frozenset[str]) -> frozenset[str]:
    """What a token may do now: what it was issued with, less what its user lost
    since (a user who holds `admin` still grants all of it). Pure."""
    if PERM_ADMIN in held:
        return issued
    return issued & held
