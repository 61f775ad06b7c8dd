"""Error bodies. fleet clients parse `{"error":{"code","message"}}`; Moorage's own
routes use the same envelope so one client helper reads them all."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from aiohttp import web

from coordinator import limits

T = TypeVar("T")


class ErrorDetail(msgspec.Struct, frozen=True):
    code: int
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


class EnvelopeDetail(msgspec.Struct, frozen=True):
    code: str
    status: int
    message: str


class EnvelopeError(msgspec.Struct, frozen=True):
    """The `/api/...` families' error (WebOps' envelope): `success` false, a code a
    program can switch on, and the message a person can act on (also at top level)."""

    success: bool
    error: EnvelopeDetail
    message: str


class FlatError(msgspec.Struct, frozen=True):
    """Flotilla's error (the task API): `{"error": "<message>"}`."""

    error: str


class CliError(msgspec.Struct, frozen=True):
    """The WebOps command-line surface's error (`/api/...` without a version): a
    top-level string `error` and the same text as `message`."""

    error: str
    message: str


ERROR_CODES = {
    # The WebOps document's error codes table where it has one; the rest in its style.
    400: "VALIDATION_ERROR",
    401: "AUTHENTICATION_REQUIRED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMIT_EXCEEDED",
    503: "SERVICE_UNAVAILABLE",
    507: "INSUFFICIENT_STORAGE",
}


def error_response(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    envelope: bool = False,
    flat: bool = False,
    cli: bool = False,
) -> web.Response:
    value: ErrorBody | EnvelopeError | FlatError | CliError
    if cli:
        # The WebOps client expects exactly this text for a missing/invalid token.
        text = "Authentication required" if status == 401 else message
        value = CliError(text, message)
        return web.Response(
            status=status,
            body=msgspec.json.encode(value),
            content_type="application/json",
            headers=headers,
        )
    if flat:
        return web.Response(
            status=status,
            body=msgspec.json.encode(FlatError(message)),
            content_type="application/json",
            charset="utf-8",
            headers=headers,
        )
    if envelope:
        code = ERROR_CODES.get(status, "ERROR" if status < 500 else "INTERNAL_ERROR")
        value = EnvelopeError(False, EnvelopeDetail(code, status, message), message)
    else:
        value = ErrorBody(ErrorDetail(status, message))
    body = msgspec.json.encode(value)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(value), content_type="application/json"
    )


class ApiError(Exception):
    """Raised by handlers; the middleware renders it with the route family's error format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def decode_body(request: web.Request, kind: type[T], *, max_bytes: int = 1 << 20) -> T:
    """Read a JSON body as `kind`: 415 if not JSON, 400 if malformed or invalid (field named)."""
    if request.content_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {request.content_type!r}")
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, f"request body larger than {max_bytes} bytes")
    raw = await request.read()
    try:
        return limits.decode_json(raw, kind)  # type: ignore[no-any-return]
    except limits.TooDeep as exc:
        raise ApiError(400, str(exc)) from None
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def decode_fleet(raw: bytes, kind: type[T]) -> T:
    """fleet's routes decode whatever arrives (fleet did not check Content-Type but on
    PUT) and answer a bad body with 400 "unable to decode body"."""
    try:
        return limits.decode_json(raw, kind)  # type: ignore[no-any-return]
    except (msgspec.DecodeError, msgspec.ValidationError, limits.TooDeep) as exc:
        raise ApiError(400, f"unable to decode body: {exc}") from None
