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

from coordinator.api.errors import EnvelopeError, ErrorBody, error_response
from coordinator.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, Unavailable

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


class RouteTable:
    """Collects declarations next to their handlers: `@table.get(path, summary, ...)`."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(
        self, method: str, path: str, summary: str, **kw: Any
    ) -> Callable[[Handler], Handler]:
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

    @property
    def error_body(self) -> type:
        return EnvelopeError if self.envelope else ErrorBody

    def error(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        return error_response(status, message, headers, envelope=self.envelope)

    def domain_error(self, exc: DomainError) -> web.Response:
        return self.error(self.status_of(exc), str(exc))


FLEET = Conventions("fleet", envelope=False)
"""fleet's error body; Moorage's own routes use it too so one client helper reads all."""
ENVELOPE = Conventions("webops", envelope=True)


@dataclass(frozen=True)
class Family:
    prefix: str
    """Paths at or under it belong to the family ("" for the top-level routes)."""
    conventions: Conventions
    routes: Sequence[Route] = field(default_factory=tuple)

    def owns(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")


FAMILIES: web.AppKey[list[Family]] = web.AppKey("families", list[Family])
PUBLIC: web.AppKey[frozenset[str]] = web.AppKey("public", frozenset[str])
"""Paths served without authentication, from the declarations."""
DECLARED: web.AppKey[dict[tuple[str, str], Route]] = web.AppKey(
    "declared", dict[tuple[str, str], Route]
)
"""Each route's declaration by (method, path template): the middleware's view of it
(rate-limit class, permission, template for the audit log)."""


def register(app: web.Application, families: Iterable[Family]) -> None:
    """Add every declared route to the app, and keep the declarations for the error
    middleware and the OpenAPI document."""
    kept = list(families)
    for family in kept:
        for route in family.routes:
            assert route.handler is not None, route.path
            if route.any_method:
                app.router.add_route("*", route.path, route.handler)
            elif route.method == "GET":
                app.router.add_get(route.path, route.handler)  # and HEAD, as aiohttp does
            else:
                app.router.add_route(route.method, route.path, route.handler)
    app[FAMILIES] = kept
    app[PUBLIC] = public_paths(kept)
    app[DECLARED] = {("*" if r.any_method else r.method, r.path): r for f in kept for r in f.routes}


def declared(app: web.Application, method: str, template: str) -> Route | None:
    """The declaration serving `method` on the route template (HEAD is GET's)."""
    table = app.get(DECLARED, {})
    method = "GET" if method == "HEAD" else method
    return table.get((method, template)) or table.get(("*", template))


def family_of(app: web.Application, path: str) -> Family:
    """The family owning `path` (the longest prefix wins); top-level paths get fleet's."""
    owners = [f for f in app.get(FAMILIES, []) if f.owns(path)]
    if not owners:
        return Family("", FLEET)
    return max(owners, key=lambda f: len(f.prefix))


def public_paths(families: Iterable[Family]) -> frozenset[str]:
    return frozenset(r.path for f in families for r in f.routes if r.public)
