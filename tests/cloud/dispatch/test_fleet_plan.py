"""Fleet planning and re-planning with VROOM on small Berlin cases; times checked on the matrix."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

import pytest

from fleetlink_cloud.dispatch.fleet_plan import (
    FleetPlan,
    FleetProblem,
    FleetProblemError,
    FleetVehicle,
    Matrix,
    PlanIncomplete,
    PlanOptions,
    VehiclePlan,
    split,
)
from fleetlink_cloud.dispatch.model import (
    Break,
    Depot,
    Job,
    JobState,
    Location,
    RouteStop,
    Shift,
    Stop,
    StopKind,
    TimeWindow,
    VehicleProfile,
    VehicleRoute,
)
from fleetlink_cloud.dispatch.vroom_solver import plan_fleet, time_route
from tests.cloud.dispatch.berlin import EAST, PLACES, WEST

T0 = 1_772_434_800  # 2026-03-02 07:00 UTC
SPEED_MPS = 8.0  # urban average, about 29 km/h
DETOUR = 1.3  # road distance over great-circle distance
SHIFT = Shift(T0 - 3600, T0 + 10 * 3600)


def distance_m(a: Location, b: Location) -> int:
    """Great-circle (haversine, R = 6371 km) times the detour factor, in metres."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return round(2 * 6_371_000 * math.asin(math.sqrt(h)) * DETOUR)


def build(
    vehicles: Sequence[FleetVehicle], jobs: Sequence[Job], now: int = T0, **options: object
) -> FleetProblem:
    locs = [WEST.location, EAST.location, *(s.location for j in jobs for _, s in j.stops())]
    locs += [v.route.origin for v in vehicles if v.route]
    locations = tuple(dict.fromkeys(locs))
    dist = [[distance_m(a, b) for b in locations] for a in locations]
    dur = [[math.ceil(d / SPEED_MPS) for d in row] for row in dist]
    return FleetProblem(
        now,
        tuple(vehicles),
        tuple(jobs),
        locations,
        Matrix(dur, dist),
        (WEST, EAST),
        PlanOptions.model_validate(options),
    )


def job(
    job_id: str,
    place: str,
    *,
    window: tuple[int, int] | None = None,
    service: int = 300,
    pickup: str | None = None,
    **kw: object,
) -> Job:
    windows = (TimeWindow(*window),) if window else ()
    stop = Stop(PLACES[place], windows, service)
    first = Stop(PLACES[pickup], (), service) if pickup else None
    return Job(job_id, stop, first, **kw)  # type: ignore[arg-type]


def vehicle(
    vehicle_id: str,
    depot: Depot = WEST,
    *,
    route: Sequence[tuple[Job, StopKind]] | None = None,
    at: str | None = None,
    **kw: object,
) -> FleetVehicle:
    profile = VehicleProfile(vehicle_id, depot_id=depot.id, shifts=(SHIFT,), **kw)  # type: ignore[arg-type]
    if route is None and at is None:
        return FleetVehicle(profile)
    origin = PLACES[at] if at else depot.location
    stops = tuple(RouteStop(j.id, kind, dict(j.stops())[kind].location) for j, kind in route or ())
    return FleetVehicle(profile, VehicleRoute(vehicle_id, origin, T0, stops))


def assigned(jobs: Iterable[Job], vehicle_id: str) -> list[Job]:
    return [
        Job(j.id, j.stop, j.pickup, state=JobState.ASSIGNED, vehicle_id=vehicle_id) for j in jobs
    ]


def travel(problem: FleetProblem, a: int, b: int) -> int:
    return problem.matrix.durations_s[a][b]


