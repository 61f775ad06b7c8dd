"""What the task domain keeps: definitions, runs and their events (plain values).

A definition is a named recipe (image, command, resources, env); a run is one execution
of it on one machine. Both carry the tenant they belong to; every read and write is
scoped by it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

RunStatus = Literal["QUEUED", "PENDING", "RUNNING", "STOPPED", "NEEDS_RETRY"]
STATUSES: tuple[str, ...] = ("QUEUED", "PENDING", "RUNNING", "STOPPED", "NEEDS_RETRY")
ACTIVE: frozenset[str] = frozenset({"QUEUED", "PENDING", "RUNNING"})
"""Runs the scheduler and the agent link still act on."""


class EnvVar(msgspec.Struct, frozen=True):
    name: str
    value: str


class TaskDefinition(msgspec.Struct, frozen=True, kw_only=True):
    definition_id: str
    alias: str
    image: str
    tenant: str = "default"
    group_name: str = ""
    command: str = ""
    memory: int = 0
    """MB; 0: no limit, counts nothing against a machine."""
    cpu: int = 0
    """Millicores."""
    env: list[EnvVar] = []
    tags: list[str] = []
    retries: int = 0
    """How many times a run whose machine is lost is run again (0 or 1)."""
    created_at: float = 0.0
    updated_at: float = 0.0


class TaskRun(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    definition_id: str
    alias: str
    image: str
    tenant: str = "default"
    group_name: str = ""
    cluster: str = "default"
    status: RunStatus = "QUEUED"
    seq: int = 0
    """Queue order (ascending): the scheduler places runs in this order."""
    command: str = ""
    memory: int = 0
    cpu: int = 0
    env: list[EnvVar] = []
    run_tags: dict[str, str] = {}
    engine: str = ""
    description: str = ""
    machine_id: str = ""
    machine_host: str = ""
    exit_code: int | None = None
    exit_reason: str = ""
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    acked: bool = False
    """The agent has answered its TaskStart (a TaskUpdate arrived)."""
    stop_requested: bool = False
    retries: int = 0
    """Retries left if its machine is lost."""
    log_size: int = 0
    """Bytes of output stored (contiguous from 0)."""
    log_total: int = -1
    """The agent's `log_bytes` with STOPPED: the whole log's size (-1: not known yet)."""


class RunEvent(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    at: float
    reason: str
    """Short kind: "Queued", "Placed", "Pulled", "Started", "Exited", "Lost"..."""
    message: str
    source: str = ""
    """The machine, when one is involved."""


class RunQuery(msgspec.Struct, frozen=True, kw_only=True):
    """History filters (each list: any of; empty: no filter), sort and page."""

    definition_id: list[str] = []
    status: list[str] = []
    cluster: list[str] = []
    alias: list[str] = []
    group_name: list[str] = []
    image: list[str] = []
    run_id: list[str] = []
    env: list[tuple[str, str]] = []
    sort_by: str = "started_at"
    order: str = "desc"
    limit: int = 1024
    offset: int = 0
