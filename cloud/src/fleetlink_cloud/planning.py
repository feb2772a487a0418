"""Batch planning: every open job onto the fleet at once, from the store's state, on request.

:class:`Planner` reads the open jobs, the vehicles with their dispatch profiles (none: always on
shift, no skills, no capacity limit), drivers, depots and live positions into a
:class:`~fleetlink_cloud.dispatch.fleet_plan.FleetProblem`: each route starts at the vehicle's
last fix, its jobs in the live routes' order (``routes``), else arrived, en route, then by
creation; started and announced stops stay fixed. A vehicle silent over ``offline_after_s``, or
with neither a position nor a depot, takes no new work (its free jobs move: ``forced`` churn).
The router gives travel times (the builtin model by default, computed in the worker thread with
VROOM: both block). A plan is a dry run unless applied through ``apply(routes, reason)``, the
live dispatcher's; plans run one at a time, and the last ``keep`` are remembered.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from fleetlink_cloud.dispatch.churn import ChurnLimitBroken
from fleetlink_cloud.dispatch.fleet_plan import (
    FleetPlan,
    FleetProblem,
    FleetVehicle,
    Matrix,
    PlanOptions,
    StopKey,
)
from fleetlink_cloud.dispatch.insertion import route_stops
from fleetlink_cloud.dispatch.model import (
    Depot,
    DispatchError,
    Driver,
    Job,
    JobState,
    Location,
    Reason,
    RouteStop,
    VehicleProfile,
    VehicleRoute,
    default_profile,
    fits,
)
from fleetlink_cloud.dispatch.routing import Router, RouterError, RouterSettings, builtin_model
from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel
from fleetlink_cloud.dispatch.settings import PlanSettings
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store.base import Store, VehicleState

Apply = Callable[[Mapping[str, Sequence[RouteStop]], str], Awaitable[Any]]
"""The live dispatcher's hook: every planned vehicle's new stops (arrivals set), and why."""

CurrentRoutes = Callable[[], Awaitable[Mapping[str, Sequence[RouteStop]]]]
"""The live routes (vehicle id -> its remaining stops, in order), to start re-plans from."""

OPEN_STATES: Final = tuple(s for s in JobState if not s.terminal)  # new .. arrived
APPLY_REASON: Final = "batch_plan"  # the reason code an applied plan's changes carry
_NS: Final = 1_000_000_000
_RANK: Final = {JobState.ARRIVED: 0, JobState.EN_ROUTE: 1}  # the rest follow, by creation


class PlanningError(DispatchError):
    """Base of the batch planner's errors."""


class PlansCannotBeApplied(PlanningError):
    """Applying was asked for but no live dispatcher was given (an API maps it to 409)."""


class PlanFailed(PlanningError):
    """The router or the solver failed (an API maps it to 503)."""


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """``churn_limit`` "default" takes the settings'; None lifts the limit. ``vehicles``: plan
    only these (their jobs and the unassigned ones); None: the whole fleet."""

    churn_limit: int | Literal["default"] | None = "default"
    time_limit_s: float | None = None
    vehicles: tuple[str, ...] | None = None
    apply: bool = False


@dataclass(frozen=True, slots=True)
class Unassigned:
    job_id: str
    reason: Reason


@dataclass(frozen=True, slots=True)
class Fleet:
    """The planner's view of the store at ``now``, ready to become a FleetProblem."""

    now: int
    vehicles: tuple[FleetVehicle, ...]
    jobs: tuple[Job, ...]
    depots: tuple[Depot, ...]
    locations: tuple[Location, ...]
    started: frozenset[StopKey]


@dataclass(frozen=True, slots=True)
class PlanResult:
    """A computed plan: ``plan`` on ``fleet``; ``routes`` is what applying it sends."""

    id: str
    created_wall_ns: int
    fleet: Fleet
    plan: FleetPlan
    churn_limit: int | None
    time_limit_s: float
    seconds: float
    unassigned: tuple[Unassigned, ...]
    routes: Mapping[str, tuple[RouteStop, ...]]
    applied: bool = False


# -- the fleet from the store (pure) -------------------------------------------------------------


