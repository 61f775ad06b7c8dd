"""The web dashboard at /ui/: server-rendered pages (Jinja2) over the same domain
services the APIs adapt, served by the coordinator over the same HTTPS.

Authentication: a login form issues a user token kept in a server-side session
(coordinator/ui/sessions.py); the server's middleware asks `Dashboard.authenticate`
for every /ui/ route, and only there (the APIs keep Bearer tokens and certificates).
Permissions are the routes' declarations, checked by the middleware like any route's.
Every form posts the session's CSRF token. Live updates: /ui/events (live.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from coordinator.api.environments import actor_of
from coordinator.api.routing import FLEET, Family, RouteTable, tenant_of
from coordinator.audit import AuditLog
from coordinator.deploy.deployments import DeploymentService
from coordinator.envs import rules
from coordinator.envs.service import EnvironmentService
from coordinator.errors import DomainError
from coordinator.fleet.machines import MachineService
from coordinator.fleet.units import UnitService
from coordinator.models import AuditQuery, Machine
from coordinator.reports.logs import LogService
from coordinator.reports.service import ReportService
from coordinator.store.ports import TrustStore
from coordinator.tasks.records import RunQuery
from coordinator.tasks.service import TaskService
from coordinator.trust import permissions as perms
from coordinator.trust.access import TokenService
from coordinator.trust.auth import PRINCIPAL, AuthError, Principal, user_token_principal
from coordinator.trust.users import UserService
from coordinator.ui import sessions as ss
from coordinator.ui.live import LiveHub
from coordinator.webops.records import WebQuery
from coordinator.webops.service import WebOpsService
from proto.messages import DesiredState

if TYPE_CHECKING:
    import jinja2

PREFIX = "/ui"
PAGE_SIZE = 50
MAX_QUERY = 200
MAX_FORM = 16 * 1024
HERE = Path(__file__).parent
SESSION: web.RequestKey[ss.Session] = web.RequestKey("ui_session", ss.Session)

T = TypeVar("T")


# --- pure helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    items: list[Any]
    number: int
    pages: int
    total: int


def page_of(items: Sequence[T], number: int, size: int = PAGE_SIZE) -> Page:
    """Page `number` (1-based, clamped) of `items`. Pure."""
    total = len(items)
    pages = max(1, -(-total // size))
    number = min(max(1, number), pages)
    start = (number - 1) * size
    return Page(list(items[start : start + size]), number, pages, total)


def machine_matches(machine: Machine, query: str) -> bool:
    """Whether a search matches a machine: every word in its id, hostname, address,
    state, capabilities or metadata (case-insensitive). Pure."""
    words = query.lower().split()
    if not words:
        return True
    hay = " ".join(
        [
            machine.id,
            machine.hostname,
            machine.primary_ip,
            machine.state,
            *machine.capabilities,
            *(f"{k}={v}" for k, v in machine.metadata.items()),
        ]
    ).lower()
    return all(w in hay for w in words)


def page_number(raw: str) -> int:
    try:
        return max(1, int(raw))
    except ValueError:
        return 1


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str
    permission: str | None


NAV: tuple[NavItem, ...] = (
    NavItem("/ui/fleet", "Fleet", perms.FLEET),
    NavItem("/ui/units", "Units", perms.FLEET),
    NavItem("/ui/deployments", "Deployments", perms.DEPLOYMENTS),
    NavItem("/ui/environments", "Environments", perms.ENVIRONMENTS),
    NavItem("/ui/tasks", "Tasks", perms.TASKS),
    NavItem("/ui/webops", "WebOps", perms.DEPLOYMENTS),
    NavItem("/ui/audit", "Audit log", perms.ADMIN),
    NavItem("/ui/users", "Users", perms.USERS),
)


def nav_for(allows: Callable[[str], bool]) -> list[NavItem]:
    """The pages a principal may open: no link to what the server would refuse. Pure."""
    return [n for n in NAV if n.permission is None or allows(n.permission)]


DAY_S = 86400.0
CALENDAR_DAYS = 14


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    reason: str


def frozen_days(
    windows: Sequence[Window], first_day: float, days: int = CALENDAR_DAYS
) -> list[str]:
    """For each of `days` UTC days from `first_day` (a midnight), the reasons of the
    freeze windows overlapping it ("" none). Pure."""
    out = []
    for i in range(days):
        start, end = first_day + i * DAY_S, first_day + (i + 1) * DAY_S
        reasons = [w.reason or "frozen" for w in windows if w.start < end and w.end > start]
        out.append("; ".join(reasons))
    return out


def midnight(at: float) -> float:
    """The UTC midnight starting the day of `at`. Pure."""
    return at - at % DAY_S


def when(at: float) -> str:
    """`2026-12-07 02:07 UTC`. Pure."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def ago(at: float, now: float) -> str:
    """`12s ago`, `5m ago`, `3h ago`, `2d ago`; `never` for 0. Pure."""
    if at <= 0:
        return "never"
    s = max(0, int(now - at))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


