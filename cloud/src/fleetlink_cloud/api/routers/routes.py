"""A vehicle's route as the live dispatcher plans it: the remaining stops in service order, each
with its planned arrival and the latest ETA with its early/late range.

The dispatcher stores the route whenever it changes and whenever an ETA moved by more than
``dispatch.eta_change_threshold_s``, so the ETAs here are at most that far from its latest walk.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from fleetlink_cloud.api.auth import Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice
from fleetlink_cloud.api.schemas import Out
from fleetlink_cloud.api.schemas_jobs import GeoPoint, WindowSpec
from fleetlink_cloud.store.base import PlannedStop, RouteRow

router = APIRouter(tags=["dispatch routes"], responses=error_responses(401, 403, 422))


class RouteStopOut(Out):
    job_id: str
    kind: str = Field(description="`single`, `pickup` or `delivery`")
    location: GeoPoint
    windows: list[WindowSpec]
    service_s: int
    demand: list[int]
    started: bool = Field(description="The vehicle is at this stop: work has begun")
    planned_arrival_unix_s: int | None = Field(description="When the plan expected it")
    eta_unix_s: int | None = Field(description="Expected arrival from the latest ETA walk")
    early_unix_s: int | None = Field(description="Arrival at the fast learned speeds")
    late_unix_s: int | None = Field(description="Arrival at the slow learned speeds")
    lateness_s: int = Field(description="Service start after the stop's windows (0: on time)")


class RouteOut(Out):
    vehicle_id: str
    updated_wall_ns: int | None = Field(description="When it was stored (None: never)")
    stops: list[RouteStopOut]


def stop_out(planned: PlannedStop) -> RouteStopOut:
    s = planned.stop
    return RouteStopOut(
        job_id=s.job_id,
        kind=s.kind.value,
        location=GeoPoint(lat_deg=s.location.lat, lon_deg=s.location.lon),
        windows=[WindowSpec(start_unix_s=w.start, end_unix_s=w.end) for w in s.windows],
        service_s=s.service_s,
        demand=list(s.demand),
        started=s.started,
        planned_arrival_unix_s=s.arrival,
        eta_unix_s=planned.eta,
        early_unix_s=planned.early,
        late_unix_s=planned.late,
        lateness_s=planned.lateness_s,
    )


def route_out(vehicle_id: str, row: RouteRow | None) -> RouteOut:
    if row is None:
        return RouteOut(vehicle_id=vehicle_id, updated_wall_ns=None, stops=[])
    return RouteOut(
        vehicle_id=vehicle_id,
        updated_wall_ns=row.updated_wall_ns,
        stops=[stop_out(p) for p in row.stops],
    )


@router.get("/vehicles/{device_id}/route", responses=error_responses(404))
async def get_route(principal: Reader, device_id: KnownDevice, ctx: Ctx) -> RouteOut:
    """The vehicle's remaining stops, in order, with ETAs and their ranges (empty: no work)."""
    return route_out(device_id, await ctx.store.get_vehicle_route(device_id))
