"""Assembles the coordinator: storage, PKI, hub, API, and runs them until stopped.

Two listeners: the API (TLS, client certificate optional so Bearer tokens work) and
the agent hub (TLS 1.3, client certificate required). Enrolment lives on the API
port because a new agent has no certificate yet; the join token authenticates it.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import ipaddress
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from coordinator import guard, limits
from coordinator.api import (
    agent,
    audit,
    databases,
    environments,
    fleet_manager,
    fleet_v1,
    identity,
    monitoring,
    native,
    openapi,
    reports,
    tasks,
    v1_alpha,
    webhooks,
    webops,
)
from coordinator.api.errors import ApiError, json_response
from coordinator.api.routing import (
    FAMILIES,
    FLEET,
    PUBLIC,
    Family,
    Route,
    RouteTable,
    declared_route,
    family_of,
    permission_refusal,
    register,
)
from coordinator.app import open_store
from coordinator.audit import AuditLog, is_write
from coordinator.cluster.leader import Leader
from coordinator.config import (
    CoordinatorConfig,
    advertised_hub_urls,
    coordinator_identity,
    split_host_port,
)
from coordinator.deploy.deployments import DeploymentService
from coordinator.envs.service import EnvironmentService
from coordinator.errors import DomainError
from coordinator.events import ACTOR, EventBus
from coordinator.fleet.machines import MachineService
from coordinator.fleet.units import UnitService
from coordinator.hub.liveness import ISOLATION_MARGIN_S
from coordinator.hub.relay import RELAY_PATH
from coordinator.hub.sessions import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.models import AuditEntry
from coordinator.reports.logs import LogService
from coordinator.reports.service import ReportService
from coordinator.store.ports import StorageUnavailable
from coordinator.store.scope import TENANT_SCOPE
from coordinator.tasks.service import TaskService
from coordinator.trust import permissions as perms
from coordinator.trust import pki
from coordinator.trust.access import EnrolmentService, TokenService
from coordinator.trust.auth import (
    PRINCIPAL,
    AuthError,
    Principal,
    admin_certificate,
    authenticate,
    presents_token,
)
from coordinator.trust.enrolment import Enroller
from coordinator.trust.ratelimit import (
    AUTH,
    DEPLOY,
    TOKEN,
    RateLimited,
    RateLimiter,
    Slot,
    limits_of,
)
from coordinator.trust.users import UserService
from coordinator.ui.dashboard import Dashboard
from coordinator.ui.live import LiveHub
from coordinator.webops.databases import DatabaseService
from coordinator.webops.monitoring import MonitoringService
from coordinator.webops.service import WebOpsService
from coordinator.webops.webhooks import LONE_POLL_S as WEBHOOK_LONE_POLL_S
from coordinator.webops.webhooks import POLL_S as WEBHOOK_POLL_S
from coordinator.webops.webhooks import WebhookService
from proto.enrolment import HUB_PATH

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096
"""Thousands of agents reconnect at once after a restart; 128 would drop their SYNs."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SCHEDULE_EVERY_S = 30.0
"""The leader's periodic scheduling pass: passes also run where a unit is written or an
agent connects (on any coordinator); this one makes placements converge whatever was
missed (a coordinator that died mid-pass, a machine lost meanwhile)."""

AUDIT_PATH_MAX = 1024
AUDIT_VALUE_MAX = 256
FAILED_AUTH = (401, 403)


