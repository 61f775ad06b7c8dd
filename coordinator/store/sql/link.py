"""The PostgreSQL link: no wait on the database outlives the evidence that it answers.

A store call is synchronous, and many run on the event loop (docs/architecture.md,
"The store is synchronous"). On a link that goes silent (a partition, a proxy or
route that holds the connection open and passes nothing) libpq waits for the reply
forever (`tcp_user_timeout` ends it only when the packets are dropped: a proxy
acknowledges them), and so would the event loop: no /readyz, no lease timer, no 503.
Found by the fault suite's pg-partition.

Every wait on a connection (a statement and its rows, a commit) is therefore watched:
after a quiet period with nothing from the server (`LOOP_QUIET_S` on the event loop's
thread, `THREAD_QUIET_S` in a worker thread) a side question settles whether the
server still answers at all (`answers`: it must answer a new connection's first
message within `SIDE_S`). If it does, the statement is merely slow (a long scheduling
pass, a migration, a lock wait): the wait goes on and asks again after the next quiet
period. If not, the link is silent: the connection is closed, the wait fails with
`LinkSilent` (an OperationalError, so SQLAlchemy invalidates the connection and the
store reports the database unreachable: 503), and the engine's `core.Breaker` trips:
no connection is made and no call sent down the link until its probe (`answers`
again) gets through.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Generator
from time import monotonic
from typing import Any, TypeVar

import psycopg
import psycopg.errors

from coordinator.store.sql.core import Breaker, on_loop

RV = TypeVar("RV")

LOOP_QUIET_S = 0.5
"""Silence on the event loop's thread before the side question is asked."""
THREAD_QUIET_S = 2.0
"""Silence in a worker thread before the side question is asked."""
SIDE_S = 1.0
"""How long the side question waits for the server's first answer: a postmaster forks
and answers in milliseconds even on a loaded machine; a longer bound only makes a false
"silent" (a breaker tripped on a live server) less likely, at the cost of the event
loop's one wait per outage (LOOP_QUIET_S + SIDE_S)."""
LOOP_CONNECT_S = 2
"""A new pooled connection made on the event loop's thread gives up after this (libpq's
floor), else after THREAD_CONNECT_S."""
THREAD_CONNECT_S = 5
WAKE_S = 0.1
"""How often a wait wakes to look at the clock (psycopg's own interval)."""
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
"""The protocol's SSLRequest: any PostgreSQL server answers it with one byte at once,
before authentication, and logs nothing when the client then hangs up."""


class LinkSilent(psycopg.OperationalError):
    """The server stopped answering on this connection and does not answer a new one."""


def quiet_s() -> float:
    return LOOP_QUIET_S if on_loop() else THREAD_QUIET_S


def answers(params: dict[str, Any]) -> bool:
    """The side question: does the server answer a new connection's SSLRequest within
    SIDE_S (its postmaster took the connection and a backend answered)? For every host
    of a multi-host `host`, over TCP or a Unix socket directory; with no `host` given,
    a psycopg connection (libpq's defaults) within 2 s instead."""
    hosts = [h for h in str(params.get("hostaddr") or params.get("host") or "").split(",") if h]
    if not hosts:
        try:
            psycopg.Connection.connect(**{**params, "connect_timeout": 2}).close()
        except psycopg.Error:
            return False
        return True
    ports = str(params.get("port") or "5432").split(",")
    for i, host in enumerate(hosts):
        port = int(ports[i] if i < len(ports) else ports[-1])
        if _ssl_answer(host, port):
            return True
    return False


def _ssl_answer(host: str, port: int) -> bool:
    try:
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(SIDE_S)
            sock.connect(f"{host}/.s.PGSQL.{port}")
        else:  # a name or an address of either family, as libpq takes them
            sock = socket.create_connection((host, port), timeout=SIDE_S)
        with sock:
            sock.settimeout(SIDE_S)
            sock.sendall(SSL_REQUEST)
            return sock.recv(1) in (b"S", b"N")
    except (OSError, ValueError):
        return False


class WatchedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait is watched (see the module's docstring).
    Made by `open` (the engine's `do_connect`), which keeps the breaker it reports to."""

    _breaker: Breaker
    _params: dict[str, Any]

    @classmethod
    def open(cls, params: dict[str, Any], breaker: Breaker) -> WatchedConnection:
        """A new connection, refused at once while the breaker says the link is
        silent; one not made in time trips it."""
        if breaker.silent:
            raise LinkSilent(breaker.silent)
        timeout = LOOP_CONNECT_S if on_loop() else THREAD_CONNECT_S
        try:
            conn = cls.connect(**{**params, "connect_timeout": timeout})
        except psycopg.errors.ConnectionTimeout as exc:
            breaker.trip(f"no connection within {timeout} s: {exc}")
            raise
        conn._breaker = breaker
        conn._params = params
        return conn

    def wait(self, gen: Any, interval: float = WAKE_S, timeout: float | None = None) -> Any:
        return super().wait(self._watched(gen), min(interval, WAKE_S), timeout)

    def _watched(self, gen: Generator[Any, Any, RV]) -> Generator[Any, Any, RV]:
        """`gen` as psycopg's wait functions drive it, asking the side question after
        each quiet period without a byte from the server (they send READY_NONE, 0,
        when their interval passes with nothing ready)."""
        quiet = quiet_s()
        ask_at = monotonic() + quiet
        try:
            s = next(gen)
            while True:
                ready = yield s
                if ready:
                    ask_at = monotonic() + quiet
                elif monotonic() >= ask_at:
                    if not answers(self._params):
                        why = (
                            f"the database sent nothing for {quiet:g} s and answers no new"
                            f" connection within {SIDE_S:g} s"
                        )
                        self.close()
                        self._breaker.trip(why)
                        raise LinkSilent(why)
                    ask_at = monotonic() + quiet
                s = gen.send(ready)
        except StopIteration as done:
            result: RV = done.value
            return result
