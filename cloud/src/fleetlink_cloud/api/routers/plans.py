"""Batch plans: plan every open job onto the fleet at once (VROOM), as a dry run or applied.

``POST /v1/plans`` plans from the store's current state within a churn limit (jobs that may
change vehicle) and answers the plan: each vehicle's route with arrival times, the jobs left
out and why, and how much it moves. ``apply: true`` hands the routes to the live dispatcher
(409 where this process has none). The last plans can be read back by id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import Field
from starlette.requests import HTTPConnection

from fleetlink_cloud.api.auth import Dispatcher, Reader
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.schemas import Out
from fleetlink_cloud.api.schemas_admin import In
from fleetlink_cloud.api.schemas_jobs import GeoPoint, VehicleId
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.planning import (
    PlanFailed,
    Planner,
    PlanRequest,
    PlanResult,
    PlansCannotBeApplied,
)

router = APIRouter(tags=["plans"], responses=error_responses(401, 403, 422))

PlanId = Annotated[
    str, Path(pattern=r"^plan_[0-9a-f]{16}$", max_length=21, description="The plan id")
]


def planner(conn: HTTPConnection) -> Planner:
    """The app's planner (``create_app`` makes one that cannot apply if none is given)."""
    service: Planner = conn.app.state.planner
    return service


Plans = Annotated[Planner, Depends(planner)]


class PlanIn(In):
    churn_limit: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Jobs already on a vehicle that may move to another; absent: the service's"
        " default, null: no limit",
    )
    time_limit_s: float | None = Field(
        default=None, gt=0, le=300, description="Search time; capped by the service"
    )
    vehicles: list[VehicleId] | None = Field(
        default=None,
        max_length=10_000,
        description="Plan only these vehicles, their jobs and the unassigned ones",
    )
    apply: bool = Field(default=False, description="Send the routes to the vehicles")


class PlannedStopOut(Out):
    job_id: str
    kind: str  # single, pickup or delivery
    location: GeoPoint
    arrival_unix_s: int
    service_start_unix_s: int
    lateness_s: int  # service start after the stop's last window closed
    fixed: bool  # started or announced: kept where it was


class BreakOut(Out):
    start_unix_s: int
    duration_s: int


class RouteOut(Out):
    vehicle_id: str
    stops: list[PlannedStopOut]
    breaks: list[BreakOut]
    end_unix_s: int | None  # back at its depot; null for an open route
    duration_s: int  # of the free part, after the fixed stops
    distance_m: int


class ChurnOut(Out):
    moved: list[str]  # on another vehicle that could have kept them
    forced: list[str]  # their vehicle can no longer take them
    dropped: list[str]  # had a vehicle, now unassigned
    reordered: int  # stops that kept their vehicle but moved within its route


class UnassignedOut(Out):
    job_id: str
    reason: str


class PlanOut(Out):
    id: str
    created_wall_ns: int
    planned_from_unix_s: int
    applied: bool
    churn_limit: int | None
    time_limit_s: float
    seconds: float  # travel matrix and solves
    solves: int
    pinned: int  # jobs the churn limit held on their vehicle
    vehicles: int
    jobs: int
    churn: ChurnOut
    unassigned: list[UnassignedOut]
    routes: list[RouteOut]


def plan_out(r: PlanResult) -> PlanOut:
    locs, plan = r.fleet.locations, r.plan
    routes = [
        RouteOut(
            vehicle_id=v.vehicle_id,
            stops=[
                PlannedStopOut(
                    job_id=s.job_id,
                    kind=s.kind.value,
                    location=GeoPoint(
                        lat_deg=locs[s.location_index].lat, lon_deg=locs[s.location_index].lon
                    ),
                    arrival_unix_s=s.arrival,
                    service_start_unix_s=s.service_start,
                    lateness_s=s.lateness_s,
                    fixed=s.fixed,
                )
                for s in v.stops
            ],
            breaks=[BreakOut(start_unix_s=b.start, duration_s=b.duration_s) for b in v.breaks],
            end_unix_s=v.end,
            duration_s=v.duration_s,
            distance_m=v.distance_m,
        )
        for v in plan.routes
    ]
    return PlanOut(
        id=r.id,
        created_wall_ns=r.created_wall_ns,
        planned_from_unix_s=r.fleet.now,
        applied=r.applied,
        churn_limit=r.churn_limit,
        time_limit_s=r.time_limit_s,
        seconds=round(r.seconds, 3),
        solves=plan.solves,
        pinned=plan.pinned,
        vehicles=len(r.fleet.vehicles),
        jobs=len(r.fleet.jobs),
        churn=ChurnOut(
            moved=list(plan.churn.moved),
            forced=list(plan.churn.forced),
            dropped=list(plan.churn.dropped),
            reordered=plan.churn.reordered,
        ),
        unassigned=[UnassignedOut(job_id=u.job_id, reason=u.reason.value) for u in r.unassigned],
        routes=routes,
    )


@router.post(
    "/plans",
    responses=error_responses(400, 404, 409, 413, 503),
    description=(
        "Plan every open job onto the fleet from its current state: started and announced "
        "stops stay, at most `churn_limit` jobs already on a vehicle move to another. A dry run "
        "unless `apply` is true (409 where no live dispatcher can take the routes). 404: a "
        "vehicle in `vehicles` is not registered or is disabled; 503: the solver or the router "
        "failed."
    ),
)
async def create_plan(
    principal: Dispatcher, body: PlanIn, request: Request, plans: Plans
) -> PlanOut:
    """Plan (and optionally apply); see the route's description."""
    wanted = PlanRequest(
        churn_limit=body.churn_limit if "churn_limit" in body.model_fields_set else "default",
        time_limit_s=body.time_limit_s,
        vehicles=None if body.vehicles is None else tuple(body.vehicles),
        apply=body.apply,
    )
    try:
        result = await plans.plan(wanted)
    except PlansCannotBeApplied as exc:
        raise HTTPException(409, str(exc)) from None
    except PlanFailed as exc:
        raise HTTPException(503, str(exc)) from None
    request.state.audit_detail = f"{result.id} {'applied' if result.applied else 'dry run'}"
    return plan_out(result)


@router.get("/plans/{plan_id}", responses=error_responses(404))
async def get_plan(principal: Reader, plan_id: PlanId, plans: Plans) -> PlanOut:
    """One of the service's recent plans (only the last few are kept, in memory)."""
    result = plans.get(plan_id)
    if result is None:
        raise NotFound(f"no plan {plan_id!r} (only the last {plans.settings.keep} are kept)")
    return plan_out(result)
