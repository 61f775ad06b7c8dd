"""`moorctl webops ...`: WebOps deployments through the `/api/deployments` surface
(by name): create, list, info, logs, start/stop/restart/redeploy, delete, env.
Tables for people, `--json` for scripts."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlencode

import click

from moorctl.cli import Ctx, _call, _emit_json, _pairs, _table, cli

BASE = "/api/deployments"
FOLLOW_POLL_S = 1.0


def _path(name: str, *rest: str) -> str:
    return "/".join([BASE, quote(name, safe=""), *rest]) + "/"


@cli.group("webops")
def webops_cmd() -> None:
    """WebOps deployments: git repositories built and run on the fleet's machines."""


@webops_cmd.command("create")
@click.argument("name")
@click.argument("repo_url")
@click.option("--branch", default="main", show_default=True)
@click.option("--domain", default="", help="Domain served by the machine's proxy.")
@click.option(
    "--type",
    "project_type",
    default="",
    type=click.Choice(["", "static", "python", "django", "docker"]),
    help="Project type (default: detected).",
)
@click.option("--env", "env", multiple=True, help="NAME=VALUE; repeatable.")
@click.option("--port", type=int, default=0, help="Port on the machine (default: next free).")
@click.option("--machine", default="", help="Machine id (default: a connected one).")
@click.pass_obj
def webops_create(
    ctx: Ctx,
    name: str,
    repo_url: str,
    branch: str,
    domain: str,
    project_type: str,
    env: tuple[str, ...],
    port: int,
    machine: str,
) -> None:
    """Create deployment NAME from REPO_URL (idempotent by name)."""
    body: dict[str, Any] = {
        "name": name,
        "repo_url": repo_url,
        "branch": branch,
        "domain": domain,
        "env_vars": _pairs(env, "--env"),
        "project_type": project_type,
        "machine": machine,
    }
    if port:
        body["port"] = port
    made = _call(ctx, lambda api: api.call("POST", BASE + "/create/", body))
    if ctx.json:
        _emit_json(made)
        return
    click.echo(f"{made['message']} (id {made['id']}, {made['status']})")


@webops_cmd.command("list")
@click.option("--status", default="", help="Only deployments in this status.")
@click.pass_obj
def webops_list(ctx: Ctx, status: str) -> None:
    """Deployments, newest first."""
    query = urlencode({"per_page": 100, **({"status": status} if status else {})})
    body = _call(ctx, lambda api: api.call("GET", f"{BASE}/?{query}"))
    found = body["deployments"]
    if ctx.json:
        _emit_json(found)
        return
    _table(
        ["NAME", "STATUS", "TYPE", "DOMAIN", "PORT", "BRANCH", "REPOSITORY"],
        [
            [
                d["name"],
                d["status"],
                d["project_type"] or "-",
                d["domain"] or "-",
                str(d["port"]),
                d["branch"],
                d["repo_url"],
            ]
            for d in found
        ],
    )


@webops_cmd.command("info")
@click.argument("name")
@click.pass_obj
def webops_info(ctx: Ctx, name: str) -> None:
    """One deployment, with health and metrics."""
    d = _call(ctx, lambda api: api.call("GET", _path(name)))
    if ctx.json:
        _emit_json(d)
        return
    health = d["health"]
    rows = [
        ["name", d["name"]],
        ["status", d["status"]],
        ["type", d["project_type"] or "-"],
        ["repository", f"{d['repo_url']} ({d['branch']})"],
        ["domain", d["domain"] or "-"],
        ["machine", f"{d['machine']} port {d['port']}"],
        ["unit", d["unit"] or "-"],
        ["build", d["live_build"] or "-"],
        ["building", d["building"] or "-"],
        ["healthy", f"{health['is_healthy']} ({health['detail'] or '-'})"],
        ["cpu", f"{d['metrics']['cpu_usage']} %"],
        ["memory", f"{d['metrics']['memory_usage']} MiB"],
        ["env", ", ".join(sorted(d["env_vars"])) or "-"],
    ]
    _table(["FIELD", "VALUE"], rows)


@webops_cmd.command("logs")
@click.argument("name")
@click.option("--tail", type=int, default=None, help="Only the last N items.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new items.")
@click.pass_obj
def webops_logs(ctx: Ctx, name: str, tail: int | None, follow: bool) -> None:
    """Build and runtime log items, oldest first."""
    suffix = f"?tail={tail}" if tail is not None else ""
    body = _call(ctx, lambda api: api.call("GET", _path(name, "logs") + suffix))
    items = body["logs"]
    if ctx.json and not follow:
        _emit_json(items)
        return
    last = 0
    while True:
        for i in items:
            if i["id"] > last:
                click.echo(f"{i['created_at']} {i['level']:<7} {i['message']}")
                last = i["id"]
        if not follow:
            return
        time.sleep(FOLLOW_POLL_S)
        items = _call(ctx, lambda api: api.call("GET", _path(name, "logs")))["logs"]


def _action(verb: str) -> None:
    @webops_cmd.command(verb)
    @click.argument("name")
    @click.pass_obj
    def act(ctx: Ctx, name: str) -> None:
        out = _call(ctx, lambda api: api.call("POST", _path(name, verb)))
        if ctx.json:
            _emit_json(out)
        else:
            click.echo(out["message"])

    act.__doc__ = f"{verb.capitalize()} deployment NAME."


for _verb in ("start", "stop", "restart", "redeploy"):
    _action(_verb)


@webops_cmd.command("delete")
@click.argument("name")
@click.pass_obj
def webops_delete(ctx: Ctx, name: str) -> None:
    """Delete deployment NAME: its unit, files, proxy entry and logs."""
    out = _call(ctx, lambda api: api.call("DELETE", _path(name)))
    if ctx.json:
        _emit_json(out)
    else:
        click.echo(out["message"])


@webops_cmd.command("env")
@click.argument("name")
@click.argument("action", type=click.Choice(["show", "set", "unset", "validate"]), default="show")
@click.argument("pairs", nargs=-1)
@click.option("--restart", is_flag=True, help="Restart so the app sees the change.")
@click.pass_obj
def webops_env(ctx: Ctx, name: str, action: str, pairs: tuple[str, ...], restart: bool) -> None:
    """Show, set (KEY=VALUE...), unset (KEY...) or validate NAME's env vars."""
    if action == "show":
        out = _call(ctx, lambda api: api.call("GET", _path(name, "env")))
    elif action == "validate":
        out = _call(ctx, lambda api: api.call("GET", _path(name, "env", "validate")))
    else:
        if not pairs:
            raise click.UsageError(f"env {action} needs at least one argument")
        if action == "set":
            bodies: list[dict[str, Any]] = [
                {"key": k, "value": v} for k, v in _pairs(pairs, "KEY=VALUE").items()
            ]
        else:
            bodies = [{"key": k} for k in pairs]
        out = {}
        for body in bodies:
            out = _post(ctx, _path(name, "env", action), body)
    if restart and action in ("set", "unset"):
        _call(ctx, lambda api: api.call("POST", _path(name, "restart")))
    if ctx.json:
        _emit_json(out)
        return
    if "env_vars" in out:
        _table(["NAME", "VALUE"], [[k, v] for k, v in sorted(out["env_vars"].items())])
    else:
        click.echo("valid" if out["valid"] else "missing: " + ", ".join(out["missing"]))


def _post(ctx: Ctx, path: str, body: dict[str, Any]) -> Any:
    async def go(api: Any) -> Any:
        return await api.call("POST", path, body)

    return _call(ctx, go)
