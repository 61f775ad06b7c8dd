"""`moorctl`: the operator's CLI. Tables for people, `--json` for scripts.

Every fleetctl command that works over HTTP (list-machines, list-units,
list-unit-files, submit, load, start, stop, unload, destroy, cat) plus `status` and
`journal`, which fleetctl did over SSH and moorctl does through the API.

Users: `user create/list/disable/enable/passwd` (passwords from a prompt or
`--password-stdin`, never from the command line).

Applications through the Fleet Manager API (/api/v2): `app push/show/list`, `group
create/list/delete`, `deployment create/list/delete`, `deploy` (follows the rollout
with a progress bar), `rollout status`, `releases`; and what agents report: `drift`
and `stickers`.

Exit codes (`EXIT_CODES`, also in `moorctl --help`): 0 success, 1 the coordinator
refused or failed the request (a unit failed to start, or no machine can take it), 2
usage error, 3 the coordinator could not be reached, 4 timed out waiting for a unit.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
import msgspec

from moorctl import __version__
from moorctl import fleet as fc
from moorctl.client import ApiClient, ApiClientError, load_dev_client
from proto.clientconfig import ClientConfig, default_dev_dir
from proto.units import (
    UnitFileError,
    UnitNameError,
    UnitOption,
    serialize,
    unit_hash,
    validate_unit_name,
)

EXIT_API = 1
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_CODES = """\b
Exit codes:
  0  success
  1  the coordinator refused or failed the request: a unit failed to start, or no
     machine can take it (the scheduler's reason is printed)
  2  usage error
  3  the coordinator could not be reached
  4  timed out waiting for a unit or a rollout"""

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
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

    from proto.process import run_main  # asyncio: only for commands that make requests

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
    """Columns two spaces apart; rich (which folds long cells) only for a table wider
    than the terminal: importing and laying out rich costs more than the request for a
    list of a thousand units."""
    width = max(100, _terminal_width())
    text = plain_table(headers, rows)
    if max((len(line) for line in text), default=0) <= width:
        click.echo("\n".join(text))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=width).print(table)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a table as rich lays one out without borders when it fits: every
    column as wide as its widest cell, two spaces apart, no trailing spaces. Pure."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(widths) - 1
    return [
        "  ".join(c if i == last else c.ljust(widths[i]) for i, c in enumerate(row)).rstrip()
        for row in [list(headers), *rows]
    ]


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
@click.option(
    "--machine",
    "machine_id",
    default="",
    help="Bind the token to this machine id: only it may enrol with the token, even if"
    " it is enrolled already (re-enrolment; its old certificates are revoked).",
)
@click.pass_obj
def token_create(ctx: Ctx, ttl: str, description: str, machine_id: str) -> None:
    """Print a one-time join token (stored hashed; shown only now)."""
    body: dict[str, object] = {"ttl_s": parse_duration(ttl), "description": description}
    if machine_id:
        body["machine_id"] = machine_id
    created = _call(ctx, lambda api: api.call("POST", "moorage/v1/join-tokens", body))
    if ctx.json:
        _emit_json(created)
        return
    click.echo(created["token"])
    expires = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(created["expires_at"]))
    click.echo(f"expires {expires}; use it once with:", err=True)
    endpoint = ctx.client.endpoint if ctx.client else "https://COORDINATOR:7440"
    click.echo(
        f"  moorage-agent enroll --coordinator {endpoint} --token {created['token']}"
        + (f" --machine-id {machine_id}" if machine_id else ""),
        err=True,
    )


@cli.group("api-token")
def api_token() -> None:
    """API tokens for scripts and HTTP clients (Authorization: Bearer)."""


@api_token.command("create")
@click.option("--name", required=True, help="Who or what uses the token.")
@click.option("--ttl", default=None, help="Validity, e.g. 30d; default: until revoked.")
@click.option(
    "--tenant",
    default=None,
    help="Tenant the token acts in (default: the caller's; another one needs an admin"
    " of the default tenant).",
)
@click.option("--unlimited", is_flag=True, help="Exempt from the per-token rate limit.")
@click.pass_obj
def api_token_create(
    ctx: Ctx, name: str, ttl: str | None, tenant: str | None, unlimited: bool
) -> None:
    """Print a new API token (stored hashed; shown only now)."""
    body: dict[str, object] = {
        "name": name,
        "ttl_s": parse_duration(ttl) if ttl else None,
        "unlimited": unlimited,
    }
    if tenant:
        body["tenant"] = tenant
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


@api_token.command("unlimited")
@click.argument("token_id")
@click.option("--off", is_flag=True, help="End the exemption.")
@click.pass_obj
def api_token_unlimited(ctx: Ctx, token_id: str, off: bool) -> None:
    """Exempt the API token TOKEN_ID from the per-token rate limit (or, --off, not)."""
    body = {"unlimited": not off}
    _call(ctx, lambda api: api.call("PATCH", f"moorage/v1/api-tokens/{token_id}", body))
    click.echo(f"API token {token_id} {'limited' if off else 'unlimited'}")


# --- audit ---------------------------------------------------------------------------


def audit_params(filters: dict[str, str | int | None], now: float) -> dict[str, str]:
    """The query of GET /moorage/v1/audit from the command's options; `since`/`until`
    take epoch seconds or a duration ago (30m, 24h). Pure."""
    params: dict[str, str] = {}
    for name, value in filters.items():
        if value in (None, "", 0):
            continue
        text = str(value)
        if name in ("since", "until") and not text.replace(".", "", 1).isdigit():
            text = f"{now - parse_duration(text):.3f}"
        params[name] = text
    return params


def audit_row(entry: dict[str, Any]) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
    who = entry.get("principal", "")
    kind = entry.get("principal_kind", "")
    principal = f"{kind}:{who}" if kind else (who or "-")
    if entry.get("kind") == "event":
        what = f"{entry.get('event', '')} {entry.get('subject', '')}".strip()
        return [when, principal, entry.get("tenant", "") or "-", "event", what, "-", "-"]
    return [
        when,
        principal,
        entry.get("tenant", "") or "-",
        entry.get("method", ""),
        entry.get("path", ""),
        str(entry.get("status", "")),
        entry.get("client_ip", "") or "-",
    ]


@cli.command("audit")
@click.option("--principal", default="", help="A principal's name, or KIND:NAME (token:ci).")
@click.option("--tenant", default="")
@click.option("--kind", type=click.Choice(["request", "event"]), default=None)
@click.option("--method", default="")
@click.option("--path", "path", default="", help="Path prefix (/api/v2/).")
@click.option("--route", default="", help="Route template (/fleet/v1/units/{name}).")
@click.option("--status", type=int, default=None)
@click.option("--event", default="", help="Event kind, or a prefix ending in '.'.")
@click.option("--since", default="", help="Epoch seconds, or a duration ago (30m, 24h).")
@click.option("--until", default="", help="Epoch seconds, or a duration ago.")
@click.option("--limit", default=100, show_default=True, help="At most this many entries.")
@click.pass_obj
def audit_cmd(ctx: Ctx, /, limit: int, **filters: Any) -> None:
    """The audit log, newest first: who wrote what, when, with which outcome."""
    try:
        params = audit_params(filters, time.time())
    except click.BadParameter as exc:
        _fail(str(exc), 2)
    if limit < 1:
        _fail("--limit must be at least 1", 2)

    async def go(api: ApiClient) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(entries) < limit:
            query = {**params, "limit": str(min(1000, limit - len(entries)))}
            if cursor:
                query["cursor"] = cursor
            page = await api.call("GET", "moorage/v1/audit?" + urlencode(query))
            entries.extend(page["entries"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return entries

    entries = _call(ctx, go)
    if ctx.json:
        _emit_json(entries)
        return
    _table(
        ["TIME", "PRINCIPAL", "TENANT", "METHOD", "PATH", "STATUS", "CLIENT"],
        [audit_row(e) for e in entries],
    )


# --- users -----------------------------------------------------------------------------


def read_password(from_stdin: bool, prompt: str = "Password") -> str:
    """From stdin (first line) with --password-stdin, else a hidden prompt asked twice;
    never from argv, where other local users could read it."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if not password:
            raise click.UsageError("no password on stdin")
        return password
    value: str = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return value


def _user_rows(users: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(u["id"]),
            u["username"],
            u.get("email") or "-",
            "yes" if u.get("is_staff") else "no",
            "active" if u.get("is_active", True) else "disabled",
            ",".join(u.get("permissions", [])) or "-",
            ",".join(u.get("tenants", [])) or "-",
        ]
        for u in users
    ]


