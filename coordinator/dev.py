"""`moorage dev`: a coordinator on SQLite plus a local agent, in one command.

Everything lives in one state directory, so a second `moorage dev` resumes where the
first stopped: same CA, same machine, same units. The agent runs as a child process
in its own session (Ctrl-C reaches `moorage dev`, which stops the agent first, then
the coordinator). It is a real agent: stopping it leaves its units running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

import click
import msgspec

from coordinator import __version__, pki
from coordinator.api.native import create_api_token, create_join_token
from coordinator.client import ClientConfig, default_dev_dir, dev_client_file
from coordinator.config import DEFAULT_API_PORT, DEFAULT_HUB_PORT, CoordinatorConfig
from coordinator.server import Coordinator
from proto.process import run_main, setup_logging

log = logging.getLogger("moorage.dev")

AGENT_CONNECT_TIMEOUT_S = 30.0


class DevPaths:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator = root / "coordinator"
        self.agent = root / "agent"
        self.token_file = root / "admin.token"
        self.client_file = dev_client_file(root)


def default_scope() -> str:
    """The system manager only for root on a systemd host; otherwise the user's own."""
    if os.geteuid() == 0 and Path("/run/systemd/system").is_dir():
        return "system"
    return "user"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moorage")
def cli() -> None:
    """Moorage developer tools."""


@cli.command()
@click.option(
    "--state-dir",
    envvar="MOORAGE_STATE_DIR",
    type=click.Path(path_type=Path),
    help="Where everything is kept.",
)
@click.option(
    "--api-port", type=int, default=DEFAULT_API_PORT, show_default=True, help="0 picks a free port."
)
@click.option(
    "--hub-port", type=int, default=DEFAULT_HUB_PORT, show_default=True, help="0 picks a free port."
)
@click.option(
    "--systemd-scope",
    type=click.Choice(["system", "user"]),
    default=None,
    help="Which systemd manager the agent drives.",
)
@click.option("-v", "--verbose", is_flag=True)
def dev(
    state_dir: Path | None, api_port: int, hub_port: int, systemd_scope: str | None, verbose: bool
) -> None:
    """Run a coordinator on SQLite with a local agent enrolled automatically."""
    setup_logging(verbose)
    paths = DevPaths((state_dir or default_dev_dir()).resolve())
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = CoordinatorConfig(
        state_dir=str(paths.coordinator),
        api_listen=f"127.0.0.1:{api_port}",
        hub_listen=f"127.0.0.1:{hub_port}",
        lost_after_s=60.0,
    )
    try:
        run_main(_dev(paths, config, systemd_scope or default_scope(), verbose))
    except OSError as exc:
        raise click.ClickException(
            f"{exc} (is another 'moorage dev' running? try --api-port 0 --hub-port 0)"
        ) from None


