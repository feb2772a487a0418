"""Diagnostic trouble codes: the current state per code, and every observation, described.

OBD-II codes carry their generic SAE J2012 description (manufacturer-specific codes have none);
J1939 codes carry the SPN's name, the FMI's meaning and the DM1 lamp states.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from fleetlink_cloud.api.auth import Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice, TimeWindow
from fleetlink_cloud.api.schemas import DtcPage, DtcStates, dtc_out, dtc_state_out

router = APIRouter(tags=["dtcs"], responses=error_responses(401, 403, 404, 422))


@router.get("/vehicles/{device_id}/dtcs")
async def dtc_states(
    principal: Reader,
    device_id: KnownDevice,
    ctx: Ctx,
    state: Annotated[
        Literal["active", "all"],
        Query(description="`active`: codes active now; `all`: cleared ones too"),
    ] = "active",
) -> DtcStates:
    """The current state of each code (active first, then newest first), with descriptions."""
    rows = await ctx.store.dtc_states(device_id, active_only=state == "active")
    return DtcStates(items=[dtc_state_out(r) for r in rows])


@router.get("/vehicles/{device_id}/dtcs/history", responses=error_responses(400))
async def dtc_history(
    principal: Reader, device_id: KnownDevice, window: TimeWindow, ctx: Ctx
) -> DtcPage:
    """Every DTC observation with `from <= ts < to` (device time), oldest first, paged."""
    page = await ctx.store.dtc_history(
        device_id,
        from_wall_ns=window.from_wall_ns,
        to_wall_ns=window.to_wall_ns,
        limit=window.limit,
        cursor=window.cursor,
    )
    return DtcPage(items=[dtc_out(r) for r in page.items], next_cursor=page.next_cursor)
