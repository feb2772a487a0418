"""Planning the whole fleet: the problem, what a re-plan keeps fixed, and the plan.

Pure: no solver here (:func:`fleetlink_cloud.dispatch.vroom_solver.plan_fleet` solves it).
Travel comes as a :class:`Matrix` over ``FleetProblem.locations`` (row ``i`` is location ``i``),
so any router can supply it. Times are Unix seconds, as in :mod:`.model`. How a plan differs
from the previous one is :mod:`.churn`'s.

A re-plan keeps *fixed* what was promised or begun: a started stop (the vehicle is there) and
every remaining stop of a job announced to its customer stay on their vehicle, in their order,
at the head of its route; a pickup whose delivery is fixed is fixed too. Free work starts after
the head, where and when the head ends (:func:`split`). Goods already aboard (a shipment picked
up, its delivery not fixed) may be delivered in any order, but only by that vehicle.

A single job's demand is a delivery loaded where the route starts (as VROOM models it: the
depot, or mid-day the goods already carried); a shipment's is picked up and delivered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetlink_cloud.dispatch.model import (
    Depot,
    DispatchError,
    Driver,
    Job,
    Location,
    RouteStop,
    Shift,
    StopKind,
    TimeWindow,
    VehicleProfile,
    VehicleRoute,
)

StopKey = tuple[str, StopKind]  # (job id, which of its stops)


class FleetProblemError(DispatchError, ValueError):
    """The problem is inconsistent: a location missing from the matrix, an unknown job."""


class PlanIncomplete(DispatchError):
    """Jobs were left unassigned and ``allow_unassigned`` is off; ``plan`` is the best found."""

    def __init__(self, plan: FleetPlan) -> None:
        super().__init__(f"{len(plan.unassigned)} job(s) unassigned: {', '.join(plan.unassigned)}")
        self.plan = plan


@dataclass(frozen=True, slots=True)
class Matrix:
    """Travel between locations: ``durations_s[i][j]`` seconds, ``distances_m[i][j]`` metres."""

    durations_s: Sequence[Sequence[int]]
    distances_m: Sequence[Sequence[int]] | None = None


class PlanOptions(BaseModel):
    """How hard to search and how much of the previous plan may change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    churn_limit: int | None = Field(default=None, ge=0)  # free jobs that may change vehicle
    churn_rounds: int = Field(default=3, ge=1)  # solves at most; the last one enforces the limit
    exploration_level: int = Field(default=2, ge=1, le=5)  # VROOM's: 1 fast .. 5 thorough
    time_limit_s: float | None = Field(default=None, gt=0)  # over all solves
    threads: int = Field(default=1, ge=1)
    cost: Literal["duration", "distance"] = "duration"
    use_priority: bool = True  # when not everything fits, serve higher-priority jobs first
    allow_unassigned: bool = True  # False: raise PlanIncomplete instead of returning the plan


@dataclass(frozen=True, slots=True)
class FleetVehicle:
    """A vehicle as the planner sees it; ``route`` None means at its depot with nothing planned."""

    profile: VehicleProfile
    route: VehicleRoute | None = None
    driver: Driver | None = None

    @property
    def skills(self) -> frozenset[str]:
        return self.profile.skills | (self.driver.skills if self.driver else frozenset())


@dataclass(frozen=True, slots=True)
class FleetProblem:
    """Every open job and vehicle at ``now``, and the travel matrix between ``locations``."""

    now: int
    vehicles: tuple[FleetVehicle, ...]
    jobs: tuple[Job, ...]
    locations: tuple[Location, ...]
    matrix: Matrix
    depots: tuple[Depot, ...] = ()
    options: PlanOptions = field(default_factory=PlanOptions)

    def __post_init__(self) -> None:
        n = len(self.locations)
        for m in (self.matrix.durations_s, self.matrix.distances_m):
            if m is not None and (len(m) != n or any(len(row) != n for row in m)):
                raise FleetProblemError(f"the matrix must be {n} x {n}, like the locations")

    def index(self) -> dict[Location, int]:
        """Location -> its row in the matrix (the first, if listed twice)."""
        out: dict[Location, int] = {}
        for i, loc in enumerate(self.locations):
            out.setdefault(loc, i)
        return out


