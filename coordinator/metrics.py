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
        self.schedule_seconds = Histogram(
            "moorage_schedule_seconds",
            "Duration of one scheduling pass (snapshot, placement, store)",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.placements = Counter(
            "moorage_placements", "Unit placements changed by the scheduler", registry=r
        )
        self.api_latency = Histogram(
            "moorage_api_request_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=r,
        )
        self.rate_limited = Counter(
            "moorage_rate_limited",
            "API requests refused with 429, by rate-limit class (token, deploy, auth)",
            ["limit"],
            registry=r,
        )
        self.audit_pending = Gauge(
            "moorage_audit_pending",
            "Audit entries recorded but not yet written (they wait while the storage is full)",
            registry=r,
        )
        self.storage_writable = Gauge(
            "moorage_storage_writable",
            "1 while the database takes writes, 0 while its disk is full or failing",
            registry=r,
        )
        self.storage_write_failures = Gauge(
            "moorage_storage_write_failures",
            "Writes refused by a full or failing disk since the coordinator started",
            registry=r,
        )
        self.state_writes_pending = Gauge(
            "moorage_state_writes_pending",
            "Reported states and liveness changes queued for the database (they wait while "
            "the storage is full)",
            registry=r,
        )
