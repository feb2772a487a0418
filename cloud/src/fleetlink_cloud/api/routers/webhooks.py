"""Webhooks: subscriptions of dispatch backends to stream events, and their delivery log.

Deliveries are signed POSTs (see ``fleetlink_cloud.webhooks`` for the format and signature).
A new webhook starts from now: it receives events committed after its creation.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from fleetlink_cloud.api.auth import Dispatcher
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import MAX_ID, Limit, clamp
from fleetlink_cloud.api.schemas_admin import (
    ID_PATTERN,
    DeliveryList,
    DeliveryOut,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
)
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store.base import AlreadyExists, Webhook
from fleetlink_cloud.webhooks import generate_secret

router = APIRouter(tags=["webhooks"], responses=error_responses(401, 403, 422))

WebhookId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]


def _out(hook: Webhook) -> WebhookOut:
    return WebhookOut.model_validate(hook)


@router.get("/webhooks")
async def list_webhooks(principal: Dispatcher, ctx: Ctx) -> WebhookList:
    """Every webhook (secrets are never shown again after creation)."""
    return WebhookList(items=[_out(h) for h in await ctx.store.list_webhooks()])


@router.post("/webhooks", status_code=201, responses=error_responses(400, 409, 413))
async def create_webhook(
    principal: Dispatcher, body: WebhookIn, request: Request, ctx: Ctx
) -> WebhookCreated:
    """Subscribe a URL to event types. The response holds the signing secret, shown once.

    A client-chosen `id` makes a retried creation safe: the second attempt answers 409.
    """
    hook_id = body.id or "wh_" + secrets.token_hex(8)
    try:
        hook = await ctx.store.create_webhook(
            hook_id,
            url=str(body.url),
            secret=generate_secret(),
            event_types=body.event_types,
            created_wall_ns=ctx.clock(),
            cursor=await ctx.store.latest_stream_event_id(),
        )
    except AlreadyExists:
        raise HTTPException(409, f"webhook {hook_id!r} exists") from None
    request.state.audit_detail = f"webhook {hook.id} {','.join(hook.event_types)}"
    return WebhookCreated(**_out(hook).model_dump(), secret=hook.secret)


@router.get("/webhooks/{webhook_id}", responses=error_responses(404))
async def get_webhook(principal: Dispatcher, webhook_id: WebhookId, ctx: Ctx) -> WebhookOut:
    """One webhook: its subscription, state and failure count."""
    hook = await ctx.store.get_webhook(webhook_id)
    if hook is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return _out(hook)


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404),
)
async def delete_webhook(
    principal: Dispatcher, webhook_id: WebhookId, request: Request, ctx: Ctx
) -> None:
    """Delete a webhook and its delivery log."""
    await ctx.store.delete_webhook(webhook_id)
    request.state.audit_detail = f"webhook {webhook_id} deleted"


@router.post("/webhooks/{webhook_id}/enable", responses=error_responses(404))
async def enable_webhook(
    principal: Dispatcher, webhook_id: WebhookId, request: Request, ctx: Ctx
) -> WebhookOut:
    """Resume deliveries (from where it stopped) and reset the failure count."""
    hook = await ctx.store.set_webhook_enabled(webhook_id, True)
    request.state.audit_detail = f"webhook {webhook_id} enabled"
    return _out(hook)


@router.post("/webhooks/{webhook_id}/disable", responses=error_responses(404))
async def disable_webhook(
    principal: Dispatcher, webhook_id: WebhookId, request: Request, ctx: Ctx
) -> WebhookOut:
    """Stop deliveries until enabled again."""
    reason = f"disabled through the API by token {principal.token_id} ({principal.name})"
    hook = await ctx.store.set_webhook_enabled(webhook_id, False, reason=reason)
    request.state.audit_detail = f"webhook {webhook_id} disabled"
    return _out(hook)


@router.get("/webhooks/{webhook_id}/deliveries", responses=error_responses(404))
async def list_deliveries(
    principal: Dispatcher,
    webhook_id: WebhookId,
    ctx: Ctx,
    limit: Limit = 100,
    event_id: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="Only attempts of this event")
    ] = None,
) -> DeliveryList:
    """The delivery log, newest first: every attempt with its status code or error."""
    if await ctx.store.get_webhook(webhook_id) is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    rows = await ctx.store.deliveries(webhook_id, limit=clamp(ctx, limit), event_id=event_id)
    return DeliveryList(items=[DeliveryOut.model_validate(d) for d in rows])