@dataclass(frozen=True, slots=True)
class PlannedStop:
    """A stop in a plan: when the vehicle arrives, when service starts, how late that is."""

    job_id: str
    kind: StopKind
    location_index: int
    arrival: int
    service_start: int
    lateness_s: int = 0  # service start after the stop's last window closed
    fixed: bool = False


@dataclass(frozen=True, slots=True)
class PlannedBreak:
    start: int
    duration_s: int


@dataclass(frozen=True, slots=True)
class VehiclePlan:
    vehicle_id: str
    stops: tuple[PlannedStop, ...]
    breaks: tuple[PlannedBreak, ...] = ()
    end: int | None = None  # arrival at the route's end (its depot), if it has one
    duration_s: int = 0  # of the part after the fixed head, as the solver reports it
    distance_m: int = 0


@dataclass(frozen=True, slots=True)
class Churn:
    """How a plan differs from the previous assignment of the jobs that were free to move."""

    moved: tuple[str, ...] = ()  # on another vehicle that was available to keep them
    forced: tuple[str, ...] = ()  # their vehicle can no longer take them (dropped out, off shift)
    dropped: tuple[str, ...] = ()  # had a vehicle, now unassigned
    reordered: int = 0  # stops that kept their vehicle but had to be moved within its route


@dataclass(frozen=True, slots=True)
class FleetPlan:
    routes: tuple[VehiclePlan, ...]
    unassigned: tuple[str, ...]
    churn: Churn = Churn()
    solves: int = 1
    pinned: int = 0  # jobs the churn limit held on their previous vehicle

    def assignment(self) -> dict[str, str]:
        """Job id -> vehicle id, for every job the plan serves."""
        return {s.job_id: r.vehicle_id for r in self.routes for s in r.stops}


@dataclass(frozen=True, slots=True)
class VehicleStart:
    """Where and when a vehicle's free work can begin, after its fixed head."""

    vehicle_id: str
    head: tuple[PlannedStop, ...]
    location_index: int | None  # None: an open route that starts at its first job
    time: int
    end_index: int | None  # its depot; None: the route ends at its last job
    shift: Shift | None  # the shift free work falls in; None: it can take no free work
    capacity: tuple[int, ...]  # less any load aboard that no remaining stop accounts for
    skills: frozenset[str]
    on_board: tuple[str, ...] = ()  # shipments aboard: only this vehicle may deliver them
    sequence: tuple[StopKey, ...] = ()  # its free stops in their previous order


@dataclass(frozen=True, slots=True)
class Split:
    vehicles: tuple[VehicleStart, ...]
    free: tuple[Job, ...]  # to plan; includes the shipments aboard (deliveries only)
    previous: Mapping[str, str]  # free job -> the vehicle it had (churn is counted on these)

    def available(self) -> frozenset[str]:
        return frozenset(v.vehicle_id for v in self.vehicles if v.shift is not None)


def service_start(windows: Sequence[TimeWindow], arrival: int) -> tuple[int, int]:
    """(service start, lateness in s) arriving at ``arrival``: wait for the first window open
    then; past every window, start at once and count how late after the last one closed."""
    for w in sorted(windows, key=lambda w: w.start):
        if arrival <= w.end:
            return max(arrival, w.start), 0
    if not windows:
        return arrival, 0
    return arrival, arrival - max(w.end for w in windows)


def lateness(windows: Sequence[TimeWindow], start: int) -> int:
    """Seconds a service starting at ``start`` is past its windows (0 inside one, or none)."""
    if not windows or any(w.start <= start <= w.end for w in windows):
        return 0
    past = [w.end for w in windows if w.end < start]
    return start - max(past) if past else 0


