"""`moorage dev`: a coordinator on SQLite plus a local agent, in one command.

Everything lives in one state directory, so a second `moorage dev` resumes where the
first stopped: same CA, same machine, same units. The agent runs as a child process
in its own session (Ctrl-C reaches `moorage dev`, which stops the agent first, then
the coordinator). It is a real agent: stopping it leaves its units running.

Where the machine has no systemd manager or no Docker Engine that answers (a container,
a CI VM), a keeper process (`coordinator.devhost`) starts private ones and the agent
drives them; they stop with `moorage dev`, and the next run restores the units from
the agent's persisted desired state (the private manager's unit directory is kept in
the state directory). Every child gets PR_SET_PDEATHSIG, so a `moorage dev` killed
even with SIGKILL leaves no agent, manager or engine behind; and the state directory
is locked, so two of them never share it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from coordinator import __version__
from coordinator.config import (
    DEFAULT_API_PORT,
    DEFAULT_HUB_PORT,
    GENEROUS_RATE_LIMITS,
    CoordinatorConfig,
)
from coordinator.devhost import RuntimePlan, Started, die_with_parent, host_facts, plan_runtimes
from coordinator.server import Coordinator
from coordinator.trust import pki
from coordinator.trust.users import ADMIN_PASSWORD_FILE, ensure_first_admin
from proto.clientconfig import ClientConfig, default_dev_dir, dev_client_file
from proto.process import run_main, setup_logging

log = logging.getLogger("moorage.dev")

AGENT_CONNECT_TIMEOUT_S = 30.0
KEEPER_START_TIMEOUT_S = 90.0
KEEPER_STOP_TIMEOUT_S = 60.0


class DevPaths:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator = root / "coordinator"
        self.agent = root / "agent"
        self.runtimes = root / "runtimes"
        """The keeper's: the private manager's home (unit files) and Docker data root."""
        self.token_file = root / "admin.token"
        self.client_file = dev_client_file(root)
        self.lock = root / "dev.lock"


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
    help="Which systemd manager the agent drives (default: the system manager for root on"
    " a systemd host, else the user's; a private one where that does not answer).",
)
@click.option(
    "--private/--no-private",
    default=True,
    show_default=True,
    help="Start a private systemd manager and dockerd where the host has none running.",
)
@click.option("-v", "--verbose", is_flag=True)
def dev(
    state_dir: Path | None,
    api_port: int,
    hub_port: int,
    systemd_scope: str | None,
    private: bool,
    verbose: bool,
) -> None:
    """Run a coordinator on SQLite with a local agent enrolled automatically."""
    setup_logging(verbose)
    paths = DevPaths((state_dir or default_dev_dir()).resolve())
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _lock(paths)
    plan = plan_runtimes(host_facts(), systemd_scope, private)
    config = CoordinatorConfig(
        state_dir=str(paths.coordinator),
        api_listen=f"127.0.0.1:{api_port}",
        hub_listen=f"127.0.0.1:{hub_port}",
        lost_after_s=60.0,
        rate_limits=GENEROUS_RATE_LIMITS,
    )
    try:
        run_main(_dev(paths, config, plan, verbose))
    except OSError as exc:
        raise click.ClickException(
            f"{exc} (is another 'moorage dev' running? try --api-port 0 --hub-port 0)"
        ) from None


def _lock(paths: DevPaths) -> None:
    """One `moorage dev` per state directory (the lock lasts as long as the process)."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise click.ClickException(
            f"another 'moorage dev' (pid {holder}) is running on {paths.root}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


class AgentRuntime(msgspec.Struct, frozen=True):
    """How the local agent reaches its systemd manager and Docker Engine."""

    scope: str
    flags: list[str]
    systemd: str
    """What drives systemd units, for the banner."""
    docker: str
    notes: list[str]


