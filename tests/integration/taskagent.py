"""A simulated agent for batch tasks that speaks the real link (mutual TLS WebSocket,
the proto messages) and follows the task contract's docstrings (proto/messages.py,
"batch tasks (#19)"): it answers TaskStart with TaskUpdates (PENDING, RUNNING,
STOPPED) and TaskOutput chunks, answers a start for a run it holds with that run's
state, resends every run's state after each Welcome and unacknowledged output from the
last acknowledged offset, and forgets a run on TaskAck(final=True).

Instead of a container, a run's command is interpreted, one statement per line or `;`:
`echo TEXT`, `sleep SECONDS`, `seq N [SECONDS]` (N numbered lines, that far apart),
`exit CODE`. It runs in a thread of its own (its own event loop), so synchronous tests
can poll the API while it works.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import aiohttp

from agent.identity import Identity
from proto import messages as m
from tests.integration.linkclient import RawLink, enrolled_identity
from tests.procs import CoordinatorProc

CHUNK = 16 << 10


class SimRun:
    def __init__(self, start: m.TaskStart) -> None:
        self.start = start
        self.output = bytearray()
        self.acked = 0
        self.sent = 0
        self.state: m.TaskRunState = "PENDING"
        self.exit_code: int | None = None
        self.exit_reason = ""
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class SimTaskAgent:
    def __init__(
        self,
        coordinator: CoordinatorProc,
        root: Path,
        machine_id: str,
        *,
        memory_mb: int = 1024,
        cpu_millis: int = 2000,
        chunk_lines: int = 1,
    ) -> None:
        self.coordinator = coordinator
        self.root = root
        self.machine_id = machine_id
        self.resources = m.Resources(memory_mb, cpu_millis)
        self.chunk_lines = chunk_lines
        self.runs: dict[str, SimRun] = {}
        self.starts: list[str] = []
        """Run ids of every TaskStart received (resends included)."""
        self.finals: list[str] = []
        self.connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: RawLink | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._identity: Identity | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> SimTaskAgent:
        self._thread.start()
        if not self.connected.wait(30):
            raise AssertionError(f"simulated agent {self.machine_id} did not connect")
        return self

    def close(self) -> None:
        self._stopping = True
        loop = self._loop
        if loop is not None and self._link is not None:
            link = self._link
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(link.ws.close(), loop)
        self._thread.join(15)

    def _thread_main(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._identity = await enrolled_identity(self.coordinator, self.root, self.machine_id)
        while not self._stopping:
            try:
                link = await RawLink.open(self.coordinator, self._identity)
            except (OSError, aiohttp.ClientError):
                await asyncio.sleep(0.2)
                continue
            try:
                await self._session(link)
            except (OSError, aiohttp.ClientError, ConnectionError, AssertionError, TimeoutError):
                pass
            finally:
                self._link = None
                self.connected.clear()
                await link.close()
            await asyncio.sleep(0.2)
        for run in self.runs.values():
            if run.task is not None:
                run.task.cancel()

    async def _session(self, link: RawLink) -> None:
        await link.send(
            m.Hello(
                proto=m.PROTO_VERSION,
                machine_id=self.machine_id,
                hostname=f"{self.machine_id}.sim",
                capabilities=["docker"],
                resources=self.resources,
            )
        )
        welcome = await link.recv(timeout=10)
        assert isinstance(welcome, m.Welcome), welcome
        self._link = link
        # After each Welcome: every held run's state, and its unacknowledged output.
        for run in list(self.runs.values()):
            run.sent = run.acked
            await self._flush(run)
            await self._update(run, "")
        self.connected.set()
        beat = asyncio.create_task(self._heartbeats(link, welcome.heartbeat_s))
        try:
            while not self._stopping:
                msg = await link.ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return
                await self._on(m.decode(msg.data))
        finally:
            beat.cancel()

    async def _heartbeats(self, link: RawLink, every: float) -> None:
        seq = 0
        while True:
            await asyncio.sleep(min(every, 1.0) / 2)
            seq += 1
            with contextlib.suppress(ConnectionError, RuntimeError):
                await link.send(m.Heartbeat(seq, time.time()))

    # --- the contract ----------------------------------------------------------------------

    async def _on(self, message: m.Message) -> None:
        if isinstance(message, m.TaskStart):
            self.starts.append(message.run_id)
            held = self.runs.get(message.run_id)
            if held is not None:  # a retried start: answer with the run's state
                await self._update(held, "")
                return
            run = SimRun(message)
            self.runs[message.run_id] = run
            run.task = asyncio.create_task(self._execute(run))
        elif isinstance(message, m.TaskStop):
            held = self.runs.get(message.run_id)
            if held is not None:
                held.stop.set()
        elif isinstance(message, m.TaskAck):
            held = self.runs.get(message.run_id)
            if held is None:
                return
            held.acked = max(held.acked, message.offset)
            if message.final:
                self.finals.append(message.run_id)
                del self.runs[message.run_id]

    async def _send(self, message: m.Message) -> None:
        link = self._link
        if link is None:
            return  # disconnected: resent after the next Welcome
        with contextlib.suppress(ConnectionError, RuntimeError):
            await link.send(message)

    async def _update(self, run: SimRun, event: str) -> None:
        await self._send(
            m.TaskUpdate(
                run_id=run.start.run_id,
                state=run.state,
                event=event,
                exit_code=run.exit_code,
                exit_reason=run.exit_reason,
                container_id=f"sim-{run.start.run_id[:8]}",
                at=time.time(),
                log_bytes=len(run.output),
            )
        )

    async def _flush(self, run: SimRun) -> None:
        while self._link is not None and run.sent < len(run.output):
            data = bytes(run.output[run.sent : run.sent + CHUNK])
            await self._send(m.TaskOutput(run.start.run_id, run.sent, data))
            run.sent += len(data)

    async def _write(self, run: SimRun, text: str) -> None:
        run.output += text.encode()
        await self._flush(run)

    async def _execute(self, run: SimRun) -> None:
        await self._update(run, "image pulled")
        await self._update(run, "container created")
        run.state = "RUNNING"
        await self._update(run, "container started")
        code = 0
        statements = [s.strip() for line in run.start.command.splitlines() for s in line.split(";")]
        for statement in statements:
            if run.stop.is_set():
                break
            word, _, rest = statement.partition(" ")
            if word == "echo":
                await self._write(run, rest + "\n")
            elif word == "sleep":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.stop.wait(), float(rest))
            elif word == "seq":
                count, _, gap = rest.partition(" ")
                batch: list[str] = []
                for i in range(1, int(count) + 1):
                    batch.append(f"line {i}\n")
                    if len(batch) >= self.chunk_lines:
                        await self._write(run, "".join(batch))
                        batch = []
                    if gap:
                        await asyncio.sleep(float(gap))
                    if run.stop.is_set():
                        break
                if batch:
                    await self._write(run, "".join(batch))
            elif word == "exit":
                code = int(rest)
                break
        if run.stop.is_set():
            code, run.exit_reason = 143, "stopped (SIGTERM)"
        run.exit_code = code
        run.state = "STOPPED"
        await self._update(run, "container exited")
