"""HTTP conventions, in one place: how routes are declared, and how each API family
renders errors and maps domain errors to status codes.

A route is declared once (method, path, handler, body and response Structs, whether it
needs authentication, summary): the server registers exactly these declarations and
/openapi.json is generated from them. An API family (fleet's /fleet/v1 and /v1-alpha,
Moorage's /moorage/v1, the fleet manager's /api/v2) declares its prefix, its error
body and its domain-error mapping; the one error middleware picks the family that owns
a request's path, so a new `/api/...` family brings its own conventions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from coordinator.api.errors import CliError, EnvelopeError, ErrorBody, FlatError, error_response
from coordinator.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, Unavailable
from coordinator.models import DEFAULT_TENANT
from coordinator.trust.auth import PRINCIPAL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    handler: Handler | None = None
    request: Any = None
    """The body's type (a msgspec Struct or a container of them)."""
    response: Any = None
    ok: int = 200
    errors: tuple[int, ...] = ()
    query: tuple[str, ...] = ()
    public: bool = False
    """Served without authentication."""
    any_method: bool = False
    """Registered for every method (the handler answers the others); documented as `method`."""
    permission: str | None = None
    """The permission the caller needs (checked once, by the server, before the handler);
    None: any authenticated caller."""
    limit: str | None = None
    """The rate-limit class the route counts against ("auth", "deploy"...); None: only
    the per-token general limit."""
    documented: bool = True
    """Listed in /openapi.json; the dashboard's pages (/ui/) are not an API."""


class RouteTable:
    """Collects declarations next to their handlers: `@table.get(path, summary, ...)`.

    `permission`: what every route of the table needs unless it declares its own
    (`permission=...`, None for any authenticated caller) or is public."""

    def __init__(self, permission: str | None = None) -> None:
        self.routes: list[Route] = []
        self.permission = permission

    def route(
        self, method: str, path: str, summary: str, **kw: Any
    ) -> Callable[[Handler], Handler]:
        if not kw.get("public"):
            kw.setdefault("permission", self.permission)

        def add(handler: Handler) -> Handler:
            self.routes.append(Route(method, path, summary, handler, **kw))
            return handler

        return add

    def get(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, summary, **kw)

    def put(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, summary, **kw)

    def post(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, summary, **kw)

    def patch(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, summary, **kw)

    def delete(self, path: str, summary: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, summary, **kw)


def tenant_of(request: web.Request) -> str:
    """The one tenant a request acts in: its principal's (an API token's tenant; the
    admin certificate acts in `default`). Every adapter passes it to its service, which
    scopes every read and write by it; another tenant's objects are NotFound."""
    principal = request.get(PRINCIPAL)
    return DEFAULT_TENANT if principal is None else principal.tenant


def domain_status(exc: DomainError) -> int:
    """The HTTP status of a domain refusal, as every family so far maps it. Pure."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Unavailable):
        return 504 if exc.timed_out else 503
    if isinstance(exc, Invalid):
        return 400
    return 400


@dataclass(frozen=True)
class Conventions:
    """An API family's error format and domain-error mapping."""

    name: str
    envelope: bool
    """WebOps' `{"success":false,"error":{code,status,message}}`; else fleet's
    `{"error":{"code","message"}}`."""
    status_of: Callable[[DomainError], int] = domain_status
    flat: bool = False
    """Flotilla's `{"error": "<message>"}` (charset=utf-8), whatever `envelope` says."""
    cli: bool = False
    """The WebOps command-line surface's `{"error": "<text>", "message": "<text>"}`
    (401: `"error": "Authentication required"`)."""

    @property
    def error_body(self) -> type:
        if self.cli:
            return CliError
        if self.flat:
            return FlatError
        return EnvelopeError if self.envelope else ErrorBody

    def error(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        return error_response(
            status, message, headers, envelope=self.envelope, flat=self.flat, cli=self.cli
        )

    def domain_error(self, exc: DomainError) -> web.Response:
        return self.error(self.status_of(exc), str(exc))


FLEET = Conventions("fleet", envelope=False)
"""fleet's error body; Moorage's own routes use it too so one client helper reads all."""
ENVELOPE = Conventions("webops", envelope=True)
FLOTILLA = Conventions("flotilla", envelope=False, flat=True)
WEBOPS_CLI = Conventions("webops-cli", envelope=False, cli=True)
"""The WebOps command-line client's `/api/...` surface (no envelope, names)."""
"""The task API's (Flotilla's) error body: `{"error": "<message>"}`."""


@dataclass(frozen=True)
class Family:
    prefix: str
    """Paths at or under it belong to the family ("" for the top-level routes)."""
    conventions: Conventions
    routes: Sequence[Route] = field(default_factory=tuple)

    def owns(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")


FAMILIES: web.AppKey[list[Family]] = web.AppKey("families", list[Family])
DECLARED: web.AppKey[dict[object, dict[str, Route]]] = web.AppKey(
    "declared", dict[object, dict[str, Route]]
)
"""aiohttp resource -> method ("*" for any) -> the Route declared for it: what the
server's middleware reads for the request it matched (permission, rate-limit class,
the template the audit log records)."""
PUBLIC: web.AppKey[frozenset[str]] = web.AppKey("public", frozenset[str])
"""Paths served without authentication, from the declarations."""


def register(app: web.Application, families: Iterable[Family]) -> None:
    """Add every declared route to the app, and keep the declarations for the error
    middleware and the OpenAPI document."""
    kept = list(families)
    declared: dict[object, dict[str, Route]] = {}
    for family in kept:
        for route in family.routes:
            assert route.handler is not None, route.path
            if route.any_method:
                added = app.router.add_route("*", route.path, route.handler)
                methods = ["*"]
            elif route.method == "GET":
                added = app.router.add_get(route.path, route.handler)  # and HEAD, as aiohttp does
                methods = ["GET", "HEAD"]
            else:
                added = app.router.add_route(route.method, route.path, route.handler)
                methods = [route.method]
            for method in methods:
                declared.setdefault(added.resource, {})[method] = route
    app[FAMILIES] = kept
    app[DECLARED] = declared
    app[PUBLIC] = public_paths(kept)


def family_of(app: web.Application, path: str) -> Family:
    """The family owning `path` (the longest prefix wins); top-level paths get fleet's."""
    owners = [f for f in app.get(FAMILIES, []) if f.owns(path)]
    if not owners:
        return Family("", FLEET)
    return max(owners, key=lambda f: len(f.prefix))


def public_paths(families: Iterable[Family]) -> frozenset[str]:
    return frozenset(r.path for f in families for r in f.routes if r.public)


def declared_route(request: web.Request) -> Route | None:
    """The declaration of the route `request` matched (None: no route matched)."""
    resource = request.match_info.route.resource
    methods = request.app.get(DECLARED, {}).get(resource) if resource is not None else None
    if not methods:
        return None
    return methods.get(request.method) or methods.get("*")


def permission_refusal(route: Route | None, allows: Callable[[str], bool]) -> str | None:
    """Why the caller may not use `route` (None: they may). Pure."""
    if route is None or route.permission is None or allows(route.permission):
        return None
    return f"permission denied: this route needs the {route.permission!r} permission"
