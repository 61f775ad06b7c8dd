"""Issue #22: what a fleet user runs all day, replayed exactly as fleetctl v1.0.0 does it,
beside fleet v1.0.0's own figures (issue #22's table, same machine class).

    python -m bench.bench_fleet --units 1000

A real coordinator and a real agent on a real systemd manager (the test harness's
private `systemd --user`, see bench/realagent.py). The fleet client is a small
synchronous HTTP/1.1 client over one keep-alive TLS connection with the admin
certificate, as Go's `net/http` client in fleetctl is; every request carries
`?alt=json`, PUTs `Content-Type: application/json`
(../shared/spec/fleet-v1-notes.md):

* `submit`: per unit, in sequence, `GET /units/x` (404) then `PUT /units/x
  {name, options}`. fleetctl then checks each unit's `currentState` is `inactive`
  (one more GET each when it already is): reported separately as `submit_wait`.
* `list-unit-files`: a new connection (a new process), `GET /units` page by page
  (100 a page, following `nextPageToken`), then `GET /machines`.
* `start` of one submitted unit: `GET /units/x`, `PUT {name, desiredState:
  launched}`, then `GET /units/x` at once and every 250 ms until `currentState` is
  `launched`, then `GET /state/x` likewise until systemd reports it `active`.
* `stop`: `GET /units` (all pages), `PUT {desiredState: loaded}`, poll `GET /units/x`
  until `loaded`.
* coordinator RSS with the units, CPU at rest.
* `moorctl submit` of N other unit files, `moorctl --version`, `moorctl
  list-unit-files` (whole commands, new processes).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import psutil

from bench import common
from bench.realagent import RealAgent, real_agent
from coordinator.trust import pki
from proto.process import run_main
from tests.procs import free_port

POLL_S = 0.25
"""fleetctl's polling interval (spec notes: every 250 ms)."""

FLEET = {
    "submit_seconds": 4.05,
    "list_unit_files_seconds": 0.63,
    "start_seconds": 3.81,
    "stop_seconds": 1.87,
    "coordinator_rss_mb": 57.9,
    "cpu_at_rest_percent": 6.0,
}
"""fleet v1.0.0 (fleetd + etcd 3.4) on this machine class, from issue #22."""

TARGETS = {
    "submit_seconds": 1.0,
    "list_unit_files_seconds": 0.1,
    "start_seconds": 0.5,
    "stop_seconds": 0.3,
    "coordinator_rss_mb": 50.0,
    "moorctl_submit_seconds": 0.4,
    "moorctl_version_seconds": 0.15,
    "moorctl_list_unit_files_seconds": 0.3,
}


class FleetClient:
    """One keep-alive HTTPS connection, like Go's http.Client in fleetctl."""

    def __init__(self, rig: RealAgent, port: int | None = None) -> None:
        p = rig.coordinator.paths
        ctx = ssl.create_default_context(cafile=p.ca_cert)
        ctx.load_cert_chain(p.admin_cert, p.admin_key)
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", port or rig.coordinator.api_port, context=ctx, timeout=60
        )
        self.requests = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        sep = "&" if "?" in path else "?"
        self.conn.request(method, f"/fleet/v1/{path}{sep}alt=json", body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        self.requests += 1
        return resp.status, (json.loads(raw) if raw else None)

    def list_all(self, resource: str, field: str) -> list[Any]:
        items: list[Any] = []
        token = ""
        while True:
            status, doc = self.call("GET", resource + (f"?nextPageToken={token}" if token else ""))
            assert status == 200, (status, doc)
            items += doc.get(field, [])
            token = doc.get("nextPageToken", "")
            if not token:
                return items

    def wait_unit(self, name: str, state: str, limit_s: float = 60) -> None:
        """fleetctl's checkUnitState: check, then sleep 250 ms, until it holds."""
        deadline = time.monotonic() + limit_s
        while True:
            status, doc = self.call("GET", f"units/{quote(name)}")
            if status == 200 and doc.get("currentState") == state:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not {state}: {doc}")
            time.sleep(POLL_S)

    def wait_active(self, name: str, limit_s: float = 60) -> None:
        """fleetctl start's last step: GET /state/x until systemd says active."""
        deadline = time.monotonic() + limit_s
        while True:
            status, doc = self.call("GET", f"state/{quote(name)}")
            if status == 200 and doc.get("systemdActiveState") == "active":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not active: {doc}")
            time.sleep(POLL_S)

    def close(self) -> None:
        self.conn.close()


def options(i: int) -> list[dict[str, str]]:
    return [
        {"section": "Unit", "name": "Description", "value": f"bench unit {i}"},
        {"section": "Service", "name": "ExecStart", "value": f"/bin/sleep {3600 + i}"},
    ]


def submit(client: FleetClient, names: list[str]) -> float:
    started = time.monotonic()
    for i, name in enumerate(names):
        status, _ = client.call("GET", f"units/{quote(name)}")
        assert status == 404, status
        status, doc = client.call(
            "PUT", f"units/{quote(name)}", {"name": name, "options": options(i)}
        )
        assert status == 201, (status, doc)
    return time.monotonic() - started


_NOT_FOUND = b'{"error":{"code":404,"message":"unit not found"}}'
_CANNED = {
    b"GET": b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_NOT_FOUND), _NOT_FOUND),
    b"PUT": b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
}


