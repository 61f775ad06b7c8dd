"""`/agent/v1/`: what an agent needs before it has a certificate (the CA, enrolment);
served on the API port without authentication, the join token authenticating it.
The agent hub (the WebSocket at `/agent/v1`, mutual TLS) has a listener of its own."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from coordinator.api.errors import decode_body, json_response
from coordinator.api.routing import FLEET, Family, RouteTable
from coordinator.trust.access import EnrolmentService
from proto.enrolment import CA_PATH, ENROLL_PATH, EnrollRequest

PREFIX = "/agent/v1"
ENROLL_BODY_MAX = 64 << 10


def routes(enrolment: EnrolmentService, hub_urls: Callable[[str], list[str]]) -> Family:
    """`hub_urls(host)`: the hub URLs to hand an agent that reached the API at `host`."""
    r = RouteTable()

    @r.get(CA_PATH, "The fleet CA certificate (PEM; public)", public=True)
    async def ca(request: web.Request) -> web.Response:
        return web.Response(text=enrolment.ca_pem, content_type="application/x-pem-file")

    @r.post(
        ENROLL_PATH,
        "Enrol a machine with a join token and a CSR",
        request=EnrollRequest,
        errors=(400, 403, 409, 415, 429),
        public=True,
        limit="auth",
    )
    async def enroll(request: web.Request) -> web.Response:
        body = await decode_body(request, EnrollRequest, max_bytes=ENROLL_BODY_MAX)
        return json_response(enrolment.enroll(body, hub_urls(request.url.host or "127.0.0.1")))

    return Family(PREFIX, FLEET, r.routes)
