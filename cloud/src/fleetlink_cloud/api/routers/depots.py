"""Depots: where vehicles' shifts start and end. Several per fleet; ids are chosen by the client.

``PUT`` creates or replaces one (201 or 200); a depot a vehicle's dispatch profile still names
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
from fleetlink_cloud.api.schemas_jobs import DepotIn, DepotList, DepotOut, depot_of, depot_out
from fleetlink_cloud.errors import NotFound

router = APIRouter(tags=["depots"], responses=error_responses(401, 403, 422))

DepotId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64, description="The depot id")]


@router.get("/depots")
async def list_depots(principal: Reader, ctx: Ctx) -> DepotList:
    """Every depot, by id."""
    return DepotList(items=[depot_out(d) for d in await ctx.store.list_depots()])


@router.get("/depots/{depot_id}", responses=error_responses(404))
async def get_depot(principal: Reader, depot_id: DepotId, ctx: Ctx) -> DepotOut:
    """One depot."""
    depot = await ctx.store.get_depot(depot_id)
    if depot is None:
        raise NotFound(f"no depot {depot_id!r}")
    return depot_out(depot)


@router.put(
    "/depots/{depot_id}",
    responses={
        **error_responses(400, 413),
        201: {"model": DepotOut, "description": "Created"},
    },
)
async def put_depot(
    principal: Dispatcher,
    depot_id: DepotId,
    body: DepotIn,
    request: Request,
    response: Response,
    ctx: Ctx,
) -> DepotOut:
    """Create (201) or replace (200) a depot."""
    depot = depot_of(depot_id, body)
    created = await ctx.store.put_depot(depot)
    request.state.audit_detail = f"depot {depot_id} {'created' if created else 'replaced'}"
    if created:
        response.status_code = 201
    return depot_out(depot)


@router.delete(
    "/depots/{depot_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409),
)
async def delete_depot(
    principal: Dispatcher, depot_id: DepotId, request: Request, ctx: Ctx
) -> None:
    """Delete a depot no vehicle's dispatch profile names."""
    with dispatch_errors():
        await ctx.store.delete_depot(depot_id)
    request.state.audit_detail = f"depot {depot_id} deleted"
