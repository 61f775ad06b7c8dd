"""Coordinator configuration: TOML in /etc/moorage/coordinator.toml, overridable by flags."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from coordinator.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT_S,
)

DEFAULT_CONFIG = Path("/etc/moorage/coordinator.toml")
DEFAULT_STATE_DIR = Path("/var/lib/moorage/coordinator")
DEFAULT_API_PORT = 7440
DEFAULT_HUB_PORT = 7443


class CoordinatorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    state_dir: str = str(DEFAULT_STATE_DIR)
    api_listen: str = f"0.0.0.0:{DEFAULT_API_PORT}"
    hub_listen: str = f"0.0.0.0:{DEFAULT_HUB_PORT}"
    hub_url: str = ""
    """Advertised to enrolling agents; default: the API's host name with the hub port."""
    server_names: list[str] = []
    server_ips: list[str] = []
    heartbeat_s: float = 10.0
    lost_after_s: float = 60.0
    agent_cert_ttl_s: float = 30 * 86400.0
    join_token_ttl_s: float = 86400.0
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    """A connection with no request under way (or still sending headers) closes then."""
    tls_handshake_timeout_s: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    """A request body must have arrived within this (408 otherwise)."""

    @property
    def db_path(self) -> Path:
        return Path(self.state_dir) / "moorage.db"

    @property
    def pki_dir(self) -> Path:
        return Path(self.state_dir) / "pki"


class ConfigError(Exception):
    pass


def load_config(path: Path | None) -> CoordinatorConfig:
    """Read the TOML file if it exists; unknown keys are an error, not silently ignored."""
    if path is None:
        path = DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None
    if path is None:
        return CoordinatorConfig()
    try:
        raw = tomllib.loads(path.read_text())
        return msgspec.convert(raw, CoordinatorConfig)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def split_host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
