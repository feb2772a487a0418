"""Event-driven re-plan latency: 25 vehicles mid-day with 100 stops, goal under 0.2 s.

A seeded Berlin fleet: three depots, 25 vehicles at their live positions, 100 open stops (90
single jobs, 5 pickup-and-delivery shipments), a third with time windows. A first unconstrained
plan gives the mid-day state: every vehicle's route, its first stop started at some vehicles
(the vehicle is there), its next one announced to the customer at others. Then each of ~30
events, applied to that same state, triggers one re-plan: a new job comes in (two events in
three) or a vehicle drops out (the third). A re-plan is timed from building the problem to the
returned plan (split, VROOM input, solves, read-back, churn), with the travel matrix already
there (computing it is the router's work, cached between events). Churn limit 5; beside it,
untimed, the same re-plan without a limit: how many jobs it would move, and how much shorter
its drive time is.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import replace
from typing import Any

from fleetlink_cloud.dispatch.fleet_plan import (
    FleetPlan,
    FleetProblem,
    FleetVehicle,
    Matrix,
    PlanOptions,
)
from fleetlink_cloud.dispatch.model import (
    Depot,
    Job,
    JobState,
    Location,
    RouteStop,
    Shift,
    Stop,
    TimeWindow,
    VehicleProfile,
    VehicleRoute,
)
from fleetlink_cloud.dispatch.vroom_solver import plan_fleet

GOAL_S = 0.2
VEHICLES = 25
SINGLES = 90
SHIPMENTS = 5  # two stops each: 100 stops in all
EVENTS = 30
CHURN_LIMIT = 5
NOW = 1_772_442_000  # 2026-03-02 09:00 UTC
SPEED_MPS = 8.0
DETOUR = 1.3
SOUTH, NORTH, WEST, EAST = 52.45, 52.57, 13.20, 13.57  # Berlin inside the ring, roughly
DEPOTS = (
    Depot("charlottenburg", Location(52.5163, 13.3041)),
    Depot("lichtenberg", Location(52.5155, 13.4990)),
    Depot("tempelhof", Location(52.4700, 13.3850)),
)


def _distance_m(a: Location, b: Location) -> int:
    """Great-circle (haversine, R = 6371 km) times the detour factor."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b.lon - a.lon) / 2) ** 2
    )
    return round(2 * 6_371_000 * math.asin(math.sqrt(h)) * DETOUR)


def _place(rng: random.Random) -> Location:
    return Location(round(rng.uniform(SOUTH, NORTH), 5), round(rng.uniform(WEST, EAST), 5))


def _stop(rng: random.Random) -> Stop:
    windows: tuple[TimeWindow, ...] = ()
    if rng.random() < 1 / 3:
        opens = NOW + rng.randrange(0, 4 * 3600, 900)
        windows = (TimeWindow(opens, opens + 2 * 3600),)
    return Stop(_place(rng), windows, service_s=rng.choice((180, 300, 600)))


def _fleet(rng: random.Random) -> tuple[list[FleetVehicle], list[Job]]:
    vehicles = []
    for i in range(VEHICLES):
        shift = Shift(NOW - 2 * 3600, NOW + 5 * 3600)
        profile = VehicleProfile(
            f"v{i:02}",
            capacity=(rng.choice((12, 14)),),
            depot_id=DEPOTS[i % len(DEPOTS)].id,
            shifts=(shift,),
            skills=frozenset({"tail_lift"}) if i % 5 == 0 else frozenset(),
        )
        route = VehicleRoute(profile.id, _place(rng), NOW)
        vehicles.append(FleetVehicle(profile, route))
    jobs = [
        Job(f"j{k:03}", _stop(rng), demand=(rng.randint(1, 4),), priority=rng.choice((0, 0, 50)))
        for k in range(SINGLES)
    ]
    jobs += [Job(f"s{k:02}", _stop(rng), _stop(rng), demand=(3,)) for k in range(SHIPMENTS)]
    return vehicles, jobs


def _matrix(locations: list[Location]) -> Matrix:
    dist = [[_distance_m(a, b) for b in locations] for a in locations]
    return Matrix([[math.ceil(d / SPEED_MPS) for d in row] for row in dist], dist)


