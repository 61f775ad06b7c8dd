"""A userspace TCP proxy on loopback that can turn a good link bad: each chunk held
100-300 ms (order kept), stalls during which nothing passes, connections reset.

It runs an asyncio loop in a thread of its own (in the fault suite's process) and
forwards every connection it accepts to one upstream address, byte for byte: TLS goes
through it untouched. Transparent until `slow()`; `transparent()` releases whatever is
held at once and forwards without delay again. `reset_one()` ends one connection with
an RST on both sides (SO_LINGER 0), the loss a TCP proxy can make. `blackhole()` cuts
the link as a dead route would: nothing passes either way on the connections it holds,
and new ones are accepted and then stall (packets vanish; no error reaches either end)
until `transparent()`. `refuse()` cuts it loudly instead: every connection reset, new
ones reset at once. `close()` stops the listener, every connection and the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 64 * 1024
EOF = b""


@dataclass
class Counts:
    connections: int = 0
    chunks: int = 0
    delayed: int = 0
    """Chunks held back while the link was slow."""
    stalls: int = 0
    resets: int = 0
    refused: int = 0
    """Connections reset as soon as accepted while refusing."""


class _Conn:
    """One proxied connection: the client's side and the upstream's."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self, rst: bool) -> None:
        for w in (self.client, self.upstream):
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
            w.transport.abort()
        for t in self.tasks:
            t.cancel()


class LinkProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self.counts = Counts()
        self.delay_s = (0.1, 0.3)
        self._slow = False
        self._stall_until = 0.0
        self._refusing = False
        self._rng = random.Random(0)
        self._healed = asyncio.Event()
        """Set while transparent: what is held goes at once."""
        self._healed.set()
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None

    # --- from the fault's thread -----------------------------------------------------------

    def start(self) -> LinkProxy:
        self._thread.start()
        self.port = self._call(self._listen())
        return self

    def slow(self, rng: random.Random) -> None:
        """From now on each chunk is held 100-300 ms (per-chunk draws from `rng`'s seed)."""
        self._call(self._set(slow=True, rng=random.Random(rng.random())))

    def stall(self, seconds: float) -> None:
        """Nothing passes, either way, for `seconds` (only while slow)."""
        self._call(self._stall(seconds))

    def blackhole(self) -> None:
        """Nothing passes either way, on live connections and on new ones (accepted,
        then silent), until `transparent()`: then what was held goes on, in order."""
        self._call(self._blackhole())

    def refuse(self) -> int:
        """Reset every live connection and each new one as soon as it is accepted, until
        `transparent()`; returns how many live ones were reset."""
        return self._call(self._refuse())

    def transparent(self) -> None:
        """Forward without delay again, and release whatever is held now (stop refusing)."""
        self._call(self._set(slow=False))

    def reset_one(self, rng: random.Random) -> bool:
        """Reset one live connection chosen with `rng` (False: there was none)."""
        return self._call(self._reset_one(rng))

    def live(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._shutdown(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- in the proxy's loop -----------------------------------------------------------------

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        return int(self._server.sockets[0].getsockname()[1])

    # Every change of the link's state is made in the loop: the pumps see it whole.

    async def _set(self, *, slow: bool, rng: random.Random | None = None) -> None:
        if rng is not None:
            self._rng = rng
        self._slow = slow
        if slow:
            self._healed.clear()
        else:
            self._stall_until = 0.0
            self._refusing = False
            self._healed.set()

    async def _blackhole(self) -> None:
        self._slow = True
        self._healed.clear()
        self._stall_until = float("inf")
        self.counts.stalls += 1

    async def _refuse(self) -> int:
        self._refusing = True
        conns = sorted(self._conns, key=id)
        for conn in conns:
            self._conns.discard(conn)
            conn.abort(rst=True)
        self.counts.resets += len(conns)
        return len(conns)

    async def _stall(self, seconds: float) -> None:
        if self._slow:
            self._stall_until = max(self._stall_until, time.monotonic() + seconds)
            self.counts.stalls += 1

    async def _reset_one(self, rng: random.Random) -> bool:
        conns = sorted(self._conns, key=id)
        if not conns:
            return False
        conn = rng.choice(conns)
        self._conns.discard(conn)
        conn.abort(rst=True)
        self.counts.resets += 1
        return True

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort(rst=False)
        self._conns.clear()
        await asyncio.sleep(0.1)  # the connections' handlers see their end
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.counts.refused += 1
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.counts.connections += 1
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        try:
            await self._both_ways(conn, reader, up_reader)
        finally:
            self._conns.discard(conn)
            conn.abort(rst=False)

    async def _both_ways(
        self, conn: _Conn, reader: asyncio.StreamReader, up_reader: asyncio.StreamReader
    ) -> None:
        """Pump each way until both ends have said EOF, or either end failed."""
        ways = [(reader, conn.upstream), (up_reader, conn.client)]
        for src, dst in ways:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            conn.tasks.append(asyncio.create_task(self._read(src, queue)))
            conn.tasks.append(asyncio.create_task(self._write(queue, dst)))
        try:
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in conn.tasks:
                t.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def _read(
        self, src: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        last_due = 0.0
        while True:
            data = await src.read(CHUNK)
            due = time.monotonic()
            if data and self._slow:
                due += self._rng.uniform(*self.delay_s)
                self.counts.delayed += 1
            last_due = max(due, last_due)  # never overtakes the chunk before it
            queue.put_nowait((last_due, data))
            if not data:
                return
            self.counts.chunks += 1

    async def _write(
        self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            await self._hold(due)
            if data == EOF:
                if dst.can_write_eof():
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()

    async def _hold(self, due: float) -> None:
        """Until a chunk read to go at `due` may go: then, past any stall, or at a heal."""
        while self._slow:
            wait = max(due, self._stall_until) - time.monotonic()
            if wait <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait if wait != float("inf") else None):
                    await self._healed.wait()
