"""The fault suite's TCP proxy cuts a link as pg-partition needs it: a blackhole holds
live and new connections silent and lets them go on at the heal; a loud cut resets
them."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.chaos.slow_link_proxy import LinkProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(1024):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # what the proxy's loud cut does to this end too


@pytest.fixture
def proxy() -> Iterator[LinkProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    link = LinkProxy(("127.0.0.1", server.server_address[1])).start()
    try:
        yield link
    finally:
        link.close()
        server.shutdown()
        server.server_close()


def _connect(link: LinkProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", link.port), timeout=5)


def test_blackhole_holds_live_and_new_connections_until_the_heal(proxy: LinkProxy) -> None:
    live = _connect(proxy)
    live.sendall(b"before")
    assert live.recv(64) == b"before"
    proxy.blackhole()
    live.sendall(b"held")
    late = _connect(proxy)  # accepted: the cut is silent, not refused
    late.sendall(b"late")
    for s in (live, late):
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(64)
    proxy.transparent()
    for s, want in ((live, b"held"), (late, b"late")):
        s.settimeout(5)
        assert s.recv(64) == want
        s.close()


def test_refuse_resets_live_and_new_connections(proxy: LinkProxy) -> None:
    live = _connect(proxy)
    live.sendall(b"x")
    assert live.recv(64) == b"x"
    assert proxy.refuse() == 1
    assert _cut(live, b"y")
    late: socket.socket | None = None
    try:
        late = _connect(proxy)
    except ConnectionResetError:
        pass  # a timed connect polls for its end; a reset before the poll is reported by it
    if late is not None:
        assert _cut(late, b"z")
    assert proxy.counts.refused >= 1
    proxy.transparent()
    again = _connect(proxy)
    again.sendall(b"ok")
    assert again.recv(64) == b"ok"
    for s in (live, late, again):
        if s is not None:
            s.close()


def _cut(s: socket.socket, data: bytes) -> bool:
    """Whether the connection is reset or closed (how a reset shows depends on timing:
    the send or the read fails, or the read sees the end)."""
    s.settimeout(5)
    try:
        s.sendall(data)
        return s.recv(64) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
