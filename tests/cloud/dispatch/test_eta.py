"""Live ETA: the walk from the live position, waits, lateness, ranges, change detection, and a
cross-check of the service times against VROOM's plan mode on the same durations."""

from __future__ import annotations

import random
from dataclasses import replace

import vroom

from fleetlink_cloud.dispatch.eta import eta_changes, route_eta, serve, window_for
from fleetlink_cloud.dispatch.model import Location, RouteStop, StopKind, TimeWindow, VehicleRoute
from fleetlink_cloud.dispatch.routing import Matrix
from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel, great_circle_m
from fleetlink_cloud.dispatch.routing.table import TableModel
from fleetlink_cloud.dispatch.speeds import SpeedLearner, SpeedSettings, SpeedTable
from fleetlink_protocols.records import Position

BT = Location(52.5163, 13.3777)  # Brandenburger Tor
ALEX = Location(52.5219, 13.4132)  # Alexanderplatz
KOTTI = Location(52.4990, 13.4180)  # Kottbusser Tor
POTSDAMER = Location(52.5096, 13.3759)
TEMPELHOF = Location(52.4730, 13.4039)
T = 1_704_096_000  # 2024-01-01T08:00:00Z
MODEL = GreatCircleModel(SpeedTable.constant(10.0), circuity=1.0)


def leg(a: Location, b: Location) -> float:
    return great_circle_m(a, b) / 10.0


def stop(job: str, at: Location, *windows: tuple[int, int], service: int = 0) -> RouteStop:
    return RouteStop(job, StopKind.SINGLE, at, tuple(TimeWindow(*w) for w in windows), service)


def test_window_choice_and_service_start() -> None:
    windows = (TimeWindow(T + 100, T + 200), TimeWindow(T + 500, T + 600))
    assert window_for(T, windows) == windows[0]
    assert window_for(T + 300, windows) == windows[1]
    assert window_for(T + 700, windows) is None
    assert serve(T, windows) == (T + 100, 0.0)
    assert serve(T + 150, windows) == (T + 150, 0.0)
    assert serve(T + 300, windows) == (T + 500, 0.0)
    assert serve(T + 700, windows) == (T + 700, 100.0)  # late by 100 s after the last window
    assert serve(T + 9, ()) == (T + 9, 0.0)


def test_walk_waits_for_windows_and_reports_lateness() -> None:
    route = VehicleRoute(
        "v1",
        ALEX,
        T,
        (
            stop("a", BT, (T + 600, T + 1200), service=120),  # early: waits until T+600
            stop("b", KOTTI, (T, T + 800), service=60),  # reached after T+800: late
            stop("c", POTSDAMER, service=30),  # no window
        ),
    )
    eta = route_eta(route, MODEL, now=T + 5)
    a, b, c = eta.stops
    leave = T + 5  # the fix is 5 s old: the vehicle leaves now
    assert eta.departure == leave
    assert a.travel_s == round(leg(ALEX, BT))
    assert a.arrival == round(leave + leg(ALEX, BT))
    assert a.service_start == T + 600
    assert a.wait_s == round(T + 600 - (leave + leg(ALEX, BT)))
    assert a.departure == T + 720
    assert a.lateness_s == 0
    b_arrival = T + 720 + leg(BT, KOTTI)
    assert b.arrival == round(b_arrival)
    assert b.service_start == b.arrival
    assert b.wait_s == 0
    assert b.lateness_s == round(b_arrival - (T + 800))
    assert b.lateness_s > 0
    assert c.arrival == round(b_arrival + 60 + leg(KOTTI, POTSDAMER))
    assert c.departure == c.arrival + 30
    assert eta.lateness_s == b.lateness_s
    assert eta.end_arrival is None
    assert (a.early, a.late) == (None, None)  # a constant speed has no spread
    with_end = route_eta(route, MODEL, now=T + 5, end=TEMPELHOF)
    assert with_end.end_arrival == round(
        b_arrival + 90 + leg(KOTTI, POTSDAMER) + leg(POTSDAMER, TEMPELHOF)
    )


