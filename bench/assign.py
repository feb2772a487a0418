"""Instant assignment latency with 1,000 vehicles online (goal: p99 under 20 ms).

A synthetic Berlin fleet (seeded): 1,000 vehicles spread over the city, each with 0 to 8
remaining stops whose time windows fit its current schedule, a shift ending 2 to 8 hours from
now, 12 units of capacity, a fifth with a "fridge". Travel times come from the builtin model
over speeds learned from 60,000 synthetic fixes (slower in the centre and in the rush hour).
2,000 jobs arrive one after the other: a fifth are shipments whose delivery window opens 10 to
60 minutes after the pickup window, a tenth need the fridge, windows open within three hours.
Each is assigned with ``assignment.assign`` (every vehicle explained, the new route's ETA
computed) and the winner's new route is prepared again before the next job, as the service
would. The figure is the wall time of one ``assign`` call; preparing routes (done when routes
change) is reported beside it.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from fleetlink_cloud.dispatch.assignment import assign
from fleetlink_cloud.dispatch.insertion import AssignSettings
from fleetlink_cloud.dispatch.model import (
    Job,
    Location,
    RouteStop,
    Shift,
    Stop,
    StopKind,
    TimeWindow,
    VehicleProfile,
    VehicleRoute,
)
from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel, great_circle_m
from fleetlink_cloud.dispatch.slack import Candidate, Prepared, prepare
from fleetlink_cloud.dispatch.speeds import SpeedLearner, SpeedSettings
from fleetlink_protocols.records import Position

VEHICLES = 1000
JOBS = 2000
NOW = 1_704_096_000 + 7 * 3600  # Monday 2024-01-01, 07:00 UTC
LAT, LON = (52.40, 52.62), (13.15, 13.65)  # Berlin, roughly inside the ring of its borders
CENTRE = Location(52.5200, 13.4050)
GOAL_P99_MS = 20.0


def _point(rng: random.Random) -> Location:
    return Location(rng.uniform(*LAT), rng.uniform(*LON))


def _near(rng: random.Random, at: Location, max_m: float) -> Location:
    d = rng.uniform(300, max_m) / 111_195.0
    lat = min(max(at.lat + rng.uniform(-d, d), LAT[0]), LAT[1])
    lon = min(max(at.lon + rng.uniform(-d, d) * 1.64, LON[0]), LON[1])
    return Location(lat, lon)


def _model(rng: random.Random) -> GreatCircleModel:
    learner = SpeedLearner(SpeedSettings(min_samples=10))
    for _ in range(60_000):
        p = _point(rng)
        ts = NOW - 3600 + rng.randrange(4 * 3600)
        central = great_circle_m(p, CENTRE) < 6000
        rush = 3600 <= ts - NOW + 3600 < 3 * 3600
        top = (9.0 if central else 16.0) * (0.7 if rush else 1.0)
        speed = rng.uniform(2.0, top)
        learner.add(Position(ts * 1_000_000_000, p.lat, p.lon, speed_mps=speed))
    return GreatCircleModel(learner.table(default_speed_mps=8.3), circuity=1.3)


def _vehicle(rng: random.Random, i: int, model: GreatCircleModel) -> Candidate:
    vid = f"veh-{i:04d}"
    origin = here = _point(rng)
    t, stops = float(NOW - rng.randrange(30)), []
    for k in range(rng.randrange(9)):
        at = _near(rng, here, 3000)
        t += model.leg_s(here, at, t)
        w0 = round(t) - rng.randrange(0, 1800)
        window = TimeWindow(w0, max(round(t), w0) + rng.randrange(300, 3600))
        t = max(t, w0)
        service = rng.randrange(120, 600)
        demand = (rng.randrange(0, 3),)
        stops.append(RouteStop(f"{vid}-s{k}", StopKind.SINGLE, at, (window,), service, demand))
        t += service
        here = at
    shift = Shift(NOW - 3600, max(round(t), NOW) + rng.randrange(2 * 3600, 8 * 3600))
    skills = frozenset({"fridge"}) if rng.random() < 0.2 else frozenset()
    profile = VehicleProfile(vid, skills=skills, capacity=(12,), shifts=(shift,))
    return Candidate(profile, VehicleRoute(vid, origin, NOW - rng.randrange(30), tuple(stops)))


def _job(rng: random.Random, i: int) -> Job:
    def stop(at: Location, earliest: int) -> Stop:
        start = earliest + rng.randrange(0, 3 * 3600)
        window = TimeWindow(start, start + rng.randrange(1800, 7200))
        return Stop(at, (window,), rng.randrange(60, 600))

    skills = frozenset({"fridge"}) if rng.random() < 0.1 else frozenset()
    demand = (rng.randrange(0, 4),)
    where = _point(rng)
    if rng.random() < 0.2:  # the delivery window opens after the pickup window, as booked
        pickup = stop(where, NOW)
        drop = stop(_near(rng, where, 8000), pickup.windows[0].start + rng.randrange(600, 3600))
        return Job(f"job-{i:05d}", drop, pickup=pickup, skills=skills, demand=demand)
    return Job(f"job-{i:05d}", stop(where, NOW), skills=skills, demand=demand)


def _ms(seconds: list[float], q: float) -> float:
    ordered = sorted(seconds)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def assign_latency(vehicles: int = VEHICLES, jobs: int = JOBS, seed: int = 1) -> dict[str, Any]:
    """Run the scenario in the module docstring; returns the figures (nothing is asserted)."""
    rng = random.Random(seed)
    model = _model(rng)
    fleet = [_vehicle(rng, i, model) for i in range(vehicles)]
    started = time.perf_counter()
    prepared: list[Prepared] = [prepare(c, model, NOW) for c in fleet]
    prepare_fleet_s = time.perf_counter() - started
    index = {c.profile.id: i for i, c in enumerate(fleet)}
    settings = AssignSettings(stale_after_s=3600)
    latencies, applies, considered, bounded, assigned = [], [], 0, 0, 0
    for i in range(jobs):
        job = _job(rng, i)
        t0 = time.perf_counter()
        a = assign(job, prepared, model, settings, NOW)
        t1 = time.perf_counter()
        latencies.append(t1 - t0)
        considered += len(a.considered)
        bounded += sum(1 for c in a.considered if c.insertion is None)
        if a.vehicle_id is not None and a.route is not None:
            assigned += 1
            k = index[a.vehicle_id]
            fleet[k] = Candidate(fleet[k].profile, a.route)
            prepared[k] = prepare(fleet[k], model, NOW)
            applies.append(time.perf_counter() - t1)
    stops = sum(len(c.route.stops) for c in fleet if c.route is not None)
    result = {
        "vehicles": vehicles,
        "jobs": jobs,
        "assigned": assigned,
        "assign_p50_ms": _ms(latencies, 0.50),
        "assign_p99_ms": _ms(latencies, 0.99),
        "assign_max_ms": round(1000 * max(latencies), 2),
        "assign_mean_ms": round(1000 * statistics.fmean(latencies), 2),
        "prepare_fleet_ms": round(1000 * prepare_fleet_s, 1),
        "prepare_one_route_p50_ms": _ms(applies, 0.50) if applies else None,
        "considered_per_job": round(considered / jobs, 1),
        "bounded_per_job": round(bounded / jobs, 1),
        "stops_at_end_per_vehicle": round(stops / vehicles, 2),
        "goal_p99_ms": GOAL_P99_MS,
    }
    for key, value in result.items():
        print(f"   assign_latency {key}: {value}", flush=True)
    return result
