"""The agent's Prometheus metrics, served on a loopback port (`metrics_listen`).

A registry of its own (tests run several agents per host); a port already taken is
logged and skipped, never fatal: metrics must not stop an agent from running units.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connected = Gauge("moorage_agent_connected", "1 while the link is up", registry=r)
        self.messages_in = Counter(
            "moorage_agent_messages_in", "Messages from the coordinator", ["type"], registry=r
        )
        self.messages_out = Counter(
            "moorage_agent_messages_out", "Messages to the coordinator", ["type"], registry=r
        )
        self.frame_errors = Counter(
            "moorage_agent_frame_errors", "Frames from the coordinator refused", registry=r
        )
        self.reconcile_seconds = Histogram(
            "moorage_agent_reconcile_seconds",
            "Duration of a reconcile pass",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 90),
            registry=r,
        )
        self.units = Gauge("moorage_agent_units", "Desired units on this machine", registry=r)
        self.reports = Counter("moorage_agent_state_reports", "StateReports sent", registry=r)

    async def serve(self, listen: str) -> web.AppRunner | None:
        """Serve /metrics on HOST:PORT; None (and a warning) if it cannot bind."""
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port)).start()
        except (OSError, ValueError) as exc:
            log.warning("metrics not served on %s: %s", listen, exc)
            await runner.cleanup()
            return None
        return runner

    async def _handle(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
