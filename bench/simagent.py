"""Simulated agents: the real protocol over real mutual-TLS WebSockets, many per process.

Each simulated agent has its own key and certificate from a real enrolment, says
Hello, heartbeats at the interval the hub asks for, acknowledges every `Desired` with
`Applied` and reports its units `active` like a real agent would (without running
anything). Used only by the benchmarks and the scale tests.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import msgspec

from agent.backoff import next_dial
from coordinator.trust import pki
from moorctl.client import ApiClient
from proto import messages as m
from proto.clientconfig import ClientConfig
from proto.enrolment import ENROLL_PATH, EnrollRequest, EnrollResponse


class SimIdentity(msgspec.Struct, frozen=True):
    machine_id: str
    pem_file: str
    """Key and certificate in one file, as the real agent keeps them."""


async def enrol_many(
    admin: ClientConfig,
    machine_ids: Sequence[str],
    directory: Path,
    *,
    concurrency: int = 16,
) -> list[SimIdentity]:
    """Enrol every id through the real API (join token + CSR), keeping the PEMs on disk."""
    os.makedirs(directory, exist_ok=True)
    tokens: list[str] = []
    async with ApiClient(admin, timeout_s=300) as api:
        while len(tokens) < len(machine_ids):
            want = min(10_000, len(machine_ids) - len(tokens))
            body = await api.call(
                "POST", "moorage/v1/join-tokens", {"count": want, "description": "bench"}
            )
            tokens += [body["token"], *body.get("more", [])]
    ca = ssl.create_default_context(cafile=admin.ca_file)
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ca)

    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(machine_id: str, token: str) -> SimIdentity:
            async with sem:
                key = pki.generate_key()
                req = EnrollRequest(token, machine_id, pki.make_csr(key, machine_id).decode())
                async with http.post(
                    admin.endpoint + ENROLL_PATH,
                    data=msgspec.json.encode(req),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(
                            f"enrolment of {machine_id} failed: {resp.status} {raw!r}"
                        )
                got = msgspec.json.decode(raw, type=EnrollResponse)
                path = directory / f"{machine_id}.pem"
                pki.write_private(path, pki.key_pem(key) + got.cert_pem.encode())
                return SimIdentity(machine_id, str(path))

        return list(
            await asyncio.gather(*(one(i, t) for i, t in zip(machine_ids, tokens, strict=False)))
        )


class Stats:
    """Counters one worker process reports to the benchmark."""

    def __init__(self) -> None:
        self.connected = 0
        self.sessions = 0
        self.heartbeats = 0
        self.desired = 0
        self.applied_units = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        """Failed sessions by what failed them (exception class)."""
        self.last_applied_at = 0.0
        self.by_hub: dict[int, int] = {}
        """Sessions open now, by index in the hub list (several coordinators, #23)."""
        self.tasks_started = 0
        """TaskStarts received (batch tasks, #19)."""
        self.tasks_final = 0
        """Runs whose whole log the coordinator acknowledged (TaskAck final)."""
        self.task_lines = 0


class SimAgent:
    def __init__(
        self,
        identity: SimIdentity,
        hub_urls: str | Sequence[str],
        ca_file: str,
        stats: Stats,
        metadata: dict[str, str] | None = None,
        *,
        first_hub: int = 0,
        backoff: tuple[float, float] = (0.25, 5.0),
        hello_units: int = 0,
    ) -> None:
        """`hub_urls`: every coordinator's hub, dialled from `first_hub` on and failed
        over as the real agent does; `backoff`: its initial and longest delay (s);
        `hello_units`: units it reports running in its Hello while the coordinator has
        given it none (as an agent that ran them before the coordinator restarted)."""
        self.identity = identity
        self.hub_urls = [hub_urls] if isinstance(hub_urls, str) else list(hub_urls)
        self.hub = first_hub % len(self.hub_urls)
        self.backoff = backoff
        self.stats = stats
        self.metadata = metadata or {}
        self.revision = 0
        self.units: dict[str, m.DesiredUnit] = {}
        self.held = [
            m.UnitStatus(
                name=f"held-{i:04d}.service",
                hash=f"{i:040x}",
                load_state="loaded",
                active_state="active",
                sub_state="running",
                main_pid=1000 + i,
                target_state="launched",
            )
            for i in range(hello_units)
        ]
        self.connected = False
        self.spread = 0.0
        self.welcomed = False
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.load_cert_chain(identity.pem_file)
        self.ssl = ctx

    async def run(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """Reconnect as the real agent does (agent/backoff.py `next_dial`): a session that
        got a Welcome resets the count and its hub is tried again first, the first retry
        spread over the window the coordinator sent, so the bench sees the fleet's real
        reconnect wave; each failure moves on to the next hub of the list."""
        failures = 0
        initial, maximum = self.backoff
        while not stop.is_set():
            self.spread = 0.0
            self.welcomed = False
            try:
                await self._session(http, stop)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.stats.errors += 1
                kind = type(exc).__name__
                self.stats.error_kinds[kind] = self.stats.error_kinds.get(kind, 0) + 1
            if stop.is_set():
                return
            dial = next_dial(
                self.hub,
                failures,
                hubs=len(self.hub_urls),
                welcomed=self.welcomed,
                refused=False,
                initial=initial,
                maximum=maximum,
                spread=self.spread,
                rand=random.random(),
            )
            self.hub, failures = dial.hub, dial.failures
            try:
                await asyncio.wait_for(stop.wait(), dial.delay)
            except TimeoutError:
                pass

    async def _session(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        hub = self.hub
        async with http.ws_connect(
            self.hub_urls[hub], ssl=self.ssl, max_msg_size=m.HARD_FRAME_LIMIT, autoping=True
        ) as ws:
            await ws.send_bytes(m.encode(self._hello()))
            first = await ws.receive(timeout=60)
            welcome = m.decode(first.data) if first.type == aiohttp.WSMsgType.BINARY else None
            if not isinstance(welcome, m.Welcome):
                raise aiohttp.ClientError(f"no Welcome: {first.type} {first.data!r}")
            self.spread = welcome.reconnect_spread_s
            self.welcomed = True
            self.connected = True
            self.stats.connected += 1
            self.stats.sessions += 1
            self.stats.by_hub[hub] = self.stats.by_hub.get(hub, 0) + 1
            beat = asyncio.create_task(self._beat(ws, welcome.heartbeat_s))
            closer = asyncio.create_task(self._close_on(stop, ws))
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        await self._on(ws, m.decode(msg.data))
            finally:
                beat.cancel()
                closer.cancel()
                self.connected = False
                self.stats.connected -= 1
                self.stats.by_hub[hub] -= 1

    @staticmethod
    async def _close_on(stop: asyncio.Event, ws: aiohttp.ClientWebSocketResponse) -> None:
        await stop.wait()
        await ws.close()

    def _hello(self) -> m.Hello:
        return m.Hello(
            proto=m.PROTO_VERSION,
            machine_id=self.identity.machine_id,
            hostname=self.identity.machine_id,
            primary_ip="127.0.0.1",
            metadata=self.metadata,
            capabilities=["systemd", "docker"],
            resources=TASK_ROOM,
            applied_revision=self.revision,
            snapshot=[self._status(u) for u in self.units.values()] or self.held,
            agent_version="sim",
        )

    @staticmethod
    def _status(unit: m.DesiredUnit) -> m.UnitStatus:
        launched = unit.desired_state == "launched"
        return m.UnitStatus(
            name=unit.name,
            hash=unit.hash,
            load_state="loaded",
            active_state="active" if launched else "inactive",
            sub_state="running" if launched else "dead",
            target_state=unit.desired_state,
        )

    async def _beat(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        # Spread the first beat so thousands of agents do not beat in lockstep.
        await asyncio.sleep(random.random() * interval)
        seq = 0
        while not ws.closed:
            seq += 1
            await ws.send_bytes(m.encode(m.Heartbeat(seq, time.time())))
            self.stats.heartbeats += 1
            await asyncio.sleep(interval)

    async def _on(self, ws: aiohttp.ClientWebSocketResponse, message: m.Message) -> None:
        if isinstance(message, m.TaskStart):
            self.stats.tasks_started += 1
            await self._task(ws, message)
            return
        if isinstance(message, m.TaskAck):
            if message.final:
                self.stats.tasks_final += 1
            return
        if not isinstance(message, m.Desired):
            return
        self.stats.desired += 1
        if message.full:
            new = {u.name: u for u in message.upserts}
        elif message.base_revision != self.revision:
            await ws.send_bytes(m.encode(m.Error("resync", "revision gap")))
            return
        else:
            new = dict(self.units)
            for name in message.removes:
                new.pop(name, None)
            new.update({u.name: u for u in message.upserts})
        changed = [u for n, u in new.items() if self.units.get(n) != u]
        removed = [n for n in self.units if n not in new]
        self.units = new
        self.revision = message.revision
        await ws.send_bytes(m.encode(m.Applied(message.revision)))
        if changed or removed:
            await ws.send_bytes(
                m.encode(m.StateReport([self._status(u) for u in changed], removed))
            )
        self.stats.applied_units += len(changed)
        self.stats.last_applied_at = time.time()

    async def _task(self, ws: aiohttp.ClientWebSocketResponse, start: m.TaskStart) -> None:
        """A run without a container: RUNNING, the output its command asks for (`lines N`:
        N numbered lines, shipped in chunks of up to TASK_CHUNK bytes), STOPPED exit 0."""
        await ws.send_bytes(m.encode(m.TaskUpdate(start.run_id, "RUNNING", at=time.time())))
        word, _, count = start.command.partition(" ")
        lines = int(count) if word == "lines" and count.isdigit() else 0
        offset = 0
        buf: list[bytes] = []
        size = 0
        for i in range(1, lines + 1):
            line = b"line %d of the run's output\n" % i
            buf.append(line)
            size += len(line)
            if size >= TASK_CHUNK or i == lines:
                data = b"".join(buf)
                await ws.send_bytes(m.encode(m.TaskOutput(start.run_id, offset, data)))
                offset += len(data)
                buf, size = [], 0
        self.stats.task_lines += lines
        await ws.send_bytes(
            m.encode(
                m.TaskUpdate(start.run_id, "STOPPED", exit_code=0, at=time.time(), log_bytes=offset)
            )
        )


TASK_ROOM = m.Resources(memory_mb=64 << 10, cpu_millis=64_000)
"""What each simulated machine offers task runs."""
TASK_CHUNK = 64 << 10


def raise_fd_limit() -> int:
    """Thousands of sockets need more than the default 1024 descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cores() -> int:
    return os.cpu_count() or 1
