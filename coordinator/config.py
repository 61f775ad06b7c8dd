"""Coordinator configuration: TOML in /etc/moorage/coordinator.toml, overridable by flags."""

from __future__ import annotations

import secrets
import socket
import tomllib
from pathlib import Path

import msgspec

from coordinator.cluster import lease
from coordinator.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT_S,
)
from proto.files import write_private
from proto.units import UnitNameError, validate_unit_name

DEFAULT_CONFIG = Path("/etc/moorage/coordinator.toml")
DEFAULT_STATE_DIR = Path("/var/lib/moorage/coordinator")
DEFAULT_API_PORT = 7440
DEFAULT_HUB_PORT = 7443


class LimitConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """At most `count` in any `window_s` seconds."""

    count: int
    window_s: float


class RateLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[rate_limits]`: the WebOps numbers by default (100 requests/hour per token, 10
    deploys/hour per user, 5 failed authentications per 15 minutes per client IP)."""

    enabled: bool = True
    token: LimitConfig = LimitConfig(100, 3600.0)
    deploy: LimitConfig = LimitConfig(10, 3600.0)
    auth: LimitConfig = LimitConfig(5, 900.0)

    def problems(self) -> list[str]:
        """What is wrong with the numbers (empty when fine). Pure."""
        out = []
        for name in ("token", "deploy", "auth"):
            lim: LimitConfig = getattr(self, name)
            if lim.count < 1:
                out.append(f"rate_limits.{name}.count must be at least 1")
            if not lim.window_s > 0:
                out.append(f"rate_limits.{name}.window_s must be positive")
        return out


GENEROUS_RATE_LIMITS = RateLimits(
    token=LimitConfig(100_000, 3600.0),
    deploy=LimitConfig(1_000, 3600.0),
    auth=LimitConfig(1_000, 900.0),
)
"""What `moorage dev` and the test harness run with: limits that still exist (and
answer with their headers) but that no developer or test loop reaches."""


class PostgresServer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The PostgreSQL server WebOps databases (#21) are made on, reached over TCP with
    its client programs (psql, pg_dump, pg_restore) as an admin role that may create
    roles and databases."""

    host: str = "127.0.0.1"
    port: int = 5432
    admin_user: str = "postgres"
    admin_password_file: str = ""
    """A file (0600) holding the admin role's password; "": none (trust or .pgpass)."""
    bin_dir: str = ""
    """Where psql, pg_dump and pg_restore are; "": on PATH."""
    public_host: str = ""
    """The host deployments reach it by (their DATABASE_URL); "": `host`."""
    unit: str = ""
    """The server is this Moorage unit (of the default tenant, pinned to one machine
    with `MachineID=`: its data directory is there): databases are made where it is
    reported active, at that machine's address (`host` is then unused), and every
    database operation while it is not running answers 503 naming it. "": the server
    at `host`, run by whoever runs it."""


class CoordinatorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    state_dir: str = str(DEFAULT_STATE_DIR)
    api_listen: str = f"0.0.0.0:{DEFAULT_API_PORT}"
    hub_listen: str = f"0.0.0.0:{DEFAULT_HUB_PORT}"
    hub_url: str = ""
    """This coordinator's hub as agents reach it; default: the API's host name (as the
    enrolling agent called it) with the hub port."""
    hub_urls: list[str] = []
    """Every coordinator's hub URL (#23), advertised to enrolling agents so they can fail
    over; default: [this coordinator's hub URL]. See `advertised_hub_urls`."""
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
    rate_limits: RateLimits = RateLimits()
    audit_flush_s: float = 0.5
    """The audit log is written in batches at most this far apart (and at shutdown)."""
    postgres: PostgresServer | None = None
    """Where WebOps databases live; None: creating one is 503."""
    database_url: str = ""
    """The coordinator's own database: "" is the SQLite file `<state_dir>/moorage.db`;
    `postgresql://USER@HOST:PORT/DB` is PostgreSQL, shared by every coordinator of the
    fleet (its password in `database_password_file`, or a `~/.pgpass`, never here)."""
    database_password_file: str = ""
    """A file (0600) holding the password of `database_url`'s user."""
    coordinator_id: str = ""
    """This coordinator among those sharing the database; "": an id generated once
    into `<state_dir>/coordinator.id` (so it survives restarts)."""
    lease_ttl_s: float = lease.DEFAULT_TTL_S
    """How long the leader's lease lasts unrenewed: a leader killed is replaced within
    about this (plus `lease_renew_s`)."""
    lease_renew_s: float = lease.DEFAULT_RENEW_S
    """How often the leader renews its lease (and every coordinator heartbeats)."""

    @property
    def db_path(self) -> Path:
        return Path(self.state_dir) / "moorage.db"

    @property
    def database(self) -> str:
        """What the store opens: the SQLite file's path, or the PostgreSQL URL with the
        password from `database_password_file` (read here, at start, never logged)."""
        if not self.database_url:
            return str(self.db_path)
        if not self.database_password_file:
            return self.database_url
        password = Path(self.database_password_file).read_text().strip()
        return with_password(self.database_url, password)

    @property
    def pki_dir(self) -> Path:
        return Path(self.state_dir) / "pki"

    @property
    def coordinator_id_file(self) -> Path:
        return Path(self.state_dir) / "coordinator.id"


COORDINATOR_ID_MAX = 64


def coordinator_identity(config: CoordinatorConfig) -> str:
    """This coordinator's id: the configured one, else the one generated into the state
    directory on the first start (its host name and a random suffix, readable in logs
    and unique even when two coordinators share a host name)."""
    if config.coordinator_id:
        return config.coordinator_id
    path = config.coordinator_id_file
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found:
        return found
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:40]
    made = f"{host or 'coordinator'}-{secrets.token_hex(4)}"
    write_private(path, (made + "\n").encode())
    return made


def advertised_hub_urls(own: str, configured: list[str]) -> list[str]:
    """The hub URLs an enrolling agent is given, in the order it tries them. Pure.

    The list is the operator's (every coordinator), turned so that this coordinator,
    which the agent just reached, comes first and each coordinator keeps mostly the
    agents it enrolled; the cyclic order is kept so that when one coordinator goes,
    its agents move to the next ones rather than all to the list's head."""
    urls = list(dict.fromkeys(u for u in configured if u))
    if own not in urls:
        return [own, *urls]
    at = urls.index(own)
    return urls[at:] + urls[:at]


def with_password(url: str, password: str) -> str:
    """`url` with `password` for its user (percent-encoded). Pure."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


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
        config = msgspec.convert(raw, CoordinatorConfig)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    problems = config.rate_limits.problems() + lease.problems(
        config.lease_ttl_s, config.lease_renew_s
    )
    if config.postgres is not None and config.postgres.unit:
        try:
            validate_unit_name(config.postgres.unit)
        except UnitNameError as exc:
            problems.append(f"postgres.unit: {exc}")
    if len(config.coordinator_id) > COORDINATOR_ID_MAX:
        problems.append(f"coordinator_id must be at most {COORDINATOR_ID_MAX} characters")
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}")
    return config


def split_host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
