"""The CPU one mutual-TLS handshake costs each side on this machine (#23's floor).

A reconnect wave after a failover (figure 10) is bounded below by what the handshakes
alone cost: every agent that moves does one TLS 1.3 handshake with its client
certificate against the survivor. This measures exactly that and nothing else, with
Moorage's own PKI (an EC P-256 fleet CA, server and client certificates as
`init_pki` issues them) and the coordinator's server context
(`pki.server_ssl_context`, client certificates required): a server process on the
event loop the coordinator runs (`proto.process.run_main`: uvloop) accepts the
connections, a client process dials them 32 at a time, each side reports its own CPU
time per handshake.

Then the memory one held connection costs the server (#22's floor under "10,000 agents
in 300 MiB"): the server process holds `--hold` connections, each of which has
finished its handshake and sent a few bytes, with glibc's mmap threshold fixed as the
coordinator fixes it (`coordinator.memory`), and reports its resident memory per
connection; once over mutual TLS, once over plain TCP, so the difference is what TLS
itself holds (OpenSSL's connection, the verified client certificate, uvloop's TLS
protocol and buffers) with no HTTP, WebSocket or Moorage session on top.

    python -m bench.bench_tls --handshakes 3000 --hold 2000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import ssl
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import write
from coordinator import memory
from coordinator.trust import pki
from proto.process import run_main
from proto.tls import client_ssl_context
from tests.procs import free_port


def _hub_context(paths: pki.PkiPaths) -> ssl.SSLContext:
    """The coordinator's server context with client certificates required (the hub's)."""
    return pki.server_ssl_context(
        paths.server_cert, paths.server_key, paths.ca_cert, client_certs="required"
    )


def _serve(paths: pki.PkiPaths, port: int, count: int, out: multiprocessing.Queue[float]) -> None:
    ctx = _hub_context(paths)
    seen = 0
    started = 0.0
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen, started
        if seen == 0:
            started = time.process_time()
        seen += 1
        writer.close()
        if seen == count:
            done.set()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx, backlog=1024)
        out.put(-1.0)  # listening
        async with server:
            await done.wait()
        out.put((time.process_time() - started) / count)

    run_main(main())


def _dial(paths: pki.PkiPaths, port: int, count: int, out: multiprocessing.Queue[float]) -> None:
    ctx = client_ssl_context(paths.ca_cert, paths.admin_cert, paths.admin_key)

    async def one() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        await reader.read()
        writer.close()

    async def main() -> None:
        gate = asyncio.Semaphore(32)

        async def guarded() -> None:
            async with gate:
                await one()

        started = time.process_time()
        await asyncio.gather(*(guarded() for _ in range(count)))
        out.put((time.process_time() - started) / count)

    run_main(main())


def _hold(
    paths: pki.PkiPaths, port: int, count: int, tls: bool, out: multiprocessing.Queue[float]
) -> None:
    """Accept `count` connections and keep them; put the resident KiB each one added."""
    memory.fix_mmap_threshold()
    ctx = _hub_context(paths) if tls else None
    held: list[asyncio.BaseTransport] = []
    done = asyncio.Event()

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if self.transport not in held:
                held.append(self.transport)
                if len(held) == count:
                    done.set()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Keep, "127.0.0.1", port, ssl=ctx, backlog=4096)
        await asyncio.sleep(0.2)
        base = psutil.Process().memory_info().rss // 1024
        out.put(-1.0)  # listening
        async with server:
            await done.wait()
            await asyncio.sleep(0.5)  # let the last handshakes' temporaries go
            out.put((psutil.Process().memory_info().rss // 1024 - base) / count)
            await asyncio.sleep(3600)  # until terminated

    run_main(main())


def _hold_dial(
    paths: pki.PkiPaths, port: int, count: int, tls: bool, out: multiprocessing.Queue[float]
) -> None:
    ctx = client_ssl_context(paths.ca_cert, paths.admin_cert, paths.admin_key) if tls else None

    async def main() -> None:
        gate = asyncio.Semaphore(32)
        writers: list[asyncio.StreamWriter] = []

        async def one() -> None:
            async with gate:
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if tls else None
                )
                writer.write(b"hello")
                await writer.drain()
                writers.append(writer)

        await asyncio.gather(*(one() for _ in range(count)))
        out.put(0.0)
        await asyncio.sleep(3600)  # until terminated

    run_main(main())


def held_kib(paths: pki.PkiPaths, count: int, tls: bool) -> float:
    """The server's resident KiB per held connection (see the module's docstring)."""
    port = free_port()
    server_out: multiprocessing.Queue[float] = multiprocessing.Queue()
    client_out: multiprocessing.Queue[float] = multiprocessing.Queue()
    server = multiprocessing.Process(target=_hold, args=(paths, port, count, tls, server_out))
    server.start()
    client = None
    try:
        assert server_out.get(timeout=30) == -1.0
        client = multiprocessing.Process(
            target=_hold_dial, args=(paths, port, count, tls, client_out)
        )
        client.start()
        client_out.get(timeout=600)
        return server_out.get(timeout=600)
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.terminate()
                proc.join(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handshakes", type=int, default=3000)
    parser.add_argument(
        "--hold", type=int, default=2000, help="connections held for the memory figure (0: none)"
    )
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--name", default="tls", help="results file name")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = pki.init_pki(Path(tmp) / "pki", ["localhost"], ["127.0.0.1"])
        port = args.port or free_port()
        server_out: multiprocessing.Queue[float] = multiprocessing.Queue()
        client_out: multiprocessing.Queue[float] = multiprocessing.Queue()
        server = multiprocessing.Process(
            target=_serve, args=(paths, port, args.handshakes, server_out)
        )
        server.start()
        assert server_out.get(timeout=30) == -1.0
        wall = time.monotonic()
        client = multiprocessing.Process(
            target=_dial, args=(paths, port, args.handshakes, client_out)
        )
        client.start()
        client_s = client_out.get(timeout=600)
        server_s = server_out.get(timeout=600)
        wall = time.monotonic() - wall
        client.join(30)
        server.join(30)
        tls_kib = held_kib(paths, args.hold, tls=True) if args.hold else 0.0
        tcp_kib = held_kib(paths, args.hold, tls=False) if args.hold else 0.0
    write(
        args.name,
        {
            "server_cpu_ms_per_handshake": round(server_s * 1000, 3),
            "client_cpu_ms_per_handshake": round(client_s * 1000, 3),
            "handshakes_per_second": round(args.handshakes / wall, 1),
            "cores": os.cpu_count(),
            # what a wave of n moves costs in handshakes alone, both sides on these cores
            "floor_s_for_4636_moves_on_these_cores": round(
                4636 * (server_s + client_s) / (os.cpu_count() or 1), 1
            ),
            "floor_s_for_4636_moves_survivor_alone": round(4636 * server_s, 1),
            "server_kib_per_held_tls_connection": round(tls_kib, 1),
            "server_kib_per_held_tcp_connection": round(tcp_kib, 1),
            # 10,000 agents' connections alone, before any HTTP, WebSocket or session
            "server_mib_for_10000_tls_connections": round(tls_kib * 10000 / 1024, 1),
        },
        {"handshakes": args.handshakes, "concurrency": 32, "hold": args.hold},
    )


if __name__ == "__main__":
    main()