@cli.group("user")
def user_cmd() -> None:
    """Users who log in with a password (POST /api/v1/auth/token/) and get tokens."""


@user_cmd.command("create")
@click.argument("username")
@click.option("--email", default="", help="E-mail address.")
@click.option("--staff", is_flag=True, help="Staff: holds every permission (admin).")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    help="A permission (deployments, databases, monitoring, users, environments, approvals,"
    " tasks, fleet, admin) or a role (role:admin, role:operator, role:developer,"
    " role:viewer); repeatable.",
)
@click.option("--tenant", "tenants", multiple=True, help="Tenant(s); default: default.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.pass_obj
def user_create(
    ctx: Ctx,
    username: str,
    email: str,
    staff: bool,
    permissions: tuple[str, ...],
    tenants: tuple[str, ...],
    password_stdin: bool,
) -> None:
    """Create USERNAME (the password is prompted for, or read with --password-stdin)."""
    body = {
        "username": username,
        "password": read_password(password_stdin),
        "email": email,
        "is_staff": staff,
        "permissions": list(permissions),
        "tenants": list(tenants),
    }
    created = _call(ctx, lambda api: api.call("POST", "moorage/v1/users", body))
    if ctx.json:
        _emit_json(created)
    else:
        click.echo(f"user {created['username']} created (id {created['id']})")


@user_cmd.command("list")
@click.pass_obj
def user_list(ctx: Ctx) -> None:
    """List users."""
    users = _call(ctx, lambda api: api.call("GET", "moorage/v1/users"))["users"]
    if ctx.json:
        _emit_json(users)
        return
    _table(
        ["ID", "USERNAME", "EMAIL", "STAFF", "STATE", "PERMISSIONS", "TENANTS"], _user_rows(users)
    )


@user_cmd.command("disable")
@click.argument("username")
@click.pass_obj
def user_disable(ctx: Ctx, username: str) -> None:
    """Disable USERNAME: no more logins, and their tokens are refused at once."""
    path = f"moorage/v1/users/{quote(username, safe='')}/disable"
    updated = _call(ctx, lambda api: api.call("POST", path))
    if ctx.json:
        _emit_json(updated)
    else:
        click.echo(f"user {username} disabled")


@user_cmd.command("enable")
@click.argument("username")
@click.pass_obj
def user_enable(ctx: Ctx, username: str) -> None:
    """Enable a disabled USERNAME again."""
    path = f"moorage/v1/users/{quote(username, safe='')}/enable"
    updated = _call(ctx, lambda api: api.call("POST", path))
    if ctx.json:
        _emit_json(updated)
    else:
        click.echo(f"user {username} enabled")


@user_cmd.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@click.pass_obj
def user_passwd(ctx: Ctx, username: str, password_stdin: bool) -> None:
    """Set USERNAME's password (prompted for, or read with --password-stdin)."""
    body = {"password": read_password(password_stdin, "New password")}
    path = f"moorage/v1/users/{quote(username, safe='')}/password"
    _call(ctx, lambda api: api.call("PUT", path, body))
    if ctx.json:
        _emit_json({"username": username, "password_changed": True})
    else:
        click.echo(f"password of user {username} changed")


# --- units (fleetctl's commands) ------------------------------------------------------


def _machine_label(machine_id: str, machines: dict[str, dict[str, Any]], full: bool) -> str:
    if not machine_id:
        return "-"
    ip = machines.get(machine_id, {}).get("primaryIP", "")
    return f"{short_id(machine_id, full)}/{ip}" if ip else short_id(machine_id, full)


def _with_machines(
    ctx: Ctx, resource: str, field: str
) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """A fleet list and the machines by id, as fleetctl fetches them to label rows."""

    async def go(api: ApiClient) -> tuple[list[Any], list[Any]]:
        return (
            await fc.list_all(api, resource, field),
            await fc.list_all(api, "machines", "machines"),
        )

    items, machines = _call(ctx, go)
    return items, {mach["id"]: mach for mach in machines}


@cli.command("list-units")
@click.pass_obj
def list_units(ctx: Ctx) -> None:
    """Units and their state on each machine (UNIT MACHINE ACTIVE SUB); a copy on a
    machine that is not connected is what it last reported, marked `stale` with its age."""

    states, by_id = _with_machines(ctx, "state", "states")
    if ctx.json:
        _emit_json(states)
        return
    rows = [
        [
            s["name"],
            _machine_label(s.get("machineID", ""), by_id, ctx.full),
            s.get("systemdActiveState", "-") + _stale_note(s),
            s.get("systemdSubState", "-"),
        ]
        for s in states
    ]
    _table(["UNIT", "MACHINE", "ACTIVE", "SUB"], rows)


def _stale_note(state: dict[str, Any]) -> str:
    return f" (stale, {state.get('ageSeconds', 0):.0f} s old)" if state.get("stale") else ""


@cli.command("list-unit-files")
@click.pass_obj
def list_unit_files(ctx: Ctx) -> None:
    """Submitted units (UNIT HASH DSTATE STATE TARGET)."""

    units, by_id = _with_machines(ctx, "units", "units")
    if ctx.json:
        _emit_json(units)
        return
    rows = [
        [
            u["name"],
            unit_hash(msgspec.convert(u.get("options", []), list[UnitOption]))[:7],
            u.get("desiredState", "-"),
            "-" if fc.is_global(u) else u.get("currentState", "-"),
            "global"
            if fc.is_global(u)
            else _machine_label(u.get("machineID", ""), by_id, ctx.full),
        ]
        for u in units
    ]
    _table(["UNIT", "HASH", "DSTATE", "STATE", "TARGET"], rows)


def _names(files: tuple[str, ...]) -> list[tuple[str, Path]]:
    """Unit names from arguments that may be paths (like fleetctl: the basename)."""
    return [(Path(f).name, Path(f).parent) for f in files]


async def _ensure_submitted(api: ApiClient, name: str, directory: Path) -> bool:
    if await fc.get_unit(api, name) is not None:
        return False
    options = await fc.resolve_options(api, name, directory)
    if options is None:
        raise ApiClientError(404, f"unit {name} not found: no such file and not in the cluster")
    try:
        validate_unit_name(name)
    except UnitNameError as exc:
        raise ApiClientError(400, str(exc)) from None
    return await fc.submit(api, name, options)


def local_units(
    files: Sequence[str],
) -> tuple[list[tuple[str, list[UnitOption]]], list[tuple[str, Path]]]:
    """Units whose file (or template's file) is on disk, parsed, in order and each once;
    and the names that need the cluster (no local file: maybe submitted already, or a
    template there). Raises ApiClientError(400) for a bad name or an unreadable file."""
    found: list[tuple[str, list[UnitOption]]] = []
    remote: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for name, directory in _names(tuple(files)):
        if name in seen:
            continue
        seen.add(name)
        try:
            validate_unit_name(name)
        except UnitNameError as exc:
            raise ApiClientError(400, str(exc)) from None
        path = Path(directory, name)
        text: str | None
        try:
            try:
                # The common case in one system call less than `local_file`'s stat first.
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                found_path = fc.local_file(name, directory)
                if found_path is None:
                    remote.append((name, directory))
                    continue
                path, text = found_path, None
            found.append((name, fc.options_from_file(path, text)))
        except (OSError, UnitFileError, UnicodeDecodeError) as exc:
            raise ApiClientError(400, f"{path}: {exc}") from None
    return found, remote


async def submit_many(api: ApiClient, files: Sequence[str]) -> list[tuple[str, bool]]:
    """fleetctl's submit for many files in one request: every unit with a local file
    goes in one batch that leaves already submitted units as they are; only names
    without a local file are looked up in the cluster one by one."""
    found, remote = local_units(files)
    new: set[str] = set()
    if found:
        body = {
            "keep_existing": True,
            "units": [
                {"name": n, "options": fc.plain_options(o), "desired_state": "inactive"}
                for n, o in found
            ],
        }
        result = await api.call("PUT", "moorage/v1/units", body)
        new = set(result["created"])
    for name, directory in remote:
        if await _ensure_submitted(api, name, directory):
            new.add(name)
    return [(name, name in new) for name, _ in [*found, *remote]]


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.pass_obj
def submit(ctx: Ctx, files: tuple[str, ...]) -> None:
    """Upload unit files (desired state inactive); many files go in one request."""
    results = _call(ctx, lambda api: submit_many(api, files))
    if ctx.json:
        _emit_json([{"unit": n, "submitted": new} for n, new in results])
        return
    click.echo(
        "\n".join(
            f"Unit {name} {'submitted' if new else 'already submitted'}" for name, new in results
        )
    )


def _transition(
    ctx: Ctx, files: tuple[str, ...], state: str, timeout: float, submit_first: bool
) -> None:
    started = state == "launched"

    async def go(api: ApiClient) -> list[dict[str, Any]]:
        out = []
        names = _names(files)
        for name, directory in names:
            if submit_first:
                await _ensure_submitted(api, name, directory)
            elif await fc.get_unit(api, name) is None:
                raise ApiClientError(404, f"unit {name} does not exist")
            await fc.set_state(api, name, state)
        for name, _ in names:
            unit = await fc.wait_current(api, name, state, timeout)
            result: dict[str, Any] = {
                "unit": name,
                "state": state,
                "machine": unit.get("machineID", ""),
            }
            if started:
                placed = await api.call("GET", f"moorage/v1/units/{quote(name, safe='')}")
                expected = max(1, len(placed["machines"]))
                ok, states = await fc.wait_active(api, name, window=timeout, expected=expected)
                result["active"] = ok
                result["states"] = states
                if not ok:
                    detail = await api.call("GET", f"moorage/v1/unit-states?unit={name}")
                    result["reason"] = (
                        "; ".join(
                            f"{s['machine_id'][:8]}: {s['active_state']}/{s['sub_state']}"
                            + (f" ({s['message']})" if s.get("message") else "")
                            for s in detail["states"]
                        )
                        or "no state reported"
                    )
            out.append(result)
        return out

    try:
        results = _call(ctx, go)
    except TimeoutError as exc:
        _fail(str(exc), EXIT_TIMEOUT)
    except fc.Unschedulable as exc:
        _fail(str(exc), EXIT_API)
    if ctx.json:
        _emit_json(results)
    else:
        verb = {"launched": "launched", "loaded": "loaded", "inactive": "unloaded"}[state]
        for r in results:
            where = f" on {short_id(r['machine'], ctx.full)}" if r["machine"] else ""
            if started and not r["active"]:
                click.echo(
                    f"Unit {r['unit']} {verb}{where} but is not active: {r['reason']}", err=True
                )
            else:
                click.echo(f"Unit {r['unit']} {verb}{where}")
    if started and not all(r["active"] for r in results):
        sys.exit(EXIT_API)


TIMEOUT_OPT = click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait.")


def _state_command(name: str, state: str, submit_first: bool, doc: str) -> None:
    """load/start submit local files first (like fleetctl); stop/unload need the unit."""
    arg = "files" if submit_first else "units"

    @cli.command(name, help=doc)
    @click.argument(arg, nargs=-1, required=True)
    @TIMEOUT_OPT
    @click.pass_obj
    def command(ctx: Ctx, /, timeout: float, **names: tuple[str, ...]) -> None:
        _transition(ctx, names[arg], state, timeout, submit_first=submit_first)


_state_command(
    "load", "loaded", True, "Submit if needed and load units on their machines (not started)."
)
_state_command(
    "start",
    "launched",
    True,
    "Submit if needed, start units, and wait until they are active (or failed).",
)
_state_command("stop", "loaded", False, "Stop units (they stay loaded).")
_state_command(
    "unload", "inactive", False, "Stop and unload units from their machines (they stay submitted)."
)


@cli.command()
@click.argument("units", nargs=-1, required=True)
@click.pass_obj
def destroy(ctx: Ctx, units: tuple[str, ...]) -> None:
    """Stop, unload and remove units from the cluster."""

    async def go(api: ApiClient) -> list[str]:
        done = []
        for name, _ in _names(units):
            await api.call("DELETE", fc.unit_path(name))
            done.append(name)
        return done

    destroyed = _call(ctx, go)
    if ctx.json:
        _emit_json({"destroyed": destroyed})
    else:
        for name in destroyed:
            click.echo(f"Destroyed {name}")


@cli.command()
@click.argument("unit")
@click.pass_obj
def cat(ctx: Ctx, unit: str) -> None:
    """Print a unit's file as submitted."""
    body = _call(ctx, lambda api: api.call("GET", fc.unit_path(unit)))
    if ctx.json:
        _emit_json(body)
    else:
        click.echo(serialize(msgspec.convert(body["options"], list[UnitOption])), nl=False)


@cli.command()
@click.argument("unit")
@click.option("-n", "--lines", default=10, show_default=True, help="Journal lines to show.")
@click.pass_obj
def status(ctx: Ctx, unit: str, lines: int) -> None:
    """Where a unit runs, its state on each machine and its last journal lines."""

    async def go(api: ApiClient) -> dict[str, Any]:
        record = await api.call("GET", f"moorage/v1/units/{quote(unit, safe='')}")
        states = await api.call("GET", f"moorage/v1/unit-states?unit={quote(unit, safe='')}")
        journals: dict[str, Any] = {}
        base = f"moorage/v1/units/{quote(unit, safe='')}/journal?lines={lines}"
        for mid in record["machines"]:
            try:
                journals[mid] = (await api.call("GET", f"{base}&machine={mid}"))["lines"]
            except ApiClientError as exc:
                journals[mid] = [{"cursor": "", "message": f"(journal unavailable: {exc.message})"}]
        return {"unit": record, "states": states["states"], "journal": journals}

    result = _call(ctx, go)
    if ctx.json:
        _emit_json(result)
        return
    record = result["unit"]
    click.echo(f"● {unit} - desired {record['desired_state']}, hash {record['hash'][:7]}")
    if not record["machines"]:
        why = record.get("unschedulable") or (
            "desired state inactive"
            if record["desired_state"] == "inactive"
            else "waiting for the scheduler"
        )
        click.echo(f"  not scheduled on any machine: {why}")
    for s in result["states"]:
        click.echo(
            f"  {short_id(s['machine_id'], ctx.full)}: {s['load_state']} {s['active_state']} "
            f"({s['sub_state']})"
            + (f" main pid {s['main_pid']}" if s.get("main_pid") else "")
            + (f" - {s['message']}" if s.get("message") else "")
        )
    for mid, entries in result["journal"].items():
        click.echo(f"\n-- journal of {unit} on {short_id(mid, ctx.full)} --")
        for line in entries:
            click.echo(line["message"])


def journal_target_problem(unit: str, machines: Sequence[str], full: bool) -> str:
    """Why `moorctl journal UNIT` without --machine cannot pick a machine ("" if it can),
    in the CLI's words."""
    if not machines:
        return (
            f"{unit} is not scheduled on any machine, so it has no journal yet"
            f" (moorctl status {unit} shows its state)"
        )
    if len(machines) > 1:
        shown = ", ".join(short_id(mid, full) for mid in machines)
        return f"{unit} runs on {len(machines)} machines ({shown}): choose one with --machine ID"
    return ""


@cli.command()
@click.argument("unit")
@click.option("-n", "--lines", default=10, show_default=True, help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--machine", default="", help="Machine id (for units on several machines).")
@click.pass_obj
def journal(ctx: Ctx, unit: str, lines: int, follow: bool, machine: str) -> None:
    """A unit's journal through the coordinator (no SSH)."""
    if not machine:
        record = _call(ctx, lambda api: api.call("GET", f"moorage/v1/units/{quote(unit, safe='')}"))
        problem = journal_target_problem(unit, record["machines"], ctx.full)
        if problem:
            _fail(problem, EXIT_API)
    query = f"lines={lines}" + (f"&machine={machine}" if machine else "")
    path = f"moorage/v1/units/{quote(unit, safe='')}/journal?{query}"
    if not follow:
        body = _call(ctx, lambda api: api.call("GET", path))
        if ctx.json:
            _emit_json(body["lines"])
        else:
            for line in body["lines"]:
                click.echo(line["message"])
        return

    async def stream(api: ApiClient) -> None:
        async for line in api.stream_lines(path + "&follow=1"):
            entry = msgspec.json.decode(line)
            if "error" in entry:
                raise ApiClientError(1, entry["error"])
            click.echo(line.decode().rstrip() if ctx.json else entry["message"])

    try:
        _call(ctx, stream)
    except KeyboardInterrupt:
        pass


# --- applications, groups, deployments, rollouts (the /api/v2 Fleet Manager API) ------

V2 = "api/v2"


async def _all_items(api: ApiClient, path: str) -> list[dict[str, Any]]:
    """Every item of a paged /api/v2 list, following `next`."""
    items: list[dict[str, Any]] = []
    url: str | None = f"{path}{'&' if '?' in path else '?'}limit=200"
    while url:
        page = await api.call("GET", url)
        items.extend(page["items"])
        nxt = page.get("next")
        url = f"{V2}/" + nxt.split("/api/v2/", 1)[1] if nxt else None
    return items


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} must be KEY=VALUE", param_hint=what)
        out[key] = val
    return out


def _create(
    ctx: Ctx,
    collection: str,
    body: dict[str, Any],
    describe: Callable[[dict[str, Any], bool], str],
) -> None:
    """POST a create; a repeated create answers with the object that exists, which the
    Moorage-Created header tells apart (so "created" is never said of an old one)."""
    response = _call(ctx, lambda api: api.request("POST", f"{V2}/{collection}", body))
    made = response.body
    if ctx.json:
        _emit_json(made)
    else:
        click.echo(describe(made, response.headers.get("moorage-created", "true") == "true"))


def _delete(ctx: Ctx, collection: str, name: str, what: str) -> None:
    _call(ctx, lambda api: api.call("DELETE", f"{V2}/{collection}/{quote(name, safe='')}"))
    click.echo(f"{what} {name} deleted")


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else "-"


@cli.group("group")
def group_cmd() -> None:
    """Machine groups (cluster groups): by metadata selector and/or machine ids."""


@group_cmd.command("list")
@click.pass_obj
def group_list(ctx: Ctx) -> None:
    groups = _call(ctx, lambda api: _all_items(api, f"{V2}/cluster-groups"))
    if ctx.json:
        _emit_json(groups)
        return
    _table(
        ["NAME", "SELECTOR", "MACHINES", "MEMBERS", "DESCRIPTION"],
        [
            [
                g["name"],
                "(every machine)" if g["builtin"] else format_metadata(g["selector"]) or "-",
                ",".join(short_id(m, ctx.full) for m in g["clusterIds"]) or "-",
                str(len(g["members"])),
                g["description"],
            ]
            for g in groups
        ],
    )


@group_cmd.command("create")
@click.argument("name")
@click.option(
    "--selector", "selectors", multiple=True, help="KEY=VALUE machine metadata; repeatable."
)
@click.option("--machine", "machines", multiple=True, help="A machine id; repeatable.")
@click.option("--description", default="")
@click.pass_obj
def group_create(
    ctx: Ctx, name: str, selectors: tuple[str, ...], machines: tuple[str, ...], description: str
) -> None:
    body = {
        "name": name,
        "selector": _pairs(selectors, "--selector"),
        "clusterIds": list(machines),
        "description": description,
    }
    _create(
        ctx,
        "cluster-groups",
        body,
        lambda made, new: (
            f"Group {made['name']}{'' if new else ' already exists and'}"
            f" holds {len(made['members'])} machine(s)"
        ),
    )


@group_cmd.command("delete")
@click.argument("name")
@click.pass_obj
def group_delete(ctx: Ctx, name: str) -> None:
    _delete(ctx, "cluster-groups", name, "Group")


@cli.group("app")
def app_cmd() -> None:
    """Applications: versioned manifests of units (docs/manifest.md)."""


@app_cmd.command("list")
@click.pass_obj
def app_list(ctx: Ctx) -> None:
    apps = _call(ctx, lambda api: _all_items(api, f"{V2}/deployment-applications"))
    if ctx.json:
        _emit_json(apps)
        return
    _table(
        ["NAME", "VERSION", "VERSIONS", "UPDATED", "DESCRIPTION"],
        [
            [
                a["name"],
                a["version"],
                str(len(a["versions"])),
                _when(a["updatedAt"]),
                a["description"],
            ]
            for a in apps
        ],
    )


@app_cmd.command("push")
@click.argument("name")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--version", "version", default="", help="Version label (default: the next number).")
@click.option("--description", default=None)
@click.pass_obj
def app_push(ctx: Ctx, name: str, manifest: str, version: str, description: str | None) -> None:
    """Create the application or give it a new version (an unchanged manifest is not one)."""
    text = Path(manifest).read_text()

    async def go(api: ApiClient) -> tuple[dict[str, Any], str]:
        body: dict[str, Any] = {"name": name, "sourceConfig": text, "version": version}
        if description is not None:
            body["description"] = description
        try:
            old = await api.call("GET", f"{V2}/deployment-applications/{quote(name, safe='')}")
        except ApiClientError as exc:
            if exc.status != 404:
                raise
            body.setdefault("sourceType", "moorctl")
            return await api.call("POST", f"{V2}/deployment-applications", body), "created"
        new = await api.call("PUT", f"{V2}/deployment-applications/{old['id']}", body)
        return new, "new version" if new["version"] != old["version"] else "unchanged"

    app, what = _call(ctx, go)
    if ctx.json:
        _emit_json(app)
    else:
        click.echo(f"Application {app['name']}: version {app['version']} ({what})")


@app_cmd.command("show")
@click.argument("name")
@click.option("--source", is_flag=True, help="Only the manifest, byte for byte (for > FILE).")
@click.pass_obj
def app_show(ctx: Ctx, name: str, source: bool) -> None:
    """The application (versions, units, metadata), then its latest manifest."""
    app = _call(
        ctx, lambda api: api.call("GET", f"{V2}/deployment-applications/{quote(name, safe='')}")
    )
    if ctx.json:
        _emit_json(app)
        return
    if not source:
        for line in describe_application(app):
            click.echo(line)
        click.echo("")
    click.echo(app["sourceConfig"], nl=False)


def describe_application(app: dict[str, Any]) -> list[str]:
    """What `app show` prints above the manifest: what the API says of the application."""
    meta = app.get("metadata") or {}
    lines = [
        f"Application {app['name']} ({app.get('type', 'Application')},"
        f" {app.get('form', 'bare')} manifest)",
        f"  version:        {app['version']} (versions: {', '.join(app['versions'])})",
        f"  units:          {', '.join(app.get('units', [])) or '-'}",
    ]
    description = app.get("description") or meta.get("description")
    if description:
        lines.append(f"  description:    {description}")
    if meta.get("clusterGroups"):
        lines.append(f"  cluster groups: {', '.join(meta['clusterGroups'])}")
    if meta.get("labels"):
        labels = [f"{x['key']}={x['value']}" if x["value"] else x["key"] for x in meta["labels"]]
        lines.append(f"  labels:         {', '.join(labels)}")
    for key, value in (meta.get("annotations") or {}).items():
        lines.append(f"  annotation:     {key}: {value}")
    if meta.get("lifecycle"):
        lines.append(f"  lifecycle:      {meta['lifecycle']}")
    return lines


@cli.group("deployment")
def deployment_cmd() -> None:
    """Deployments: an application on a machine group."""


@deployment_cmd.command("list")
@click.pass_obj
def deployment_list(ctx: Ctx) -> None:
    async def go(api: ApiClient) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
        deps = await _all_items(api, f"{V2}/deployments")
        apps = {a["id"]: a["name"] for a in await _all_items(api, f"{V2}/deployment-applications")}
        groups = {g["id"]: g["name"] for g in await _all_items(api, f"{V2}/cluster-groups")}
        return deps, apps, groups

    deps, apps, groups = _call(ctx, go)
    if ctx.json:
        _emit_json(deps)
        return
    _table(
        ["NAME", "APPLICATION", "GROUP", "VERSION", "STATUS", "UPDATED"],
        [
            [
                d["name"],
                apps.get(d["applicationId"], d["applicationId"]),
                groups.get(d["clusterGroupId"], d["clusterGroupId"]),
                d["applicationVersion"] or "latest",
                d["status"],
                _when(d["updatedAt"]),
            ]
            for d in deps
        ],
    )


@deployment_cmd.command("create")
@click.argument("application")
@click.option("--group", "group_name", default="default", show_default=True)
@click.option("--name", default="", help="Default: APPLICATION-GROUP.")
@click.option("--version", "version", default="", help="Version label to deploy (default: latest).")
@click.pass_obj
def deployment_create(ctx: Ctx, application: str, group_name: str, name: str, version: str) -> None:
    body = {
        "name": name,
        "applicationId": application,
        "clusterGroupId": group_name,
        "applicationVersion": version,
    }
    _create(
        ctx,
        "deployments",
        body,
        lambda made, new: (
            f"Deployment {made['name']} {'created' if new else 'already exists'} ({made['status']})"
        ),
    )


@deployment_cmd.command("delete")
@click.argument("name")
@click.pass_obj
def deployment_delete(ctx: Ctx, name: str) -> None:
    """Delete a deployment; its units leave its machines."""
    _delete(ctx, "deployments", name, "Deployment")


@cli.command("deploy")
@click.argument("deployment")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the rollout.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to follow it.")
@click.pass_obj
def deploy_cmd(ctx: Ctx, deployment: str, wait: bool, timeout: float) -> None:
    """Cut a release of the deployment and roll it out (exit 1 if it fails)."""
    release = _call(
        ctx, lambda api: api.call("POST", f"{V2}/deployments/{quote(deployment, safe='')}/deploy")
    )
    if not wait:
        if ctx.json:
            _emit_json(release)
        else:
            click.echo(f"Release {release['id']} of {deployment} started")
        return
    _follow_rollout(ctx, deployment, timeout)


@cli.group("rollout")
def rollout_cmd() -> None:
    """Rollouts of deployments."""


@rollout_cmd.command("status")
@click.argument("deployment")
@click.option("--watch", "-w", is_flag=True, help="Follow until the rollout ends.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to follow it.")
@click.pass_obj
def rollout_status(ctx: Ctx, deployment: str, watch: bool, timeout: float) -> None:
    """The latest release of a deployment: batches, progress, each machine's job."""
    if watch:
        _follow_rollout(ctx, deployment, timeout)
        return
    release, jobs = _call(ctx, lambda api: _latest_release(api, deployment))
    if ctx.json:
        _emit_json({"release": release, "jobs": jobs})
        return
    _print_rollout(release, jobs, ctx.full)
    if release and release["status"] == "Failed":
        sys.exit(EXIT_API)


async def _latest_release(
    api: ApiClient, deployment: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    releases = await api.call("GET", f"{V2}/deployments/{quote(deployment, safe='')}/releases")
    if not releases:
        return None, []
    latest = releases[-1]
    return latest, await api.call("GET", f"{V2}/deployment-releases/{latest['id']}/jobs")


def _print_rollout(release: dict[str, Any] | None, jobs: list[dict[str, Any]], full: bool) -> None:
    if release is None:
        click.echo("No release yet (moorctl deploy DEPLOYMENT cuts one)")
        return
    p = release["progress"]
    click.echo(
        f"Release {release['id']} (#{release['sequence']},"
        f" version {release['applicationVersion']}):"
        f" {release['status']}, batch {release['batch']}/{release['batches']},"
        f" {p['succeeded']}/{p['total']} machines done"
        + (f", {p['failed']} failed" if p["failed"] else "")
    )
    if release["message"]:
        click.echo(f"  {release['message']}")
    _table(
        ["MACHINE", "BATCH", "STATUS", "DETAIL"],
        [
            [short_id(j["clusterId"], full), str(j["batch"]), j["status"], j["message"]]
            for j in jobs
        ],
    )


def _follow_rollout(ctx: Ctx, deployment: str, timeout: float) -> None:
    """A progress bar (machines done out of all) until the release ends; exit 1 if it
    failed, 4 on timeout."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    async def go(api: ApiClient) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        with contextlib.ExitStack() as stack:
            bar = None
            if not ctx.json and sys.stderr.isatty():
                bar = stack.enter_context(
                    Progress(
                        TextColumn("{task.description}"),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TextColumn("{task.fields[detail]}"),
                        console=Console(stderr=True),
                        transient=True,
                    )
                )
                task = bar.add_task(deployment, total=1, detail="")
            while True:
                release, jobs = await _latest_release(api, deployment)
                if bar is not None and release is not None:
                    p = release["progress"]
                    bar.update(
                        task,
                        total=max(1, p["total"]),
                        completed=p["succeeded"] + p["failed"],
                        description=f"{deployment} batch {release['batch']}/{release['batches']}",
                        detail=release["status"],
                    )
                if release is None or release["status"] != "Running":
                    return release, jobs
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rollout of {deployment} still running after {timeout:g} s")
                await asyncio.sleep(0.5)

    try:
        release, jobs = _call(ctx, go)
    except TimeoutError as exc:
        _fail(str(exc), EXIT_TIMEOUT)
    if ctx.json:
        _emit_json({"release": release, "jobs": jobs})
    else:
        _print_rollout(release, jobs, ctx.full)
    if release is None or release["status"] != "Success":
        sys.exit(EXIT_API)


@cli.command("releases")
@click.argument("deployment")
@click.pass_obj
def releases_cmd(ctx: Ctx, deployment: str) -> None:
    """Every release of a deployment, oldest first."""
    releases = _call(
        ctx, lambda api: api.call("GET", f"{V2}/deployments/{quote(deployment, safe='')}/releases")
    )
    if ctx.json:
        _emit_json(releases)
        return
    _table(
        ["#", "RELEASE", "VERSION", "STATUS", "MACHINES", "CREATED", "MESSAGE"],
        [
            [
                str(r["sequence"]),
                r["id"] if ctx.full else r["id"][:8],
                r["applicationVersion"],
                r["status"] + (" (rolled back)" if r["rolledBack"] else ""),
                f"{r['progress']['succeeded']}/{r['progress']['total']}",
                _when(r["createdAt"]),
                r["message"],
            ]
            for r in releases
        ],
    )


# --- drift and version stickers ------------------------------------------------------------


@cli.command("drift")
@click.argument("machine", required=False, default="")
@click.option("--refresh", is_flag=True, help="Ask the agent(s) for a fresh check first.")
@click.pass_obj
def drift_cmd(ctx: Ctx, machine: str, refresh: bool) -> None:
    """How machines differ from what they were told (exit 0 with or without drift)."""
    params = {k: v for k, v in (("machine", machine), ("refresh", "1" if refresh else "")) if v}
    path = "moorage/v1/drift" + (f"?{urlencode(params)}" if params else "")
    body = _call(ctx, lambda api: api.call("GET", path))
    if ctx.json:
        _emit_json(body)
        return
    for mid, why in sorted(body.get("unreachable", {}).items()):
        click.echo(f"moorctl: {short_id(mid, ctx.full)} not checked: {why}", err=True)
    reports = body["machines"]
    rows = [
        [
            short_id(d["machine_id"], ctx.full),
            e["unit"],
            e["kind"],
            e.get("deployment") or "-",
            _short_value(e.get("expected", "")),
            _short_value(e.get("actual", "")),
            "repairing" if e.get("repairing") else "report",
            e.get("message", ""),
        ]
        for d in reports
        for e in d["entries"]
    ]
    if rows:
        _table(
            ["MACHINE", "UNIT", "KIND", "DEPLOYMENT", "EXPECTED", "ACTUAL", "POLICY", "MESSAGE"],
            rows,
        )
        return
    if not reports:
        who = f"machine {machine} has not" if machine else "no machine has"
        click.echo(f"no drift reported: {who} reported a drift check yet")
        return
    checked = max(d["checked_at"] for d in reports)
    click.echo(f"no drift on {len(reports)} machine(s) (checked {_ago(checked)})")


def _short_value(value: str) -> str:
    """Hashes and digests are long: ``sha256:0123456789ab`` is enough to tell them apart."""
    algo, colon, rest = value.rpartition(":")
    digits = rest if colon else value
    if len(digits) >= 40 and all(c in "0123456789abcdef" for c in digits):
        return (f"{algo}:" if colon else "") + digits[:12]
    return value or "-"


@cli.command("stickers")
@click.argument("machine", required=False, default="")
@click.pass_obj
def stickers_cmd(ctx: Ctx, machine: str) -> None:
    """The version stickers machines report: which release of each deployment they run."""
    path = "moorage/v1/stickers" + (f"?machine={quote(machine, safe='')}" if machine else "")
    body = _call(ctx, lambda api: api.call("GET", path))
    if ctx.json:
        _emit_json(body["stickers"])
        return
    if not body["stickers"]:
        click.echo("no stickers: no machine reports a fully applied release")
        return
    _table(
        ["MACHINE", "DEPLOYMENT", "VERSION", "RELEASE", "UNITS", "IMAGES", "APPLIED"],
        [
            [
                short_id(row["machine_id"], ctx.full),
                s["deployment"],
                s["version"],
                s["release"] if ctx.full else s["release"][:8],
                ",".join(sorted(s["units"])),
                ",".join(
                    f"{n}={_short_value(d)}" for n, d in sorted(s.get("image_digests", {}).items())
                )
                or "-",
                _ago(s.get("applied_at", 0)),
            ]
            for row in body["stickers"]
            for s in [row["sticker"]]
        ],
    )


GLOBAL_FLAGS = frozenset({"--json", "--full"})
GLOBAL_VALUE_OPTIONS = frozenset(
    {"--endpoint", "--ca-file", "--cert-file", "--key-file", "--token", "--state-dir"}
)


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Move the global options to the front, wherever they were given: people write
    `moorctl list-units --json` as often as `moorctl --json list-units`. No subcommand
    has an option of these names; `--` ends the scan. Pure."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg in GLOBAL_FLAGS or (arg.split("=", 1)[0] in GLOBAL_VALUE_OPTIONS and "=" in arg):
            front.append(arg)
        elif arg in GLOBAL_VALUE_OPTIONS and i + 1 < len(argv):
            front += [arg, argv[i + 1]]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main() -> None:
    cli.main(args=hoist_global_options(sys.argv[1:]), prog_name="moorctl")


if __name__ == "__main__":
    main()


# `moorctl task ...` and `moorctl env ...` live in their own modules; importing them
# registers their groups on `cli`.
from moorctl import envs as _envs  # noqa: E402,F401
from moorctl import tasks as _tasks  # noqa: E402,F401
from moorctl import webops as _webops  # noqa: E402,F401
