"""`moorctl env ...`: environments, targets, freeze windows and promotions through
`/api/v1/environments`, `/targets`, `/promotions`. Tables for people, `--json` for
scripts. Environments are named by name or id; targets and promotions by id."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import click

from moorctl.cli import Ctx, _call, _emit_json, _pairs, _table, cli

BASE = "/api/v1"


def _q(value: str) -> str:
    return quote(value, safe="")


def env_rows(envs: list[dict[str, Any]]) -> list[list[str]]:
    """Pure: one table row per environment."""
    rows = []
    for e in envs:
        current = e.get("currentRelease") or {}
        rows.append(
            [
                str(e["orderIndex"]),
                e["name"],
                "yes" if e.get("isProduction") else "no",
                str(e.get("requiredApprovals", 0)),
                "yes" if e.get("requireSeparationOfDuties") else "no",
                e.get("promotionPolicy") or "default",
                current.get("name") or "-",
                e["id"],
            ]
        )
    return rows


def promotion_rows(found: list[dict[str, Any]]) -> list[list[str]]:
    """Pure: one table row per promotion."""
    return [
        [
            p["id"],
            p["environmentId"][:8],
            p["version"],
            p["status"],
            f"{len(p.get('approvals', []))}/{p.get('requiredApprovals', 0)}",
            p.get("requestedBy") or "-",
            (p.get("message") or "")[:60],
        ]
        for p in found
    ]


def _show(ctx: Ctx, value: Any, line: str) -> None:
    if ctx.json:
        _emit_json(value)
    else:
        click.echo(line)


@cli.group("env")
def env_cmd() -> None:
    """Environments (dev, staging, production...), their targets, freeze windows and
    promotions of releases through them."""


@env_cmd.command("list")
@click.option("--state", is_flag=True, help="Show each environment's current release.")
@click.pass_obj
def env_list(ctx: Ctx, state: bool) -> None:
    """Environments by orderIndex."""
    path = f"{BASE}/environments" + ("?includeState=true" if state else "")
    found = _call(ctx, lambda api: api.call("GET", path))
    if ctx.json:
        _emit_json(found)
        return
    _table(
        ["ORDER", "NAME", "PROD", "APPROVALS", "SOD", "POLICY", "CURRENT", "ID"], env_rows(found)
    )


@env_cmd.command("create")
@click.argument("name")
@click.option("--order", "order", type=int, default=0, help="orderIndex (promotion order).")
@click.option("--display-name", default="", help="Display name.")
@click.option("--approvals", type=int, default=0, help="Approvals a promotion needs.")
@click.option("--sod", is_flag=True, help="Separation of duties for approvals.")
@click.option("--policy", default="default", help="default | ordered | any.")
@click.option("--auto-promote-from", default="", help="Promote here after success there.")
@click.option("--timeout", type=float, default=0, help="Rollout health timeout (s).")
@click.option("--production/--not-production", default=None, help="Flag as production.")
@click.pass_obj
def env_create(
    ctx: Ctx,
    name: str,
    order: int,
    display_name: str,
    approvals: int,
    sod: bool,
    policy: str,
    auto_promote_from: str,
    timeout: float,
    production: bool | None,
) -> None:
    """Create environment NAME."""
    body: dict[str, Any] = {
        "name": name,
        "displayName": display_name,
        "orderIndex": order,
        "requiredApprovals": approvals,
        "requireSeparationOfDuties": sod,
        "promotionPolicy": policy,
        "autoPromoteFrom": auto_promote_from,
        "config": {"deploymentTimeout": timeout} if timeout else {},
    }
    if production is not None:
        body["isProduction"] = production
    made = _call(ctx, lambda api: api.call("POST", f"{BASE}/environments", body))
    _show(ctx, made, f"environment {made['name']} created ({made['id']})")


@env_cmd.command("show")
@click.argument("env")
@click.pass_obj
def env_show(ctx: Ctx, env: str) -> None:
    """One environment with its current release."""
    path = f"{BASE}/environments/{_q(env)}?includeState=true"
    found = _call(ctx, lambda api: api.call("GET", path))
    if ctx.json:
        _emit_json(found)
        return
    _table(
        ["ORDER", "NAME", "PROD", "APPROVALS", "SOD", "POLICY", "CURRENT", "ID"], env_rows([found])
    )


@env_cmd.command("delete")
@click.argument("env")
@click.pass_obj
def env_delete(ctx: Ctx, env: str) -> None:
    """Delete an environment (refused while it has targets or a promotion rolling out)."""
    done = _call(ctx, lambda api: api.call("DELETE", f"{BASE}/environments/{_q(env)}"))
    _show(ctx, done, f"environment {env} deleted")


# --- targets ------------------------------------------------------------------------------


@env_cmd.group("target")
def target_cmd() -> None:
    """Targets: the machines (and runtimes) of an environment."""


@target_cmd.command("add")
@click.argument("env")
@click.argument("name")
@click.option(
    "--type",
    "target_type",
    default="docker_host",
    help="docker_host | compose_host | ecs_service | nomad_job.",
)
@click.option("--host", default="", help="connection.host: the machine's hostname or IP.")
@click.option("--machine", default="", help="Bind to this machine id explicitly.")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE; repeatable.")
@click.pass_obj
def target_add(
    ctx: Ctx,
    env: str,
    name: str,
    target_type: str,
    host: str,
    machine: str,
    labels: tuple[str, ...],
) -> None:
    """Add target NAME to environment ENV."""
    body: dict[str, Any] = {
        "environmentId": env,
        "name": name,
        "targetType": target_type,
        "connection": {"host": host} if host else {},
        "labels": _pairs(labels, "--label"),
        "machineId": machine,
    }
    made = _call(ctx, lambda api: api.call("POST", f"{BASE}/targets", body))
    _show(
        ctx, made, f"target {made['name']} added ({made['id']}, machine {made['machineId'] or '-'})"
    )


@target_cmd.command("list")
@click.option("--env", "env", default="", help="Only this environment's.")
@click.pass_obj
def target_list(ctx: Ctx, env: str) -> None:
    """Targets with their machine and health."""
    query = urlencode({"environmentId": env}) if env else ""
    found = _call(
        ctx, lambda api: api.call("GET", f"{BASE}/targets" + ("?" + query if query else ""))
    )
    if ctx.json:
        _emit_json(found)
        return
    _table(
        ["NAME", "TYPE", "MACHINE", "HEALTH", "ENV", "ID"],
        [
            [
                t["name"],
                t["targetType"],
                t.get("machineId") or "-",
                t["healthStatus"],
                t["environmentId"][:8],
                t["id"],
            ]
            for t in found
        ],
    )


@target_cmd.command("remove")
@click.argument("target")
@click.pass_obj
def target_remove(ctx: Ctx, target: str) -> None:
    """Remove a target (its machine leaves the environment)."""
    done = _call(ctx, lambda api: api.call("DELETE", f"{BASE}/targets/{_q(target)}"))
    _show(ctx, done, f"target {target} removed")


@target_cmd.command("health")
@click.argument("target")
@click.pass_obj
def target_health(ctx: Ctx, target: str) -> None:
    """Ask the target's agent now."""
    path = f"{BASE}/targets/{_q(target)}/health-check"
    found = _call(ctx, lambda api: api.call("POST", path))
    _show(ctx, found, f"{found['status']}: {found['message']}")


