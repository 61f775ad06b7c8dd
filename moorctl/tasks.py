"""`moorctl task ...`: batch tasks through the task API (Flotilla's /api/v1).

create/list definitions, run one (by alias or definition id), status of a run (or the
latest runs), its logs (`-f` follows with the API's `last_seen` cursor until the run
is STOPPED), stop it. Tables for people, `--json` for scripts.
"""

from __future__ import annotations

import getpass
import sys
from typing import Any
from urllib.parse import quote

import click

from moorctl.cli import EXIT_API, Ctx, _call, _emit_json, _fail, _pairs, _table, cli
from moorctl.client import ApiClient, ApiClientError

BASE = "/api/v1"
FOLLOW_POLL_S = 1.0


@cli.group("task")
def task_cmd() -> None:
    """Batch tasks: one-off runs of a command in an image, on the fleet's machines."""


def _env(values: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in _pairs(values, "--env").items()]


def run_outcome(run: dict[str, Any]) -> str:
    """What the UIs show: SUCCESS/FAILED once STOPPED, else the status. Pure."""
    if run.get("status") != "STOPPED":
        return str(run.get("status", "?"))
    return "SUCCESS" if run.get("exit_code") == 0 else "FAILED"


@task_cmd.command("create")
@click.argument("alias")
@click.argument("image")
@click.option("--command", "command", default="", help="Shell command (run under /bin/sh -c).")
@click.option("--group", "group_name", default="", help="Group name (default: default).")
@click.option("--memory", type=int, default=0, help="Memory limit in MB.")
@click.option("--cpu", type=int, default=0, help="CPU in millicores.")
@click.option("--env", "env", multiple=True, help="NAME=VALUE; repeatable.")
@click.option("--tag", "tags", multiple=True, help="A tag; repeatable.")
@click.option(
    "--retries", type=click.IntRange(0, 1), default=0, help="Run again once if the machine is lost."
)
@click.pass_obj
def task_create(
    ctx: Ctx,
    alias: str,
    image: str,
    command: str,
    group_name: str,
    memory: int,
    cpu: int,
    env: tuple[str, ...],
    tags: tuple[str, ...],
    retries: int,
) -> None:
    """Create a task definition ALIAS running in IMAGE."""
    body: dict[str, Any] = {
        "alias": alias,
        "image": image,
        "command": command,
        "memory": memory,
        "cpu": cpu,
        "env": _env(env),
        "tags": list(tags),
        "retries": retries,
    }
    if group_name:
        body["group_name"] = group_name
    made = _call(ctx, lambda api: api.call("POST", f"{BASE}/task", body))
    if ctx.json:
        _emit_json(made)
        return
    click.echo(f"Definition {made['definition_id']} ({made['alias']}) created")


@task_cmd.command("list")
@click.pass_obj
def task_list(ctx: Ctx) -> None:
    """The task definitions."""
    body = _call(ctx, lambda api: api.call("GET", f"{BASE}/task"))
    found = body["definitions"]
    if ctx.json:
        _emit_json(found)
        return
    _table(
        ["ALIAS", "DEFINITION", "IMAGE", "MEMORY", "CPU", "COMMAND"],
        [
            [
                d["alias"],
                d["definition_id"],
                d["image"],
                str(d["memory"] or "-"),
                str(d["cpu"] or "-"),
                (d["command"].splitlines() or ["-"])[0][:60],
            ]
            for d in found
        ],
    )


async def _definition_path(api: ApiClient, ref: str) -> str:
    """`task/alias/<ref>` when a definition has that alias, else `task/<ref>` (an id)."""
    try:
        await api.call("GET", f"{BASE}/task/alias/{quote(ref, safe='')}")
    except ApiClientError as exc:
        if exc.status != 404:
            raise
        return f"{BASE}/task/{quote(ref, safe='')}"
    return f"{BASE}/task/alias/{quote(ref, safe='')}"


