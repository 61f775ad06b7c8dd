"""moorctl's HTTP client: JSON requests and NDJSON streams to the coordinator's API.

Without explicit flags, moorctl uses the `moorage dev` of this user, through the
`client.json` it writes (proto/clientconfig.py). HTTP only: nothing here imports the
server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from proto.clientconfig import ClientConfig, dev_client_file


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
        if isinstance(body.get("error"), str):  # the task API's (Flotilla's) flat error
            return str(body["error"])
        return str(body["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return raw.decode(errors="replace")[:300]
