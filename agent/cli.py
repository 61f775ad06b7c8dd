"""`moorage-agent`: enrol this machine, then run the agent.

argparse rather than click (which moorctl and the coordinator use): the agent's
footprint target counts every module it loads, and click costs ~1 MiB of RSS that
argparse, half of it, does not (bench/README.md, figure 4).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import msgspec

from agent import __version__
from agent.config import AgentConfig, ConfigError, load_config, parse_metadata, resolve_machine_id
from agent.daemon import Agent
from agent.identity import Identity, LinkStatus
from agent.statelock import StateDirBusy, lock_holder, lock_state_dir
from proto.process import setup_logging

OVERRIDES = (
    "state_dir",
    "machine_id",
    "systemd_scope",
    "bus_address",
    "unit_dir",
    "journal_dir",
    "docker_host",
    "task_network",
    "task_memory_mb",
    "webops_proxy_listen",
    "webops_nginx",
    "metrics_listen",
    "sticker_dir",
    "drift_interval_s",
    "backoff_max_s",
)
"""Options that override the same key of the TOML configuration."""


class CliError(Exception):
    """Printed as `moorage-agent: error: ...`, exit status 1."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moorage-agent",
        description="Moorage agent: runs this machine's units. With no command, runs the agent.",
    )
    p.add_argument("--version", action="version", version=f"moorage-agent, version {__version__}")
    p.add_argument("--config", dest="config_path", type=Path, help="TOML config file.")
    p.add_argument("--state-dir", help="State directory (identity, desired state).")
    p.add_argument("--machine-id", help="Machine id (default: /etc/machine-id).")
    p.add_argument(
        "--metadata", action="append", default=[], help="KEY=VALUE published to the scheduler."
    )
    p.add_argument(
        "--systemd-scope", choices=("system", "user"), help="Which systemd manager to drive."
    )
    p.add_argument(
        "--hub-url",
        dest="hub_urls",
        action="append",
        help="A coordinator's hub URL, overriding those learnt at enrolment; repeat it for "
        "several coordinators (tried in order, failing over).",
    )
    p.add_argument("--bus-address", help="D-Bus address of the systemd manager (default by scope).")
    p.add_argument("--unit-dir", help="Where unit files are written (default by scope).")
    p.add_argument("--journal-dir", help="Read this journal directory instead of the machine's.")
    p.add_argument("--docker-host", help="Docker endpoint (default: $DOCKER_HOST, as the CLI).")
    p.add_argument(
        "--task-network", help="Docker network of task runs (default: Docker's; 'none': none)."
    )
    p.add_argument(
        "--task-memory-mb",
        type=int,
        help="Memory (MiB) offered to task runs (default: all of MemTotal).",
    )
    p.add_argument("--webops-proxy-listen", help="nginx listen of WebOps domains (default 80).")
    p.add_argument("--webops-nginx", help="nginx binary for WebOps (default: nginx).")
    p.add_argument("--metrics-listen", help="HOST:PORT for /metrics ('' disables).")
    p.add_argument("--sticker-dir", help="Where version stickers are written.")
    p.add_argument(
        "--drift-interval", dest="drift_interval_s", type=float, help="Drift check period (s)."
    )
    p.add_argument(
        "--backoff-max", dest="backoff_max_s", type=float, help="Longest reconnect delay (s)."
    )
    p.add_argument("-v", "--verbose", action="store_true")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="Run the agent (the default).")
    enroll = commands.add_parser("enroll", help="Enrol this machine with a one-time join token.")
    enroll.add_argument(
        "--coordinator",
        dest="coordinator_url",
        required=True,
        help="https://HOST:PORT of the coordinator API.",
    )
    token = os.environ.get("MOORAGE_JOIN_TOKEN")
    enroll.add_argument(
        "--token",
        default=token,
        required=not token,
        help="One-time join token (moorctl token create; or MOORAGE_JOIN_TOKEN).",
    )
    enroll.add_argument("--ca-file", type=Path, help="Trust this CA instead of the token's pin.")
    commands.add_parser(
        "identity", help="Print this machine's id and enrolment as JSON (for scripts)."
    )
    commands.add_parser(
        "status", help="Show the coordinators' hubs and which one the running agent is on."
    )
    return p