@target_cmd.command("sticker")
@click.argument("target")
@click.pass_obj
def target_sticker(ctx: Ctx, target: str) -> None:
    """The version sticker the target's agent reported."""
    found = _call(ctx, lambda api: api.call("GET", f"{BASE}/targets/{_q(target)}/sticker"))
    if ctx.json:
        _emit_json(found)
        return
    click.echo(f"{found['releaseName']} ({found['releaseId']}) since {found['deployedAt']}")
    _table(
        ["COMPONENT", "DIGEST"], [[c["componentName"], c["digest"]] for c in found["components"]]
    )


@target_cmd.command("drift")
@click.argument("target")
@click.pass_obj
def target_drift(ctx: Ctx, target: str) -> None:
    """How the target differs from the environment's release."""
    found = _call(ctx, lambda api: api.call("GET", f"{BASE}/targets/{_q(target)}/drift"))
    if ctx.json:
        _emit_json(found)
        return
    if not found["hasDrift"]:
        click.echo("no drift")
        return
    _table(
        ["COMPONENT", "KIND", "EXPECTED", "ACTUAL"],
        [[d["component"], d["kind"], d["expected"], d["actual"]] for d in found["differences"]],
    )


# --- freeze windows -----------------------------------------------------------------------


@env_cmd.group("freeze")
def freeze_cmd() -> None:
    """Freeze windows: no promotion or deploy into the environment while one is active,
    except by the users it lists."""


