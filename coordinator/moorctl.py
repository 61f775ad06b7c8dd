"""`moorctl`: the operator's CLI. Tables for people, `--json` for scripts.

Exit codes: 0 success, 1 the coordinator refused or failed the request, 2 usage
error, 3 the coordinator could not be reached.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from coordinator import __version__
from coordinator.client import (
    ApiClient,
    ApiClientError,
    ClientConfig,
    default_dev_dir,
    load_dev_client,
)
from coordinator.process import run_main

EXIT_API = 1
EXIT_UNREACHABLE = 3

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '24h', '7d' -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


class Ctx(msgspec.Struct):
    client: ClientConfig | None
    error: str
    json: bool
    full: bool


def _client_config(
    endpoint: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    token: str | None,
    state_dir: str | None,
) -> ClientConfig:
    if endpoint:
        return ClientConfig(
            endpoint=endpoint,
            ca_file=ca_file or "",
            cert_file=cert_file or "",
            key_file=key_file or "",
            token=token or "",
        )
    config = load_dev_client(Path(state_dir) if state_dir else default_dev_dir())
    if token:
        config = msgspec.structs.replace(config, token=token, token_file="")
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moorctl")
@click.option(
    "--endpoint", envvar="MOORAGE_ENDPOINT", help="https://HOST:PORT of the coordinator API."
)
@click.option(
    "--ca-file", envvar="MOORAGE_CA_FILE", help="CA certificate to verify the coordinator."
)
@click.option("--cert-file", envvar="MOORAGE_CERT_FILE", help="Admin client certificate.")
@click.option("--key-file", envvar="MOORAGE_KEY_FILE", help="Admin client key.")
@click.option("--token", envvar="MOORAGE_TOKEN", help="API token (sent as Authorization: Bearer).")
@click.option("--state-dir", envvar="MOORAGE_STATE_DIR", help="State directory of a 'moorage dev'.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--full", is_flag=True, help="Do not shorten machine ids.")
@click.pass_context
def cli(
    ctx: click.Context,
    endpoint: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    token: str | None,
    state_dir: str | None,
    as_json: bool,
    full: bool,
) -> None:
    """Drive a Moorage fleet (with no flags: the local 'moorage dev')."""
    try:
        client: ClientConfig | None = _client_config(
            endpoint, ca_file, cert_file, key_file, token, state_dir
        )
        error = ""
    except ApiClientError as exc:
        client, error = None, exc.message
    ctx.obj = Ctx(client, error, as_json, full)


def _call(ctx: Ctx, fn: Callable[[ApiClient], Coroutine[Any, Any, Any]]) -> Any:
    if ctx.client is None:
        _fail(ctx.error, EXIT_UNREACHABLE)

    async def go() -> Any:
        assert ctx.client is not None
        async with ApiClient(ctx.client) as api:
            return await fn(api)

    try:
        return run_main(go())
    except ApiClientError as exc:
        _fail(
            exc.message if exc.status == 0 else f"error {exc.status}: {exc.message}",
            EXIT_UNREACHABLE if exc.status == 0 else EXIT_API,
        )


def _fail(message: str, code: int) -> None:
    click.echo(f"moorctl: {message}", err=True)
    sys.exit(code)


def _emit_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=max(100, _terminal_width())).print(table)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


def _ago(ts: float) -> str:
    if not ts:
        return "-"
    delta = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


def short_id(machine_id: str, full: bool) -> str:
    """fleetctl shows the first 8 characters unless --full."""
    return machine_id if full else machine_id[:8]


def format_metadata(metadata: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(metadata.items())) or "-"


# --- machines ---------------------------------------------------------------------


@cli.command("list-machines")
@click.option("--all", "show_all", is_flag=True, help="Include revoked machines.")
@click.pass_obj
def list_machines(ctx: Ctx, show_all: bool) -> None:
    """List enrolled machines with their state."""
    path = "moorage/v1/machines" + ("?all=1" if show_all else "")
    body = _call(ctx, lambda api: api.call("GET", path))
    machines = body["machines"]
    if ctx.json:
        _emit_json(machines)
        return
    rows = [
        [
            short_id(mach["id"], ctx.full),
            mach.get("primary_ip") or "-",
            format_metadata(mach.get("metadata", {})),
            "revoked" if mach.get("revoked") else mach.get("state", "?"),
            mach.get("hostname") or "-",
            _ago(mach.get("last_seen", 0)),
        ]
        for mach in machines
    ]
    _table(["MACHINE", "IP", "METADATA", "STATE", "HOSTNAME", "LAST SEEN"], rows)


@cli.group()
def machine() -> None:
    """Machine administration."""


@machine.command("revoke")
@click.argument("machine_id")
@click.pass_obj
def machine_revoke(ctx: Ctx, machine_id: str) -> None:
    """Refuse MACHINE_ID's certificates from now on and close its session."""
    _call(ctx, lambda api: api.call("POST", f"moorage/v1/machines/{machine_id}/revoke"))
    if ctx.json:
        _emit_json({"revoked": machine_id})
    else:
        click.echo(f"machine {machine_id} revoked")


# --- tokens ------------------------------------------------------------------------


@cli.group()
def token() -> None:
    """One-time join tokens for enrolling machines."""


@token.command("create")
@click.option("--ttl", default="24h", show_default=True, help="Validity, e.g. 30m, 24h, 7d.")
@click.option("--description", default="", help="Free text kept with the token.")
@click.pass_obj
def token_create(ctx: Ctx, ttl: str, description: str) -> None:
    """Print a one-time join token (stored hashed; shown only now)."""
    body = {"ttl_s": parse_duration(ttl), "description": description}
    created = _call(ctx, lambda api: api.call("POST", "moorage/v1/join-tokens", body))
    if ctx.json:
        _emit_json(created)
        return
    click.echo(created["token"])
    expires = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(created["expires_at"]))
    click.echo(f"expires {expires}; use it once with:", err=True)
    endpoint = ctx.client.endpoint if ctx.client else "https://COORDINATOR:7440"
    click.echo(
        f"  moorage-agent enroll --coordinator {endpoint} --token {created['token']}", err=True
    )


@cli.group("api-token")
def api_token() -> None:
    """API tokens for scripts and HTTP clients (Authorization: Bearer)."""


@api_token.command("create")
@click.option("--name", required=True, help="Who or what uses the token.")
@click.option("--ttl", default=None, help="Validity, e.g. 30d; default: until revoked.")
@click.pass_obj
def api_token_create(ctx: Ctx, name: str, ttl: str | None) -> None:
    """Print a new API token (stored hashed; shown only now)."""
    body = {"name": name, "ttl_s": parse_duration(ttl) if ttl else None}
    created = _call(ctx, lambda api: api.call("POST", "moorage/v1/api-tokens", body))
    if ctx.json:
        _emit_json(created)
    else:
        click.echo(created["token"])


@api_token.command("revoke")
@click.argument("token_id")
@click.pass_obj
def api_token_revoke(ctx: Ctx, token_id: str) -> None:
    """Revoke the API token with id TOKEN_ID."""
    _call(ctx, lambda api: api.call("DELETE", f"moorage/v1/api-tokens/{token_id}"))
    click.echo(f"API token {token_id} revoked")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
