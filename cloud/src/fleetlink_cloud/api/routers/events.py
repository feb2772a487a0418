"""Edge events (harsh braking, ignition, geofence...) across the fleet or of one vehicle."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetlink_cloud.api.auth import Reader
from fleetlink_cloud.api.deps import ApiContext, Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice, TimeWindow, Window
from fleetlink_cloud.api.schemas import EventPage, event_out
from fleetlink_protocols.topics import DEVICE_ID_PATTERN

router = APIRouter(tags=["events"], responses=error_responses(400, 401, 403, 422))

Kind = Annotated[
    str | None, Query(description="Only events of this kind", min_length=1, max_length=64)
]


async def _page(ctx: ApiContext, device_id: str | None, kind: str | None, w: Window) -> EventPage:
    page = await ctx.store.events(
        device_id=device_id,
        kind=kind,
        from_wall_ns=w.from_wall_ns,
        to_wall_ns=w.to_wall_ns,
        limit=w.limit,
        cursor=w.cursor,
    )
    return EventPage(items=[event_out(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/events")
async def list_events(
    principal: Reader,
    window: TimeWindow,
    ctx: Ctx,
    kind: Kind = None,
    device_id: Annotated[
        str | None,
        Query(description="Only this vehicle's", pattern=DEVICE_ID_PATTERN.pattern),
    ] = None,
) -> EventPage:
    """Edge events of the fleet with `from <= ts < to` (device time), oldest first, paged."""
    return await _page(ctx, device_id, kind, window)


@router.get("/vehicles/{device_id}/events", responses=error_responses(404))
async def vehicle_events(
    principal: Reader, device_id: KnownDevice, window: TimeWindow, ctx: Ctx, kind: Kind = None
) -> EventPage:
    """One vehicle's edge events with `from <= ts < to` (device time), oldest first, paged."""
    return await _page(ctx, device_id, kind, window)
