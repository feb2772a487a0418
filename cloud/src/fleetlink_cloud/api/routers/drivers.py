"""Drivers: people with skills (added to the vehicle's while they drive it). Ids are the client's.

``PUT`` creates or replaces one (201 or 200); a driver a vehicle's dispatch profile still names
cannot be deleted (409).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from fleetlink_cloud.api.auth import Dispatcher, Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.routers.jobs import dispatch_errors
from fleetlink_cloud.api.schemas_admin import ID_PATTERN
from fleetlink_cloud.api.schemas_jobs import DriverIn, DriverList, DriverOut, driver_of, driver_out
from fleetlink_cloud.errors import NotFound

router = APIRouter(tags=["drivers"], responses=error_responses(401, 403, 422))

DriverId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64, description="The driver id")]


@router.get("/drivers")
async def list_drivers(principal: Reader, ctx: Ctx) -> DriverList:
    """Every driver, by id."""
    return DriverList(items=[driver_out(d) for d in await ctx.store.list_drivers()])


@router.get("/drivers/{driver_id}", responses=error_responses(404))
async def get_driver(principal: Reader, driver_id: DriverId, ctx: Ctx) -> DriverOut:
    """One driver."""
    driver = await ctx.store.get_driver(driver_id)
    if driver is None:
        raise NotFound(f"no driver {driver_id!r}")
    return driver_out(driver)


@router.put(
    "/drivers/{driver_id}",
    responses={
        **error_responses(400, 413),
        201: {"model": DriverOut, "description": "Created"},
    },
)
async def put_driver(
    principal: Dispatcher,
    driver_id: DriverId,
    body: DriverIn,
    request: Request,
    response: Response,
    ctx: Ctx,
) -> DriverOut:
    """Create (201) or replace (200) a driver."""
    driver = driver_of(driver_id, body)
    created = await ctx.store.put_driver(driver)
    request.state.audit_detail = f"driver {driver_id} {'created' if created else 'replaced'}"
    if created:
        response.status_code = 201
    return driver_out(driver)


@router.delete(
    "/drivers/{driver_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409),
)
async def delete_driver(
    principal: Dispatcher, driver_id: DriverId, request: Request, ctx: Ctx
) -> None:
    """Delete a driver no vehicle's dispatch profile names."""
    with dispatch_errors():
        await ctx.store.delete_driver(driver_id)
    request.state.audit_detail = f"driver {driver_id} deleted"
