"""Agent configuration: /etc/moorage/agent.toml, overridable by flags."""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from proto.enrolment import unique_urls

DEFAULT_CONFIG = Path("/etc/moorage/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/moorage/agent")
DEFAULT_STICKER_DIR = Path("/var/lib/moorage/stickers")
MACHINE_ID_FILE = Path("/etc/machine-id")


class AgentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    state_dir: str = str(DEFAULT_STATE_DIR)
    machine_id: str = ""
    metadata: dict[str, str] = {}
    systemd_scope: Literal["system", "user"] = "system"
    bus_address: str = ""
    """Empty: the system bus, or $DBUS_SESSION_BUS_ADDRESS for the user scope."""
    unit_dir: str = ""
    """Empty: /etc/systemd/system, or $XDG_CONFIG_HOME/systemd/user for the user scope."""
    journal_dir: str = ""
    """Empty: the machine's journal; else a journal directory (journalctl -D)."""
    docker_host: str = ""
    """Empty: like the docker CLI ($DOCKER_HOST, else unix:///var/run/docker.sock)."""
    task_network: str = ""
    """Network of task run containers; empty: Docker's default (``none`` for no network)."""
    task_memory_mb: int = 0
    """Memory (MiB) offered to task runs, reported in Resources; 0: the machine's MemTotal,
    else at most this (keep room for other workloads, or test placement on a big host)."""
    reconcile_interval_s: float = 60.0
    webops_proxy_listen: str = "80"
    """Where the agent's own nginx listens for WebOps deployments' domains (nginx
    `listen` syntax: a port or HOST:PORT)."""
    webops_nginx: str = "nginx"
    """The nginx binary the agent runs for WebOps (its own instance, own config)."""
    sticker_dir: str = ""
    """Empty: /var/lib/moorage/stickers with the default state_dir, else <state_dir>/stickers
    (an agent with a state directory of its own never touches the host's stickers)."""
    drift_interval_s: float = 2.0
    """How often unit files are checked for drift (a stat each; hashed only if changed)."""
    metrics_listen: str = "127.0.0.1:7444"
    """Prometheus /metrics on loopback; empty disables it."""
    hub_url: str = ""
    """A coordinator's hub, overriding the ones learnt at enrolment (the older, single form
    of `hub_urls`; tried first when both are set)."""
    hub_urls: list[str] = []
    """Every coordinator's hub (#23), tried in order, overriding the ones learnt at
    enrolment; empty: those (link.json)."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    renew_fraction: float = 1 / 3
    """Renew the certificate once less than this fraction of its lifetime remains."""

    def configured_hub_urls(self) -> list[str]:
        """The hubs this configuration names (empty: use the enrolment's). Pure."""
        return unique_urls([self.hub_url, *self.hub_urls])

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def resolved_sticker_dir(self) -> Path:
        if self.sticker_dir:
            return Path(self.sticker_dir)
        if Path(self.state_dir) == DEFAULT_STATE_DIR:
            return DEFAULT_STICKER_DIR
        return Path(self.state_dir) / "stickers"

    def resolved_unit_dir(self) -> str:
        if self.unit_dir:
            return self.unit_dir
        if self.systemd_scope == "system":
            return "/etc/systemd/system"
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return str(Path(base) / "systemd" / "user")


class ConfigError(Exception):
    pass


def load_config(path: Path | None) -> AgentConfig:
    if path is None:
        path = DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None
    if path is None:
        return AgentConfig()
    try:
        return msgspec.convert(tomllib.loads(path.read_text()), AgentConfig)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def resolve_machine_id(config: AgentConfig) -> str:
    """The configured id, else /etc/machine-id, else one generated once and kept in state."""
    if config.machine_id:
        return config.machine_id
    try:
        text = MACHINE_ID_FILE.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    own = config.state_path / "machine-id"
    if own.exists():
        return own.read_text().strip()
    own.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(16)
    own.write_text(value + "\n")
    return value


def parse_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"metadata {pair!r} must be KEY=VALUE")
        out[key] = value
    return out


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")