async def _dev(paths: DevPaths, config: CoordinatorConfig, scope: str, verbose: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    coordinator = Coordinator(config)
    await coordinator.start()
    agent: asyncio.subprocess.Process | None = None
    try:
        _ensure_admin_token(coordinator, paths)
        endpoint = f"https://127.0.0.1:{coordinator.api_port}"
        hub_url = f"wss://127.0.0.1:{coordinator.hub_port}/agent/v1"
        _write_client(paths, coordinator, endpoint)
        machine_id = await _ensure_enrolled(coordinator, paths, endpoint, scope)
        agent = await _start_agent(paths, hub_url, scope, verbose)
        if not await _wait_connected(coordinator, machine_id, stop):
            click.echo(
                "warning: the local agent has not connected yet; see its log above", err=True
            )
        _print_banner(paths, coordinator, endpoint, machine_id, scope)
        await stop.wait()
        click.echo("stopping: agent first (its units keep running), then the coordinator", err=True)
    finally:
        if agent is not None:
            await _stop_agent(agent)
        await coordinator.stop()


def _ensure_admin_token(coordinator: Coordinator, paths: DevPaths) -> None:
    if paths.token_file.exists():
        return
    token, _ = create_api_token(coordinator.storage, "moorage-dev", None)
    pki.write_private(paths.token_file, token.encode() + b"\n")


def _write_client(paths: DevPaths, coordinator: Coordinator, endpoint: str) -> None:
    client = ClientConfig(
        endpoint=endpoint,
        ca_file=coordinator.paths.ca_cert,
        cert_file=coordinator.paths.admin_cert,
        key_file=coordinator.paths.admin_key,
    )
    pki.write_private(paths.client_file, msgspec.json.format(msgspec.json.encode(client)))


def _agent_cmd(paths: DevPaths, scope: str, verbose: bool) -> list[str]:
    cmd = [sys.executable, "-m", "agent", "--state-dir", str(paths.agent), "--systemd-scope", scope]
    return cmd + (["-v"] if verbose else [])


async def _ensure_enrolled(
    coordinator: Coordinator, paths: DevPaths, endpoint: str, scope: str
) -> str:
    from agent.config import AgentConfig, resolve_machine_id
    from agent.identity import Identity

    identity = Identity(paths.agent)
    if identity.enrolled():
        return identity.link().machine_id
    token = create_join_token(coordinator.storage, coordinator.ca_pin, 600.0, "moorage dev")
    proc = await asyncio.create_subprocess_exec(
        *_agent_cmd(paths, scope, False),
        "enroll",
        "--coordinator",
        endpoint,
        "--ca-file",
        coordinator.paths.ca_cert,
        env={**os.environ, "MOORAGE_JOIN_TOKEN": token},
    )
    if await proc.wait() != 0:
        raise click.ClickException("enrolling the local agent failed (see above)")
    return resolve_machine_id(AgentConfig(state_dir=str(paths.agent)))


async def _start_agent(
    paths: DevPaths, hub_url: str, scope: str, verbose: bool
) -> asyncio.subprocess.Process:
    cmd = _agent_cmd(paths, scope, verbose)
    cmd[3:3] = ["--hub-url", hub_url]
    return await asyncio.create_subprocess_exec(*cmd, start_new_session=True)


async def _wait_connected(coordinator: Coordinator, machine_id: str, stop: asyncio.Event) -> bool:
    deadline = asyncio.get_running_loop().time() + AGENT_CONNECT_TIMEOUT_S
    while machine_id not in coordinator.hub.sessions:
        if stop.is_set() or asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _stop_agent(agent: asyncio.subprocess.Process) -> None:
    if agent.returncode is None:
        agent.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(agent.wait(), 10)
        except TimeoutError:
            agent.kill()
            await agent.wait()


def _command_path(name: str) -> str:
    """`name` if it is on PATH, else its path beside this interpreter (a virtualenv)."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _print_banner(
    paths: DevPaths, coordinator: Coordinator, endpoint: str, machine_id: str, scope: str
) -> None:
    p = coordinator.paths
    q = shlex.quote
    state_flag = (
        "" if paths.root == default_dev_dir().resolve() else f" --state-dir {q(str(paths.root))}"
    )
    session = coordinator.hub.sessions.get(machine_id)
    caps = list(session.hello.capabilities) if session and session.hello else []
    runs = ", ".join(caps) if caps else "nothing yet: neither systemd nor Docker is reachable"
    moorctl = q(_command_path("moorctl")) + state_flag
    lines = [
        f"API: {endpoint}",
        f"machine: {machine_id} (local agent, systemd {scope} manager; runs: {runs})",
        f"state: {paths.root}",
        "",
        f"moorctl:  {moorctl} list-machines",
        f"curl:     curl --cacert {q(p.ca_cert)}"
        f' -H "Authorization: Bearer $(cat {q(str(paths.token_file))})"'
        f" {endpoint}/fleet/v1/machines",
        f"fleetctl: fleetctl --endpoint {endpoint} --ca-file {q(p.ca_cert)}"
        f" --cert-file {q(p.admin_cert)} --key-file {q(p.admin_key)} list-machines",
        f"gitops:   curl --cacert {q(p.ca_cert)}"
        f' -H "api-key: $(cat {q(str(paths.token_file))})"'
        f" {endpoint}/api/v2/clusters",
        f"deploy:   {moorctl} app push web web.yaml && {moorctl} deployment create web"
        f" && {moorctl} deploy web-default",
        "",
        "Ctrl-C stops both; run 'moorage dev' again to resume.",
    ]
    click.echo("\n".join(lines), nl=True)
    sys.stdout.flush()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