def agent_runtime(plan: RuntimePlan, started: Started | None) -> AgentRuntime:
    """The agent's flags for the plan and what the keeper started, and what the banner
    says about them."""
    flags = ["--systemd-scope", plan.scope]
    notes = list(plan.notes)
    systemd = "the systemd system manager" if plan.scope == "system" else "your systemd --user"
    docker = f"dockerd at {plan.docker_host}" if plan.docker_host else ""
    if started is not None:
        notes += started.errors
        if started.systemd_flags:
            flags = list(started.systemd_flags)
            systemd = "private systemd --user manager"
        if started.docker_host:
            flags += ["--docker-host", started.docker_host]
            docker = "private dockerd"
    return AgentRuntime(plan.scope, flags, systemd, docker, notes)


def runs_line(capabilities: list[str], runtime: AgentRuntime) -> str:
    """What the local agent can run, and with what, for the banner."""
    parts = []
    if "systemd" in capabilities:
        parts.append(f"systemd units ({runtime.systemd})")
    if "docker" in capabilities:
        parts.append(f"containers ({runtime.docker or 'dockerd'})")
    return ", ".join(parts) if parts else "nothing: neither systemd nor Docker is reachable"


def resume_command(wrapper: str, argv: list[str]) -> str:
    """The command line the user ran, for the banner's resume hint: `./run dev ...`
    when ./run started us (it sets MOORAGE_DEV_COMMAND), else `moorage dev ...`."""
    return " ".join([wrapper or "moorage", *map(shlex.quote, argv[1:])])


