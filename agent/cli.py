"""`moorage-agent`: enrol this machine, then run the agent."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
import msgspec

from agent import __version__
from agent.config import AgentConfig, ConfigError, load_config, parse_metadata, resolve_machine_id
from agent.daemon import Agent
from agent.identity import Identity
from coordinator.process import setup_logging


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moorage-agent")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--state-dir", help="State directory (identity, desired state).")
@click.option("--machine-id", help="Machine id (default: /etc/machine-id).")
@click.option("--metadata", "metadata", multiple=True, help="KEY=VALUE published to the scheduler.")
@click.option(
    "--systemd-scope", type=click.Choice(["system", "user"]), help="Which systemd manager to drive."
)
@click.option("--hub-url", help="Override the hub URL learnt at enrolment.")
@click.option("--unit-dir", help="Where unit files are written (default by scope).")
@click.option("--journal-dir", help="Read this journal directory instead of the machine's.")
@click.option("--docker-host", help="Docker endpoint (default: $DOCKER_HOST, as the docker CLI).")
@click.option("--metrics-listen", help="HOST:PORT for /metrics ('' disables).")
@click.option("--sticker-dir", help="Where version stickers are written.")
@click.option(
    "--drift-interval", "drift_interval_s", type=float, help="Unit file drift check period (s)."
)
@click.option("--backoff-max", "backoff_max_s", type=float, help="Longest reconnect delay (s).")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def cli(
    ctx: click.Context,
    /,
    config_path: Path | None,
    metadata: tuple[str, ...],
    verbose: bool,
    **overrides: object,
) -> None:
    """Moorage agent: runs this machine's units. With no command, runs the agent."""
    setup_logging(verbose)
    try:
        config = load_config(config_path)
        changes: dict[str, object] = {k: v for k, v in overrides.items() if v is not None}
        if metadata:
            changes["metadata"] = {**config.metadata, **parse_metadata(metadata)}
        config = msgspec.structs.replace(config, **changes)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.obj = config
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@cli.command()
@click.pass_obj
def run(config: AgentConfig) -> None:
    """Run the agent (the default)."""
    identity = Identity(config.state_path)
    if not identity.enrolled():
        raise click.ClickException(
            f"not enrolled: no identity in {config.state_dir}; run "
            "'moorage-agent enroll --coordinator URL --token TOKEN' first"
        )
    agent = Agent(config, resolve_machine_id(config))
    # The plain asyncio loop: one connection needs no uvloop, and it saves ~2 MiB of RSS.
    asyncio.run(agent.run())


@cli.command()
@click.option(
    "--coordinator",
    "coordinator_url",
    required=True,
    help="https://HOST:PORT of the coordinator API.",
)
@click.option(
    "--token",
    required=True,
    envvar="MOORAGE_JOIN_TOKEN",
    help="One-time join token (moorctl token create).",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, path_type=Path),
    help="Trust this CA instead of the token's pin.",
)
@click.pass_obj
def enroll(config: AgentConfig, coordinator_url: str, token: str, ca_file: Path | None) -> None:
    """Enrol this machine with a one-time join token."""
    from agent.enrol import EnrolError, enrol  # the crypto stack: only for enrolment

    identity = Identity(config.state_path)
    machine_id = resolve_machine_id(config)
    try:
        link = asyncio.run(
            enrol(
                coordinator_url=coordinator_url,
                token=token,
                machine_id=machine_id,
                identity=identity,
                ca_pem=ca_file.read_bytes() if ca_file else None,
            )
        )
    except EnrolError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"enrolled machine {link.machine_id}; hub {link.hub_url}")


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
