"""Routes of webhooks: POST /api/v1/webhooks/{name} (a delivery) and GET …/{name}/deliveries (its log).

This layer only reads the request — refusing a body over the webhook's `max_body_bytes` from its
Content-Length, or as soon as the bytes read pass it, without reading the rest — and writes the
answer; what a delivery is checked against and what it creates is
`orchestrator.triggers.webhooks.WebhookReceiver`. Refusals are answered in the API's problem
shape. Webhooks are called by servers, which send no Origin header, so the API's Origin guard
(`orchestrator.api.guards`) lets them through.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from orchestrator.api.audit import unaudited
from orchestrator.api.bodies import read_limited
from orchestrator.api.errors import ApiError, NotFound, problem_response
from orchestrator.api.params import json_response, pagination
from orchestrator.api.roles import public
from orchestrator.ports import WebhookDelivery
from orchestrator.triggers.webhooks import Answer, WebhookReceiver

log = logging.getLogger("orchestrator.api")

WEBHOOKS: web.AppKey[WebhookReceiver | None] = web.AppKey("webhooks", WebhookReceiver)  # type: ignore[arg-type]


def _receiver(request: web.Request) -> WebhookReceiver | None:
    return request.app.get(WEBHOOKS)


def _unknown(name: str, receiver: WebhookReceiver | None) -> str:
    known = ", ".join(sorted(receiver.webhooks)) if receiver is not None and receiver.webhooks else "none"
    return (
        f"no webhook named {name!r} is configured (configured: {known}): declare it as a "
        f"[webhooks.{name}] table in config.toml"
    )


def _too_large(limit: int) -> web.Response:
    detail = (
        f"the body is larger than this webhook's max_body_bytes ({limit} bytes): "
        "raise max_body_bytes in its [webhooks.<name>] table if such deliveries are expected"
    )
    response = problem_response(413, detail)
    response.force_close()  # the rest of the body is never read: this connection cannot carry another request
    return response


def _answered(request: web.Request, answer: Answer) -> web.Response:
    if answer.status < 400:
        return json_response(answer.body(), status=answer.status)
    reason = answer.reason or "refused"
    log.info("%s %s -> %d %s", request.method, request.path, answer.status, reason)
    headers = {"Retry-After": "5"} if answer.status == 503 else None
    return problem_response(answer.status, reason, headers=headers)


@public
@unaudited  # the delivery log records every delivery
async def receive_delivery(request: web.Request) -> web.StreamResponse:
    """One delivery: 202 created (or filtered out), 200 seen before, else a problem answer."""
    receiver = _receiver(request)
    name = request.match_info["name"]
    if receiver is None:
        raise NotFound(_unknown(name, None))
    received_at = receiver.clock.now()
    webhook = receiver.webhooks.get(name)
    if webhook is None:
        return _answered(
            request, receiver.answer(name, Answer(404, reason=_unknown(name, receiver)), received_at)
        )
    limit = webhook.config.max_body_bytes
    body = await read_limited(request, limit)
    if body is None:
        receiver.answer(name, Answer(413, reason=f"body over max_body_bytes ({limit} bytes)"), received_at)
        log.info("%s %s -> 413 body over %d bytes", request.method, request.path, limit)
        return _too_large(limit)
    answer = await receiver.receive(webhook, request.headers, body, received_at)
    return _answered(request, answer)


def delivery_to_json(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "webhook": delivery.webhook,
        "delivery_id": delivery.delivery_id,
        "received_at": delivery.received_at.isoformat(),
        "status": delivery.status,
        "created": delivery.created,
        "dag_id": delivery.dag_id,
        "dag_run_id": delivery.run_id,
        "asset_uri": delivery.asset_uri,
        "asset_event_id": delivery.asset_event_id,
        "reason": delivery.reason,
    }


async def list_deliveries(request: web.Request) -> web.Response:
    """Airflow-style paging (limit, offset) of a webhook's deliveries, newest first. A name that is
    not configured (any more) is listed if it has entries, else 404."""
    receiver = _receiver(request)
    name = request.match_info["name"]
    limit, offset = pagination(request)
    if receiver is None:
        raise NotFound(_unknown(name, None))
    await receiver.delivery_log.flush()  # what was answered before this request is listed
    deliveries, total = await receiver.webhook_store.list_webhook_deliveries(name, limit, offset)
    if total == 0 and name not in receiver.webhooks:
        raise ApiError(404, _unknown(name, receiver))
    return json_response({"deliveries": [delivery_to_json(d) for d in deliveries], "total_entries": total})


async def close_delivery_log(app: web.Application) -> None:
    receiver = app.get(WEBHOOKS)
    if receiver is not None:
        await receiver.delivery_log.close()


def add_routes(app: web.Application, receiver: WebhookReceiver | None) -> None:
    app[WEBHOOKS] = receiver
    app.router.add_post("/api/v1/webhooks/{name}", receive_delivery)
    app.router.add_get("/api/v1/webhooks/{name}/deliveries", list_deliveries)
    app.on_cleanup.append(close_delivery_log)
