"""moorctl's HTTP client: JSON requests and NDJSON streams to the coordinator's API.

Without explicit flags, moorctl uses the `moorage dev` of this user, through the
`client.json` it writes (proto/clientconfig.py). HTTP only: nothing here imports the
server. Standard library only (asyncio streams, imported with the first request so
that `--version` and `--help` load no event loop): commands start fast.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from proto.clientconfig import ClientConfig, dev_client_file

if TYPE_CHECKING:
    import asyncio


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


class _Conn:
    """One HTTP/1.1 connection (TLS or not) to the coordinator."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class _Response(msgspec.Struct):
    status: int
    reason: str
    headers: dict[str, str]
    keep_alive: bool


class ApiClient:
    """HTTP/1.1 over asyncio streams, keep-alive, a small pool for concurrent callers.

    Not aiohttp: its import alone (~0.1-0.3 s) was most of a `moorctl list-unit-files`.
    The coordinator answers with `Content-Length` or chunked bodies (streams), which is
    all this reads."""

    def __init__(self, config: ClientConfig, *, timeout_s: float = 30.0) -> None:
        self.config = config
        url = urlsplit(config.endpoint)
        self._tls = url.scheme == "https"
        self._ssl = config.ssl_context() if self._tls else None
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._tls else 80)
        self._prefix = url.path.rstrip("/") + "/"
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._headers = {"Host": f"{host}:{self._port}", "User-Agent": "moorctl"}
        bearer = config.bearer()
        if bearer:
            self._headers["Authorization"] = f"Bearer {bearer}"
        self._timeout_s = timeout_s
        self._idle: list[_Conn] = []

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """JSON in, JSON out; any non-2xx becomes ApiClientError with the server's message."""
        return (await self.request(method, path, body)).body

    async def request(self, method: str, path: str, body: Any = None) -> ApiResponse:
        """Like `call`, with the status and headers (e.g. whether a create created)."""
        import asyncio

        data = None if body is None else msgspec.json.encode(body)
        try:
            async with asyncio.timeout(self._timeout_s):
                conn, resp = await self._exchange(method, path, data)
                raw = await _read_body(conn.reader, resp.headers)
        except TimeoutError:
            raise ApiClientError(0, f"request to {self.config.endpoint} timed out") from None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ApiClientError(0, f"request to {self.config.endpoint} failed: {exc}") from None
        self._release(conn, resp)
        if resp.status >= 400:
            raise ApiClientError(resp.status, _error_message(raw) or resp.reason)
        return ApiResponse(resp.status, resp.headers, msgspec.json.decode(raw) if raw else None)

    async def stream_lines(self, path: str) -> AsyncIterator[bytes]:
        """A streaming GET (NDJSON), one line at a time, with no overall timeout."""
        import asyncio

        try:
            async with asyncio.timeout(self._timeout_s):
                conn, resp = await self._exchange("GET", path, None)
        except TimeoutError:
            raise ApiClientError(0, f"request to {self.config.endpoint} timed out") from None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ApiClientError(0, f"request to {self.config.endpoint} failed: {exc}") from None
        try:
            if resp.status >= 400:
                raw = await _read_body(conn.reader, resp.headers)
                raise ApiClientError(resp.status, _error_message(raw) or resp.reason)
            pending = b""
            async for chunk in _body_chunks(conn.reader, resp.headers):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield line + b"\n"
            if pending.strip():
                yield pending
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ApiClientError(0, f"request to {self.config.endpoint} failed: {exc}") from None
        finally:
            conn.close()

    async def _exchange(
        self, method: str, path: str, data: bytes | None
    ) -> tuple[_Conn, _Response]:
        """Send the request on an idle connection (or, if that one was closed by the
        server meanwhile, on a new one) and read the response head."""
        import asyncio

        target = self._prefix + path.lstrip("/")
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(data or b""))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        message = head.encode() + b"\r\n" + (data or b"")
        while self._idle:
            conn = self._idle.pop()
            try:
                conn.writer.write(message)
                await conn.writer.drain()
                return conn, await _read_head(conn.reader)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError):
                conn.close()  # closed while idle: try the next, then a new one
        conn = await self._connect()
        conn.writer.write(message)
        await conn.writer.drain()
        return conn, await _read_head(conn.reader)

    async def _connect(self) -> _Conn:
        import asyncio

        try:
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._tls else None,
                limit=1 << 20,
            )
        except OSError as exc:
            raise ApiClientError(0, f"cannot reach {self.config.endpoint}: {exc}") from None
        return _Conn(reader, writer)

    def _release(self, conn: _Conn, resp: _Response) -> None:
        if resp.keep_alive:
            self._idle.append(conn)
        else:
            conn.close()


async def _read_head(reader: asyncio.StreamReader) -> _Response:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    status = int(code)
    if status in (204, 304) or status < 200:
        headers["content-length"] = "0"  # no body, whatever the headers say
    return _Response(status, reason, headers, keep)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    return b"".join([chunk async for chunk in _body_chunks(reader, headers)])


async def _body_chunks(
    reader: asyncio.StreamReader, headers: dict[str, str]
) -> AsyncIterator[bytes]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from the coordinator
                return
            chunk = await reader.readexactly(size + 2)
            yield chunk[:-2]
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length:
            yield await reader.readexactly(length)
    else:
        while chunk := await reader.read(1 << 16):
            yield chunk


def _error_message(raw: bytes) -> str:
    try:
        body = msgspec.json.decode(raw)
        if isinstance(body.get("error"), str):  # the task API's (Flotilla's) flat error
            return str(body["error"])
        return str(body["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return raw.decode(errors="replace")[:300]
