"""Arrival and departure from fixes: approach, edge jitter, poor fixes, short stops, departure,
and real gpsd logs (a parked receiver, a poor-fix start, a slow drive-by)."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetlink_cloud.dispatch.geofence import (
    EventKind,
    Geofence,
    GeofenceEvent,
    GeofenceSettings,
    GeofenceTracker,
    Phase,
    Rejection,
    fences_for,
)
from fleetlink_cloud.dispatch.model import Job, JobState, Location, Stop, StopKind
from fleetlink_cloud.live.derived import EARTH_RADIUS_M, haversine_m
from fleetlink_protocols.records import FixMode, Position

S = 1_000_000_000
T0 = 1_733_050_800 * S  # 2024-12-01 11:00 UTC
STOP = Location(52.521918, 13.413215)  # Alexanderplatz, Berlin
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180


def at(north_m: float, east_m: float = 0.0) -> tuple[float, float]:
    lon_m = M_PER_DEG * math.cos(math.radians(STOP.lat))
    return STOP.lat + north_m / M_PER_DEG, STOP.lon + east_m / lon_m


def fix(
    t_s: float,
    north_m: float,
    east_m: float = 0.0,
    *,
    mode: FixMode = FixMode.FIX_3D,
    hdop: float | None = 0.9,
    speed_mps: float | None = 0.0,
) -> Position:
    lat, lon = at(north_m, east_m)
    return Position(T0 + round(t_s * S), lat, lon, mode, speed_mps=speed_mps, hdop=hdop)


def tracker(**settings: object) -> GeofenceTracker:
    fence = Geofence("van-7", "job-1", StopKind.SINGLE, STOP)
    return GeofenceTracker(fence, GeofenceSettings.model_validate(settings))


def phase(t: GeofenceTracker) -> Phase:
    return t.state.phase


def approach(
    speed_mps: float = 10.0, from_m: float = -1000.0, to_m: float = -20.0
) -> list[Position]:
    """Driving north at ``speed_mps`` from ``from_m`` to ``to_m`` south of the stop, 1 Hz."""
    n = int((to_m - from_m) / speed_mps)
    return [fix(i, from_m + i * speed_mps, speed_mps=speed_mps) for i in range(n + 1)]


def parked(
    start_s: float, seconds: int, north_m: float, sigma_m: float, seed: int
) -> list[Position]:
    """A parked vehicle's 1 Hz fixes with Gaussian GNSS noise of ``sigma_m`` per axis."""
    rng = random.Random(seed)
    return [
        fix(start_s + i, north_m + rng.gauss(0, sigma_m), rng.gauss(0, sigma_m), speed_mps=0.1)
        for i in range(1, seconds + 1)
    ]


def test_approach_and_stop_arrives_once_with_evidence() -> None:
    drive = approach()
    stay = parked(drive[-1].ts_wall_ns / S - T0 / S, 120, -20.0, 3.0, seed=1)
    t = tracker()
    events = t.feed_all([*drive, *stay])
    assert [e.kind for e in events] == [EventKind.ARRIVED]
    arrived = events[0]
    first_inside = next(
        p for p in drive + stay if haversine_m(STOP.lat, STOP.lon, p.lat_deg, p.lon_deg) <= 75
    )
    ev = arrived.evidence
    assert ev["first_inside_ts_wall_ns"] == first_inside.ts_wall_ns
    assert arrived.ts_wall_ns == first_inside.ts_wall_ns + 60 * S  # the first fix 60 s later
    assert ev["dwell_s"] == 60.0
    assert ev["fixes_used"] == 61
    assert ev["fixes_rejected"] == 0
    assert ev["best_hdop"] == 0.9
    assert ev["mode"] == 3
    assert isinstance(ev["distance_m"], float)
    assert ev["distance_m"] < 40
    assert (arrived.vehicle_id, arrived.job_id, arrived.job_state) == ("van-7", "job-1", "arrived")
    assert t.state.phase is Phase.ARRIVED


def test_jitter_at_the_enter_radius_arrives_once_and_never_flaps() -> None:
    # Parked right on the enter radius: half the fixes are inside 75 m, half outside.
    stay = parked(0, 900, -75.0, 10.0, seed=2)
    outside = sum(haversine_m(STOP.lat, STOP.lon, p.lat_deg, p.lon_deg) > 75 for p in stay)
    assert 300 < outside < 600  # the noise really straddles the edge
    events = tracker().feed_all(stay)
    assert [e.kind for e in events] == [EventKind.ARRIVED]
    # Without hysteresis the same fixes keep restarting the dwell: no arrival at all.
    assert tracker(exit_radius_m=76.0).feed_all(stay) == []


