"""Instant assignment: exclusions with their evidence, windows, shifts, capacity along the route,
shipments, ties, bounds, and a property test against brute force on small random fleets.

Hand-checked cases use a constant 10 m/s over the great circle (no circuity), so every leg is
its great-circle distance / 10 and the numbers below can be recomputed on paper.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetlink_cloud.dispatch.assignment import Assignment, assign
from fleetlink_cloud.dispatch.eta import window_for
from fleetlink_cloud.dispatch.insertion import AssignSettings, JobStops, insert, screen
from fleetlink_cloud.dispatch.model import (
    Break,
    Job,
    Location,
    Reason,
    RouteStop,
    Shift,
    Stop,
    StopKind,
    TimeWindow,
    VehicleProfile,
    VehicleRoute,
)
from fleetlink_cloud.dispatch.routing import TravelModel
from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel, great_circle_m
from fleetlink_cloud.dispatch.slack import Candidate, prepare
from fleetlink_cloud.dispatch.speeds import Grid, Level, SpeedStats, SpeedTable

BT = Location(52.5163, 13.3777)  # Brandenburger Tor
ALEX = Location(52.5219, 13.4132)  # Alexanderplatz
KOTTI = Location(52.4990, 13.4180)  # Kottbusser Tor
POTSDAMER = Location(52.5096, 13.3759)
HACKESCHER = Location(52.5225, 13.4020)  # Hackescher Markt
SPANDAU = Location(52.5350, 13.2000)
KOEPENICK = Location(52.4450, 13.5750)
T = 1_704_096_000  # 2024-01-01T08:00:00Z
MODEL = GreatCircleModel(SpeedTable.constant(10.0), circuity=1.0)
DEFAULT = AssignSettings()


def leg(a: Location, b: Location) -> float:
    return great_circle_m(a, b) / 10.0


def vehicle(
    vid: str,
    at: Location | None,
    stops: Sequence[RouteStop] = (),
    *,
    skills: Sequence[str] = (),
    capacity: tuple[int, ...] = (10,),
    load: tuple[int, ...] = (),
    shifts: tuple[Shift, ...] = (),
    end: Location | None = None,
    **flags: bool,
) -> Candidate:
    dispatchable = flags.pop("dispatchable", True)
    profile = VehicleProfile(
        vid, frozenset(skills), capacity, shifts=shifts, dispatchable=dispatchable
    )
    route = None if at is None else VehicleRoute(vid, at, T, tuple(stops), load)
    return Candidate(profile, route, end=end, **flags)


def single(
    jid: str, at: Location, *windows: tuple[int, int], service: int = 0, **kw: object
) -> Job:
    return Job(jid, Stop(at, tuple(TimeWindow(*w) for w in windows), service), **kw)  # type: ignore[arg-type]


def route_stop(job: str, at: Location, *windows: tuple[int, int], **kw: object) -> RouteStop:
    kind = kw.pop("kind", StopKind.SINGLE)
    return RouteStop(job, kind, at, tuple(TimeWindow(*w) for w in windows), **kw)  # type: ignore[arg-type]


def run(
    job: Job,
    *candidates: Candidate,
    model: TravelModel = MODEL,
    config: AssignSettings = DEFAULT,
    now: int = T,
) -> Assignment:
    return assign(job, [prepare(c, model, now) for c in candidates], model, config, now)


def reasons(a: Assignment) -> dict[str, Reason]:
    return {e.vehicle_id: e.reason for e in a.excluded}


def evidence(a: Assignment, vid: str) -> dict[str, object]:
    return next(e.evidence for e in a.excluded if e.vehicle_id == vid)


# -- choosing ---------------------------------------------------------------------------------


def test_the_cheapest_vehicle_wins_and_every_vehicle_is_explained() -> None:
    job = single("j1", KOTTI, (T, T + 3600), service=300)
    a = run(job, vehicle("far", SPANDAU), vehicle("near", ALEX), vehicle("mid", POTSDAMER))
    assert a.vehicle_id == "near"
    assert a.insertion is not None
    assert a.insertion.positions == (0,)
    assert a.insertion.cost == pytest.approx(leg(ALEX, KOTTI))
    assert a.insertion.service_starts == (round(T + leg(ALEX, KOTTI)),)
    assert [c.vehicle_id for c in a.considered] == ["near", "mid", "far"]  # cheapest first
    assert {c.vehicle_id for c in a.considered} | {e.vehicle_id for e in a.excluded} == {
        "far",
        "near",
        "mid",
    }
    for c in a.considered[1:]:  # not timed, or timed and dearer: never cheaper than the winner
        assert c.cost > a.insertion.cost
    assert a.route is not None
    assert a.eta is not None
    assert [s.job_id for s in a.route.stops] == ["j1"]
    assert a.route.stops[0].arrival == a.eta.stops[0].arrival == round(T + leg(ALEX, KOTTI))
    data = json.loads(a.to_json())
    assert data["vehicle_id"] == "near"
    assert [c["vehicle_id"] for c in data["considered"]] == ["near", "mid", "far"]
    assert data["considered"][0]["status"] == "evaluated"


def test_ties_go_to_the_lower_vehicle_id_whatever_the_order() -> None:
    job = single("j1", KOTTI)
    twins = [vehicle("b", ALEX), vehicle("a", ALEX), vehicle("c", ALEX)]
    for order in (twins, twins[::-1], twins[1:] + twins[:1]):
        a = run(job, *order)
        assert a.vehicle_id == "a"
        assert [c.vehicle_id for c in a.considered] == ["a", "b", "c"]


def test_exclusions_name_the_reason_and_the_evidence() -> None:
    job = single("j1", KOTTI, service=60, skills=frozenset({"fridge"}), demand=(4,))
    tomorrow = (Shift(T + 86_400, T + 86_400 + 8 * 3600),)
    a = run(
        job,
        vehicle("ok", ALEX, skills=["fridge", "tail-lift"]),
        vehicle("offline", ALEX, skills=["fridge"], online=False),
        vehicle("faulty", ALEX, skills=["fridge"], fault=True),
        vehicle("lost", None, skills=["fridge"]),
        vehicle("resting", ALEX, skills=["fridge"], shifts=tomorrow),
        vehicle("workshop", ALEX, skills=["fridge"], dispatchable=False),
        vehicle("plain", ALEX),
        vehicle("full", ALEX, skills=["fridge"], load=(7,)),
        vehicle("small", ALEX, skills=["fridge"], capacity=(3,)),
    )
    assert a.vehicle_id == "ok"
    assert reasons(a) == {
        "offline": Reason.OFFLINE,
        "faulty": Reason.FAULT,
        "lost": Reason.NO_POSITION,
        "resting": Reason.OFF_SHIFT,
        "workshop": Reason.NOT_DISPATCHABLE,
        "plain": Reason.SKILLS,
        "full": Reason.CAPACITY,
        "small": Reason.CAPACITY,
    }
    assert evidence(a, "plain") == {"missing": ["fridge"]}
    assert evidence(a, "full") == {"dimension": 0, "demand": 4, "capacity": 10, "spare": 3}
    assert evidence(a, "small") == {"dimension": 0, "demand": 4, "capacity": 3, "spare": 3}
    assert evidence(a, "resting") == {"now": T, "next_shift_start": T + 86_400}
    locked = run(
        single("j2", KOTTI, locked_vehicle_id="other"),
        vehicle("ok", ALEX),
        vehicle("other", SPANDAU),
    )
    assert locked.vehicle_id == "other"
    assert reasons(locked) == {"ok": Reason.LOCKED}
    helped = Candidate(
        VehicleProfile("p", capacity=(10,)),
        VehicleRoute("p", ALEX, T),
        driver_skills=frozenset({"fridge"}),
    )
    assert run(job, helped).vehicle_id == "p"  # the driver brings the skill


def test_a_window_closing_before_the_vehicle_can_get_there() -> None:
    # Spandau to Köpenick is about 27 km: 45 minutes at 10 m/s; the window closes in 10.
    job = single("j1", KOEPENICK, (T, T + 600))
    a = run(job, vehicle("v", SPANDAU))
    assert a.vehicle_id is None
    assert a.unassigned_reasons == ((Reason.WINDOW_VS_SHIFT, 1),)
    ev = evidence(a, "v")
    assert ev["window_end"] == T + 600
    earliest = ev["earliest_arrival"]
    assert isinstance(earliest, int)
    assert earliest == pytest.approx(T + leg(SPANDAU, KOEPENICK), abs=1)
    assert earliest > T + 600


def test_the_shift_end_and_the_way_back_to_the_depot_limit_the_route() -> None:
    job = single("j1", KOTTI, service=300)
    to_kotti = leg(ALEX, KOTTI)  # about 4 minutes
    ends_soon = (Shift(T - 3600, T + round(to_kotti) + 200),)  # ends before the service is over
    a = run(job, vehicle("v", ALEX, shifts=ends_soon))
    assert reasons(a) == {"v": Reason.WINDOW_VS_SHIFT}
    assert evidence(a, "v") == {
        "earliest_finish": round(T + to_kotti + 300),
        "shift_end": T + round(to_kotti) + 200,
        "by_bound": True,  # a straight line at the fastest speed already ends too late
    }
    room = (Shift(T - 3600, T + round(to_kotti) + 400),)
    assert run(job, vehicle("v", ALEX, shifts=room)).vehicle_id == "v"
    # The same shift, but the vehicle must also drive back to its depot at Spandau.
    home = run(job, vehicle("v", ALEX, shifts=room, end=SPANDAU))
    assert reasons(home) == {"v": Reason.WINDOW_VS_SHIFT}
    # Where the bound allows it but the timed drive does not, the position is what fails.
    actual, bound = VARIED.leg_s(ALEX, KOTTI, T), VARIED.min_s_per_m * great_circle_m(ALEX, KOTTI)
    assert actual - bound > 20
    between = (Shift(T - 3600, round(T + (actual + bound) / 2 + 300)),)
    timed = run(job, vehicle("v", ALEX, shifts=between), model=VARIED)
    assert reasons(timed) == {"v": Reason.WINDOW_VS_SHIFT}
    assert evidence(timed, "v")["positions"] == {"shift_end": 1}
    # A break still to take comes off the end of the shift.
    lunch = Break((TimeWindow(T + 60, T + 3600),), 1800)
    long_shift = (Shift(T - 3600, T + round(to_kotti) + 2000, (lunch,)),)
    assert reasons(run(job, vehicle("v", ALEX, shifts=long_shift))) == {"v": Reason.WINDOW_VS_SHIFT}


def test_an_insertion_never_breaks_a_later_window() -> None:
    # The vehicle at Alexanderplatz must be at Kottbusser Tor within 60 s of its planned arrival.
    due = T + leg(ALEX, KOTTI)
    tight = route_stop("s1", KOTTI, (T, round(due) + 60), service_s=120)
    job = single("j1", HACKESCHER)  # near Alexanderplatz, away from Kottbusser Tor
    before = leg(ALEX, HACKESCHER) + leg(HACKESCHER, KOTTI) - leg(ALEX, KOTTI)
    after = leg(KOTTI, HACKESCHER)
    assert before < after  # the cheap place is first, but it makes s1 late by minutes
    a = run(job, vehicle("v", ALEX, [tight]))
    assert a.vehicle_id == "v"
    assert a.insertion is not None
    assert a.insertion.positions == (1,)
    assert a.insertion.cost == pytest.approx(after)
    assert a.eta is not None
    assert a.eta.lateness_s == 0
    assert [s.job_id for s in a.eta.stops] == ["s1", "j1"]
    # With a window of its own that forbids going after s1, nothing fits: s1 is named.
    hurry = single("j2", HACKESCHER, (T, T + 300))
    b = run(hurry, vehicle("v", ALEX, [tight]))
    assert b.vehicle_id is None
    assert evidence(b, "v")["late_stop"] == "s1"
    assert evidence(b, "v")["positions"] == {"downstream": 1, "window": 1}


def test_a_started_stop_keeps_its_place() -> None:
    here = route_stop("s0", ALEX, service_s=900, arrival=T - 100, started=True)
    a = run(single("j1", HACKESCHER), vehicle("v", ALEX, [here]))
    assert a.insertion is not None
    assert a.insertion.positions == (1,)
    assert a.insertion.service_starts == (round(T + 800 + leg(ALEX, HACKESCHER)),)


def test_a_shipment_is_picked_up_before_it_is_delivered() -> None:
    job = Job("j1", Stop(KOTTI, service_s=60), pickup=Stop(BT, service_s=60), demand=(5,))
    a = run(job, vehicle("v", ALEX, [route_stop("s1", POTSDAMER)]))
    assert a.vehicle_id == "v"
    assert a.route is not None
    assert a.insertion is not None
    p, d = a.insertion.positions
    assert p < d
    kinds = [(s.job_id, s.kind) for s in a.route.stops]
    assert kinds.index(("j1", StopKind.PICKUP)) < kinds.index(("j1", StopKind.DELIVERY))
    # Brandenburger Tor and Potsdamer Platz are neighbours: pick up, stop at s1, deliver.
    assert kinds == [("j1", StopKind.PICKUP), ("s1", StopKind.SINGLE), ("j1", StopKind.DELIVERY)]
    cost = leg(ALEX, BT) + leg(BT, POTSDAMER) + leg(POTSDAMER, KOTTI) - leg(ALEX, POTSDAMER)
    assert a.insertion.cost == pytest.approx(cost)


def test_capacity_is_checked_along_the_route() -> None:
    # Full now; a delivery at Potsdamer Platz empties the vehicle.
    drop = route_stop("s1", POTSDAMER, kind=StopKind.DELIVERY, demand=(10,))
    full = vehicle("v", ALEX, [drop], load=(10,))
    shipment = Job("j1", Stop(KOTTI), pickup=Stop(BT), demand=(5,))
    a = run(shipment, full)
    assert a.insertion is not None
    assert a.insertion.positions == (1, 2)  # picked up only after the delivery
    # A single stop's goods ride from now to the stop: the vehicle is full all that time.
    b = run(single("j2", KOTTI, demand=(5,)), full)
    assert reasons(b) == {"v": Reason.CAPACITY}
    assert evidence(b, "v")["spare"] == 0
    # Two dimensions: a vehicle without pallet space cannot carry a pallet.
    c = run(single("j3", KOTTI, demand=(1, 1)), vehicle("v", ALEX, capacity=(10,)))
    assert evidence(c, "v") == {"dimension": 1, "demand": 1, "capacity": 0, "spare": 0}


def test_too_far_by_detour_or_by_distance() -> None:
    job = single("j1", KOEPENICK)
    a = run(job, vehicle("v", SPANDAU), config=AssignSettings(max_detour_s=600))
    assert reasons(a) == {"v": Reason.TOO_FAR}
    assert evidence(a, "v")["max_detour_s"] == 600
    assert evidence(a, "v")["min_added_travel_s"] == pytest.approx(leg(SPANDAU, KOEPENICK), abs=1)
    b = run(job, vehicle("v", SPANDAU), config=AssignSettings(max_distance_m=10_000))
    assert reasons(b) == {"v": Reason.TOO_FAR}
    assert evidence(b, "v")["distance_m"] == round(great_circle_m(SPANDAU, KOEPENICK))


def test_nobody_online_and_nobody_at_all() -> None:
    a = run(single("j1", KOTTI), vehicle("a", ALEX, online=False), vehicle("b", None))
    assert a.vehicle_id is None
    assert a.unassigned_reasons == ((Reason.NO_POSITION, 1), (Reason.OFFLINE, 1))
    assert json.loads(a.to_json())["unassigned_reasons"][0] == {
        "reason": "no_position",
        "vehicles": 1,
    }
    assert run(single("j1", KOTTI)).unassigned_reasons == ((Reason.NO_VEHICLES, 0),)


def test_weights_change_the_choice() -> None:
    busy = vehicle("busy", POTSDAMER, [route_stop("s1", KOTTI)])
    idle = vehicle("idle", ALEX)
    job = single("j1", KOTTI)  # on the busy vehicle's way: no detour at all
    assert run(job, busy, idle).vehicle_id == "busy"
    # Serving sooner matters: the idle vehicle gets there first.
    soon = run(job, busy, idle, config=AssignSettings(travel_weight=0.1, response_weight=1.0))
    assert soon.vehicle_id == "idle"
    assert run(job, busy, idle, config=AssignSettings(idle_cost=-10_000)).vehicle_id == "idle"


def test_a_stale_preparation_is_redone_at_the_decision_time() -> None:
    pp = prepare(vehicle("v", ALEX), MODEL, T)
    a = assign(single("j1", KOTTI), [pp], MODEL, AssignSettings(stale_after_s=30), T + 100)
    assert a.insertion is not None
    assert a.insertion.service_starts == (round(T + 100 + leg(ALEX, KOTTI)),)


def test_bounded_vehicles_really_cost_at_least_their_bound() -> None:
    model = GreatCircleModel(varied_speeds(), 1.3)  # bounds well below the real times
    rng = random.Random(4)
    cands = [vehicle(f"v{i:02d}", random_point(rng)) for i in range(40)]
    a = run(single("j1", KOTTI), *cands, model=model)
    bounded = [c for c in a.considered if c.insertion is None]
    assert bounded, "expected the bounds to skip some vehicles"
    assert a.insertion is not None
    for c in bounded:
        assert c.bound is not None
        assert c.bound > a.insertion.cost
        alone = run(
            single("j1", KOTTI), next(x for x in cands if x.profile.id == c.vehicle_id), model=model
        )
        assert alone.insertion is not None
        assert alone.insertion.cost >= c.bound


# -- property: never worse than brute force ---------------------------------------------------

LAT, LON = (52.45, 52.57), (13.28, 13.52)


def random_point(rng: random.Random) -> Location:
    return Location(rng.uniform(*LAT), rng.uniform(*LON))


def varied_speeds() -> SpeedTable:
    """4..16 m/s by 2 km cell, the same at every hour: legs keep their durations when shifted."""
    rng = random.Random(0)
    grid, cells = Grid(2000.0), {}
    for i in range(40):
        for j in range(40):
            c = grid.cell(52.40 + i * 0.005, 13.20 + j * 0.01)
            v = rng.uniform(4, 16)
            cells[c] = SpeedStats(v, v * 0.8, v * 1.2, 50, Level.CELL)
    return SpeedTable(2000.0, 9.0, cell=cells)


VARIED = GreatCircleModel(varied_speeds(), 1.3)


def random_candidate(rng: random.Random, vid: str, model: TravelModel) -> Candidate:
    """A vehicle whose current route is on time: windows drawn around its own schedule."""
    origin = random_point(rng)
    stops: list[RouteStop] = []
    t, here, carried = float(T), origin, 0
    if rng.random() < 0.25:
        arrived = T - rng.randrange(600)
        stops.append(
            route_stop(
                "s-start", origin, service_s=rng.randrange(900), arrival=arrived, started=True
            )
        )
        t = max(arrived + stops[0].service_s, T)
    for i in range(rng.randrange(5)):
        at = random_point(rng)
        kind = rng.choice([StopKind.SINGLE, StopKind.SINGLE, StopKind.DELIVERY])
        t += model.leg_s(here, at, t)
        windows: tuple[tuple[int, int], ...] = ()
        if rng.random() < 0.7:
            w0 = round(t) - rng.randrange(0, 1800)
            windows = ((w0, max(round(t), w0) + rng.randrange(60, 2400)),)
            t = max(t, w0)
        service = rng.randrange(0, 600)
        demand = (rng.randrange(0, 4),)
        carried += demand[0] if kind is StopKind.DELIVERY else 0
        stops.append(route_stop(f"s{i}", at, *windows, kind=kind, service_s=service, demand=demand))
        t += service
        here = at
    end = random_point(rng) if rng.random() < 0.3 else None
    finish = t + (0.0 if end is None else model.leg_s(here, end, t))
    shifts = (
        (Shift(T - 3600, round(finish) + rng.randrange(0, 7200)),) if rng.random() < 0.5 else ()
    )
    load = (carried,)
    most = carried + sum(s.demand[0] for s in stops if s.kind is StopKind.SINGLE and s.demand)
    capacity = (max(most, rng.randrange(2, 12)),)
    profile = VehicleProfile(vid, capacity=capacity, shifts=shifts)
    return Candidate(profile, VehicleRoute(vid, origin, T, tuple(stops), load), end=end)


def random_job(rng: random.Random) -> Job:
    def stop() -> Stop:
        windows: list[TimeWindow] = []
        for _ in range(rng.choice([0, 1, 1, 2])):
            start = T + rng.randrange(-600, 7200)
            windows.append(TimeWindow(start, start + rng.randrange(300, 3600)))
        return Stop(random_point(rng), tuple(windows), rng.randrange(0, 600))

    pickup = stop() if rng.random() < 0.4 else None
    return Job("new", stop(), pickup=pickup, demand=(rng.randrange(0, 6),))


def simulate(
    c: Candidate, route: VehicleRoute, model: TravelModel, now: int
) -> tuple[bool, float, dict[tuple[str, StopKind], float], float]:
    """Brute force, independently of the code under test: (on time and within capacity,
    driving time, service start per stop, finish time)."""
    t = float(max(now, route.origin_time))
    leave, here, driving, ok, starts = t, route.origin, 0.0, True, {}
    for i, s in enumerate(route.stops):
        if i == 0 and s.started:
            arrival = float(s.arrival if s.arrival is not None else route.origin_time)
        else:
            d = model.leg_s(here, s.location, t)
            driving += d
            arrival = t + d
        w = window_for(arrival, s.windows)
        ok = ok and (w is not None or not s.windows)
        start = arrival if w is None else max(arrival, float(w.start))
        starts[(s.job_id, s.kind)] = start
        t = start + s.service_s
        if i == 0 and s.started:
            t = max(t, leave)
        here = s.location
    if c.end is not None:
        d = model.leg_s(here, c.end, t)
        driving, t = driving + d, t + d
    load = route.load[0] if route.load else 0
    load += sum(s.demand[0] for s in route.stops if s.kind is StopKind.SINGLE and s.demand)
    ok = ok and load <= c.profile.capacity[0]
    for s in route.stops:
        load += (1 if s.kind is StopKind.PICKUP else -1) * (s.demand[0] if s.demand else 0)
        ok = ok and load <= c.profile.capacity[0]
    return ok, driving, starts, t


def brute_force(
    c: Candidate, job: Job, model: TravelModel, cfg: AssignSettings, now: int
) -> dict[tuple[int, ...], float]:
    """Cost of every feasible insertion of ``job`` into ``c``'s route."""
    assert c.route is not None
    shift = c.profile.shift_at(now)
    assert shift is not None
    _, old_driving, _, old_finish = simulate(c, c.route, model, now)
    first = 1 if c.route.stops and c.route.stops[0].started else 0
    n = len(c.route.stops)
    places: list[tuple[int, ...]] = []
    if job.pickup is None:
        places = [(p,) for p in range(first, n + 1)]
    else:
        places = [(p, q + 1) for p in range(first, n + 1) for q in range(p, n + 1)]
    out = {}
    for pos in places:
        new = insert(c.route, job, pos)
        ok, driving, starts, finish = simulate(c, new, model, now)
        added = driving - old_driving
        if ok and finish <= max(shift.end, old_finish) and added <= cfg.max_detour_s:
            first_kind = StopKind.SINGLE if job.pickup is None else StopKind.PICKUP
            idle = cfg.idle_cost if n == 0 else 0.0
            response = cfg.response_weight * (starts[(job.id, first_kind)] - now)
            out[pos] = cfg.travel_weight * added + response + idle
    return out


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    vehicles=st.integers(1, 4),
    response_weight=st.sampled_from([0.0, 0.3]),
    idle_cost=st.sampled_from([0.0, 400.0, -400.0]),
    max_detour_s=st.sampled_from([900.0, 3600.0]),
)
def test_the_choice_is_never_worse_than_brute_force(
    seed: int, vehicles: int, response_weight: float, idle_cost: float, max_detour_s: float
) -> None:
    rng = random.Random(seed)
    cfg = AssignSettings(
        response_weight=response_weight, idle_cost=idle_cost, max_detour_s=max_detour_s
    )
    fleet = [random_candidate(rng, f"v{i}", VARIED) for i in range(vehicles)]
    job = random_job(rng)
    a = run(job, *fleet, model=VARIED, config=cfg)
    options = {c.profile.id: brute_force(c, job, VARIED, cfg, T) for c in fleet}
    best = min((cost for o in options.values() for cost in o.values()), default=None)
    if best is None:
        assert a.vehicle_id is None, a.to_dict()
        assert {e.vehicle_id for e in a.excluded} == set(options)
        return
    assert a.vehicle_id is not None, (options, a.to_dict())
    assert a.insertion is not None
    assert a.insertion.cost <= best + 1e-6
    assert options[a.vehicle_id][a.insertion.positions] == pytest.approx(a.insertion.cost)
    for c in a.considered:  # the explanation is honest about every vehicle
        if c.insertion is not None:
            assert c.insertion.cost == pytest.approx(min(options[c.vehicle_id].values()))
        else:
            assert c.bound is not None
            assert min(options[c.vehicle_id].values(), default=float("inf")) >= c.bound - 1e-6
    for e in a.excluded:
        assert options[e.vehicle_id] == {}, (e, options[e.vehicle_id])
    k = VARIED.min_s_per_m
    for c in fleet:  # the O(1) screen never promises less than the cheapest real insertion
        screened = screen(prepare(c, VARIED, T), JobStops(job, k), k, cfg, T)
        real = min(options[c.profile.id].values(), default=None)
        if isinstance(screened, float):
            assert real is None or real >= screened - 1e-6
        else:
            assert real is None, (screened, real)