@task_cmd.command("run")
@click.argument("definition")
@click.option("--cluster", default="", help="Cluster (machine group); default: every machine.")
@click.option("--env", "env", multiple=True, help="NAME=VALUE override; repeatable.")
@click.option("--command", "command", default="", help="Run this command instead.")
@click.option("--memory", type=int, default=0, help="Memory in MB (instead of the definition's).")
@click.option("--cpu", type=int, default=0, help="CPU in millicores.")
@click.option("--wait", is_flag=True, help="Wait until it stopped; exit 1 unless it succeeded.")
@click.pass_obj
def task_run(
    ctx: Ctx,
    definition: str,
    cluster: str,
    env: tuple[str, ...],
    command: str,
    memory: int,
    cpu: int,
    wait: bool,
) -> None:
    """Execute DEFINITION (an alias or a definition id)."""
    body: dict[str, Any] = {"env": _env(env), "run_tags": {"owner_id": _owner()}}
    for key, value in (
        ("cluster", cluster),
        ("command", command),
        ("memory", memory),
        ("cpu", cpu),
    ):
        if value:
            body[key] = value

    async def go(api: ApiClient) -> dict[str, Any]:
        path = await _definition_path(api, definition)
        run: dict[str, Any] = await api.call("PUT", f"{path}/execute", body)
        while wait and run["status"] != "STOPPED":
            await _sleep(FOLLOW_POLL_S)
            run = await api.call("GET", f"{BASE}/history/{run['run_id']}")
        return run

    run = _call(ctx, go)
    if ctx.json:
        _emit_json(run)
    else:
        click.echo(
            run["run_id"]
            if not wait
            else f"{run['run_id']} {run_outcome(run)} (exit code {run.get('exit_code')})"
        )
    if wait and run_outcome(run) != "SUCCESS":
        sys.exit(EXIT_API)


def _owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "moorctl"


@task_cmd.command("status")
@click.argument("run_id", required=False)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Runs listed without RUN_ID.",
)
@click.pass_obj
def task_status(ctx: Ctx, run_id: str | None, limit: int) -> None:
    """A run (or, without RUN_ID, the latest runs)."""
    if run_id:
        runs = [_call(ctx, lambda api: api.call("GET", f"{BASE}/history/{quote(run_id)}"))]
    else:
        runs = _call(ctx, lambda api: api.call("GET", f"{BASE}/history?limit={limit}"))["history"]
    if ctx.json:
        _emit_json(runs[0] if run_id else runs)
        return
    _table(
        ["RUN", "ALIAS", "STATUS", "EXIT", "MACHINE", "STARTED", "FINISHED"],
        [
            [
                r["run_id"],
                r["alias"],
                run_outcome(r),
                "-" if r.get("exit_code") is None else str(r["exit_code"]),
                r["instance"]["instance_id"] or "-",
                r.get("started_at") or "-",
                r.get("finished_at") or "-",
            ]
            for r in runs
        ],
    )


@task_cmd.command("logs")
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until it stopped.")
@click.pass_obj
def task_logs(ctx: Ctx, run_id: str, follow: bool) -> None:
    """A run's output (stored by the coordinator: it outlives the machine)."""

    async def go(api: ApiClient) -> None:
        last_seen = ""
        while True:
            run = await api.call("GET", f"{BASE}/history/{quote(run_id)}")
            body = await api.call(
                "GET", f"{BASE}/{quote(run_id)}/logs?last_seen={quote(last_seen)}"
            )
            if body["log"]:
                click.echo(body["log"], nl=False)
            fresh = body["last_seen"] != last_seen
            last_seen = body["last_seen"]
            if fresh and body["log"]:
                continue  # more may be waiting (the API returns at most 1 MiB a call)
            if not follow or run["status"] in ("STOPPED", "NEEDS_RETRY"):
                return
            await _sleep(FOLLOW_POLL_S)

    if ctx.json:
        status = _call(ctx, lambda api: api.call("GET", f"{BASE}/{quote(run_id)}/logs"))
        _emit_json(status)
        return
    _call(ctx, go)


@task_cmd.command("stop")
@click.argument("run_id")
@click.pass_obj
def task_stop(ctx: Ctx, run_id: str) -> None:
    """Stop a run (SIGTERM, then SIGKILL after a grace period); a queued one never starts."""

    async def go(api: ApiClient) -> Any:
        run = await api.call("GET", f"{BASE}/history/{quote(run_id)}")
        return await api.call(
            "DELETE", f"{BASE}/task/{quote(run['definition_id'])}/history/{quote(run_id)}"
        )

    result = _call(ctx, go)
    if ctx.json:
        _emit_json(result)
        return
    if not result.get("terminated"):
        _fail(f"run {run_id} was not stopped", EXIT_API)
    click.echo(f"Run {run_id} stopping")


async def _sleep(seconds: float) -> None:
    """asyncio is loaded with the first request, not at import (moorctl --version)."""
    import asyncio

    await asyncio.sleep(seconds)