def _api_context(paths: pki.PkiPaths) -> ssl.SSLContext:
    """The coordinator's API context (client certificates optional), for the floors."""
    return pki.server_ssl_context(
        paths.server_cert, paths.server_key, paths.ca_cert, client_certs="optional"
    )


def _canned_server(paths: pki.PkiPaths, port: int, ready: Any) -> None:
    """A TLS server with the coordinator's context and event loop that answers each
    request with a fixed response: no HTTP framework, routing, auth or database."""
    ctx = _api_context(paths)

    class Canned(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                head, rest = self.buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if len(rest) < length:
                    return
                self.buf = rest[length:]
                self.transport.write(_CANNED[head.split(b" ", 1)[0]])

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", port, ssl=ctx)
        ready.put(True)
        await asyncio.sleep(3600)  # until terminated

    run_main(main())


def _aiohttp_server(paths: pki.PkiPaths, port: int, ready: Any) -> None:
    """The same answers from an aiohttp application with the two routes and nothing
    else (no middleware, auth, access log or database): the framework's own share."""
    from aiohttp import web

    ctx = _api_context(paths)

    async def get(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": 404, "message": "unit not found"}}, status=404)

    async def put(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(status=201)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/fleet/v1/units/{name}", get)
        app.router.add_put("/fleet/v1/units/{name}", put)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
        ready.put(True)
        await asyncio.sleep(3600)  # until terminated

    run_main(main())


def submit_floor(
    rig: RealAgent, count: int, serve: Callable[[pki.PkiPaths, int, Any], None] = _canned_server
) -> tuple[float, float]:
    """`submit`'s exact requests from this client over TLS to `serve` (`_canned_server`:
    what the client, TLS and the loopback cost before any server-side work;
    `_aiohttp_server`: that and the HTTP framework); wall seconds and the server's CPU
    seconds."""
    port = free_port()
    ready: multiprocessing.Queue[bool] = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(rig.coordinator.paths, port, ready))
    server.start()
    try:
        ready.get(timeout=30)
        client = FleetClient(rig, port)
        cpu = psutil.Process(server.pid)
        before = sum(cpu.cpu_times()[:2])
        elapsed = submit(client, [f"floor{i:05d}.service" for i in range(count)])
        client.close()
        return elapsed, sum(cpu.cpu_times()[:2]) - before
    finally:
        server.terminate()
        server.join(30)


STACK = ("asyncio", "ssl", "uvloop", "sqlalchemy", "aiohttp.web")
"""The libraries docs/architecture.md chose for the coordinator."""


def stack_floor_mib() -> float:
    """The resident memory of a new interpreter that imports only `STACK`: what any
    coordinator built on them holds before its first line of code runs."""
    code = (
        f"import {', '.join(STACK)}\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


def fsync_floor(directory: Path, count: int) -> float:
    """`count` appends of a page, each made durable with fdatasync, in the coordinator's
    state directory: what `count` sequential durable commits cost on this disk at this
    moment, whatever the code (a WAL commit with synchronous=FULL is one such sync)."""
    path = directory / "fsync-floor.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.monotonic()
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
        return time.monotonic() - started
    finally:
        os.close(fd)
        path.unlink()


def submit_wait(client: FleetClient, names: list[str]) -> float:
    started = time.monotonic()
    for name in names:
        client.wait_unit(name, "inactive")
    return time.monotonic() - started


def list_unit_files(rig: RealAgent) -> float:
    started = time.monotonic()
    client = FleetClient(rig)  # a new process: a new connection and handshake
    units = client.list_all("units", "units")
    client.list_all("machines", "machines")
    client.close()
    elapsed = time.monotonic() - started
    assert len(units) >= 1
    return elapsed


def start(client: FleetClient, name: str) -> float:
    started = time.monotonic()
    status, _ = client.call("GET", f"units/{quote(name)}")
    assert status == 200
    status, doc = client.call(
        "PUT", f"units/{quote(name)}", {"name": name, "desiredState": "launched"}
    )
    assert status == 204, (status, doc)
    client.wait_unit(name, "launched")
    client.wait_active(name)
    return time.monotonic() - started


def stop(client: FleetClient, name: str) -> float:
    started = time.monotonic()
    client.list_all("units", "units")
    status, doc = client.call(
        "PUT", f"units/{quote(name)}", {"name": name, "desiredState": "loaded"}
    )
    assert status == 204, (status, doc)
    client.wait_unit(name, "loaded")
    return time.monotonic() - started


def cli_env(cache: Path) -> dict[str, str]:
    """The CLI as installed: with compiled bytecode (an installed package has it; a
    shell with PYTHONDONTWRITEBYTECODE=1 would compile moorctl at every start), kept
    out of the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def timed(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    return elapsed, out


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5, help="start/stop/list rounds (median)")
    ap.add_argument("--rest", type=float, default=10.0, help="seconds to sample CPU at rest")
    ap.add_argument("--name", default="fleet")
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="record the coordinator with py-spy during submit (collapsed stacks to FILE)",
    )
    args = ap.parse_args(argv)
    with real_agent() as rig:
        return _run(rig, args)


def _run(rig: RealAgent, args: argparse.Namespace) -> dict[str, object]:
    c = rig.coordinator
    assert c.proc is not None
    names = [f"f{i:05d}.service" for i in range(args.units)]
    client = FleetClient(rig)
    coordinator = psutil.Process(c.proc.pid)
    cpu_before = sum(coordinator.cpu_times()[:2])
    client_before = time.process_time()
    spy = common.py_spy(c.proc.pid, args.profile) if args.profile else None
    if spy is not None:
        time.sleep(1.0)  # let it attach before the clock starts
    submit_s = submit(client, names)
    common.stop_spy(spy)
    submit_cpu_s = sum(coordinator.cpu_times()[:2]) - cpu_before
    client_cpu_s = time.process_time() - client_before
    floor_s = fsync_floor(c.state_dir, args.units)
    canned_s, canned_cpu_s = submit_floor(rig, args.units)
    framework_s, framework_cpu_s = submit_floor(rig, args.units, _aiohttp_server)
    print(
        f"  submit {args.units}: {submit_s:.2f} s (coordinator CPU {submit_cpu_s:.2f} s;"
        f" {args.units} bare fdatasyncs just after: {floor_s:.2f} s)",
        flush=True,
    )
    wait_s = submit_wait(client, names)
    lists = [list_unit_files(rig) for _ in range(args.rounds)]
    starts: list[float] = []
    stops: list[float] = []
    for r in range(args.rounds):
        name = names[r]
        starts.append(start(client, name))
        stops.append(stop(client, name))
        print(f"  round {r + 1}: start {starts[-1]:.2f} s, stop {stops[-1]:.2f} s", flush=True)
    client.close()
    time.sleep(2)  # let the write-behind settle before sampling at rest
    rest = common.sample(c.proc.pid, args.rest)
    with tempfile.TemporaryDirectory(prefix="moorage-bench-fleet-") as tmp:
        root = Path(tmp)
        files = []
        for i in range(args.units):
            path = root / f"m{i:05d}.service"
            path.write_text(f"[Unit]\nDescription=m {i}\n\n[Service]\nExecStart=/bin/sleep {i}\n")
            files.append(str(path))
        env = cli_env(root / "pycache")
        timed(c.moorctl_argv("list-machines"), root, env)  # compiles the bytecode once
        moorctl_submit_s, out = timed(c.moorctl_argv("submit", *files), root, env)
        assert out.stdout.count("submitted") == args.units, out.stdout[-300:]
        versions = [timed(c.moorctl_argv("--version"), root, env)[0] for _ in range(args.rounds)]
        mlists = [
            timed(c.moorctl_argv("list-unit-files"), root, env)[0] for _ in range(args.rounds)
        ]
    rss_all = common.sample(c.proc.pid, 1.0)
    figures: dict[str, object] = {
        "units": args.units,
        "submit_seconds": round(submit_s, 2),
        "submit_coordinator_cpu_seconds": round(submit_cpu_s, 2),
        "submit_client_cpu_seconds (this Python client's own share)": round(client_cpu_s, 2),
        "fsync_floor_seconds (as many bare write+fdatasync)": round(floor_s, 2),
        "submit_floor_seconds (same requests, TLS server with canned answers)": round(canned_s, 2),
        "submit_floor_server_cpu_seconds": round(canned_cpu_s, 2),
        "submit_aiohttp_floor_seconds (same, an aiohttp app answering them)": round(framework_s, 2),
        "submit_aiohttp_floor_server_cpu_seconds": round(framework_cpu_s, 2),
        "submit_wait_seconds (fleetctl's inactive check, 1 GET each)": round(wait_s, 2),
        "list_unit_files_seconds": round(statistics.median(lists), 3),
        "start_seconds": round(statistics.median(starts), 2),
        "stop_seconds": round(statistics.median(stops), 2),
        "coordinator_rss_mb": round(rest["rss_mib"] * 2**20 / 1e6, 1),
        "coordinator_rss_mib": rest["rss_mib"],
        "coordinator_uss_mib": rest["uss_mib"],
        "cpu_at_rest_percent": rest["cpu_percent"],
        "moorctl_submit_seconds": round(moorctl_submit_s, 2),
        "moorctl_version_seconds": round(statistics.median(versions), 3),
        "moorctl_list_unit_files_seconds": round(statistics.median(mlists), 3),
        f"coordinator_rss_mib_with_{2 * args.units}_units": rss_all["rss_mib"],
        "stack_floor_rss_mb (" + ", ".join(STACK) + " imported, nothing else)": round(
            stack_floor_mib() * 2**20 / 1e6, 1
        ),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print("\n  figure                              fleet v1.0.0   Moorage   target")
    for key in TARGETS:
        print(f"  {key:<34} {FLEET.get(key, '-')!s:>12} {figures[key]!s:>9} {TARGETS[key]:>8}")
    common.write(args.name, figures, vars(args))
    return figures


if __name__ == "__main__":
    main()