def test_jitter_at_the_exit_radius_does_not_depart() -> None:
    t = tracker()
    assert [e.kind for e in t.feed_all(parked(0, 90, 0.0, 3.0, seed=3))] == [EventKind.ARRIVED]
    # The driver moves to the far end of the yard, right on the exit radius, for 15 minutes.
    edge = parked(90, 900, 150.0, 10.0, seed=4)
    assert sum(haversine_m(STOP.lat, STOP.lon, p.lat_deg, p.lon_deg) > 150 for p in edge) > 300
    assert t.feed_all(edge) == []
    assert t.state.phase in (Phase.ARRIVED, Phase.LEAVING)
    # ...then drives off for good.
    events = t.feed_all([fix(990 + i, 150 + 10 * i, speed_mps=10) for i in range(1, 40)])
    assert [e.kind for e in events] == [EventKind.DEPARTED]


def test_poor_fix_burst_does_not_arrive() -> None:
    # Parked 400 m away; a 2-minute burst of multipath fixes puts it at the stop.
    real = [
        p
        for p in parked(0, 240, -400.0, 3.0, seed=5)
        if not T0 + 30 * S <= p.ts_wall_ns < T0 + 150 * S
    ]
    burst = [
        fix(30 + i, -30.0, mode=FixMode.NO_FIX if i % 4 == 0 else FixMode.FIX_2D, hdop=9.5)
        for i in range(120)
    ]
    fixes = sorted(real + burst, key=lambda p: p.ts_wall_ns)
    t = tracker()
    assert t.feed_all(fixes) == []
    assert t.state.phase is Phase.OUTSIDE
    assert t.state.rejected_by(Rejection.MODE) == 30
    assert t.state.rejected_by(Rejection.HDOP) == 90
    # The filters are what kept it out: trusting HDOP 9.5 makes a false visit.
    events = tracker(max_hdop=20.0).feed_all(fixes)
    assert [e.kind for e in events] == [EventKind.ARRIVED, EventKind.DEPARTED]


def test_min_mode_three_rejects_2d_fixes() -> None:
    stay = [fix(i, 0.0, mode=FixMode.FIX_2D) for i in range(100)]
    t = tracker(min_mode=3)
    assert t.feed_all(stay) == []
    assert t.state.rejected_by(Rejection.MODE) == 100
    assert len(tracker().feed_all(stay)) == 1


def test_stop_shorter_than_the_dwell_is_no_arrival() -> None:
    drive = approach()
    t0 = drive[-1].ts_wall_ns / S - T0 / S
    stay = parked(t0, 45, -20.0, 3.0, seed=6)
    leave = [fix(t0 + 45 + i, -20 + 10 * i, speed_mps=10) for i in range(1, 60)]
    t = tracker()
    assert t.feed_all([*drive, *stay, *leave]) == []
    assert t.state.phase is Phase.OUTSIDE
    assert t.state.first_inside_ns is None


def test_departure_evidence_and_job_state() -> None:
    def visit(t: GeofenceTracker) -> list[GeofenceEvent]:
        stay = parked(0, 300, 10.0, 3.0, seed=7)
        leave = [fix(300 + i, 10 + 8 * i, speed_mps=8) for i in range(1, 60)]
        return t.feed_all([*stay, *leave])

    arrived, departed = visit(tracker())
    assert departed.kind is EventKind.DEPARTED
    ev = departed.evidence
    # The first fix beyond 150 m is 18 s after leaving (10 + 8*18 = 154); departure 30 s later.
    assert ev["first_outside_ts_wall_ns"] == T0 + 318 * S
    assert departed.ts_wall_ns == T0 + 348 * S
    assert ev["outside_s"] == 30.0
    assert ev["dwell_s"] == 316.0  # first fix (1 s) to the last within 150 m (317 s)
    assert ev["fixes_used"] == 31
    assert departed.job_state is None  # by default the driver completes the job
    assert arrived.ts_wall_ns < departed.ts_wall_ns
    assert visit(tracker(complete_on_departure=True))[1].job_state is JobState.COMPLETED
    pickup = GeofenceTracker(Geofence("van-7", "job-1", StopKind.PICKUP, STOP), GeofenceSettings())
    assert visit(pickup)[1].job_state is JobState.EN_ROUTE


