"""Operators: API tokens, the audit log, ingest's dead letters and service counters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from fleetlink_cloud import tokens
from fleetlink_cloud.api.auth import Admin
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import AfterId, Limit, clamp
from fleetlink_cloud.api.schemas_admin import (
    AuditList,
    AuditOut,
    DeadLetterList,
    StatusOut,
    TokenCreated,
    TokenIn,
    TokenList,
    TokenOut,
    dead_letter_out,
)

router = APIRouter(tags=["admin"], responses=error_responses(401, 403, 422))

TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="12 hex digits")]


@router.get("/tokens")
async def list_tokens(principal: Admin, ctx: Ctx) -> TokenList:
    """Every API token, revoked ones too (never the secret)."""
    return TokenList(items=[TokenOut.model_validate(t) for t in await ctx.store.list_tokens()])


@router.post("/tokens", status_code=201, responses=error_responses(400, 413))
async def create_token(principal: Admin, body: TokenIn, request: Request, ctx: Ctx) -> TokenCreated:
    """Mint a token of one scope. The response holds the token itself, shown once."""
    new = tokens.generate()
    row = await ctx.store.create_token(
        new.token_id,
        name=body.name,
        scope=body.scope,
        token_hash=new.secret_hash,
        created_wall_ns=ctx.clock(),
    )
    request.state.audit_detail = f"token {row.token_id} {row.scope} {row.name!r}"
    return TokenCreated(**TokenOut.model_validate(row).model_dump(), token=new.token)


@router.delete("/tokens/{token_id}", responses=error_responses(404))
async def revoke_token(principal: Admin, token_id: TokenId, request: Request, ctx: Ctx) -> TokenOut:
    """Revoke a token: from now on it gets 401. Revoking again keeps the first time."""
    row = await ctx.store.revoke_token(token_id, revoked_wall_ns=ctx.clock())
    request.state.audit_detail = f"token {token_id} revoked"
    return TokenOut.model_validate(row)


@router.get("/audit")
async def list_audit(
    principal: Admin, ctx: Ctx, after_id: AfterId = 0, limit: Limit = 100
) -> AuditList:
    """The audit log of writes, oldest first; page with `after_id` = the last id seen."""
    rows = await ctx.store.list_audit(limit=clamp(ctx, limit), after_id=after_id)
    return AuditList(items=[AuditOut.model_validate(r) for r in rows])


@router.get("/dead-letters")
async def list_dead_letters(
    principal: Admin, ctx: Ctx, after_id: AfterId = 0, limit: Limit = 100
) -> DeadLetterList:
    """Messages ingest refused, with the reason and the raw payload, oldest first."""
    rows = await ctx.store.list_dead_letters(limit=clamp(ctx, limit), after_id=after_id)
    return DeadLetterList(items=[dead_letter_out(r) for r in rows])


@router.get("/status")
async def service_status(principal: Admin, ctx: Ctx) -> StatusOut:
    """Store row counts, the API's rejection and drop counters, and the event bus's."""
    c = ctx.counters
    return StatusOut(
        schema_version=await ctx.store.schema_version(),
        counts=dict((await ctx.store.stats()).counts),
        api={
            "unauthenticated": c.unauthenticated,
            "forbidden": c.forbidden,
            "audit_failures": c.audit_failures,
            "stream_dropped": c.stream_dropped,
        },
        bus=dict(ctx.bus.counters),
        stream_subscribers=ctx.bus.subscribers,
    )
