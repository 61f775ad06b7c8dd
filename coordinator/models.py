"""Domain records shared by storage, the hub and every API adapter."""

from __future__ import annotations

from typing import Literal

import msgspec

from proto.messages import DesiredState
from proto.units import UnitOption

MachineState = Literal["connected", "disconnected", "lost"]


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    hostname: str = ""
    primary_ip: str = ""
    metadata: dict[str, str] = {}
    capabilities: list[str] = []
    state: MachineState = "disconnected"
    state_since: float = 0.0
    last_seen: float = 0.0
    enrolled_at: float = 0.0
    cert_serial: str = ""
    cert_not_after: float = 0.0
    revoked: bool = False
    agent_version: str = ""
    desired_revision: int = 0
    applied_revision: int = 0


class JoinToken(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    created_at: float
    expires_at: float
    used_at: float | None = None
    used_by: str = ""
    description: str = ""


class ApiToken(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    role: str
    created_at: float
    expires_at: float | None = None
    revoked: bool = False


class Unit(msgspec.Struct, frozen=True, kw_only=True):
    """A unit as the operator defined it, and the machines it is placed on."""

    name: str
    options: list[UnitOption]
    hash: str
    desired_state: DesiredState = "inactive"
    pinned: bool = False
    """Placed explicitly by an operator call: the scheduler leaves its placement alone."""
    machines: list[str] = []
    created_at: float = 0.0
    updated_at: float = 0.0


class UnitState(msgspec.Struct, frozen=True, kw_only=True):
    """What one machine last reported about one unit."""

    name: str
    machine_id: str
    hash: str = ""
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    main_pid: int = 0
    image_digest: str = ""
    message: str = ""
    target_state: str = ""
    updated_at: float = 0.0