def test_brief_exit_is_not_a_departure_and_departed_is_final() -> None:
    t = tracker()
    t.feed_all(parked(0, 100, 0.0, 3.0, seed=8))
    assert phase(t) is Phase.ARRIVED
    # Out at 10 m/s to 200 m, five seconds there, back: 14 s beyond the exit radius.
    out = [fix(100 + i, 10.0 * i, speed_mps=10) for i in range(1, 21)]
    wait = [fix(120 + i, 200.0) for i in range(1, 6)]
    back = [fix(125 + i, 200 - 10.0 * i, speed_mps=10) for i in range(1, 21)]
    assert t.feed_all([*out, *wait, *back]) == []
    assert phase(t) is Phase.ARRIVED
    gone = [fix(145 + i, 5 + 10.0 * i, speed_mps=10) for i in range(1, 60)]
    events = t.feed_all(gone)
    assert len(events) == 1
    assert events[0].evidence["first_outside_ts_wall_ns"] == T0 + 160 * S  # 155 m
    assert phase(t) is Phase.DEPARTED
    assert t.feed_all(parked(200, 200, 0.0, 3.0, seed=9)) == []


def test_out_of_order_and_repeated_fixes_are_ignored_and_counted() -> None:
    t = tracker()
    assert t.feed(fix(100, 0.0)) is None
    assert t.feed(fix(100, 0.0)) is None  # the same instant again
    for i in range(50):  # older fixes, all at the stop: none may count as dwelling
        assert t.feed(fix(i, 0.0)) is None
    assert t.state.rejected_by(Rejection.REPEATED) == 1
    assert t.state.rejected_by(Rejection.OUT_OF_ORDER) == 50
    assert t.state.used == 1
    events = t.feed_all(fix(100 + i, 0.0) for i in range(1, 61))
    assert len(events) == 1
    assert events[0].evidence["dwell_s"] == 60.0


def test_implausible_jump_is_rejected_and_a_glitched_start_recovers() -> None:
    t = tracker()
    t.feed_all(parked(0, 30, -2000.0, 3.0, seed=10))
    assert t.feed(fix(31, 0.0)) is None  # 2 km in 1 s
    assert t.feed(fix(32, -2000.0)) is None
    assert t.state.rejected_by(Rejection.JUMP) == 1
    assert t.state.phase is Phase.OUTSIDE
    # A tracker whose very first fix is a glitch 50 km away: the track restarts at the stop.
    t = tracker()
    t.feed(fix(0, 50_000.0))
    events = t.feed_all(parked(0, 90, 0.0, 3.0, seed=11))
    assert t.state.rejected_by(Rejection.JUMP) == 1
    assert len(events) == 1
    assert events[0].evidence["first_inside_ts_wall_ns"] == T0 + 2 * S


def test_invalid_coordinates_are_rejected() -> None:
    t = tracker()
    t.feed(Position(T0, math.nan, STOP.lon))
    t.feed(Position(T0 + S, 91.0, STOP.lon))
    assert t.state.rejected_by(Rejection.INVALID) == 2
    assert t.state.last is None


def test_speed_hint_keeps_slow_traffic_from_arriving() -> None:
    crawl = [fix(i, -160 + 2 * i, speed_mps=2.0) for i in range(160)]  # 2 m/s, 320 m
    assert [e.kind for e in tracker().feed_all(crawl)] == [EventKind.ARRIVED]
    assert tracker(max_dwell_speed_mps=1.0).feed_all(crawl) == []


def test_settings_validation() -> None:
    with pytest.raises(ValidationError, match="exit_radius_m must be larger"):
        GeofenceSettings(enter_radius_m=100, exit_radius_m=100)
    with pytest.raises(ValidationError):
        GeofenceSettings(min_mode=1)
    with pytest.raises(ValidationError):
        GeofenceSettings.model_validate({"enter_radius": 50})


def test_fences_for_a_shipment_in_service_order() -> None:
    pickup = Stop(Location(52.5, 13.3))
    job = Job("job-9", stop=Stop(STOP), pickup=pickup)
    fences = fences_for(job, "van-7")
    assert [(f.stop_kind, f.center) for f in fences] == [
        (StopKind.PICKUP, pickup.location),
        (StopKind.DELIVERY, STOP),
    ]