def _midday(rng: random.Random, base: FleetProblem, plan: FleetPlan) -> FleetProblem:
    """The fleet after ``plan`` was sent out: routes, started and announced stops."""
    jobs = {j.id: j for j in base.jobs}
    new_jobs: dict[str, Job] = {}
    vehicles = []
    for vehicle, route in zip(base.vehicles, plan.routes, strict=True):
        stops = []
        origin = vehicle.route.origin if vehicle.route else DEPOTS[0].location
        for n, s in enumerate(route.stops):
            job = jobs[s.job_id]
            started = n == 0 and not job.is_shipment and rng.random() < 0.3
            announced = n <= 1 and not started and rng.random() < 0.4
            loc = base.locations[s.location_index]
            if started:
                origin = loc
            state = JobState.ARRIVED if started else JobState.ASSIGNED
            prior = new_jobs.get(job.id, job)
            new_jobs[job.id] = replace(
                prior, state=state, vehicle_id=vehicle.profile.id, announced=announced
            )
            stops.append(RouteStop(job.id, s.kind, loc, arrival=s.arrival, started=started))
        new_route = VehicleRoute(vehicle.profile.id, origin, NOW, tuple(stops))
        vehicles.append(FleetVehicle(vehicle.profile, new_route))
    rest = [j for j in base.jobs if j.id not in new_jobs]
    return replace(base, vehicles=tuple(vehicles), jobs=(*new_jobs.values(), *rest))


def _events(rng: random.Random, state: FleetProblem) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for i in range(EVENTS):
        if i % 3 == 2:
            out.append(("drop", rng.randrange(VEHICLES)))
        else:
            out.append(("job", Job(f"n{i:02}", _stop(rng), demand=(2,), priority=50)))
    return out


def _apply(state: FleetProblem, event: tuple[str, Any], options: PlanOptions) -> FleetProblem:
    kind, what = event
    if kind == "drop":
        v = state.vehicles[what]
        gone = FleetVehicle(replace(v.profile, dispatchable=False), v.route)
        vehicles = (*state.vehicles[:what], gone, *state.vehicles[what + 1 :])
        return replace(state, vehicles=vehicles, options=options)
    return replace(state, jobs=(*state.jobs, what), options=options)


def replan_latency(seed: int = 1, exploration_level: int = 2, threads: int = 1) -> dict[str, Any]:
    """Time ~30 event-driven re-plans of the seeded mid-day fleet; figures as a dict."""
    rng = random.Random(seed)
    vehicles, jobs = _fleet(rng)
    events = _events(random.Random(seed + 1), FleetProblem(NOW, (), (), (), Matrix([])))
    locations = [d.location for d in DEPOTS]
    locations += [v.route.origin for v in vehicles if v.route]
    locations += [s.location for j in jobs for _, s in j.stops()]
    locations += [e[1].stop.location for e in events if e[0] == "job"]
    locations = list(dict.fromkeys(locations))
    base = FleetProblem(
        NOW, tuple(vehicles), tuple(jobs), tuple(locations), _matrix(locations), DEPOTS
    )
    first = plan_fleet(base)
    state = _midday(rng, base, first)
    options = PlanOptions(
        churn_limit=CHURN_LIMIT, exploration_level=exploration_level, threads=threads
    )
    plan_fleet(_apply(state, events[0], options))  # warm up: imports, first allocation
    unlimited = options.model_copy(update={"churn_limit": None})
    seconds, moved, forced, solves, unassigned, fixed = [], [], [], [], [], []
    moved_unlimited, extra_pct = [], []
    for event in events:
        problem = _apply(state, event, options)
        started = time.perf_counter()
        plan = plan_fleet(problem)
        seconds.append(time.perf_counter() - started)
        free = plan_fleet(_apply(state, event, unlimited))  # untimed: what the limit saves
        moved_unlimited.append(len(free.churn.moved))
        cost = sum(r.duration_s for r in plan.routes) / sum(r.duration_s for r in free.routes)
        extra_pct.append(100.0 * (cost - 1.0))
        moved.append(len(plan.churn.moved))
        forced.append(len(plan.churn.forced))
        solves.append(plan.solves)
        unassigned.append(len(plan.unassigned))
        fixed.append(sum(s.fixed for r in plan.routes for s in r.stops))
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {
        "replans": len(seconds),
        "vehicles": VEHICLES,
        "stops": SINGLES + 2 * SHIPMENTS,
        "fixed_stops_avg": round(statistics.fmean(fixed), 1),
        "exploration_level": exploration_level,
        "threads": threads,
        "churn_limit": CHURN_LIMIT,
        "p50_s": round(statistics.median(seconds), 4),
        "p99_s": round(p99, 4),
        "max_s": round(ordered[-1], 4),
        "goal_s": GOAL_S,
        "meets_goal": p99 < GOAL_S,
        "moved_avg": round(statistics.fmean(moved), 2),
        "moved_max": max(moved),
        "moved_unlimited_avg": round(statistics.fmean(moved_unlimited), 2),
        "drive_time_over_unlimited_pct": round(statistics.fmean(extra_pct), 2),
        "forced_avg": round(statistics.fmean(forced), 2),
        "solves_avg": round(statistics.fmean(solves), 2),
        "unassigned_avg": round(statistics.fmean(unassigned), 2),
        "first_plan_unassigned": len(first.unassigned),
    }
