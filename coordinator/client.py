"""Where the coordinator is and how to reach it, for moorctl and tests.

Without explicit flags, moorctl uses the `moorage dev` of this user: `moorage dev`
writes `client.json` into its state directory, like `nomad agent -dev` does for
`nomad`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from coordinator import pki


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True):
    endpoint: str
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    token: str = ""
    token_file: str = ""

    def bearer(self) -> str:
        if self.token:
            return self.token
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return ""

    def ssl_context(self) -> ssl.SSLContext:
        if self.ca_file:
            ctx = pki.client_ssl_context(
                self.ca_file, self.cert_file or None, self.key_file or None
            )
        else:
            ctx = ssl.create_default_context()
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file or None)
        return ctx


class ApiResponse(msgspec.Struct, frozen=True):
    status: int
    headers: dict[str, str]
    """Lower-cased names."""
    body: Any


class ApiClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def default_dev_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "moorage" / "dev"


def dev_client_file(state_dir: Path) -> Path:
    return state_dir / "client.json"


def load_dev_client(state_dir: Path) -> ClientConfig:
    path = dev_client_file(state_dir)
    try:
        return msgspec.json.decode(path.read_bytes(), type=ClientConfig)
    except FileNotFoundError:
        raise ApiClientError(
            0,
            f"no coordinator given and no 'moorage dev' state in {state_dir}: start "
            "'moorage dev' or pass --endpoint/--ca-file with --cert-file/--key-file or --token",
        ) from None


class ApiClient:
    def __init__(self, config: ClientConfig, *, timeout_s: float = 30.0) -> None:
        self.config = config
        self._ssl = config.ssl_context() if config.endpoint.startswith("https") else None
        self._headers = {"User-Agent": "moorctl"}
        bearer = config.bearer()
        if bearer:
            self._headers["Authorization"] = f"Bearer {bearer}"
        self._session = aiohttp.ClientSession(
            base_url=config.endpoint.rstrip("/") + "/",
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers=self._headers,
        )

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """JSON in, JSON out; any non-2xx becomes ApiClientError with the server's message."""
        return (await self.request(method, path, body)).body

    async def request(self, method: str, path: str, body: Any = None) -> ApiResponse:
        """Like `call`, with the status and headers (e.g. whether a create created)."""
        data = None if body is None else msgspec.json.encode(body)
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                method, path.lstrip("/"), data=data, headers=headers, ssl=self._ssl or True
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise ApiClientError(resp.status, _error_message(raw) or resp.reason or "")
                return ApiResponse(
                    resp.status,
                    {k.lower(): v for k, v in resp.headers.items()},
                    msgspec.json.decode(raw) if raw else None,
                )
        except aiohttp.ClientConnectorError as exc:
            raise ApiClientError(
                0, f"cannot reach {self.config.endpoint}: {exc.os_error}"
            ) from None
        except aiohttp.ClientError as exc:
            raise ApiClientError(0, f"request to {self.config.endpoint} failed: {exc}") from None

    async def stream_lines(self, path: str) -> AsyncIterator[bytes]:
        """A streaming GET (NDJSON), one line at a time, with no overall timeout."""
        try:
            async with self._session.get(
                path.lstrip("/"), ssl=self._ssl or True, timeout=aiohttp.ClientTimeout(total=None)
            ) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    raise ApiClientError(resp.status, _error_message(raw) or resp.reason or "")
                async for line in resp.content:
                    if line.strip():
                        yield line
        except aiohttp.ClientConnectorError as exc:
            raise ApiClientError(
                0, f"cannot reach {self.config.endpoint}: {exc.os_error}"
            ) from None


def _error_message(raw: bytes) -> str:
    try:
        body = msgspec.json.decode(raw)
        return str(body["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return raw.decode(errors="replace")[:300]
