"""WebOps decisions as pure functions: statuses, ports, log paging, env checks, units."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

from coordinator.webops.records import WebLogItem
from proto import webops as w
from proto.units import UnitOption

STATUSES = ("pending", "building", "running", "stopped", "failed")
LEVELS = ("info", "warning", "error", "success")
PORT_BASE = 8001
PORT_MAX = 65535
unit_name = w.unit_name


def backend_needed(project_type: str) -> str:
    """The machine capability a project type's unit needs ("" while the type is to be
    detected: any machine)."""
    if project_type == "docker":
        return "docker"
    if project_type:
        return "systemd"
    return ""


def after_build(status: str, ok: bool) -> str:
    """The status once a build ended: running when it built (the unit now runs it),
    failed when it did not (a previous build, if any, keeps serving: see `live_build`)."""
    del status
    return "running" if ok else "failed"


def next_port(used: Iterable[int], base: int = PORT_BASE) -> int:
    """The lowest port from `base` no deployment on the machine holds."""
    taken = set(used)
    port = base
    while port in taken:
        port += 1
    if port > PORT_MAX:
        raise ValueError("no free port")
    return port


def page_logs(
    items: Sequence[WebLogItem],
    *,
    tail: int | None = None,
    level: str = "",
    since: float = 0.0,
) -> list[WebLogItem]:
    """Oldest first, filtered by `level` and `since`, the last `tail` when given."""
    out = [i for i in items if (not level or i.level == level) and i.created_at >= since]
    if tail is not None:
        out = out[-tail:] if tail > 0 else []
    return out


def missing_env(example: dict[str, str], env: dict[str, str]) -> list[str]:
    """Variables `.env.example` leaves without a default that the deployment lacks."""
    return sorted(k for k, v in example.items() if not v and k not in env)


def generated_env(
    example: dict[str, str],
    *,
    debug: bool,
    domain: str,
    custom: dict[str, str],
    token: str | None = None,
) -> dict[str, str]:
    """A starting environment: the example's defaults, SECRET_KEY, DEBUG, ALLOWED_HOSTS,
    then the caller's own variables."""
    out = {k: v for k, v in example.items() if v}
    out["SECRET_KEY"] = token if token is not None else secrets.token_urlsafe(48)
    out["DEBUG"] = "True" if debug else "False"
    if domain:
        out["ALLOWED_HOSTS"] = domain
    out.update(custom)
    return out


def unit_options(
    *,
    name: str,
    build_id: str,
    project_type: str,
    exec_start: str,
    workdir: str,
    image: str,
    env_file: str,
    port: int,
) -> list[UnitOption]:
    """The Moorage unit of a built deployment: a .service (static, python, django) or a
    .container (docker). Its text names the build, so a new build is a new unit hash and
    the agent restarts it onto the new build directory."""
    desc = UnitOption("Unit", "Description", f"WebOps deployment {name} (build {build_id})")
    if project_type == "docker":
        return [
            desc,
            UnitOption("Container", "Image", image),
            UnitOption("Container", "Network", "host"),
            UnitOption("Container", "EnvironmentFile", env_file),
            UnitOption("Container", "Environment", f"PORT={port}"),
            UnitOption("Service", "Restart", "on-failure"),
        ]
    return [
        desc,
        UnitOption("Service", "ExecStart", exec_start),
        UnitOption("Service", "WorkingDirectory", workdir),
        UnitOption("Service", "EnvironmentFile", env_file),
        UnitOption("Service", "Environment", f"PORT={port}"),
        UnitOption("Service", "Restart", "on-failure"),
        UnitOption("Service", "MemoryAccounting", "yes"),
        UnitOption("Service", "CPUAccounting", "yes"),
    ]


RESTART_LABEL = "webops.restarted="


def restarted(options: list[UnitOption], stamp: int) -> list[UnitOption]:
    """A container unit's options with a new restart label: a new unit hash, so the agent
    recreates the container, which reads the EnvironmentFile again (a plain docker
    restart would keep the environment the container was created with)."""
    kept = [
        o
        for o in options
        if not (
            o.section == "Container" and o.name == "Label" and o.value.startswith(RESTART_LABEL)
        )
    ]
    return [*kept, UnitOption("Container", "Label", f"{RESTART_LABEL}{stamp}")]