# --- the adapter ------------------------------------------------------------------------


class Dashboard:
    def __init__(
        self,
        *,
        storage: TrustStore,
        users: UserService,
        machines: MachineService,
        units: UnitService,
        tasks: TaskService,
        deployments: DeploymentService,
        environments: EnvironmentService,
        webops: WebOpsService,
        audit: AuditLog,
        reports: ReportService,
        logs: LogService,
        tokens: TokenService,
        live: LiveHub,
    ) -> None:
        self.tokens = tokens
        self.reports = reports
        self.logs = logs
        self.webops = webops
        self.audit = audit
        self.environments = environments
        self.deployments = deployments
        self.tasks = tasks
        self.storage = storage
        self.users = users
        self.machines = machines
        self.units = units
        self.live = live
        self.sessions = ss.SessionStore()
        self._templates: jinja2.Environment | None = None
        self.script = (HERE / "static" / "ui.js").read_bytes()

    @property
    def templates(self) -> jinja2.Environment:
        """Jinja, loaded when a page is first asked for: ~9 MiB a coordinator whose
        dashboard nobody opens does not hold (#22)."""
        if self._templates is None:
            import jinja2

            self._templates = jinja2.Environment(
                loader=jinja2.FileSystemLoader(HERE / "templates"),
                autoescape=True,
                undefined=jinja2.StrictUndefined,
            )
        return self._templates

    @staticmethod
    def owns(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    # authentication (called by the server's middleware) ---------------------------------

    def authenticate(self, request: web.Request) -> Principal:
        """The principal of the request's session; a page without one sends the browser
        to the login form, anything else is a 401."""
        session = self.sessions.get(request.cookies.get(ss.COOKIE, ""))
        if session is not None:
            try:
                principal = user_token_principal(session.token, self.storage)
            except AuthError:
                self.sessions.drop(session.id)
            else:
                request[SESSION] = session
                return principal
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther(location=f"{PREFIX}/login")
        raise AuthError("authentication required: log in at /ui/login")

    # rendering ----------------------------------------------------------------------------

    def render(
        self, request: web.Request, name: str, status: int = 200, **ctx: Any
    ) -> web.Response:
        principal = request.get(PRINCIPAL)
        session = request.get(SESSION)
        text = self.templates.get_template(name).render(
            user=principal.name if principal else "",
            nav=nav_for(principal.allows) if principal else [],
            csrf=session.csrf if session else "",
            path=request.path,
            now=time.time(),
            ago=ago,
            when=when,
            **ctx,
        )
        response = web.Response(text=text, status=status, content_type="text/html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def form(self, request: web.Request) -> dict[str, str]:
        """The posted form, once its CSRF token matched the session's (403 otherwise)."""
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_FORM, actual_size=request.content_length
            )
        data = await request.post()
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        session = request.get(SESSION)
        if session is None or not ss.same_secret(fields.get("csrf", ""), session.csrf):
            raise web.HTTPForbidden(reason="CSRF token missing or wrong: reload the page")
        return fields

    # routes --------------------------------------------------------------------------------

    def family(self) -> Family:
        r = RouteTable(permission=None)
        r.get("/ui", "Dashboard: the fleet overview")(self._home)
        r.get("/ui/", "Dashboard: the fleet overview")(self._home)
        r.get("/ui/login", "Dashboard login form", public=True)(self._login_form)
        r.post("/ui/login", "Dashboard login", public=True, limit="auth")(self._login)
        r.post("/ui/logout", "Dashboard logout")(self._logout)
        r.get("/ui/static/ui.js", "Dashboard script", public=True)(self._script)
        r.get("/ui/events", "Dashboard live events (server-sent events)")(self._events)
        r.get("/ui/fleet", "Dashboard: machines", permission=perms.FLEET)(self._fleet)
        r.get("/ui/fleet/{machine_id}", "Dashboard: a machine", permission=perms.FLEET)(
            self._machine
        )
        r.get("/ui/units", "Dashboard: units", permission=perms.FLEET)(self._units)
        r.post("/ui/units/{name}/start", "Dashboard: start a unit", permission=perms.FLEET)(
            self._unit_start
        )
        r.post("/ui/units/{name}/stop", "Dashboard: stop a unit", permission=perms.FLEET)(
            self._unit_stop
        )
        r.get("/ui/deployments", "Dashboard: deployments", permission=perms.DEPLOYMENTS)(
            self._deployments
        )
        r.get(
            "/ui/deployments/{deployment_id}",
            "Dashboard: a deployment, its releases and the live rollout",
            permission=perms.DEPLOYMENTS,
        )(self._deployment)
        r.post(
            "/ui/deployments/{deployment_id}/deploy",
            "Dashboard: deploy (cut a release and roll it out)",
            permission=perms.DEPLOYMENTS,
            limit="deploy",
        )(self._deploy)
        r.get(
            "/ui/environments",
            "Dashboard: environments in promotion order, approvals",
            permission=perms.ENVIRONMENTS,
        )(self._environments)
        r.post(
            "/ui/promotions/{promotion_id}/approve",
            "Dashboard: approve a promotion",
            permission=perms.APPROVALS,
            limit="deploy",
        )(self._approve)
        r.post(
            "/ui/promotions/{promotion_id}/reject",
            "Dashboard: reject a promotion",
            permission=perms.APPROVALS,
        )(self._reject)
        r.get("/ui/tasks", "Dashboard: task runs", permission=perms.TASKS)(self._runs)
        r.get("/ui/tasks/runs/{run_id}", "Dashboard: a task run", permission=perms.TASKS)(self._run)
        r.get(
            "/ui/tasks/runs/{run_id}/log",
            "Dashboard: a task run's log after a cursor (JSON)",
            permission=perms.TASKS,
        )(self._run_log)
        r.get("/ui/webops", "Dashboard: WebOps deployments", permission=perms.DEPLOYMENTS)(
            self._webops
        )
        r.get(
            "/ui/webops/{web_name}",
            "Dashboard: a WebOps deployment and its logs",
            permission=perms.DEPLOYMENTS,
        )(self._webop)
        r.post(
            "/ui/webops/{web_name}/{web_action}",
            "Dashboard: start, stop, restart or redeploy a WebOps deployment",
            permission=perms.DEPLOYMENTS,
        )(self._webop_action)
        r.get("/ui/audit", "Dashboard: the audit log (admins)", permission=perms.ADMIN)(self._audit)
        r.get("/ui/users", "Dashboard: users (admins)", permission=perms.USERS)(self._users)
        return Family(PREFIX, FLEET, [replace(x, documented=False) for x in r.routes])

    async def _home(self, request: web.Request) -> web.StreamResponse:
        principal = request[PRINCIPAL]
        items = nav_for(principal.allows)
        raise web.HTTPSeeOther(location=items[0].path if items else f"{PREFIX}/login")

    async def _script(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.script,
            content_type="text/javascript",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def _login_form(self, request: web.Request) -> web.Response:
        token = ss.new_secret()
        response = self.render(request, "login.html", login_csrf=token, error="")
        self._cookie(response, ss.LOGIN_CSRF_COOKIE, token, f"{PREFIX}/login")
        return response

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_FORM, actual_size=request.content_length
            )
        data = await request.post()
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        expected = request.cookies.get(ss.LOGIN_CSRF_COOKIE, "")
        if not ss.same_secret(fields.get("csrf", ""), expected):
            raise web.HTTPForbidden(reason="CSRF token missing or wrong: reload the login page")
        username = fields.get("username", "").strip()
        try:
            issued = await self.users.login(
                username,
                fields.get("password", ""),
                name="dashboard session",
                expires_in=ss.SESSION_TTL_S,
            )
        except (AuthError, DomainError) as exc:
            again = ss.new_secret()
            response = self.render(request, "login.html", 401, login_csrf=again, error=str(exc))
            self._cookie(response, ss.LOGIN_CSRF_COOKIE, again, f"{PREFIX}/login")
            return response
        session = self.sessions.create(issued.token, username)
        response = web.HTTPSeeOther(location=f"{PREFIX}/")
        self._cookie(response, ss.COOKIE, session.id, PREFIX)
        response.del_cookie(ss.LOGIN_CSRF_COOKIE, path=f"{PREFIX}/login")
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        await self.form(request)
        session = request[SESSION]
        self.sessions.drop(session.id)
        try:
            self.users.revoke(session.token, actor=request[PRINCIPAL])
        except DomainError:
            pass  # already revoked: the session is gone either way
        response = web.HTTPSeeOther(location=f"{PREFIX}/login")
        response.del_cookie(ss.COOKIE, path=PREFIX)
        raise response

    @staticmethod
    def _cookie(response: web.StreamResponse, name: str, value: str, path: str) -> None:
        response.set_cookie(name, value, path=path, secure=True, httponly=True, samesite="Strict")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        owner = request[SESSION].id
        status = self.live.refusal(owner)
        if status == 429:
            raise web.HTTPTooManyRequests(reason="too many live streams open for this session")
        stream = self.live.open(tenant_of(request), owner)
        if stream is None:
            raise web.HTTPServiceUnavailable(reason="too many live streams open")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 3000\n\n")
            while True:
                await response.write(await self.live.next_frame(stream))
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self.live.close(stream)
        return response

    async def _fleet(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        query = request.query.get("q", "")[:MAX_QUERY]
        found = [m for m in self.machines.list_machines(tenant=tenant) if machine_matches(m, query)]
        page = page_of(found, page_number(request.query.get("page", "1")))
        drift = {d.machine_id: len(d.entries) for d in self.reports.drift(tenant=tenant)}
        return self.render(request, "fleet.html", page=page, q=query, drift=drift)

    async def _machine(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        machine = self.machines.get(request.match_info["machine_id"], tenant=tenant)
        copies = self.units.copies(machine_id=machine.id, tenant=tenant)
        unit = request.query.get("unit", "")[:MAX_QUERY]
        journal: list[str] = []
        journal_error = ""
        if unit:
            try:
                async for chunk in self.logs.stream(machine.id, unit, lines=50, follow=False):
                    if chunk.error:
                        journal_error = chunk.error
                    journal += [line.message for line in chunk.lines]
            except DomainError as exc:
                journal_error = str(exc)
        return self.render(
            request,
            "machine.html",
            m=machine,
            copies=copies,
            stickers=self.reports.stickers(machine.id, tenant=tenant),
            drift=self.reports.drift(machine.id, tenant=tenant),
            unit=unit,
            journal=journal[-50:],
            journal_error=journal_error,
        )

    async def _units(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        page = page_of(
            self.units.list_units(tenant=tenant), page_number(request.query.get("page", "1"))
        )
        names = {u.name for u in page.items}
        copies: dict[str, list[Any]] = {}
        for copy in self.units.copies(tenant=tenant):
            if copy.name in names:
                copies.setdefault(copy.name, []).append(copy)
        return self.render(request, "units.html", page=page, copies=copies)

    async def _unit_start(self, request: web.Request) -> web.StreamResponse:
        return await self._set_unit(request, "launched")

    async def _unit_stop(self, request: web.Request) -> web.StreamResponse:
        return await self._set_unit(request, "inactive")

    async def _set_unit(self, request: web.Request, desired: DesiredState) -> web.StreamResponse:
        await self.form(request)
        name = request.match_info["name"]
        unit = await self.units.set_desired_state(name, desired, tenant=tenant_of(request))
        if unit is None:
            raise web.HTTPNotFound(reason=f"unit {name!r} does not exist")
        raise web.HTTPSeeOther(location=f"{PREFIX}/units")

    async def _deployments(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        apps = {a.id: a.name for a in self.deployments.applications(tenant=tenant)}
        page = page_of(
            self.deployments.deployments(tenant=tenant),
            page_number(request.query.get("page", "1")),
        )
        return self.render(request, "deployments.html", page=page, apps=apps)

    async def _deployment(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        d = self.deployments.deployment(request.match_info["deployment_id"], tenant=tenant)
        releases = list(reversed(self.deployments.releases(d.id, tenant=tenant)))[:PAGE_SIZE]
        latest = releases[0] if releases else None
        jobs = self.deployments.release_jobs(latest) if latest is not None else []
        app = self.deployments.application(d.application_id, tenant=tenant)
        return self.render(
            request,
            "deployment.html",
            d=d,
            app=app,
            releases=releases,
            latest=latest,
            jobs=sorted(jobs, key=lambda j: (j.batch, j.machine_id)),
        )

    async def _deploy(self, request: web.Request) -> web.StreamResponse:
        await self.form(request)
        d = self.deployments.deployment(
            request.match_info["deployment_id"], tenant=tenant_of(request)
        )
        await self.deployments.deploy(d.id, tenant=d.tenant)
        raise web.HTTPSeeOther(location=f"{PREFIX}/deployments/{d.id}")

    async def _environments(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        envs = rules.ordered(self.environments.environments(tenant=tenant))
        names = {e.id: e.name for e in envs}
        apps = {a.id: a.name for a in self.deployments.applications(tenant=tenant)}
        promotions = self.environments.promotions(tenant=tenant)
        first_day = midnight(time.time())
        calendar = {
            e.id: frozen_days(
                [Window(w.start, w.end, w.reason) for w in self.environments.windows_of(e)],
                first_day,
            )
            for e in envs
        }
        return self.render(
            request,
            "environments.html",
            calendar=calendar,
            days=[
                time.strftime("%a %d %b", time.gmtime(first_day + i * DAY_S))
                for i in range(CALENDAR_DAYS)
            ],
            envs=[(e, self.environments.current_release(e)) for e in envs],
            names=names,
            apps=apps,
            pending=[p for p in promotions if p.status == "pending_approval"],
            recent=[p for p in promotions if p.status != "pending_approval"][:PAGE_SIZE],
        )

    async def _approve(self, request: web.Request) -> web.StreamResponse:
        fields = await self.form(request)
        await self.environments.approve(
            request.match_info["promotion_id"],
            actor_of(request),
            comment=fields.get("comment", "")[:1000],
            tenant=tenant_of(request),
        )
        raise web.HTTPSeeOther(location=f"{PREFIX}/environments")

    async def _reject(self, request: web.Request) -> web.StreamResponse:
        fields = await self.form(request)
        self.environments.reject(
            request.match_info["promotion_id"],
            actor_of(request),
            comment=fields.get("comment", "")[:1000],
            tenant=tenant_of(request),
        )
        raise web.HTTPSeeOther(location=f"{PREFIX}/environments")

    async def _runs(self, request: web.Request) -> web.Response:
        number = page_number(request.query.get("page", "1"))
        total, runs = self.tasks.history(
            tenant_of(request), RunQuery(limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE)
        )
        pages = max(1, -(-total // PAGE_SIZE))
        return self.render(request, "tasks.html", page=Page(runs, min(number, pages), pages, total))

    async def _run(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        run_id = request.match_info["run_id"]
        run = self.tasks.run(tenant, run_id)
        first = self.tasks.logs(tenant, run_id, "")
        return self.render(request, "run.html", run=run, log=first.log, cursor=first.last_seen)

    async def _run_log(self, request: web.Request) -> web.Response:
        part = self.tasks.logs(
            tenant_of(request), request.match_info["run_id"], request.query.get("last_seen", "")
        )
        return web.json_response(
            {"log": part.log, "last_seen": part.last_seen}, headers={"Cache-Control": "no-store"}
        )

    async def _webops(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "")[:MAX_QUERY]
        number = page_number(request.query.get("page", "1"))
        found, total = self.webops.list_deployments(
            tenant_of(request),
            WebQuery(search=query, offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE),
        )
        pages = max(1, -(-total // PAGE_SIZE))
        return self.render(
            request, "webops.html", page=Page(found, min(number, pages), pages, total), q=query
        )

    async def _webop(self, request: web.Request) -> web.Response:
        dep = self.webops.get(tenant_of(request), request.match_info["web_name"])
        return self.render(
            request,
            "webop.html",
            dep=dep,
            health=self.webops.health_of(dep),
            logs=self.webops.logs(dep, tail=200),
        )

    async def _webop_action(self, request: web.Request) -> web.StreamResponse:
        await self.form(request)
        dep = self.webops.get(tenant_of(request), request.match_info["web_name"])
        actions = {
            "start": self.webops.start,
            "stop": self.webops.stop,
            "restart": self.webops.restart,
            "redeploy": self.webops.redeploy,
        }
        action = actions.get(request.match_info["web_action"])
        if action is None:
            raise web.HTTPNotFound(reason="unknown action: start, stop, restart or redeploy")
        await action(dep)
        raise web.HTTPSeeOther(location=f"{PREFIX}/webops/{dep.name}")

    async def _audit(self, request: web.Request) -> web.Response:
        before = page_number(request.query.get("before", "0")) if "before" in request.query else 0
        entries, cursor = await self.audit.query(
            AuditQuery(tenant=tenant_of(request), before=before, limit=PAGE_SIZE)
        )
        return self.render(request, "audit.html", entries=entries, cursor=cursor)

    async def _users(self, request: web.Request) -> web.Response:
        number = page_number(request.query.get("page", "1"))
        users, total = self.users.list_users(offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        pages = max(1, -(-total // PAGE_SIZE))
        return self.render(
            request,
            "users.html",
            page=Page(users, min(number, pages), pages, total),
            tokens=self.tokens.api_tokens(tenant=tenant_of(request)),
        )
