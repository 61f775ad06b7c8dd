"""The agent process: identity, link, and (from the backends) the units it runs."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from agent import __version__, facts
from agent.config import AgentConfig
from agent.identity import Identity
from agent.link import Link
from proto import messages as m

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: AgentConfig, machine_id: str) -> None:
        self.config = config
        self.machine_id = machine_id
        self.identity = Identity(config.state_path)
        self.link = Link(
            self.identity,
            make_hello=self.hello,
            on_message=self.on_message,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            renew_fraction=config.renew_fraction,
            hub_url=config.hub_url,
        )

    async def hello(self, hub_url: str) -> m.Hello:
        return m.Hello(
            proto=m.PROTO_VERSION,
            machine_id=self.machine_id,
            hostname=facts.hostname(),
            primary_ip=facts.primary_ip(hub_url),
            metadata=dict(self.config.metadata),
            capabilities=facts.capabilities(
                self._bus_address(), os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            ),
            agent_version=__version__,
        )

    def _bus_address(self) -> str | None:
        if self.config.systemd_scope == "user":
            return os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")

    async def on_message(self, message: m.Message) -> None:
        log.debug("received %s", type(message).__name__)

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        link = asyncio.create_task(self.link.run())
        await stop.wait()
        log.info("stopping (units keep running)")
        link.cancel()
        try:
            await link
        except asyncio.CancelledError:
            pass