@freeze_cmd.command("add")
@click.argument("env")
@click.option("--start", required=True, help="RFC 3339, e.g. 2026-12-24T00:00:00Z.")
@click.option("--end", required=True, help="RFC 3339.")
@click.option("--reason", default="", help="Shown to whoever is refused.")
@click.option("--except", "exceptions", multiple=True, help="A user id or name; repeatable.")
@click.pass_obj
def freeze_add(
    ctx: Ctx, env: str, start: str, end: str, reason: str, exceptions: tuple[str, ...]
) -> None:
    """Freeze ENV from --start to --end."""
    body = {"start": start, "end": end, "reason": reason, "exceptions": list(exceptions)}
    path = f"{BASE}/environments/{_q(env)}/freeze-windows"
    made = _call(ctx, lambda api: api.call("POST", path, body))
    _show(ctx, made, f"freeze window {made['id']} {made['start']} .. {made['end']}")


@freeze_cmd.command("list")
@click.argument("env")
@click.option("--active", is_flag=True, help="Only windows in force now.")
@click.pass_obj
def freeze_list(ctx: Ctx, env: str, active: bool) -> None:
    """ENV's freeze windows."""
    path = f"{BASE}/environments/{_q(env)}/freeze-windows" + ("?active=true" if active else "")
    found = _call(ctx, lambda api: api.call("GET", path))
    if ctx.json:
        _emit_json(found)
        return
    _table(
        ["ID", "START", "END", "REASON", "EXCEPTIONS"],
        [
            [w["id"], w["start"], w["end"], w["reason"] or "-", ",".join(w["exceptions"]) or "-"]
            for w in found
        ],
    )


@freeze_cmd.command("delete")
@click.argument("env")
@click.argument("window")
@click.pass_obj
def freeze_delete(ctx: Ctx, env: str, window: str) -> None:
    """Delete freeze window WINDOW of ENV."""
    path = f"{BASE}/environments/{_q(env)}/freeze-windows/{_q(window)}"
    done = _call(ctx, lambda api: api.call("DELETE", path))
    _show(ctx, done, f"freeze window {window} deleted")


# --- promotions ---------------------------------------------------------------------------


@env_cmd.command("promote")
@click.argument("env")
@click.option("--release", "release", default="", help="The release to promote (its id).")
@click.option("--app", "app", default="", help="Or, into the first environment: an application.")
@click.option("--version", "version", default="", help="With --app: the version (default latest).")
@click.option("--comment", default="", help="Why.")
@click.pass_obj
def env_promote(ctx: Ctx, env: str, release: str, app: str, version: str, comment: str) -> None:
    """Request a promotion into ENV (rolls out once approved)."""
    if not release and not app:
        raise click.UsageError("give --release, or --app (into the first environment)")
    body = {"releaseId": release, "applicationId": app, "version": version, "comment": comment}
    path = f"{BASE}/environments/{_q(env)}/promotions"
    made = _call(ctx, lambda api: api.call("POST", path, body))
    _show(ctx, made, f"promotion {made['id']}: {made['status']}")


@env_cmd.command("promotions")
@click.argument("env", required=False, default="")
@click.pass_obj
def env_promotions(ctx: Ctx, env: str) -> None:
    """Promotions (of ENV, or all), newest first."""
    path = f"{BASE}/environments/{_q(env)}/promotions" if env else f"{BASE}/promotions"
    found = _call(ctx, lambda api: api.call("GET", path))
    if ctx.json:
        _emit_json(found)
        return
    _table(
        ["ID", "ENV", "VERSION", "STATUS", "APPROVALS", "REQUESTED BY", "MESSAGE"],
        promotion_rows(found),
    )


def _decide(ctx: Ctx, promotion: str, verb: str, comment: str) -> None:
    path = f"{BASE}/promotions/{_q(promotion)}/{verb}"
    done = _call(ctx, lambda api: api.call("POST", path, {"comment": comment}))
    _show(ctx, done, f"promotion {done['id']}: {done['status']}")


@env_cmd.command("approve")
@click.argument("promotion")
@click.option("--comment", default="")
@click.pass_obj
def env_approve(ctx: Ctx, promotion: str, comment: str) -> None:
    """Approve PROMOTION (the last approval needed starts the rollout)."""
    _decide(ctx, promotion, "approve", comment)


@env_cmd.command("reject")
@click.argument("promotion")
@click.option("--comment", default="")
@click.pass_obj
def env_reject(ctx: Ctx, promotion: str, comment: str) -> None:
    """Reject PROMOTION."""
    _decide(ctx, promotion, "reject", comment)
