"""A process that runs the agent's real `TaskRunner` over a real dockerd, with its link
replaced by pipes, so a test can stand in for the coordinator and ``kill -9`` it.

    python -m tests.integration.taskdriver STATE_DIR DOCKER_HOST

stdin, one command a line: ``welcome`` (a new session: the runner's after-Welcome
pass), ``down`` (the link is lost: sends fail until the next ``welcome``), or
``msg <base64 MessagePack>`` (a message from the coordinator). stdout: ``ready`` once
adopted, then ``msg <base64>`` for every message the runner sent while "connected".
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
import threading
from pathlib import Path

from agent.backends.docker import DockerBackend
from agent.tasks import TaskRunner
from proto import messages as m


async def main(state_dir: Path, docker_host: str) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    connected = False

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, None)

    async def send(message: m.Message) -> bool:
        if not connected:
            return False
        sys.stdout.write("msg " + base64.b64encode(m.encode(message)).decode() + "\n")
        sys.stdout.flush()
        return True

    docker = DockerBackend(docker_host=docker_host)
    await docker.connect()
    runner = TaskRunner(docker, state_dir, send, network="none")
    await runner.open()
    print("ready", flush=True)
    threading.Thread(target=reader, daemon=True).start()
    while (line := await lines.get()) is not None:
        if line == "welcome":
            connected = True
            await runner.open()
            await runner.on_welcome()
        elif line == "down":
            connected = False
        elif line.startswith("msg "):
            await runner.on_message(m.decode(base64.b64decode(line[4:])))
    await runner.close()
    await docker.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
