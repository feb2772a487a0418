"""Signals: the latest value of every signal of a vehicle, and one signal's history."""

from __future__ import annotations

from fastapi import APIRouter

from fleetlink_cloud.api.auth import Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice, SignalPath, TimeWindow
from fleetlink_cloud.api.schemas import LatestSignals, SignalPage, signal_out

router = APIRouter(tags=["signals"], responses=error_responses(401, 403, 404, 422))


@router.get("/vehicles/{device_id}/signals")
async def latest_signals(principal: Reader, device_id: KnownDevice, ctx: Ctx) -> LatestSignals:
    """The newest sample (by device time) of every signal path the vehicle reported."""
    latest = await ctx.store.signals_latest(device_id)
    return LatestSignals(
        device_id=device_id, signals={p: signal_out(s) for p, s in sorted(latest.items())}
    )


@router.get("/vehicles/{device_id}/signals/{path}", responses=error_responses(400))
async def signal_history(
    principal: Reader, device_id: KnownDevice, path: SignalPath, window: TimeWindow, ctx: Ctx
) -> SignalPage:
    """Samples of one signal with `from <= ts < to` (device time), oldest first, paged."""
    page = await ctx.store.signal_history(
        device_id,
        path,
        from_wall_ns=window.from_wall_ns,
        to_wall_ns=window.to_wall_ns,
        limit=window.limit,
        cursor=window.cursor,
    )
    return SignalPage(items=[signal_out(r) for r in page.items], next_cursor=page.next_cursor)