def check_times(problem: FleetProblem, plan: FleetPlan) -> None:
    """Each arrival follows the previous departure by exactly the travel time (plus a break
    taken in between); service starts inside a window; no service overlaps a break."""
    jobs = {j.id: j for j in problem.jobs}
    for route in plan.routes:
        for prev, nxt in zip(route.stops, route.stops[1:], strict=False):
            service = dict(jobs[prev.job_id].stops())[prev.kind].service_s
            expected = (
                prev.service_start
                + service
                + travel(problem, prev.location_index, nxt.location_index)
            )
            taken = [b for b in route.breaks if prev.service_start <= b.start < nxt.arrival]
            assert nxt.arrival == expected + sum(b.duration_s for b in taken), (prev, nxt)
        for stop in route.stops:
            target = dict(jobs[stop.job_id].stops())[stop.kind]
            assert stop.service_start >= stop.arrival
            assert stop.lateness_s == 0
            if target.windows:
                assert any(w.start <= stop.service_start <= w.end for w in target.windows)
            for b in route.breaks:
                end = stop.service_start + target.service_s
                assert end <= b.start or stop.service_start >= b.start + b.duration_s


def route_of(plan: FleetPlan, vehicle_id: str) -> VehiclePlan:
    return next(r for r in plan.routes if r.vehicle_id == vehicle_id)


def test_skills_respected() -> None:
    jobs = [
        job(f"cold{i}", p, skills=frozenset({"cooling"}))
        for i, p in enumerate(("moabit", "kreuzberg"))
    ]
    jobs += [job("dry", "westend")]
    problem = build([vehicle("plain"), vehicle("fridge", skills=frozenset({"cooling"}))], jobs)
    plan = plan_fleet(problem)
    assert plan.unassigned == ()
    assert plan.assignment()["cold0"] == plan.assignment()["cold1"] == "fridge"
    check_times(problem, plan)


def test_capacity_respected_and_low_priority_left_out() -> None:
    places = ("moabit", "westend", "wilmersdorf", "spandau", "tempelhof")
    jobs = [job(f"j{i}", p, demand=(4,), priority=50) for i, p in enumerate(places[:4])]
    jobs.append(job("low", places[4], demand=(4,), priority=0))
    problem = build([vehicle("a", capacity=(10,)), vehicle("b", capacity=(10,))], jobs)
    plan = plan_fleet(problem)
    assert plan.unassigned == ("low",)
    for route in plan.routes:
        assert sum(4 for _ in route.stops) <= 10
    with pytest.raises(PlanIncomplete) as caught:
        plan_fleet(build(problem.vehicles, jobs, allow_unassigned=False))
    assert caught.value.plan.unassigned == ("low",)


def test_time_windows_respected() -> None:
    jobs = [
        job("late", "moabit", window=(T0 + 2 * 3600, T0 + 2 * 3600 + 900)),
        job("early", "spandau", window=(T0 + 1800, T0 + 2700)),
        job("any", "wilmersdorf"),
    ]
    problem = build([vehicle("a")], jobs)
    plan = plan_fleet(problem)
    assert plan.unassigned == ()
    order = [s.job_id for s in route_of(plan, "a").stops]
    assert order.index("early") < order.index("late")
    check_times(problem, plan)
    closed = build([vehicle("a")], [job("gone", "moabit", window=(T0 - 7200, T0 - 3600))])
    assert plan_fleet(closed).unassigned == ("gone",)


def test_break_inserted() -> None:
    lunch = Break((TimeWindow(T0 + 3600, T0 + 5400),), duration_s=1800)
    shift = Shift(T0, T0 + 8 * 3600, (lunch,))
    places = ("moabit", "spandau", "wilmersdorf", "tempelhof", "kreuzberg", "westend")
    jobs = [job(p, p, service=1200) for p in places]
    a = FleetVehicle(VehicleProfile("a", depot_id="west", shifts=(shift,)))
    problem = build([a], jobs)
    plan = plan_fleet(problem)
    route = route_of(plan, "a")
    assert plan.unassigned == ()
    assert len(route.breaks) == 1
    assert T0 + 3600 <= route.breaks[0].start <= T0 + 5400
    assert route.breaks[0].duration_s == 1800
    check_times(problem, plan)