def split(problem: FleetProblem) -> Split:
    """Divide the fleet's state into each vehicle's fixed head and the jobs free to plan.

    Raises :class:`FleetProblemError` if a route names a job not in ``problem.jobs`` or a
    location is missing from ``problem.locations``.
    """
    jobs = {j.id: j for j in problem.jobs}
    index = problem.index()
    depots = {d.id: d for d in problem.depots}
    starts: list[VehicleStart] = []
    fixed: set[str] = set()
    on_board: set[str] = set()
    previous: dict[str, str] = {}
    for vehicle in problem.vehicles:
        start, fixed_ids = _vehicle_start(problem, vehicle, jobs, index, depots)
        starts.append(start)
        fixed |= fixed_ids - set(start.on_board)
        on_board |= set(start.on_board)
        for job_id, _ in start.sequence:
            if job_id not in start.on_board and not jobs[job_id].locked_vehicle_id:
                previous[job_id] = start.vehicle_id
    taken = fixed | on_board | previous.keys()
    for job in jobs.values():  # offered or assigned, not yet on a route
        if job.id not in taken and job.state.with_vehicle and not job.locked_vehicle_id:
            previous.update({job.id: job.vehicle_id} if job.vehicle_id else {})
    free = tuple(j for j in jobs.values() if j.id not in fixed and not j.state.terminal)
    for job in free:
        for _, stop in job.stops():
            _at(index, stop.location, f"job {job.id!r}")
    return Split(tuple(starts), free, previous)


def _vehicle_start(
    problem: FleetProblem,
    vehicle: FleetVehicle,
    jobs: Mapping[str, Job],
    index: Mapping[Location, int],
    depots: Mapping[str, Depot],
) -> tuple[VehicleStart, set[str]]:
    """The vehicle's start after its fixed head, and the ids of the jobs with a fixed stop."""
    profile = vehicle.profile
    end = _depot_index(profile, index, depots)
    route = vehicle.route
    for stop in route.stops if route else ():
        if stop.job_id not in jobs:
            raise FleetProblemError(
                f"vehicle {profile.id!r}: its route has unknown job {stop.job_id!r}"
            )
    # A stale route may still list work done or cancelled since: it is skipped.
    stops = [s for s in (route.stops if route else ()) if not jobs[s.job_id].state.terminal]
    keys = [(s.job_id, s.kind) for s in stops]
    fixed_keys, started = _fixed_keys(stops, jobs)
    where = _at(index, route.origin, f"vehicle {profile.id!r}") if route else end
    t = route.origin_time if route else problem.now
    head: list[PlannedStop] = []
    # Started work comes first whatever the route's order says: the vehicle is at it now.
    ordered = sorted(stops, key=lambda s: (s.job_id, s.kind) not in started)
    for stop in ordered:
        if (stop.job_id, stop.kind) not in fixed_keys:
            continue
        job = jobs[stop.job_id]
        target = dict(job.stops())[stop.kind]
        loc = _at(index, target.location, f"vehicle {profile.id!r}")
        if (stop.job_id, stop.kind) in started:  # already there: service began at its arrival
            arrival = stop.arrival if stop.arrival is not None else t
            begin, late = arrival, lateness(target.windows, arrival)
            t = max(t, arrival + target.service_s)
        else:
            travel = problem.matrix.durations_s[where][loc] if where is not None else 0
            arrival = t + travel
            begin, late = service_start(target.windows, arrival)
            t = begin + target.service_s
        where = loc
        head.append(PlannedStop(stop.job_id, stop.kind, loc, arrival, begin, late, fixed=True))
    present = set(keys)
    aboard = tuple(
        dict.fromkeys(
            j
            for j, kind in keys
            if kind is StopKind.DELIVERY
            and (j, kind) not in fixed_keys
            and ((j, StopKind.PICKUP) not in present or (j, StopKind.PICKUP) in fixed_keys)
        )
    )
    t = max(t, problem.now)
    return VehicleStart(
        vehicle_id=profile.id,
        head=tuple(head),
        location_index=where,
        time=t,
        end_index=end,
        shift=_shift(profile, t) if profile.dispatchable else None,
        capacity=_spare(profile.capacity, route.load, stops, jobs) if route else profile.capacity,
        skills=vehicle.skills,
        on_board=aboard,
        sequence=tuple(k for k in keys if k not in fixed_keys),
    ), {j for j, _ in fixed_keys}