class Gate:
    """What the middleware learnt about one request on its way in: who, and which
    rate-limit slots it holds (settled once the outcome is known)."""

    __slots__ = ("actor", "auth", "deploy", "principal", "scope", "shown")

    def __init__(self) -> None:
        self.principal: Principal | None = None
        self.auth: Slot | None = None
        self.deploy: Slot | None = None
        self.actor: contextvars.Token[str] | None = None
        self.scope: contextvars.Token[str | None] | None = None
        self.shown: tuple[str, str] | None = None
        """The (class, key) whose standing X-RateLimit-* show on the response: the
        route's class if it has one, else the token's."""

    def reset(self) -> None:
        """Give back the request's context (its actor, its tenant scope)."""
        if self.actor is not None:
            ACTOR.reset(self.actor)
            self.actor = None
        if self.scope is not None:
            TENANT_SCOPE.reset(self.scope)
            self.scope = None


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.metrics = CoordinatorMetrics()
        self.events = EventBus()
        """The domain's one event seam: services publish, the audit log and webhooks
        subscribe."""
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.coordinator_id = coordinator_identity(config)
        """This coordinator among those sharing the database (#23)."""
        self.paths = pki.init_pki(config.pki_dir, *server_identity(config))
        ca_key = pki.load_key(Path(self.paths.ca_key).read_bytes())
        self.ca_cert = pki.load_cert(Path(self.paths.ca_cert).read_bytes())
        self.ca_pin = pki.ca_pin(self.ca_cert)
        self.storage = open_store(config)
        self.limiter = RateLimiter(
            limits_of(config.rate_limits), self.storage, enabled=config.rate_limits.enabled
        )
        self.audit = AuditLog(self.storage, self.events, flush_s=config.audit_flush_s)
        self.enroller = Enroller(
            self.storage, ca_key, self.ca_cert, cert_ttl_s=config.agent_cert_ttl_s
        )
        self.hub = Hub(
            self.storage,
            self.enroller,
            self.metrics,
            heartbeat_s=config.heartbeat_s,
            lost_after_s=config.lost_after_s,
            feed=self.storage,
            coordinator_id=self.coordinator_id,
        )
        # Questions to agents connected to another coordinator go through it (#23),
        # as this coordinator's admin certificate from the CA they share.
        self.hub.relay_ssl = pki.client_ssl_context(
            self.paths.ca_cert, self.paths.admin_cert, self.paths.admin_key
        )
        self.hub.peer_stale_s = config.lease_ttl_s
        if self.storage.shared:  # PostgreSQL: others may reach it, let the agents go there
            self.hub.database_lost_since = self._database_lost_since
            self.hub.let_go_after_s = config.lease_ttl_s
        self.metrics.storage_writable.set_function(
            lambda: 0.0 if self.storage.health.fault else 1.0
        )
        self.metrics.storage_write_failures.set_function(lambda: self.storage.health.failures)
        self.metrics.state_writes_pending.set_function(lambda: self.hub.buffer.pending)
        self.metrics.audit_pending.set_function(lambda: self.audit.pending)
        self.units = UnitService(self.storage, self.hub, self.metrics, events=self.events)
        self.hub.on_desired.append(self.units.push)  # changed by another coordinator
        self.deploystore = self.storage
        self.reports = ReportService(self.storage, self.deploystore, self.hub, events=self.events)
        self.deployments = DeploymentService(
            self.storage,
            self.deploystore,
            self.units,
            self.hub,
            images=self.reports,
            events=self.events,
        )
        self.environments = EnvironmentService(
            self.storage, self.deployments, self.reports, self.events
        )
        self.logs = LogService(self.hub)
        self.machines = MachineService(
            self.storage, self.deploystore, self.hub, self.units, events=self.events
        )
        self.enrolment = EnrolmentService(self.enroller, self.hub, self.metrics)
        self.tokens = TokenService(self.storage, self.ca_pin, join_ttl_s=config.join_token_ttl_s)
        self.tasks = TaskService(
            self.storage,
            self.storage,
            lambda tenant: self.deployments.groups(tenant=tenant),
            self.hub,
            self.events,
        )
        self.users = UserService(self.storage, self.events)
        self.webops = WebOpsService(self.storage, self.units, self.hub, self.events)
        self.webops.coordinator_id = self.coordinator_id
        self.webhooks = WebhookService(
            self.storage,
            self.events,
            # Alone on its database every event is stored here and wakes the loop at
            # once: the poll is only a safety net (CPU at rest, #22).
            poll_s=WEBHOOK_POLL_S if self.storage.shared else WEBHOOK_LONE_POLL_S,
        )
        self.monitoring = MonitoringService(
            self.storage, self.hub, self.units, self.webops, self.logs
        )
        self.databases = DatabaseService(
            self.storage,
            self.webops,
            config.postgres,
            state / "db-backups",
            self.units,
            self.machines,
        )
        self.dashboard = Dashboard(
            storage=self.storage,
            users=self.users,
            machines=self.machines,
            units=self.units,
            tasks=self.tasks,
            deployments=self.deployments,
            environments=self.environments,
            webops=self.webops,
            audit=self.audit,
            reports=self.reports,
            logs=self.logs,
            tokens=self.tokens,
            live=LiveHub(self.events),
        )
        self.leader = self._leader()
        self.api_port = 0
        self.hub_port = 0
        self._runners: list[web.AppRunner] = []
        self._servers: list[guard.Listener] = []
        self._tasks: list[asyncio.Task[None]] = []

    def _leader(self) -> Leader:
        """Singleton work: what only one of the coordinators sharing a database may do,
        run while this one holds the lease (with SQLite, always). Everything else (the
        APIs, agent sessions and what they report, heartbeats of this coordinator's own
        sessions, webhook delivery of the events raised here, the audit log and rate
        limits) runs on every coordinator."""
        leader = Leader(
            self.storage,
            self.coordinator_id,
            ttl_s=self.config.lease_ttl_s,
            renew_s=self.config.lease_renew_s,
        )
        leader.add("liveness", lambda: self.hub.lost_loop(self.config.lease_ttl_s))
        leader.add("rollouts", self.deployments.run)
        leader.add("freeze-windows", self.environments.run)
        leader.add("task-queue", self.tasks.run_scheduler)
        leader.add("scheduling", self._scheduling)
        leader.add("webhooks", self.webhooks.run)
        Gauge(
            "moorage_coordinator_leader",
            "1 while this coordinator holds the lease singleton work runs under",
            registry=self.metrics.registry,
        ).set_function(lambda: 1.0 if leader.leading else 0.0)
        Gauge(
            "moorage_coordinator_lease_epoch",
            "The epoch (fencing token) of this coordinator's tenure; 0 while not leading",
            registry=self.metrics.registry,
        ).set_function(lambda: float(leader.epoch))
        return leader

    async def _scheduling(self) -> None:
        """The leader's scheduling passes: one once the isolation margin is over (machines
        lost just before may still hold StopWhenIsolated units), then periodically."""
        await asyncio.sleep(ISOLATION_MARGIN_S + 0.1)
        while True:
            try:
                await self.units.reschedule()
            except StorageUnavailable:
                pass  # logged by the store's health; or the lease is lost and we stop
            except Exception:
                log.exception("scheduling failed")
            await asyncio.sleep(SCHEDULE_EVERY_S)

    # --- applications -------------------------------------------------------------------

    def families(self) -> list[Family]:
        """Every route the API serves, declared once: registered from this list and
        documented from it (/openapi.json)."""
        return [
            self._system_routes(),
            agent.routes(self.enrolment, self._hub_url),
            fleet_v1.routes(self.units, self.machines),
            v1_alpha.routes(self.units, self.machines),
            fleet_manager.routes(self.deployments, self.machines),
            reports.routes(self.reports),
            native.routes(self.units, self.machines, self.tokens, self.logs),
            *tasks.routes(self.tasks),
            *identity.routes(self.users),
            audit.routes(self.audit),
            *environments.routes(self.environments),
            *webops.routes(self.webops),
            webhooks.routes(self.webhooks),
            *databases.routes(self.databases),
            *monitoring.routes(self.monitoring),
            self.dashboard.family(),
        ]

    def _system_routes(self) -> Family:
        r = RouteTable()
        r.get("/healthz", "Liveness probe (no authentication)", public=True)(self._healthz)
        r.get(
            "/readyz",
            "Readiness probe (no authentication); 503 with the reason while storage is full",
            errors=(503,),
            public=True,
        )(self._readyz)
        r.get("/metrics", "Prometheus metrics", permission=perms.MONITORING)(self._metrics)
        r.get("/openapi.json", "This document")(self._openapi)
        return Family("", FLEET, r.routes)

    def api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 << 20)
        register(app, self.families())
        return app

    def hub_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(HUB_PATH, self.hub.handle)
        app.router.add_get(RELAY_PATH, self.hub.serve_relay)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response: web.StreamResponse
        family = family_of(request.app, request.path)
        template = guard.route_of(request)
        route = declared_route(request)
        gate = Gate()
        try:
            try:
                # Anonymous routes get their body cap before anything else; the others only
                # once the caller is known, so nobody unauthenticated makes us read a body.
                request = guard.bounded(request)
                if "%00" in request.raw_path.lower():
                    # no name, filter or id holds a NUL, and PostgreSQL's text cannot
                    raise ApiError(400, "the URL holds a NUL character (%00)")
                await self._admit(request, route, gate)
                await guard.read_body(request, self.config.body_timeout_s)
                response = await handler(request)
            except RateLimited as exc:
                self.metrics.rate_limited.labels(exc.cls).inc()
                response = family.conventions.error(429, str(exc), exc.decision.headers())
            except AuthError as exc:
                response = family.conventions.error(
                    exc.status, str(exc), {"WWW-Authenticate": "Bearer"}
                )
            except ApiError as exc:
                response = family.conventions.error(exc.status, exc.message)
            except DomainError as exc:
                response = family.conventions.domain_error(exc)
            except StorageUnavailable as exc:
                # The health object logged it once; each refused request is not news.
                status = 507 if exc.kind == "full" else 503
                response = family.conventions.error(status, str(exc))
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
                response = family.conventions.error(exc.status, exc.reason, allow)
        except BaseException as exc:
            gate.reset()
            self.limiter.release(gate.auth)
            self.limiter.release(gate.deploy)
            if isinstance(exc, Exception):  # a redirect, or a 500 aiohttp will answer
                status = exc.status if isinstance(exc, web.HTTPException) else 500
                self._audit(request, route, template, gate, status)
            raise
        gate.reset()
        await self._settle(gate, response.status)
        if response.status in (408, 413):
            response.force_close()  # the rest of the body is not worth reading
        if gate.shown is not None and response.status != 429 and not response.prepared:
            standing = self.limiter.peek(*gate.shown)  # after settling: slots given back
            if standing is not None:
                response.headers.update(standing.headers())
        self._audit(request, route, template, gate, response.status)
        self.metrics.api_latency.labels(
            request.method, template or "unmatched", str(response.status)
        ).observe(time.perf_counter() - started)
        return response

    async def _admit(self, request: web.Request, route: Route | None, gate: Gate) -> None:
        """Authenticate the caller and count the request against its rate limits
        (RateLimited when over one): failed authentications per client IP on routes
        declaring `limit="auth"` and whenever a token is presented, the general limit
        per token, deploys per user. The admin certificate is never limited."""
        ip = request.remote or ""
        if (
            route is not None
            and route.limit == AUTH
            and self.limiter.enabled
            and admin_certificate(request, self.storage) is None
        ):
            gate.auth = await self.limiter.reserve(AUTH, ip)
            gate.shown = (AUTH, ip)
        if request.path in request.app[PUBLIC]:
            return
        # The dashboard's routes take its session cookie and nothing else; the APIs never
        # take the cookie (a browser's ambient credential must not reach them).
        dashboard = self.dashboard.owns(request.path)
        guessing = not dashboard and presents_token(request) and gate.auth is None
        if guessing:
            gate.auth = await self.limiter.reserve(AUTH, ip)
        principal = (  # a failure keeps the IP's slot
            self.dashboard.authenticate(request)
            if dashboard
            else authenticate(request, self.storage)
        )
        if guessing:
            self.limiter.release(gate.auth)
            gate.auth = None
        request[PRINCIPAL] = gate.principal = principal
        gate.actor = ACTOR.set(principal.label)  # reset when the request ends
        # The database's own tenancy wall (PostgreSQL row-level security): a caller bound
        # to one tenant touches only its rows; admins see every tenant's.
        gate.scope = TENANT_SCOPE.set(None if principal.allows(perms.ADMIN) else principal.tenant)
        if principal.kind != "certificate":
            key = principal.token_id or principal.label
            # The per-token general limit is the APIs' contract with their clients; a
            # dashboard session's pages and live refreshes do not count against it
            # (its logins, deploys and approvals keep their own limits).
            counted = not principal.unlimited and not dashboard
            if counted and self.limiter.hit(TOKEN, key) and gate.shown is None:
                gate.shown = (TOKEN, key)
        # The one permission check: what the route declares, against what the caller holds.
        refusal = permission_refusal(route, principal.allows)
        if refusal is not None:
            raise ApiError(403, refusal)
        if principal.kind == "certificate":
            return
        if route is not None and route.limit == DEPLOY:
            user = f"user:{principal.user_id}" if principal.user_id is not None else key
            gate.deploy = await self.limiter.reserve(DEPLOY, user)
            if gate.deploy is not None:
                gate.shown = (DEPLOY, user)

    async def _settle(self, gate: Gate, status: int) -> None:
        """A failed authentication keeps its slot (stored before the response goes
        out), a deploy keeps its slot if accepted; every other slot is given back."""
        if status in FAILED_AUTH:
            await self.limiter.keep(gate.auth)
        else:
            self.limiter.release(gate.auth)
        if status < 400:
            await self.limiter.keep(gate.deploy)
        else:
            self.limiter.release(gate.deploy)

    def _audit(
        self, request: web.Request, route: Route | None, template: str, gate: Gate, status: int
    ) -> None:
        """Every write (authenticated or not, refused or not), in this one place."""
        if not is_write(request.method):
            return
        who = gate.principal
        try:
            target = {k: v[:AUDIT_VALUE_MAX] for k, v in request.match_info.items()}
        except Exception:  # no route matched: no parameters
            target = {}
        self.audit.record(
            AuditEntry(
                at=time.time(),
                kind="request",
                principal_kind=who.kind if who else "",
                principal=who.name if who else "",
                tenant=who.tenant if who else "",
                method=request.method[:16],
                route=route.path if route else template,
                path=request.path[:AUDIT_PATH_MAX],
                target=target,
                status=status,
                client_ip=request.remote or "",
            )
        )

    def _database_lost_since(self) -> float | None:
        health = self.storage.health
        return health.since if health.fault == "unreachable" else None

    async def _healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        """Not ready while the storage refuses writes: say why (a load balancer only
        needs the status, an operator needs the reason)."""
        health = self.storage.health
        if health.fault:
            return json_response(
                {"status": "unavailable", "reason": health.message, "since": health.since}, 503
            )
        return json_response(
            {"status": "ok", "coordinator": self.coordinator_id, "leader": self.leader.leading}
        )

    async def _openapi(self, request: web.Request) -> web.Response:
        families: list[Family] = request.app[FAMILIES]
        return json_response(openapi.document(families))

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _hub_url(self, host: str) -> list[str]:
        """The hub URLs for an agent that reached the API at `host`: this coordinator's
        (configured, else from `host`) first, then the fleet's others (`hub_urls`)."""
        if ":" in host:
            host = f"[{host}]"
        own = self.config.hub_url or f"wss://{host}:{self.hub_port}{HUB_PATH}"
        return advertised_hub_urls(own, self.config.hub_urls)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        # Worker threads (manifest parsing) hand the interpreter back to the event loop
        # within 1 ms instead of 5, so requests and agents wait on them less.
        sys.setswitchinterval(limits.GIL_SWITCH_INTERVAL_S)
        now = time.time()
        # No session of ours survived our last run (other coordinators' did).
        self.storage.release_sessions(self.coordinator_id, now, unowned=True)
        self.limiter.load()
        self.webops.interrupt_jobs()  # those this coordinator ran before it stopped
        self.hub.load_liveness()
        api_ctx = pki.server_ssl_context(
            self.paths.server_cert,
            self.paths.server_key,
            self.paths.ca_cert,
            client_certs="optional",
        )
        hub_ctx = pki.server_ssl_context(
            self.paths.server_cert,
            self.paths.server_key,
            self.paths.ca_cert,
            client_certs="required",
        )
        self.api_port = await self._listen(self.api_app(), self.config.api_listen, api_ctx)
        self.hub_port = await self._listen(self.hub_app(), self.config.hub_listen, hub_ctx)
        self._tasks.append(asyncio.create_task(self.hub.liveness_loop()))
        self._tasks.append(asyncio.create_task(self.hub.follow_changes()))
        self._tasks.append(asyncio.create_task(self.hub.buffer.run()))
        self._tasks.append(asyncio.create_task(self.users.warm()))
        self._tasks.append(asyncio.create_task(self.limiter.run()))
        self._tasks.append(asyncio.create_task(self.audit.run()))
        host = (self.config.server_names or [socket.getfqdn()])[0]
        await self.leader.start(f"https://{host}:{self.api_port}", self._hub_url(host)[0])
        # What is loaded by now lives as long as the process: keep it out of the cyclic
        # collector, whose full passes would otherwise stop every thread (the loop too)
        # for tens of milliseconds while a large manifest is parsed.
        gc.freeze()
        log.info("API on port %d, agent hub on port %d", self.api_port, self.hub_port)

    async def _listen(self, app: web.Application, listen: str, ctx: ssl.SSLContext) -> int:
        host, port = split_host_port(listen)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2,
            keepalive_timeout=self.config.idle_timeout_s,
        )
        await runner.setup()
        server = await guard.listen(
            runner,
            host,
            port,
            ctx,
            backlog=LISTEN_BACKLOG,
            handshake_timeout_s=self.config.tls_handshake_timeout_s,
        )
        self._runners.append(runner)
        self._servers.append(server)
        sockets = list(server.sockets)
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        await self.leader.stop()
        for task in self._tasks:
            task.cancel()
        await self.webhooks.close()
        for server in self._servers:
            server.close()
        await self.hub.close_all()
        for runner in reversed(self._runners):
            await runner.cleanup()
        try:
            self.hub.buffer.flush()
            self.storage.release_sessions(self.coordinator_id, time.time(), unowned=False)
        except StorageUnavailable as exc:
            # Nothing lost that matters: agents report it all again, and the next start
            # marks every machine disconnected anyway.
            log.error("stopping without storing the last reports: %s", exc)
        self.limiter.flush()
        self.audit.flush()
        self.storage.close()


def server_identity(config: CoordinatorConfig) -> tuple[list[str], list[str]]:
    """Names and IPs the server certificate must cover, so clients can verify it by
    whatever address they use: configured ones, this host's names and its addresses."""
    names = [*config.server_names, socket.getfqdn(), socket.gethostname(), "localhost"]
    ips = [*config.server_ips, "127.0.0.1", "::1"]
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6) and "%" not in addr.address:
                ips.append(addr.address)
    for listen in (config.api_listen, config.hub_listen):
        host, _ = split_host_port(listen)
        if _is_ip(host) and not ipaddress.ip_address(host).is_unspecified:
            ips.append(host)
    return list(dict.fromkeys(names)), list(dict.fromkeys(ips))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def run_until_signalled(
    coordinator: Coordinator, on_ready: Callable[[], None] | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await coordinator.start()
    if on_ready:
        on_ready()
    await stop.wait()
    log.info("stopping")
    await coordinator.stop()
