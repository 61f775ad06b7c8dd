"""`moorage-coordinator`: initialise the PKI, serve the API and the agent hub."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from pathlib import Path

import click
import msgspec

from coordinator import __version__, memory
from coordinator.app import (
    describe_database,
    describe_database_url,
    move_database,
    open_store,
    schema_status,
)
from coordinator.config import ConfigError, CoordinatorConfig, load_config, with_password
from coordinator.events import EventBus
from coordinator.server import Coordinator, run_until_signalled, server_identity
from coordinator.store.ports import StorageError
from coordinator.trust import pki
from coordinator.trust.users import UserService, ensure_first_admin
from proto.process import run_main, setup_logging


def _config(config_path: Path | None, **overrides: object) -> CoordinatorConfig:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    changes = {k: v for k, v in overrides.items() if v not in (None, ())}
    for key in ("server_names", "server_ips"):
        if key in changes:
            changes[key] = [*getattr(config, key), *changes[key]]  # type: ignore[misc]
    return msgspec.structs.replace(config, **changes)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moorage-coordinator")
def cli() -> None:
    """Moorage coordinator: desired state, scheduling, APIs and the agent hub."""


@cli.command("move-database")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--state-dir", help="State directory (database, PKI).")
@click.option(
    "--to", "target", required=True, help="The new, empty database: postgresql://USER@HOST:PORT/DB."
)
@click.option(
    "--to-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A file holding the target user's password.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows moved per table as JSON.")
def move_database_command(
    config_path: Path | None,
    state_dir: str | None,
    target: str,
    to_password_file: Path | None,
    as_json: bool,
) -> None:
    """Copy every row of this coordinator's database into a new, empty one (SQLite to
    PostgreSQL when one coordinator is no longer enough). Stop the coordinator first;
    then set `database_url` (and `database_password_file`) to the new database."""
    config = _config(config_path, state_dir=state_dir)
    url = target
    if to_password_file is not None:
        url = with_password(target, to_password_file.read_text().strip())

    def shown(table: str, rows: int) -> None:
        if not as_json:
            click.echo(f"  {table:<24} {rows:>10,} rows", err=True)

    click.echo(f"moving {describe_database(config)} -> {describe_database_url(url)}", err=True)
    try:
        copied = move_database(config.database, url, shown)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(msgspec.json.encode(copied).decode())
    else:
        click.echo(f"moved {sum(copied.values()):,} rows in {len(copied)} tables")


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--state-dir", help="State directory (database, PKI).")
@click.option("--check", is_flag=True, help="Only say whether the schema is behind.")
def migrate(config_path: Path | None, state_dir: str | None, check: bool) -> None:
    """Bring the database's schema to this coordinator's version (every start does it too;
    this is for upgrading while coordinators are stopped, and for checking first).

    Exit status with --check: 0 up to date, 1 behind (migrations would run)."""
    config = _config(config_path, state_dir=state_dir)
    try:
        before, head = schema_status(config)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"database: {describe_database(config)}")
    click.echo(f"schema:   {before or '(empty)'}; this coordinator's: {head}")
    if before == head:
        click.echo("up to date")
        return
    if check:
        click.echo("behind: `moorage-coordinator migrate` would bring it up to date")
        sys.exit(1)
    try:
        open_store(config).close()
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"migrated to {head}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--state-dir", help="State directory (database, PKI).")
@click.option("--name", "names", multiple=True, help="Extra DNS name for the server certificate.")
@click.option("--ip", "ips", multiple=True, help="Extra IP address for the server certificate.")
@click.option(
    "--database-url",
    help="The coordinator's database: postgresql://USER@HOST:PORT/DB (default: SQLite in the"
    " state directory). Its password goes in `database_password_file`, never here.",
)
def init(
    config_path: Path | None,
    state_dir: str | None,
    names: tuple[str, ...],
    ips: tuple[str, ...],
    database_url: str | None,
) -> None:
    """Create the fleet CA, the server certificate and the admin client certificate, the
    database's schema, and the first user (`admin`, its generated password in a 0600
    file) if there is none.

    A second coordinator of the same fleet (PostgreSQL) runs `init` with the first one's
    `pki/ca.crt` and `pki/ca.key` already in its state directory: it then makes only its
    own server certificate, signed by the fleet's CA."""
    config = _config(
        config_path,
        state_dir=state_dir,
        server_names=names,
        server_ips=ips,
        database_url=database_url,
    )
    paths = pki.init_pki(config.pki_dir, *server_identity(config))
    info = pki.inspect_cert(Path(paths.ca_cert).read_bytes())
    click.echo(f"fleet CA:            {paths.ca_cert} (sha256 {info.fingerprint})")
    click.echo(f"server certificate:  {paths.server_cert}")
    click.echo(f"admin certificate:   {paths.admin_cert}")
    click.echo(f"admin key:           {paths.admin_key} (mode 0600)")
    Path(config.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    storage = open_store(config)
    try:
        users = UserService(storage, EventBus())
        password_file = asyncio.run(ensure_first_admin(users, Path(config.state_dir)))
    finally:
        storage.close()
    if password_file is not None:
        click.echo(f"admin user:          admin, password in {password_file} (mode 0600)")


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--state-dir", help="State directory (database, PKI).")
@click.option("--api-listen", help="HOST:PORT of the HTTPS API.")
@click.option("--hub-listen", help="HOST:PORT of the agent hub.")
@click.option("--hub-url", help="Hub URL advertised to enrolling agents.")
@click.option(
    "--database-url",
    help="The coordinator's database: postgresql://USER@HOST:PORT/DB (default: SQLite).",
)
@click.option(
    "--lost-after",
    "lost_after_s",
    type=float,
    help="Seconds before a disconnected machine is lost.",
)
@click.option("--heartbeat", "heartbeat_s", type=float, help="Agent heartbeat interval in seconds.")
@click.option(
    "--agent-cert-ttl",
    "agent_cert_ttl_s",
    type=float,
    help="Agent certificate lifetime in seconds.",
)
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=float,
    help="Seconds before a connection that sends no complete request is closed.",
)
@click.option(
    "--tls-handshake-timeout",
    "tls_handshake_timeout_s",
    type=float,
    help="Seconds a client has to finish its TLS handshake.",
)
@click.option(
    "--body-timeout",
    "body_timeout_s",
    type=float,
    help="Seconds a client has to send a request body.",
)
@click.option("-v", "--verbose", is_flag=True)
def serve(config_path: Path | None, verbose: bool, **overrides: object) -> None:
    """Run the coordinator until SIGINT or SIGTERM."""
    setup_logging(verbose)
    config = _config(config_path, **overrides)
    memory.fix_mmap_threshold()
    migrate_apart(config)
    coordinator = Coordinator(config)

    def ready() -> None:
        click.echo(f"API: https://{_display(config.api_listen)}:{coordinator.api_port}", err=True)
        click.echo(
            f"hub: wss://{_display(config.hub_listen)}:{coordinator.hub_port}/agent/v1", err=True
        )

    try:
        run_main(run_until_signalled(coordinator, ready))
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


def migrate_apart(config: CoordinatorConfig) -> None:
    """Bring a schema that is behind (a new database, an upgrade) to this coordinator's
    in a forked child before serving: Alembic, which only an upgrade imports, then never
    loads into the long-lived coordinator, which would keep it (~12 MiB on a new
    database, #22). Called before any thread or event loop exists. Whatever goes wrong
    is left to the coordinator's own opening, which migrates in process and says why."""
    Path(config.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)  # as it would
    try:
        before, head = schema_status(config)
    except StorageError:
        return
    if before == head:
        return
    pid = os.fork()
    if pid == 0:  # the child: migrate and leave without the parent's exit handlers
        code = 1
        try:
            open_store(config).close()
            code = 0
        except StorageError as exc:
            click.echo(f"migrating the database failed: {exc}", err=True)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def _display(listen: str) -> str:
    host = listen.rpartition(":")[0].strip("[]")
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