def _fixed_keys(
    stops: Sequence[RouteStop], jobs: Mapping[str, Job]
) -> tuple[set[StopKey], set[StopKey]]:
    """(stops a re-plan keeps, the started ones among them): started stops, every stop of an
    announced job, and the pickup of any fixed delivery."""
    started: set[StopKey] = set()
    keys: set[StopKey] = set()
    seen: set[str] = set()
    for stop in stops:
        job = jobs[stop.job_id]
        first = stop.job_id not in seen  # a started job's work is at its first remaining stop
        seen.add(stop.job_id)
        if stop.started or (job.state.started and first):
            started.add((stop.job_id, stop.kind))
        if job.announced:
            keys.add((stop.job_id, stop.kind))
    keys |= started
    for stop in stops:
        if stop.kind is StopKind.PICKUP and (stop.job_id, StopKind.DELIVERY) in keys:
            keys.add((stop.job_id, StopKind.PICKUP))
    return keys, started


def route_start(
    problem: FleetProblem, vehicle: FleetVehicle, sequence: Sequence[StopKey]
) -> VehicleStart:
    """Where and when ``vehicle`` starts ``sequence`` taken as it is (plan mode): at its live
    origin, else its depot at ``now``; a delivery without its pickup in ``sequence`` is aboard."""
    index = problem.index()
    profile, route = vehicle.profile, vehicle.route
    end = _depot_index(profile, index, {d.id: d for d in problem.depots})
    t = route.origin_time if route else problem.now
    keys = set(sequence)
    aboard = (j for j, k in keys if k is StopKind.DELIVERY and (j, StopKind.PICKUP) not in keys)
    return VehicleStart(
        vehicle_id=profile.id,
        head=(),
        location_index=_at(index, route.origin, f"vehicle {profile.id!r}") if route else end,
        time=t,
        end_index=end,
        shift=_shift(profile, t),
        capacity=profile.capacity,
        skills=vehicle.skills,
        on_board=tuple(sorted(aboard)),
        sequence=tuple(sequence),
    )


def _depot_index(
    profile: VehicleProfile, index: Mapping[Location, int], depots: Mapping[str, Depot]
) -> int | None:
    if profile.depot_id is None:
        return None
    if profile.depot_id not in depots:
        raise FleetProblemError(f"vehicle {profile.id!r}: no depot {profile.depot_id!r}")
    return _at(index, depots[profile.depot_id].location, f"depot {profile.depot_id!r}")


def _at(index: Mapping[Location, int], location: Location, whose: str) -> int:
    try:
        return index[location]
    except KeyError:
        raise FleetProblemError(f"{whose}: {location} is not among the locations") from None


def _shift(profile: VehicleProfile, t: int) -> Shift | None:
    """The shift covering ``t``, else the next one to start."""
    now = profile.shift_at(t)
    if now is not None:
        return now
    later = [s for s in profile.shifts if s.start > t]
    return min(later, key=lambda s: s.start) if later else None


def _spare(
    capacity: Sequence[int],
    aboard: Sequence[int],
    stops: Sequence[RouteStop],
    jobs: Mapping[str, Job],
) -> tuple[int, ...]:
    """Capacity less the load aboard that no remaining delivery on the route accounts for."""
    kinds = {(s.job_id, s.kind) for s in stops}
    known = [
        jobs[j].demand
        for j, kind in kinds
        if kind is StopKind.DELIVERY and (j, StopKind.PICKUP) not in kinds
    ]
    n = max(len(capacity), len(aboard), *(len(d) for d in known), 0)
    load = _pad(aboard, n)
    for d in known:
        load = tuple(a - b for a, b in zip(load, _pad(d, n), strict=True))
    return tuple(c - max(x, 0) for c, x in zip(_pad(capacity, n), load, strict=True))


def _pad(v: Sequence[int], n: int) -> tuple[int, ...]:
    return (*v, *(0,) * (n - len(v)))
