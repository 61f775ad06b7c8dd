"""The coordinator's outgoing connections to a peer that resets them leave its event
loop (uvloop, as the coordinator runs) whole: relays opened again and again to a peer
that accepts and resets every connection (a loud cut between coordinators) while the
same loop serves TLS. With aiohttp's own connector this broke the served connections
("[Errno 17] File exists", "File descriptor N is used by transport") or aborted the
process (found by the fault suite's `coord-partition`). Real sockets on loopback, in a
child process (an abort must fail the test, not end the test run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coordinator.trust import pki

pytest.importorskip("uvloop")

CHILD = textwrap.dedent(
    """
    import asyncio, socket, ssl, struct, sys, threading
    import uvloop
    from aiohttp import web
    from coordinator.hub import relay
    from coordinator.trust import pki

    paths = pki.PkiPaths.under(sys.argv[1])
    ROUNDS = int(sys.argv[2])
    if sys.argv[3] == "aiohttp":  # the connector it had: to see this test fail without the fix
        import aiohttp
        relay.LoopConnector = aiohttp.TCPConnector

    def resetting_peer():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        def run():
            while True:
                c, _ = s.accept()
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
        threading.Thread(target=run, daemon=True).start()
        return s.getsockname()[1]

    async def main():
        peer = resetting_peer()
        app = web.Application()
        app.router.add_get("/", lambda r: web.Response(text="ok"))
        runner = web.AppRunner(app)
        await runner.setup()
        served = pki.server_ssl_context(
            paths.server_cert, paths.server_key, paths.ca_cert, client_certs="optional"
        )
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=served)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        ctx = pki.client_ssl_context(paths.ca_cert, paths.admin_cert, paths.admin_key)
        plain = ssl.create_default_context(cafile=str(paths.ca_cert))

        async def ask():
            async def nothing(_r, _m):
                return None
            try:
                await relay.RemoteSession.open(
                    f"wss://127.0.0.1:{peer}/agent/v1", "m1", "b", ctx, nothing, lambda _r: None
                )
            except relay.RelayFailed:
                pass

        def client():
            bad = []
            for _ in range(ROUNDS):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                        with plain.wrap_socket(raw, server_hostname="127.0.0.1") as c:
                            c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                            if b" 200 " not in c.recv(100):
                                bad.append("no 200")
                except OSError as exc:
                    bad.append(repr(exc))
            return bad

        served_all = asyncio.get_running_loop().run_in_executor(None, client)
        while not served_all.done():
            await asyncio.gather(*(ask() for _ in range(3)))
        bad = await served_all
        print(f"{len(bad)} of {ROUNDS} served connections failed: {bad[:3]}")
        await runner.cleanup()
        sys.exit(1 if bad else 0)

    uvloop.run(main())
    """
)


def _run(tmp_path: Path, connector: str, rounds: int) -> subprocess.CompletedProcess[str]:
    pki.init_pki(tmp_path / "pki", ["localhost"], ["127.0.0.1"])
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "pki"), str(rounds), connector],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[4],
    )


def test_relays_to_a_resetting_peer_leave_the_loop_serving(tmp_path: Path) -> None:
    done = _run(tmp_path, "coordinator", 60)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