def test_a_started_stop_holds_the_vehicle_until_its_service_ends() -> None:
    here = RouteStop("a", StopKind.SINGLE, BT, (), 600, arrival=T - 300, started=True)
    route = VehicleRoute("v1", BT, T - 60, (here, stop("b", ALEX)))
    eta = route_eta(route, MODEL, now=T)
    assert eta.stops[0].arrival == T - 300
    assert eta.stops[0].departure == T + 300  # 600 s of service from T-300
    assert eta.stops[1].arrival == round(T + 300 + leg(BT, ALEX))
    overrun = route_eta(route, MODEL, now=T + 900)  # still there after the planned service
    assert overrun.stops[0].departure == T + 900
    assert overrun.stops[1].arrival == round(T + 900 + leg(BT, ALEX))


def learned() -> SpeedTable:
    rng = random.Random(9)
    learner = SpeedLearner(SpeedSettings(min_samples=20))
    for i in range(20_000):
        lat, lon = rng.uniform(52.44, 52.56), rng.uniform(13.30, 13.50)
        p = Position((T + i % 7200) * 1_000_000_000, lat, lon, speed_mps=rng.uniform(4, 14))
        learner.add(p)
    return learner.table(default_speed_mps=8.3)


def test_speed_spread_gives_an_arrival_range() -> None:
    model = GreatCircleModel(learned(), 1.3)
    route = VehicleRoute(
        "v1", ALEX, T, (stop("a", BT), stop("b", KOTTI, (T + 3000, T + 4000)), stop("c", TEMPELHOF))
    )
    eta = route_eta(route, model, now=T)
    for s in eta.stops:
        assert s.early is not None
        assert s.late is not None
        assert s.early < s.arrival < s.late or (s.early <= s.arrival <= s.late and s.wait_s > 0)
    _, b, c = eta.stops
    assert b.service_start == T + 3000  # every scenario waits for b's window...
    assert c.early == c.late == c.arrival or c.early < c.late  # ...which narrows what follows
    far = VehicleRoute("v2", ALEX, T, (stop("x", Location(48.1374, 11.5755)),))  # Munich
    assert route_eta(far, model, now=T).stops[0].early is not None  # the fleet-wide spread
    nothing = GreatCircleModel(SpeedLearner().table(default_speed_mps=8.3), 1.3)
    assert route_eta(route, nothing, now=T).stops[0].early is None  # no data, no range


def test_eta_changes_report_moves_beyond_the_threshold_and_new_stops() -> None:
    stops = (stop("a", BT), stop("b", KOTTI), stop("c", TEMPELHOF, (T + 7200, T + 9000)))
    before = route_eta(VehicleRoute("v1", ALEX, T, stops), MODEL, now=T)
    assert [c.job_id for c in eta_changes(None, before, 60)] == ["a", "b", "c"]
    # Telemetry: 200 s later the vehicle is still at Alexanderplatz (stuck in traffic).
    later = route_eta(VehicleRoute("v1", ALEX, T + 200, stops), MODEL, now=T + 200)
    moved = eta_changes(before, later, threshold_s=120)
    assert [(c.job_id, c.delta_s) for c in moved] == [("a", 200), ("b", 200), ("c", 200)]
    assert later.stops[2].service_start == before.stops[2].service_start  # c waits anyway
    assert eta_changes(before, later, threshold_s=300) == ()
    # 100 m further on, 60 s later: every ETA moves by less than a minute.
    on = VehicleRoute("v1", Location(52.5214, 13.4120), T + 60, stops)
    assert eta_changes(before, route_eta(on, MODEL, now=T + 60), threshold_s=60) == ()
    extra = VehicleRoute("v1", ALEX, T, (*stops, stop("d", POTSDAMER)))
    new = eta_changes(before.by_stop(), route_eta(extra, MODEL, now=T), 60)
    assert [(c.job_id, c.previous) for c in new] == [("d", None)]
    assert new[0].to_dict()["delta_s"] is None