async def _dev(
    paths: DevPaths, config: CoordinatorConfig, plan: RuntimePlan, verbose: bool
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    coordinator = Coordinator(config)
    await coordinator.start()
    agent: asyncio.subprocess.Process | None = None
    keeper: asyncio.subprocess.Process | None = None
    try:
        _ensure_admin_token(coordinator, paths)
        await ensure_first_admin(coordinator.users, paths.root)
        endpoint = f"https://127.0.0.1:{coordinator.api_port}"
        hub_url = f"wss://127.0.0.1:{coordinator.hub_port}/agent/v1"
        _write_client(paths, coordinator, endpoint)
        started: Started | None = None
        if plan.private_systemd or plan.private_docker:
            keeper, started = await _start_keeper(paths, plan, verbose)
        runtime = agent_runtime(plan, started)
        machine_id = await _ensure_enrolled(coordinator, paths, endpoint, plan.scope)
        agent = await _start_agent(paths, hub_url, runtime, verbose)
        if not await _wait_connected(coordinator, machine_id, stop, agent):
            if agent.returncode is not None:
                raise click.ClickException(
                    f"the local agent exited with status {agent.returncode} (see above)"
                )
            click.echo(
                "warning: the local agent has not connected yet; see its log above", err=True
            )
        _print_banner(paths, coordinator, endpoint, machine_id, runtime)
        agent_exit = asyncio.create_task(agent.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({agent_exit, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if agent_exit.done():
            raise click.ClickException(
                f"the local agent exited with status {agent.returncode} (see above)"
            )
        agent_exit.cancel()
        private = " then the private systemd/dockerd (and their units)," if keeper else ""
        click.echo(f"stopping: the agent first,{private} then the coordinator", err=True)
    finally:
        if agent is not None:
            await _stop_agent(agent)
        if keeper is not None:
            await _stop_keeper(keeper)
        await coordinator.stop()


async def _start_keeper(
    paths: DevPaths, plan: RuntimePlan, verbose: bool
) -> tuple[asyncio.subprocess.Process, Started]:
    """Start the private runtimes in their keeper; its stdin is our watchdog pipe."""
    cmd = [sys.executable, "-m", "coordinator.devhost", "--state-dir", str(paths.runtimes)]
    cmd += ["--systemd"] if plan.private_systemd else []
    cmd += ["--docker"] if plan.private_docker else []
    cmd += ["-v"] if verbose else []
    keeper = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches us alone: we stop it after the agent
        preexec_fn=die_with_parent(),
    )
    assert keeper.stdout is not None
    try:
        async with asyncio.timeout(KEEPER_START_TIMEOUT_S):
            line = await keeper.stdout.readline()
        return keeper, msgspec.json.decode(line, type=Started)
    except (TimeoutError, msgspec.DecodeError, msgspec.ValidationError):
        await _stop_keeper(keeper)
        return keeper, Started(errors=["the private systemd/dockerd did not start (see above)"])


async def _stop_keeper(keeper: asyncio.subprocess.Process) -> None:
    """Closing its stdin tells the keeper to tear down (units stop with their manager)."""
    if keeper.stdin is not None and not keeper.stdin.is_closing():
        keeper.stdin.close()
    try:
        async with asyncio.timeout(KEEPER_STOP_TIMEOUT_S):
            await keeper.wait()
    except TimeoutError:
        keeper.kill()
        await keeper.wait()


def _ensure_admin_token(coordinator: Coordinator, paths: DevPaths) -> None:
    if paths.token_file.exists():
        return
    token, _ = coordinator.tokens.create_api_token("moorage-dev", None)
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


async def _agent_identity(paths: DevPaths, scope: str) -> dict[str, Any]:
    """`moorage-agent identity`: the agent is driven as a process, never imported."""
    proc = await asyncio.create_subprocess_exec(
        *_agent_cmd(paths, scope, False), "identity", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise click.ClickException("reading the local agent's identity failed (see above)")
    answer: dict[str, Any] = msgspec.json.decode(out)
    return answer


async def _ensure_enrolled(
    coordinator: Coordinator, paths: DevPaths, endpoint: str, scope: str
) -> str:
    known = await _agent_identity(paths, scope)
    if known["enrolled"]:
        return str(known["machine_id"])
    token = coordinator.tokens.create_join_token(600.0, "moorage dev")
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
    return str((await _agent_identity(paths, scope))["machine_id"])


async def _start_agent(
    paths: DevPaths, hub_url: str, runtime: AgentRuntime, verbose: bool
) -> asyncio.subprocess.Process:
    cmd = [*_agent_cmd(paths, runtime.scope, verbose), "--hub-url", hub_url, *runtime.flags]
    return await asyncio.create_subprocess_exec(
        *cmd,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # it dies with us, however we die
    )


async def _wait_connected(
    coordinator: Coordinator,
    machine_id: str,
    stop: asyncio.Event,
    agent: asyncio.subprocess.Process,
) -> bool:
    deadline = asyncio.get_running_loop().time() + AGENT_CONNECT_TIMEOUT_S
    while machine_id not in coordinator.hub.sessions:
        if stop.is_set() or agent.returncode is not None:
            return False
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _stop_agent(agent: asyncio.subprocess.Process) -> None:
    if agent.returncode is None:
        agent.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await agent.wait()
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
    paths: DevPaths,
    coordinator: Coordinator,
    endpoint: str,
    machine_id: str,
    runtime: AgentRuntime,
) -> None:
    p = coordinator.paths
    q = shlex.quote
    state_flag = (
        "" if paths.root == default_dev_dir().resolve() else f" --state-dir {q(str(paths.root))}"
    )
    session = coordinator.hub.sessions.get(machine_id)
    caps = list(session.hello.capabilities) if session and session.hello else []
    moorctl = q(_command_path("moorctl")) + state_flag
    lines = [
        f"API: {endpoint}",
        f"machine: {machine_id} (local agent; runs: {runs_line(caps, runtime)})",
        *(f"note: {note}" for note in runtime.notes),
        f"state: {paths.root}",
        f"user: admin, password in {paths.root / ADMIN_PASSWORD_FILE}"
        f" (log in: POST {endpoint}/api/v1/auth/token/)",
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
        "Ctrl-C stops it all (the agent first); run"
        f" '{resume_command(os.environ.get('MOORAGE_DEV_COMMAND', ''), sys.argv)}'"
        " again to resume.",
    ]
    click.echo("\n".join(lines), nl=True)
    sys.stdout.flush()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
