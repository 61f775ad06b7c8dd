"""A silent PostgreSQL link (a proxy that holds the connection and passes nothing)
never holds the event loop past `link`'s bounds: the wait that meets it fails as the
database being unreachable (503), every call after it fails at once, and the store
works again as soon as the link does; a statement that is merely slow is not cut.

Real PostgreSQL through the fault suite's real TCP proxy (`LinkProxy.blackhole`: the
connections it holds go silent, new ones are accepted and stall)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

from coordinator.store.ports import StorageUnavailable
from coordinator.store.sql import SqlStore, core, link
from tests.chaos.slow_link_proxy import LinkProxy
from tests.harness.databases import cluster, fresh_database
from tests.harness.postgres import postgres_available

pytestmark = pytest.mark.skipif(postgres_available() is not None, reason="no PostgreSQL")

T = TypeVar("T")
BOUND_S = link.LOOP_QUIET_S + link.SIDE_S + 1.0
"""The longest a call on the event loop may wait on a silent link (with slack)."""


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[SqlStore, LinkProxy]]:
    """A store on a new PostgreSQL database, through a proxy of its own."""
    parts = urlsplit(fresh_database(tmp_path, "postgresql"))
    assert parts.hostname and parts.port
    proxy = LinkProxy((parts.hostname, parts.port), host=parts.hostname).start()
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    store = SqlStore(urlunsplit(parts._replace(netloc=netloc)))
    try:
        yield store, proxy
    finally:
        proxy.transparent()
        store.close()
        proxy.close()


def on_loop(fn: Callable[[], T]) -> tuple[T | BaseException, float]:
    """`fn` called synchronously on a running event loop, as a handler would: (its
    result or the error it raised, the seconds it took)."""

    async def call() -> tuple[T | BaseException, float]:
        started = time.monotonic()
        try:
            out: T | BaseException = fn()
        except Exception as exc:
            out = exc
        return out, time.monotonic() - started

    return asyncio.run(call())


def test_a_read_on_the_event_loop_gives_up_on_a_silent_link_and_the_next_fails_at_once(
    proxied: tuple[SqlStore, LinkProxy],
) -> None:
    store, proxy = proxied
    assert store.list_machines() == []  # a pooled connection, through the proxy
    proxy.blackhole()
    out, took = on_loop(store.list_machines)
    assert isinstance(out, StorageUnavailable) and out.kind == "unreachable", out
    assert took < BOUND_S, took
    assert store.health.fault == "unreachable"
    calls: list[Callable[[], object]] = [
        store.list_machines,
        lambda: store.patch_metadata("m1", {"a": "b"}),
    ]
    for call in calls:
        failed, took = on_loop(call)
        assert isinstance(failed, StorageUnavailable) and failed.kind == "unreachable", failed
        assert took < 0.1, took  # known silent: nothing is sent down the link
    proxy.transparent()
    deadline = time.monotonic() + core.PROBE_EVERY_S + link.SIDE_S + 2
    while True:
        try:
            assert store.list_machines() == []
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline, "the store did not come back after the heal"
            time.sleep(0.1)
    assert store.health.fault == ""


def test_a_new_connection_on_the_event_loop_gives_up_within_its_bound(
    proxied: tuple[SqlStore, LinkProxy],
) -> None:
    store, proxy = proxied
    store.engine.pool.dispose()  # nothing pooled: the read must connect through the cut
    proxy.blackhole()
    out, took = on_loop(store.list_machines)
    assert isinstance(out, StorageUnavailable) and out.kind == "unreachable", out
    assert took < link.LOOP_CONNECT_S + 1.0, took


def test_a_slow_statement_on_a_live_link_is_not_cut(
    proxied: tuple[SqlStore, LinkProxy],
) -> None:
    store, _ = proxied
    seconds = link.LOOP_QUIET_S * 2.5  # the side question is asked twice, and answered
    out, took = on_loop(lambda: store._scalar(sa.select(sa.func.pg_sleep(seconds))))
    assert not isinstance(out, BaseException), out
    assert took >= seconds
    assert store.health.fault == ""


def test_a_write_on_the_event_loop_does_not_wait_long_for_a_threads_write(
    proxied: tuple[SqlStore, LinkProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread's write holds the write lock (here: held by hand, as a write waiting on
    a silent link would); a write on the loop is refused as busy, not stalled."""
    store, _ = proxied
    monkeypatch.setattr(core, "LOOP_LOCK_WAIT_S", 0.3)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        out, took = on_loop(lambda: store.patch_metadata("m1", {"a": "b"}))
        assert isinstance(out, StorageUnavailable) and out.kind == "busy", out
        assert took < 1.0, took
        assert "another write" in str(out)
    finally:
        release.set()
        holder.join()
    assert store.health.fault == ""  # busy is not a fault of the database


def test_a_thread_waits_longer_than_the_loop_but_not_forever(
    proxied: tuple[SqlStore, LinkProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, proxy = proxied
    monkeypatch.setattr(link, "THREAD_QUIET_S", 1.5)
    assert store.list_machines() == []
    proxy.blackhole()
    result: list[Any] = []

    def read() -> None:
        started = time.monotonic()
        try:
            result.append(store.list_machines())
        except StorageUnavailable as exc:
            result.append(exc)
        result.append(time.monotonic() - started)

    worker = threading.Thread(target=read)
    worker.start()
    worker.join(15)
    assert not worker.is_alive()
    out, took = result
    assert isinstance(out, StorageUnavailable) and out.kind == "unreachable", out
    assert 1.5 <= took < 1.5 + link.SIDE_S + 1.0, took


def test_the_side_question_asks_the_server_itself() -> None:
    """PostgreSQL answers an SSLRequest over TCP (by address or name) and over its Unix
    socket; a port nothing listens on does not; of several hosts, any one that answers."""
    pg = cluster()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: refused
        assert link.answers({"host": pg.host, "port": pg.port})
        assert link.answers({"host": "localhost", "port": str(pg.port)})
        assert link.answers({"host": str(pg.root), "port": pg.port})
        assert not link.answers({"host": "127.0.0.1", "port": closed})
        assert link.answers({"host": f"127.0.0.1,{pg.host}", "port": f"{closed},{pg.port}"})
