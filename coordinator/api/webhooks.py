"""`/api/v1/webhooks`: WebOps webhooks (#21), a thin adapter over `WebhookService`, in
the `/api/v1` envelope. Every route needs `admin`: a webhook receives the events of
every API of its tenant (fleet, tasks, environments, WebOps), not only deployments."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, decode_body
from coordinator.api.identity import Envelope, ok
from coordinator.api.routing import ENVELOPE, Family, RouteTable, tenant_of
from coordinator.timefmt import iso
from coordinator.trust import permissions as perms
from coordinator.trust.auth import PRINCIPAL
from coordinator.webops import webhooks as wh
from coordinator.webops.records import Webhook, WebhookDelivery
from coordinator.webops.webhooks import WebhookService

V1 = "/api/v1/webhooks"


class WebhookCreate(msgspec.Struct, frozen=True):
    url: Annotated[str, msgspec.Meta(max_length=wh.MAX_URL)]
    events: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=100)]], msgspec.Meta(max_length=wh.MAX_EVENTS)
    ] = []
    secret: Annotated[str, msgspec.Meta(max_length=wh.MAX_SECRET)] = ""


def hook_out(hook: Webhook) -> dict[str, Any]:
    """Never the secret (shown once, on create)."""
    return {
        "id": hook.id,
        "url": hook.url,
        "events": hook.events,
        "active": hook.active,
        "created_by": hook.created_by,
        "created_at": iso(hook.created_at),
    }


def delivery_out(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "delivery": d.delivery,
        "event": d.event,
        "attempt": d.attempt,
        "status_code": d.status_code,
        "success": d.ok,
        "error": d.error,
        "duration_ms": d.duration_ms,
        "created_at": iso(d.at),
    }


def routes(service: WebhookService) -> Family:
    r = RouteTable(permission=perms.ADMIN)

    def hook_of(request: web.Request) -> Webhook:
        raw = request.match_info["id"]
        if not raw.isdigit() or len(raw) > 18:
            raise ApiError(404, f"webhook {raw!r} does not exist")
        return service.get(tenant_of(request), int(raw))

    @r.get(V1 + "/", "Webhooks of the tenant (secrets are never shown)", response=Envelope)
    async def list_(request: web.Request) -> web.Response:
        return ok([hook_out(h) for h in service.hooks(tenant_of(request))])

    @r.post(
        V1 + "/",
        "Create a webhook (url, events, secret; a secret is generated when none is given"
        " and shown once)",
        request=WebhookCreate,
        response=Envelope,
        ok=201,
        errors=(400, 415),
    )
    async def create(request: web.Request) -> web.Response:
        body = await decode_body(request, WebhookCreate, max_bytes=1 << 16)
        hook = service.create(
            tenant_of(request),
            body.url,
            list(body.events),
            body.secret,
            actor=str(request[PRINCIPAL].name),
        )
        data = hook_out(hook)
        data["secret"] = hook.secret
        data["signature"] = {
            "header": wh.SIGNATURE_HEADER,
            "timestamp_header": wh.TIMESTAMP_HEADER,
            "scheme": "sha256=hex(HMAC-SHA256(secret, timestamp + '.' + body))",
        }
        return ok(data, "Webhook created", 201)

    @r.get(V1 + "/{id}/", "One webhook", response=Envelope, errors=(404,))
    async def get(request: web.Request) -> web.Response:
        return ok(hook_out(hook_of(request)))

    @r.delete(
        V1 + "/{id}/", "Delete a webhook and its delivery log", response=Envelope, errors=(404,)
    )
    async def delete(request: web.Request) -> web.Response:
        hook = hook_of(request)
        service.delete(hook)
        return ok({"id": hook.id}, "Webhook deleted")

    @r.get(
        V1 + "/{id}/deliveries/",
        "The delivery log: one item per attempt, newest first",
        response=Envelope,
        errors=(404,),
    )
    async def deliveries(request: web.Request) -> web.Response:
        return ok([delivery_out(d) for d in service.deliveries(hook_of(request))])

    @r.post(
        V1 + "/{id}/test/",
        "Send a signed `webhook.test` event now (one attempt) and answer its outcome",
        response=Envelope,
        errors=(404,),
    )
    async def test(request: web.Request) -> web.Response:
        d = await service.test(hook_of(request), actor=str(request[PRINCIPAL].name))
        return ok(delivery_out(d), "Webhook delivered" if d.ok else "Webhook delivery failed")

    return Family(V1, ENVELOPE, r.routes)
