"""Real coordinator and agent processes for integration tests, stopped by PID."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec

from coordinator.trust import pki
from moorctl.client import ApiClient
from proto.clientconfig import ClientConfig
from tests.harness.databases import coordinator_database_url

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside an async test's loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class Proc:
    """A child process with its log in a file; stop() and kill() act on its PID only."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log
        self._log = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()
        self._log.close()


GENEROUS_LIMITS = """
[rate_limits]
token = { count = 100000, window_s = 3600 }
deploy = { count = 1000, window_s = 3600 }
auth = { count = 1000, window_s = 900 }
"""
"""What every test coordinator runs with unless a test is about the limits (as `moorage
dev` does): tests that poll with a token, or probe bad tokens, are not throttled."""


class CoordinatorProc:
    """`moorage-coordinator serve` on loopback ports chosen once and kept across restarts;
    `config`: the TOML it reads (default: generous rate limits; set it before start)."""

    def __init__(self, state_dir: Path, **options: Any) -> None:
        """`database_url`: the coordinator's database, kept across restarts (default:
        SQLite in `state_dir`, or a new PostgreSQL database under
        MOORAGE_TEST_DATABASE=postgresql; several coordinators share one by passing it)."""
        self.state_dir = state_dir
        self.config = GENEROUS_LIMITS
        self.api_port = free_port()
        self.hub_port = free_port()
        database_url: str | None = options.pop("database_url", None)
        if database_url is None:
            database_url = coordinator_database_url(state_dir.parent / f"{state_dir.name}-db")
        self.database_url = database_url
        """Its database ("": the SQLite file in `state_dir`; may be changed before start);
        two coordinators may share one."""
        self.options = {"heartbeat": 1.0, "lost-after": 5.0, **options}
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def paths(self) -> pki.PkiPaths:
        return pki.PkiPaths.under(self.state_dir / "pki")

    def start(self) -> CoordinatorProc:
        empty = self.state_dir.parent / f"{self.state_dir.name}.toml"
        empty.parent.mkdir(parents=True, exist_ok=True)
        empty.write_text(self.config)
        args = [
            sys.executable,
            "-m",
            "coordinator",
            "serve",
            "--config",
            str(empty),
            "--state-dir",
            str(self.state_dir),
            "--api-listen",
            f"127.0.0.1:{self.api_port}",
            "--hub-listen",
            f"127.0.0.1:{self.hub_port}",
        ]
        for key, value in self.options.items():
            args += [f"--{key}", str(value)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        self.starts += 1
        self.proc = Proc(args, self.state_dir.parent / f"coordinator-{self.starts}.log")
        wait_for(self._healthy, 20, what="coordinator /healthz")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise AssertionError(f"coordinator exited:\n{self.proc.log()}")
        try:
            ctx = ssl.create_default_context(cafile=self.paths.ca_cert)
            with (
                socket.create_connection(("127.0.0.1", self.api_port), timeout=1) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                return tls.recv(64).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
        except (OSError, ssl.SSLError):
            return False

    def admin_client(self) -> ClientConfig:
        p = self.paths
        return ClientConfig(
            endpoint=self.endpoint, ca_file=p.ca_cert, cert_file=p.admin_cert, key_file=p.admin_key
        )

    def api(self, method: str, path: str, body: Any = None) -> Any:
        async def go() -> Any:
            async with ApiClient(self.admin_client()) as api:
                return await api.call(method, path, body)

        return run_sync(go)

    def raw(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        cert: bool = True,
    ) -> tuple[int, bytes]:
        """One request with full control over credentials (for auth and status-code tests)."""

        async def go() -> tuple[int, bytes]:
            p = self.paths
            ctx = pki.client_ssl_context(
                p.ca_cert, p.admin_cert if cert else None, p.admin_key if cert else None
            )
            async with (
                aiohttp.ClientSession() as s,
                s.request(
                    method, self.endpoint + path, headers=headers, data=data, ssl=ctx
                ) as resp,
            ):
                return resp.status, await resp.read()

        return run_sync(go)

    def raw_stream(
        self, path: str, *, max_lines: int, timeout: float, until: bytes = b""
    ) -> tuple[int, list[bytes]]:
        """Read up to max_lines lines of a streaming response (or until one holds
        `until`), then hang up."""

        async def go() -> tuple[int, list[bytes]]:
            p = self.paths
            ctx = pki.client_ssl_context(p.ca_cert, p.admin_cert, p.admin_key)
            lines: list[bytes] = []
            async with aiohttp.ClientSession() as s, s.get(self.endpoint + path, ssl=ctx) as resp:
                try:
                    async with asyncio.timeout(timeout):
                        while len(lines) < max_lines:
                            line = await resp.content.readline()
                            if not line:
                                break
                            lines.append(line)
                            if until and until in line:
                                break
                except TimeoutError:
                    pass
                return resp.status, lines

        return run_sync(go)

    def moorctl_argv(self, *args: str) -> list[str]:
        """`moorctl` with the admin certificate of this coordinator, then `args`."""
        p = self.paths
        return [
            sys.executable,
            "-m",
            "moorctl",
            "--endpoint",
            self.endpoint,
            "--ca-file",
            p.ca_cert,
            "--cert-file",
            p.admin_cert,
            "--key-file",
            p.admin_key,
            *args,
        ]

    def moorctl(
        self, *args: str, cwd: Path = ROOT, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.moorctl_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd
        )

    def join_token(self, ttl_s: float = 600) -> str:
        return str(self.api("POST", "/moorage/v1/join-tokens", {"ttl_s": ttl_s})["token"])

    def machines(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/moorage/v1/machines")["machines"])

    def connected(self) -> set[str]:
        return {m["id"] for m in self.machines() if m["state"] == "connected"}

    def metrics(self) -> str:
        status, body = self.raw("GET", "/metrics")
        assert status == 200, body
        return body.decode()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill9()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class AgentProc:
    def __init__(
        self,
        root: Path,
        machine_id: str,
        coordinator: CoordinatorProc,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = root / f"agent-{machine_id}"
        self.machine_id = machine_id
        self.coordinator = coordinator
        self.extra = extra or []
        self.env = env or {}
        self.proc: Proc | None = None
        self.runs = 0

    def base_args(self) -> list[str]:
        # An empty config of our own: a host's /etc/moorage/agent.toml must not leak in.
        empty = self.state_dir.parent / "agent-empty.toml"
        empty.touch()
        return [
            sys.executable,
            "-m",
            "agent",
            "--config",
            str(empty),
            "--state-dir",
            str(self.state_dir),
            "--machine-id",
            self.machine_id,
            "--backoff-max",
            "1",
            *self.extra,
        ]

    def enroll(self, token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *self.base_args(),
                "enroll",
                "--coordinator",
                self.coordinator.endpoint,
                "--token",
                token,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    def start(self) -> AgentProc:
        self.runs += 1
        self.proc = Proc(
            self.base_args(),
            self.state_dir.parent / f"agent-{self.machine_id}-{self.runs}.log",
            self.env,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def cert_serial(self) -> str:
        data = (self.state_dir / "identity.pem").read_bytes()
        return pki.inspect_cert(data[data.index(b"-----BEGIN CERTIFICATE-----") :]).serial


def decode_json(raw: bytes) -> Any:
    return msgspec.json.decode(raw)


class MachineRig:
    """One coordinator and one enrolled, connected agent ("m1"), with helpers to set
    units on it through the API and to wait for what it reports."""

    def __init__(
        self, tmp: Path, *, extra: list[str], env: dict[str, str], config: str = ""
    ) -> None:
        """`config`: TOML added to the coordinator's."""
        from tests.procs import AgentProc, CoordinatorProc

        coordinator = CoordinatorProc(tmp / "coordinator")
        coordinator.config += config
        self.coordinator = coordinator.start()
        self.agent = AgentProc(tmp, "m1", self.coordinator, extra=extra, env=env)
        result = self.agent.enroll(self.coordinator.join_token())
        assert result.returncode == 0, result.stderr
        self.agent.start()
        wait_for(lambda: "m1" in self.coordinator.connected(), what="agent connected")

    def put(self, name: str, text: str, state: str = "launched") -> dict[str, Any]:
        from proto.units import parse_unit_file

        options = [
            {"section": o.section, "name": o.name, "value": o.value} for o in parse_unit_file(text)
        ]
        body = {"options": options, "desired_state": state, "machines": ["m1"]}
        return dict(self.coordinator.api("PUT", f"/moorage/v1/units/{name}", body))

    def reported(self, name: str) -> dict[str, Any] | None:
        states = self.coordinator.api("GET", f"/moorage/v1/unit-states?unit={name}")["states"]
        return states[0] if states else None

    def wait_state(
        self, name: str, active: str, timeout: float = 20, **more: Any
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.reported(name)
            if s and s["active_state"] == active and all(s.get(k) == v for k, v in more.items()):
                return s
            return None

        return dict(wait_for(check, timeout, what=f"{name} {active} {more}"))

    def close(self) -> None:
        self.agent.stop()
        self.coordinator.stop()
