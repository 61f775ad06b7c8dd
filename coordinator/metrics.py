"""Prometheus metrics of the coordinator, on a registry of its own (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.agents_connected = Gauge(
            "moorage_agents_connected", "Agents with a live session", registry=r
        )
        self.messages_in = Counter(
            "moorage_hub_messages_in", "Messages received from agents", ["type"], registry=r
        )
        self.messages_out = Counter(
            "moorage_hub_messages_out", "Messages sent to agents", ["type"], registry=r
        )
        self.frame_errors = Counter(
            "moorage_hub_frame_errors",
            "Frames from agents refused (too large, undecodable, unknown type, invalid)",
            ["reason"],
            registry=r,
        )
        self.sessions_refused = Counter(
            "moorage_hub_sessions_refused",
            "Agent sessions refused before or at Hello",
            ["reason"],
            registry=r,
        )
        self.enrolments = Counter(
            "moorage_enrolments", "Enrolment attempts", ["result"], registry=r
        )
        self.api_latency = Histogram(
            "moorage_api_request_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=r,
        )
