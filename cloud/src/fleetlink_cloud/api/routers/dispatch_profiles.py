"""A vehicle's dispatch profile: skills, capacity, home depot, shifts with breaks, driver, and
whether it may be given work at all. A vehicle without one has the defaults (always on shift,
no skills, no capacity limits, dispatchable)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from fleetlink_cloud.api.auth import Dispatcher, Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice
from fleetlink_cloud.api.schemas_jobs import (
    DispatchProfileIn,
    DispatchProfileOut,
    profile_of,
    profile_out,
)
from fleetlink_cloud.dispatch.model import VehicleProfile

router = APIRouter(tags=["dispatch profiles"], responses=error_responses(401, 403, 422))


@router.get("/vehicles/{device_id}/dispatch", responses=error_responses(404))
async def get_dispatch_profile(
    principal: Reader, device_id: KnownDevice, ctx: Ctx
) -> DispatchProfileOut:
    """The vehicle's dispatch profile (`stored: false`: none was set, the defaults apply)."""
    profile = await ctx.store.get_vehicle_profile(device_id)
    if profile is None:
        return profile_out(VehicleProfile(device_id), stored=False)
    return profile_out(profile, stored=True)


@router.put("/vehicles/{device_id}/dispatch", responses=error_responses(400, 404, 413))
async def put_dispatch_profile(
    principal: Dispatcher,
    device_id: KnownDevice,
    body: DispatchProfileIn,
    request: Request,
    ctx: Ctx,
) -> DispatchProfileOut:
    """Replace the vehicle's dispatch profile; its depot and driver must exist (404)."""
    stored = await ctx.store.put_vehicle_profile(profile_of(device_id, body))
    request.state.audit_detail = f"dispatch profile of {device_id}"
    return profile_out(stored, stored=True)