def _usable(state: VehicleState, now: int, offline_after_s: int) -> bool:
    """Online, or silent for at most ``offline_after_s`` (a tunnel is not a breakdown)."""
    seen = state.presence.last_seen_wall_ns
    return state.presence.online or (seen is not None and now - seen // _NS <= offline_after_s)


def _ordered(
    jobs: Sequence[Job], current: Sequence[RouteStop]
) -> tuple[tuple[RouteStop, ...], set[StopKey]]:
    """The vehicle's stops: the live route's order for its jobs, then the others (arrived, en
    route, the rest by creation); (stops, the started ones: an arrived job's first stop)."""
    mine = {j.id: j for j in jobs}
    listed = [s for s in current if s.job_id in mine]
    rest = sorted(
        (j for j in jobs if j.id not in {s.job_id for s in listed}),
        key=lambda j: _RANK.get(j.state, 2),
    )
    arrived = [s for j in rest if j.state is JobState.ARRIVED for s in route_stops(j)]
    later = [s for j in rest if j.state is not JobState.ARRIVED for s in route_stops(j)]
    stops = [*arrived, *listed, *later]  # an arrived job is where the vehicle is now
    started: set[StopKey] = set()
    seen: set[str] = set()
    out: list[RouteStop] = []
    for s in stops:
        first = s.job_id not in seen
        seen.add(s.job_id)
        begun = s.started or (first and mine[s.job_id].state is JobState.ARRIVED)
        if begun:
            started.add((s.job_id, s.kind))
        out.append(replace(s, started=begun))
    return tuple(out), started


def build_fleet(
    now: int,
    states: Sequence[VehicleState],
    profiles: Mapping[str, VehicleProfile],
    drivers: Mapping[str, Driver],
    depots: Sequence[Depot],
    jobs: Sequence[Job],
    current: Mapping[str, Sequence[RouteStop]],
    settings: PlanSettings,
    only: Iterable[str] | None = None,
    faulted: AbstractSet[str] = frozenset(),
) -> Fleet:
    """The fleet to plan at ``now`` (Unix s); ``only`` limits it to those vehicles; ``faulted``
    vehicles (a critical fault) take no work: their jobs move (``forced``), as the fault rule
    moves them live. Raises NotFound for a vehicle in ``only`` that is not registered and
    enabled."""
    enabled = {s.device.id: s for s in states if not s.device.disabled}
    chosen = sorted(enabled) if only is None else sorted(set(only))
    missing = [v for v in chosen if v not in enabled]
    if missing:
        raise NotFound(f"no vehicle {missing[0]!r}")
    kept = [j for j in jobs if _planned(j, set(chosen), only is None)]
    dims = max((len(j.demand) for j in kept), default=0)
    vehicles: list[FleetVehicle] = []
    started: set[StopKey] = set()
    for vid in chosen:
        profile = profiles.get(vid) or default_profile(vid, dims)
        mine = [j for j in kept if j.vehicle_id == vid and j.state.with_vehicle]
        stops, begun = _ordered(mine, current.get(vid, ()))
        started |= begun
        depot = next((d for d in depots if d.id == profile.depot_id), None)
        vehicle = _vehicle(now, enabled[vid], profile, depot, stops, settings.offline_after_s)
        if vid in faulted:
            vehicle = replace(vehicle, profile=replace(vehicle.profile, dispatchable=False))
        driver = drivers.get(profile.driver_id) if profile.driver_id else None
        vehicles.append(replace(vehicle, driver=driver))
    locations = [d.location for d in depots]
    locations += [v.route.origin for v in vehicles if v.route is not None]
    locations += [s.location for v in vehicles if v.route for s in v.route.stops]
    locations += [st.location for j in kept for _, st in j.stops()]
    unique = tuple(dict.fromkeys(locations))
    return Fleet(now, tuple(vehicles), tuple(kept), tuple(depots), unique, frozenset(started))


def _vehicle(
    now: int,
    state: VehicleState,
    profile: VehicleProfile,
    depot: Depot | None,
    stops: tuple[RouteStop, ...],
    offline_after_s: int,
) -> FleetVehicle:
    """From its last fix, else its depot; no new work if silent too long or nowhere known."""
    fix, route = state.position, None
    if fix is not None:
        at = Location(fix.lat_deg, fix.lon_deg)
        route = VehicleRoute(profile.id, at, min(now, fix.ts_wall_ns // _NS), stops)
    elif depot is not None and stops:
        route = VehicleRoute(profile.id, depot.location, now, stops)
    if not _usable(state, now, offline_after_s) or (fix is None and depot is None):
        profile = replace(profile, dispatchable=False)
    return FleetVehicle(profile, route)


def _planned(job: Job, vehicles: set[str], whole_fleet: bool) -> bool:
    """Whether ``job`` belongs in a plan of ``vehicles``: free jobs do, unless locked to a
    vehicle left out of a partial plan; jobs on a vehicle do if it is planned, or (the whole
    fleet) if the vehicle is gone and work has not begun."""
    if job.state.with_vehicle and job.vehicle_id is not None:
        if job.vehicle_id in vehicles:
            return True
        return whole_fleet and not job.state.started
    return job.locked_vehicle_id is None or job.locked_vehicle_id in vehicles or whole_fleet


def builtin_matrix(model: GreatCircleModel, locations: Sequence[Location], now: int) -> Matrix:
    """Whole seconds (rounded up, so a plan is never optimistic) and metres between locations."""
    durations = [[math.ceil(model.leg_s(a, b, now)) for b in locations] for a in locations]
    distances = [[round(model.distance_m(a, b)) for b in locations] for a in locations]
    return Matrix(durations, distances)


def unassigned_reason(job: Job, fleet: Fleet, available: set[str]) -> Reason:
    """Why the plan left ``job`` out, checked in this order: no vehicle can take new work, the
    lock names one that cannot, no such vehicle has the skills, or the room, else no route meets
    its windows within a shift beside the other work (``window_vs_shift``)."""
    able = [v for v in fleet.vehicles if v.profile.id in available]
    if not able:
        return Reason.NO_VEHICLES
    if job.locked_vehicle_id is not None:
        able = [v for v in able if v.profile.id == job.locked_vehicle_id]
        if not able:
            return Reason.LOCKED
    able = [v for v in able if job.skills <= v.skills]
    if not able:
        return Reason.SKILLS
    if not any(fits(job.demand, v.profile.capacity) for v in able):
        return Reason.CAPACITY
    return Reason.WINDOW_VS_SHIFT


def planned_routes(fleet: Fleet, plan: FleetPlan) -> dict[str, tuple[RouteStop, ...]]:
    """Every planned vehicle's new stops as the live dispatcher takes them (arrivals set)."""
    stops = {(s.job_id, s.kind): s for j in fleet.jobs for s in route_stops(j)}
    out: dict[str, tuple[RouteStop, ...]] = {}
    for r in plan.routes:
        keys = [(ps.arrival, (ps.job_id, ps.kind)) for ps in r.stops]
        out[r.vehicle_id] = tuple(
            replace(stops[k], arrival=t, started=k in fleet.started) for t, k in keys
        )
    return out


def _solve(fleet: Fleet, matrix: Matrix | GreatCircleModel, options: PlanOptions) -> FleetPlan:
    """The blocking part, for a worker thread: the builtin matrix if asked for, then VROOM."""
    from fleetlink_cloud.dispatch.vroom_solver import SolverError, plan_fleet  # loads pyvroom

    if not fleet.locations:  # nothing anywhere; VROOM refuses an empty matrix
        return FleetPlan((), ())
    if isinstance(matrix, GreatCircleModel):
        matrix = builtin_matrix(matrix, fleet.locations, fleet.now)
    problem = FleetProblem(
        fleet.now, fleet.vehicles, fleet.jobs, fleet.locations, matrix, fleet.depots, options
    )
    try:
        return plan_fleet(problem)
    except (SolverError, ChurnLimitBroken) as exc:
        raise PlanFailed(f"the solver failed: {exc}") from exc


# -- the service -------------------------------------------------------------------------------


class Planner:
    """Plans the fleet from the store on request; see the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        settings: PlanSettings | None = None,
        router: Router | None = None,
        apply: Apply | None = None,
        routes: CurrentRoutes | None = None,
        faulted: Callable[[], AbstractSet[str]] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self.settings = settings or PlanSettings()
        self._router: Router = router or builtin_model(RouterSettings())
        self._apply = apply
        self._routes = routes
        self._faulted = faulted  # the live dispatcher's vehicles with a critical fault
        self._clock = clock
        self._lock = asyncio.Lock()
        self._recent: OrderedDict[str, PlanResult] = OrderedDict()

    def get(self, plan_id: str) -> PlanResult | None:
        """One of the last ``keep`` plans, or None."""
        return self._recent.get(plan_id)

    async def plan(self, request: PlanRequest) -> PlanResult:
        """Plan the fleet (and apply it when asked). Raises PlansCannotBeApplied, NotFound (an
        unknown vehicle in ``request.vehicles``), PlanFailed."""
        if request.apply and self._apply is None:
            raise PlansCannotBeApplied(
                "this service has no live dispatcher to apply plans to; plan without apply"
            )
        s = self.settings
        limit = s.churn_limit if request.churn_limit == "default" else request.churn_limit
        seconds = min(request.time_limit_s or s.time_limit_s, s.max_time_limit_s)
        options = PlanOptions(
            churn_limit=limit,
            exploration_level=s.exploration_level,
            time_limit_s=seconds,
            threads=s.threads,
        )
        async with self._lock:  # one plan at a time: each starts from the last one applied
            created = self._clock()
            fleet = await self._fleet(created // _NS, request.vehicles)
            started = time.perf_counter()
            matrix: Matrix | GreatCircleModel
            if isinstance(self._router, GreatCircleModel):
                matrix = self._router  # CPU work: computed in the worker thread
            else:
                matrix = await self._fetch(fleet)
            plan = await asyncio.to_thread(_solve, fleet, matrix, options)
            result = PlanResult(
                id="plan_" + secrets.token_hex(8),
                created_wall_ns=created,
                fleet=fleet,
                plan=plan,
                churn_limit=limit,
                time_limit_s=seconds,
                seconds=time.perf_counter() - started,
                unassigned=self._reasons(fleet, plan),
                routes=planned_routes(fleet, plan),
            )
            if request.apply and self._apply is not None:
                await self._apply(result.routes, APPLY_REASON)
                result = replace(result, applied=True)
            self._remember(result)
            return result

    async def _fleet(self, now: int, only: Sequence[str] | None) -> Fleet:
        store, jobs, cursor = self._store, list[Job](), None
        while True:
            page = await store.list_jobs(states=OPEN_STATES, cursor=cursor)
            jobs += [r.job for r in page.items]
            if (cursor := page.next_cursor) is None:
                break
        profiles = {p.id: p for p in await store.list_vehicle_profiles()}
        drivers = {d.id: d for d in await store.list_drivers()}
        current = await self._routes() if self._routes is not None else {}
        states, depots = await store.vehicles(), await store.list_depots()
        faulted = self._faulted() if self._faulted is not None else frozenset()
        return build_fleet(
            now, states, profiles, drivers, depots, jobs, current, self.settings, only, faulted
        )

    async def _fetch(self, fleet: Fleet) -> Matrix:
        try:
            got = await self._router.matrix(fleet.locations, fleet.locations, fleet.now)
        except RouterError as exc:
            raise PlanFailed(f"the router failed: {exc}") from exc
        return Matrix(
            [[math.ceil(t) for t in row] for row in got.durations_s],
            [[round(d) for d in row] for row in got.distances_m],
        )

    @staticmethod
    def _reasons(fleet: Fleet, plan: FleetPlan) -> tuple[Unassigned, ...]:
        jobs = {j.id: j for j in fleet.jobs}
        available = {v.profile.id for v in fleet.vehicles if v.profile.dispatchable}
        return tuple(
            Unassigned(j, unassigned_reason(jobs[j], fleet, available)) for j in plan.unassigned
        )

    def _remember(self, result: PlanResult) -> None:
        self._recent[result.id] = result
        while len(self._recent) > self.settings.keep:
            self._recent.popitem(last=False)