def test_several_depots_and_route_end() -> None:
    jobs = [job(p, p) for p in ("spandau", "westend", "friedrichshain", "marzahn", "karlshorst")]
    problem = build([vehicle("w", WEST), vehicle("e", EAST)], jobs)
    plan = plan_fleet(problem)
    by = plan.assignment()
    assert {by["spandau"], by["westend"]} == {"w"}
    assert {by["friedrichshain"], by["marzahn"], by["karlshorst"]} == {"e"}
    for route, depot in ((route_of(plan, "w"), 0), (route_of(plan, "e"), 1)):
        last = route.stops[-1]
        assert route.end == last.service_start + 300 + travel(problem, last.location_index, depot)
    check_times(problem, plan)


def test_pickup_before_delivery_on_one_vehicle() -> None:
    jobs = [
        job("s1", "friedrichshain", pickup="spandau", demand=(3,)),
        job("s2", "kreuzberg", pickup="moabit", demand=(3,)),
    ]
    problem = build([vehicle("a", capacity=(4,))], jobs)
    plan = plan_fleet(problem)
    stops = [(s.job_id, s.kind) for s in route_of(plan, "a").stops]
    assert plan.unassigned == ()
    for j in ("s1", "s2"):
        assert stops.index((j, StopKind.PICKUP)) < stops.index((j, StopKind.DELIVERY))
    load = 0
    for _, kind in stops:  # capacity 4 holds one shipment of 3 at a time
        load += 3 if kind is StopKind.PICKUP else -3
        assert 0 <= load <= 4
    check_times(problem, plan)


def test_started_and_announced_stops_stay_at_the_head() -> None:
    started = job("here", "moabit", service=900)
    announced = Job("told", Stop(PLACES["kreuzberg"], (), 300), announced=True)
    free = assigned([job("free", "westend")], "a")
    route = VehicleRoute(
        "a",
        PLACES["moabit"],
        T0,
        (
            RouteStop("free", StopKind.SINGLE, PLACES["westend"]),
            RouteStop("told", StopKind.SINGLE, PLACES["kreuzberg"]),
            RouteStop("here", StopKind.SINGLE, PLACES["moabit"], arrival=T0 - 600, started=True),
        ),
    )
    a = FleetVehicle(VehicleProfile("a", depot_id="west", shifts=(SHIFT,)), route)
    b = vehicle("b", EAST, at="kreuzberg")  # sits at the announced stop: still not given it
    problem = build([a, b], [*free, started, announced])
    plan = plan_fleet(problem)
    head = route_of(plan, "a").stops[:2]
    assert [(s.job_id, s.fixed) for s in head] == [("here", True), ("told", True)]
    assert head[0].arrival == T0 - 600
    assert head[1].arrival == T0 + 300 + travel(
        problem, head[0].location_index, head[1].location_index
    )
    assert "free" in plan.assignment()
    assert plan.churn.moved in ((), ("free",))


def test_split_fixes_pickup_of_announced_delivery_and_keeps_goods_aboard() -> None:
    told = job("told", "kreuzberg", pickup="moabit", announced=True)
    aboard = job("aboard", "spandau", pickup="westend")
    route = VehicleRoute(
        "a",
        PLACES["alexanderplatz"],
        T0,
        (
            RouteStop("told", StopKind.PICKUP, PLACES["moabit"]),
            RouteStop("aboard", StopKind.DELIVERY, PLACES["spandau"]),
            RouteStop("told", StopKind.DELIVERY, PLACES["kreuzberg"]),
        ),
        load=(2,),
    )
    told_1 = Job(told.id, told.stop, told.pickup, demand=(1,), announced=True)
    aboard_1 = Job(aboard.id, aboard.stop, aboard.pickup, demand=(1,))
    a = FleetVehicle(VehicleProfile("a", capacity=(5,), depot_id="west", shifts=(SHIFT,)), route)
    problem = build([a, vehicle("b", at="spandau")], [told_1, aboard_1])
    state = split(problem)
    start = state.vehicles[0]
    assert [(s.job_id, s.kind) for s in start.head] == [
        ("told", StopKind.PICKUP),
        ("told", StopKind.DELIVERY),
    ]
    assert start.location_index == problem.index()[PLACES["kreuzberg"]]
    assert start.on_board == ("aboard",)
    assert start.capacity == (4,)  # one of the two aboard is not accounted for by any stop
    assert [j.id for j in state.free] == ["aboard"]
    plan = plan_fleet(problem)  # b waits at the delivery, yet only a can deliver what it carries
    assert plan.assignment()["aboard"] == "a"