def test_service_starts_match_vroom_plan_mode_on_the_same_durations() -> None:
    # Integer durations so both sides see exactly the same legs.
    points = [ALEX, BT, KOTTI, POTSDAMER, TEMPELHOF]
    durations = [[round(leg(a, b) * 1.3) for b in points] for a in points]
    matrix = Matrix(
        tuple(tuple(float(d) for d in row) for row in durations),
        tuple(tuple(great_circle_m(a, b) for b in points) for a in points),
    )
    model = TableModel(points, matrix, MODEL)
    windows = [(T + 600, T + 900), (T, T + 3000), (T + 2400, T + 2700), (T, T + 3600)]
    services = [300, 120, 600, 60]
    route = VehicleRoute(
        "v1",
        ALEX,
        T,
        tuple(
            stop(f"j{i}", points[i], windows[i - 1], service=services[i - 1]) for i in range(1, 5)
        ),
    )
    ours = route_eta(route, model, now=T)
    assert ours.lateness_s == 0

    problem = vroom.Input()
    problem.set_durations_matrix("car", durations)
    for i in range(1, 5):
        tw = vroom.TimeWindow(*windows[i - 1])
        problem.add_job(
            vroom.Job(i, location=i, default_service=services[i - 1], time_windows=[tw])
        )
    steps = [vroom.VehicleStepStart(), *(vroom.VehicleStepSingle(i) for i in range(1, 5))]
    steps.append(vroom.VehicleStepEnd())
    problem.add_vehicle(
        vroom.Vehicle(1, start=0, time_window=vroom.TimeWindow(T, T + 86400), steps=steps)
    )
    frame = problem.check().routes
    jobs = frame[frame["type"] == "job"]
    # VROOM delays the start (and serves early stops later) to avoid waiting; ours leaves at
    # once and serves as early as it can. So VROOM's service starts are never earlier than
    # ours, and the last one, the earliest the route can be done, is the same.
    theirs = [int(a + w) for a, w in zip(jobs["arrival"], jobs["waiting_time"], strict=True)]
    starts = [s.service_start for s in ours.stops]
    assert all(v >= o for v, o in zip(theirs, starts, strict=True))
    assert theirs[-1] == starts[-1]
    assert any(v > o for v, o in zip(theirs, starts, strict=True))  # the schedules do differ
    assert ours.stops[0].wait_s > 0

    # Without waiting the two agree on every arrival.
    wide = vroom.Input()
    wide.set_durations_matrix("car", durations)
    for i in range(1, 5):
        tw = vroom.TimeWindow(T, T + 9999)
        wide.add_job(vroom.Job(i, location=i, default_service=services[i - 1], time_windows=[tw]))
    wide.add_vehicle(
        vroom.Vehicle(1, start=0, time_window=vroom.TimeWindow(T, T + 86400), steps=steps)
    )
    wide_jobs = wide.check().routes
    arrivals = [int(a) for a in wide_jobs[wide_jobs["type"] == "job"]["arrival"]]
    unhurried = VehicleRoute(
        "v1", ALEX, T, tuple(replace(s, windows=(TimeWindow(T, T + 9999),)) for s in route.stops)
    )
    assert arrivals == [s.arrival for s in route_eta(unhurried, model, now=T).stops]

    late = VehicleRoute(
        "v1", ALEX, T, (*route.stops[:2], stop("j3", KOTTI, (T, T + 900), service=600))
    )
    assert route_eta(late, model, now=T).lateness_s > 0
    problem.set_durations_matrix("car", durations)
    p2 = vroom.Input()
    p2.set_durations_matrix("car", durations)
    for i, (w, svc) in enumerate([(windows[0], 300), (windows[1], 120), ((T, T + 900), 600)], 1):
        p2.add_job(
            vroom.Job(i, location=i, default_service=svc, time_windows=[vroom.TimeWindow(*w)])
        )
    steps = [vroom.VehicleStepStart(), *(vroom.VehicleStepSingle(i) for i in range(1, 4))]
    steps.append(vroom.VehicleStepEnd())
    p2.add_vehicle(
        vroom.Vehicle(1, start=0, time_window=vroom.TimeWindow(T, T + 86400), steps=steps)
    )
    assert p2.check().to_dict()["summary"]["violations"]  # VROOM sees the same route as infeasible
