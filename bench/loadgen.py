"""Run simulated agents in a few worker processes and aggregate what they count."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from bench.simagent import SimAgent, SimIdentity, Stats, raise_fd_limit

Metadata = Callable[[str], dict[str, str]]


def _worker(
    identities: list[SimIdentity],
    hub_urls: list[str],
    ca_file: str,
    conn: Connection,
    rack_count: int,
    backoff: tuple[float, float],
    hello_units: int = 0,
) -> None:
    raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(identities, hub_urls, ca_file, conn, rack_count, backoff, hello_units))


async def _serve(
    identities: list[SimIdentity],
    hub_urls: list[str],
    ca_file: str,
    conn: Connection,
    rack_count: int,
    backoff: tuple[float, float],
    hello_units: int,
) -> None:
    stats = Stats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        agents = [
            SimAgent(
                i,
                hub_urls,
                ca_file,
                stats,
                {"rack": f"r{n % rack_count}"},
                first_hub=n,  # as if enrolled through each coordinator in turn
                backoff=backoff,
                hello_units=hello_units,
            )
            for n, i in enumerate(identities)
        ]
        tasks = []
        for n, agent in enumerate(agents):
            tasks.append(asyncio.create_task(agent.run(http, stop)))
            if n % 50 == 49:
                await asyncio.sleep(0)  # let handshakes progress while ramping up
        while True:
            if await loop.run_in_executor(None, conn.poll, 0.5) and conn.recv() == "stop":
                break
            conn.send(
                {
                    "connected": stats.connected,
                    "sessions": stats.sessions,
                    "heartbeats": stats.heartbeats,
                    "desired": stats.desired,
                    "applied_units": stats.applied_units,
                    "errors": stats.errors,
                    "last_applied_at": stats.last_applied_at,
                    "tasks_started": stats.tasks_started,
                    "tasks_final": stats.tasks_final,
                    "task_lines": stats.task_lines,
                    **{f"connected_hub{h}": n for h, n in stats.by_hub.items()},
                    **{f"error_{k}": n for k, n in stats.error_kinds.items()},
                }
            )
        stop.set()
        await asyncio.wait(tasks, timeout=10)


class LoadGen:
    def __init__(
        self,
        identities: list[SimIdentity],
        hub_urls: str | list[str],
        ca_file: str,
        *,
        workers: int = 2,
        racks: int = 10,
        backoff: tuple[float, float] = (0.25, 5.0),
        hello_units: int = 0,
    ) -> None:
        """`hub_urls`: one hub, or several coordinators' (each agent starts on one in
        turn and fails over to the others); `backoff`: the agents' initial and longest
        reconnect delay (s); `hello_units`: units each agent reports running in its
        Hello (`SimAgent`)."""
        hubs = [hub_urls] if isinstance(hub_urls, str) else list(hub_urls)
        ctx = mp.get_context("fork")
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        self._last: list[dict[str, float]] = [{} for _ in range(workers)]
        for w in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(identities[w::workers], hubs, ca_file, child, racks, backoff, hello_units),
                daemon=True,
            )
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)

    def stats(self) -> dict[str, float]:
        for i, conn in enumerate(self._conns):
            while conn.poll():
                self._last[i] = conn.recv()
        total: dict[str, float] = {}
        for snap in self._last:
            for k, v in snap.items():
                total[k] = (
                    max(total.get(k, 0.0), v) if k == "last_applied_at" else total.get(k, 0.0) + v
                )
        return total

    def wait(
        self,
        predicate: Callable[[dict[str, float]], bool],
        timeout: float,
        progress: Callable[[dict[str, float]], None] | None = None,
    ) -> float:
        started = time.monotonic()
        last_print = 0.0
        while True:
            stats = self.stats()
            if predicate(stats):
                return time.monotonic() - started
            now = time.monotonic()
            if progress and now - last_print >= 2:
                progress(stats)
                last_print = now
            if now - started > timeout:
                raise TimeoutError(f"load generator: condition not met within {timeout} s: {stats}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def stop(self) -> None:
        for conn in self._conns:
            try:
                conn.send("stop")
            except OSError:
                pass
        for proc in self._procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()


class SimFleet:
    """A coordinator process with `agents` simulated agents enrolled and connected."""

    def __init__(self, coordinator: Any, load: LoadGen, enrol_s: float, connect_s: float) -> None:
        self.coordinator = coordinator
        self.load = load
        self.enrol_s = enrol_s
        self.connect_s = connect_s


@contextlib.contextmanager
def sim_fleet(
    agents: int,
    *,
    workers: int,
    timeout: float,
    racks: int = 10,
    hello_units: int = 0,
    **coordinator_options: Any,
) -> Iterator[SimFleet]:
    from bench import common
    from bench.simagent import enrol_many, raise_fd_limit
    from tests.procs import CoordinatorProc

    raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    coordinator = CoordinatorProc(root / "coordinator", **coordinator_options)
    load: LoadGen | None = None
    try:
        coordinator.start()
        started = time.monotonic()
        ids = [f"sim{i:05d}" for i in range(agents)]
        identities = asyncio.run(enrol_many(coordinator.admin_client(), ids, root / "ids"))
        enrol_s = time.monotonic() - started
        print(f"enrolled {agents} agents in {enrol_s:.1f} s", flush=True)
        hub = f"wss://127.0.0.1:{coordinator.hub_port}/agent/v1"
        load = LoadGen(
            identities,
            hub,
            coordinator.paths.ca_cert,
            workers=workers,
            racks=racks,
            hello_units=hello_units,
        )
        connect_s = load.wait(
            lambda s: s.get("connected", 0) >= agents, timeout, common.progress("connecting")
        )
        print(f"all {agents} agents connected in {connect_s:.1f} s", flush=True)
        yield SimFleet(coordinator, load, enrol_s, connect_s)
    finally:
        if load is not None:
            load.stop()
        coordinator.stop()
        shutil.rmtree(root, ignore_errors=True)