def _swapped() -> tuple[list[FleetVehicle], list[Job]]:
    """West jobs on the east vehicle and the other way round: a free plan swaps them back."""
    west = [job(p, p) for p in ("spandau", "westend", "wilmersdorf")]
    east = [job(p, p) for p in ("friedrichshain", "marzahn", "karlshorst")]
    w_jobs, e_jobs = assigned(east, "w"), assigned(west, "e")
    w = vehicle("w", WEST, route=[(j, StopKind.SINGLE) for j in w_jobs])
    e = vehicle("e", EAST, route=[(j, StopKind.SINGLE) for j in e_jobs])
    return [w, e], [*w_jobs, *e_jobs, job("new", "moabit")]


def test_churn_limit_zero_moves_nothing_but_new_jobs() -> None:
    vehicles, jobs = _swapped()
    free = plan_fleet(build(vehicles, jobs))
    assert len(free.churn.moved) >= 3  # the premise: unconstrained, the plan moves them
    plan = plan_fleet(build(vehicles, jobs, churn_limit=0))
    before = {j.id: j.vehicle_id for j in jobs if j.vehicle_id}
    assert plan.churn.moved == ()
    assert {j: v for j, v in plan.assignment().items() if j != "new"} == before
    assert "new" in plan.assignment()
    assert plan.solves == 1


def test_churn_limit_two() -> None:
    vehicles, jobs = _swapped()
    problem = build(vehicles, jobs, churn_limit=2)
    plan = plan_fleet(problem)
    assert 0 < len(plan.churn.moved) <= 2
    assert plan.unassigned == ()
    assert plan.pinned >= 4 - len(plan.churn.moved)
    pinned_all = plan_fleet(build(vehicles, jobs, churn_limit=0))
    cost = sum(r.duration_s for r in plan.routes)
    assert cost < sum(r.duration_s for r in pinned_all.routes)  # the moves kept are worth it
    check_times(problem, plan)


def test_vehicle_dropping_out_forces_moves_without_churn() -> None:
    vehicles, jobs = _swapped()
    w, e = vehicles
    gone = FleetVehicle(
        VehicleProfile("e", depot_id="east", shifts=(SHIFT,), dispatchable=False), e.route
    )
    plan = plan_fleet(build([w, gone], jobs, churn_limit=0))
    assert plan.churn.moved == ()
    assert set(plan.churn.forced) == {"spandau", "westend", "wilmersdorf"}
    assert plan.unassigned == ()
    assert set(plan.assignment().values()) == {"w"}


def test_plan_mode_reports_lateness() -> None:
    far = job("far", "spandau")
    tight = job("tight", "alexanderplatz", window=(T0, T0 + 1800))
    problem = build([vehicle("a")], [far, tight])
    late = time_route(problem, "a", [("far", StopKind.SINGLE), ("tight", StopKind.SINGLE)])
    first, second = late.stops
    assert first.arrival == T0 + travel(problem, 0, first.location_index)
    assert second.arrival == first.arrival + 300 + travel(
        problem, first.location_index, second.location_index
    )
    assert second.lateness_s == second.arrival - (T0 + 1800) > 0
    on_time = time_route(problem, "a", [("tight", StopKind.SINGLE), ("far", StopKind.SINGLE)])
    assert [s.lateness_s for s in on_time.stops] == [0, 0]


def test_dispatcher_lock_and_inconsistent_problems() -> None:
    locked = job("locked", "spandau", locked_vehicle_id="e")  # next to w's depot, locked to e
    problem = build([vehicle("w", WEST), vehicle("e", EAST)], [locked])
    assert plan_fleet(problem).assignment() == {"locked": "e"}
    with pytest.raises(FleetProblemError, match="not among the locations"):
        split(replace(problem, jobs=(job("nowhere", "tempelhof"),)))
    with pytest.raises(FleetProblemError, match="matrix"):
        replace(problem, matrix=Matrix([[0]]))