# -- real receivers: gpsd regression logs, as gpsd reported them (the .chk files) --------------


def gpsd_fixes(path: Path) -> list[Position]:
    """The TPVs of a gpsd ``.chk`` with a time, each with the HDOP of the latest SKY."""
    hdop: float | None = None
    out: list[Position] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        report = json.loads(line)
        if report.get("class") == "SKY":
            hdop = report.get("hdop") or None  # 0.0: the receiver gave no DOP
        elif report.get("class") == "TPV" and "time" in report and "lat" in report:
            ts = datetime.fromisoformat(report["time"].replace("Z", "+00:00"))
            out.append(
                Position(
                    round(ts.timestamp() * 1000) * 1_000_000,
                    report["lat"],
                    report["lon"],
                    FixMode(report["mode"]),
                    speed_mps=report.get("speed"),
                    hdop=hdop,
                )
            )
    return out


def real_tracker(fixes: list[Position], at_index: int, **settings: object) -> GeofenceTracker:
    here = Location(fixes[at_index].lat_deg, fixes[at_index].lon_deg)
    fence = Geofence("van-7", "job-1", StopKind.SINGLE, here)
    return GeofenceTracker(fence, GeofenceSettings.model_validate(settings))


def test_real_parked_receiver_arrives(shared_data: Path) -> None:
    # A Telit HE910 logging for three minutes in one place (Brussels), HDOP 1.5 to 2.25.
    fixes = gpsd_fixes(shared_data / "gpsd" / "telit-he910.log.chk")
    span_s = (fixes[-1].ts_wall_ns - fixes[0].ts_wall_ns) / S
    assert len(fixes) > 180
    assert span_s > 180
    t = real_tracker(fixes, -1)
    events = t.feed_all(fixes)
    assert [e.kind for e in events] == [EventKind.ARRIVED]
    ev = events[0].evidence
    assert ev["first_inside_ts_wall_ns"] == fixes[0].ts_wall_ns
    assert isinstance(ev["dwell_s"], float)
    assert 60.0 <= ev["dwell_s"] < 61.0
    used = [p for p in fixes if p.ts_wall_ns <= events[0].ts_wall_ns]
    assert ev["mode"] == 3
    assert ev["best_hdop"] == min(p.hdop or 99 for p in used) == 1.5
    # The log's second fix is 0.3 s older than its first: gpsd passed the receiver's time on.
    assert t.state.rejected_by(Rejection.OUT_OF_ORDER) == 1


def test_real_poor_fix_start_delays_the_dwell(shared_data: Path) -> None:
    # A Haicom 305N starting up: HDOP 17 to 7.5 for the first half minute, then 1.1 to 2.3;
    # gpsd reports each cycle twice (after GGA and after RMC) with the same time.
    fixes = gpsd_fixes(shared_data / "gpsd" / "haicom-305N.log.chk")
    t = real_tracker(fixes, -1)
    assert t.feed_all(fixes) == []
    assert t.state.rejected_by(Rejection.HDOP) > 20
    assert t.state.rejected_by(Rejection.REPEATED) > 30
    good = [p for p in fixes if p.hdop is not None and p.hdop <= 5]
    assert t.state.first_inside_ns == good[0].ts_wall_ns  # the dwell began at the first good fix
    # Trusting the poor fixes would have called an arrival inside this 70 s log.
    assert len(real_tracker(fixes, -1, max_hdop=25.0).feed_all(fixes)) == 1


def test_real_slow_drive_by_is_no_arrival_with_the_speed_hint(shared_data: Path) -> None:
    # A Humminbird moving steadily at 2.7 m/s; a small 20 m fence on its track.
    fixes = gpsd_fixes(shared_data / "gpsd" / "humminbird-M37.log.chk")
    small = {"enter_radius_m": 20.0, "exit_radius_m": 40.0, "dwell_s": 10.0}
    assert len(real_tracker(fixes, 8, **small).feed_all(fixes)) == 1
    t = real_tracker(fixes, 8, max_dwell_speed_mps=1.5, **small)
    assert t.feed_all(fixes) == []
    # Its clock steps back 13 s after 19:41:24; those fixes are older and ignored.
    assert t.state.rejected_by(Rejection.OUT_OF_ORDER) == 7