def configure(args: argparse.Namespace) -> AgentConfig:
    """The TOML configuration with the command line's overrides."""
    try:
        config = load_config(args.config_path)
        changes: dict[str, object] = {
            key: getattr(args, key) for key in OVERRIDES if getattr(args, key) is not None
        }
        if args.hub_urls:  # the command line's list replaces the file's, both forms
            changes["hub_urls"] = list(args.hub_urls)
            changes["hub_url"] = ""
        if args.metadata:
            changes["metadata"] = {**config.metadata, **parse_metadata(tuple(args.metadata))}
        return msgspec.structs.replace(config, **changes)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def run(config: AgentConfig) -> None:
    identity = Identity(config.state_path)
    if not identity.enrolled():
        raise CliError(
            f"not enrolled: no identity in {config.state_dir}; run "
            "'moorage-agent enroll --coordinator URL --token TOKEN' first"
        )
    try:
        lock_state_dir(config.state_path)  # held until the process exits
    except StateDirBusy as exc:
        raise CliError(str(exc)) from None
    agent = Agent(config, resolve_machine_id(config))
    # The plain asyncio loop: one connection needs no uvloop, and it saves ~2 MiB of RSS.
    asyncio.run(agent.run())


def enroll(config: AgentConfig, coordinator_url: str, token: str, ca_file: Path | None) -> None:
    from agent.enrol import EnrolError, enrol  # the crypto stack: only for enrolment

    if ca_file is not None and not ca_file.is_file():
        raise CliError(f"--ca-file {ca_file}: no such file")
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
        raise CliError(str(exc)) from None
    print(f"enrolled machine {link.machine_id}; hubs {', '.join(link.urls())}")


def identity(config: AgentConfig) -> None:
    """What scripts (and `moorage dev`, which drives the agent only as a process) need
    to know: the machine id, whether it is enrolled, and where its hub is."""
    ident = Identity(config.state_path)
    enrolled = ident.enrolled()
    link = ident.link() if enrolled else None
    out = {
        "machine_id": link.machine_id if link else resolve_machine_id(config),
        "enrolled": enrolled,
        "hub_url": link.hub_url if link else "",
        "hub_urls": link.urls() if link else [],
        "state_dir": config.state_dir,
    }
    print(msgspec.json.encode(out).decode())


def status(config: AgentConfig) -> None:
    """Which hubs the agent tries, in order, and which one it is connected to: what the
    running agent last wrote (it knows its session), else the configuration's view."""
    ident = Identity(config.state_path)
    if not ident.enrolled():
        raise CliError(f"not enrolled: no identity in {config.state_dir}")
    pid = lock_holder(config.state_path)
    recorded = ident.status() if pid is not None else None
    hubs = config.configured_hub_urls() or ident.link().urls()
    print(
        "\n".join(
            status_lines(
                ident.link().machine_id,
                pid,
                recorded if recorded is not None else LinkStatus(hubs),
                time.time(),
            )
        )
    )


def status_lines(machine_id: str, pid: int | None, link: LinkStatus, now: float) -> list[str]:
    """`moorage-agent status` as text: one line per hub, `*` on the connected one. Pure."""
    if pid is None:
        running = "not running"
    elif link.connected:
        running = f"running (pid {pid}), connected for {now - link.since:.0f} s"
    elif link.since:
        running = f"running (pid {pid}), disconnected for {now - link.since:.0f} s"
    else:
        running = f"running (pid {pid}), not connected yet"
    lines = [f"machine {machine_id}: agent {running}", "hubs:"]
    for url in link.hub_urls:
        lines.append(f"  {'*' if url == link.connected else ' '} {url}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = configure(args)
        if args.command == "enroll":
            enroll(config, args.coordinator_url, args.token, args.ca_file)
        elif args.command == "identity":
            identity(config)
        elif args.command == "status":
            status(config)
        else:
            run(config)
    except CliError as exc:
        print(f"moorage-agent: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
