"""Domain records shared by storage, the hub and every API adapter."""

from __future__ import annotations

from typing import Literal

import msgspec

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
