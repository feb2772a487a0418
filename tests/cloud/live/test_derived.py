"""Distance, engine hours and trips: device-time order, glitches, gaps and late history."""

from __future__ import annotations

import math
import random

import pytest

from fleetlink_cloud.live.derived import (
    EARTH_RADIUS_M,
    ENGINE_HOURS_PATH,
    ENGINE_RUNNING_PATH,
    DerivedSettings,
    Trip,
    distance_m,
    engine_hours_h,
    haversine_m,
    trips,
    usable_fixes,
)
from fleetlink_protocols.records import FixMode, Position, SignalValue

S = 1_000_000_000
T0 = 1_717_000_000 * S
LAT0, LON0 = 52.0, 13.0
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180  # along a meridian


def fix(t_s: float, north_m: float, speed_mps: float | None = 10.0, **kw: object) -> Position:
    """A fix ``north_m`` north of (LAT0, LON0): distances along the meridian are exact."""
    return Position(
        T0 + int(t_s * S),
        LAT0 + north_m / M_PER_DEG,
        LON0,
        speed_mps=speed_mps,
        **kw,  # type: ignore[arg-type]
    )


def late(items: list[Position], seed: int = 3) -> list[Position]:
    """The same fixes as ingest may see them: live first, the backlog hours later, shuffled."""
    rng = random.Random(seed)
    cut = len(items) * 2 // 3
    backlog = items[:cut]
    rng.shuffle(backlog)
    return items[cut:] + backlog


def rpm(t_s: float, value: float) -> SignalValue:
    return SignalValue(T0 + int(t_s * S), "Vehicle.Powertrain.CombustionEngine.Speed", value)


# -- distance ---------------------------------------------------------------------------------


def test_haversine() -> None:
    assert haversine_m(0, 0, 1, 0) == pytest.approx(M_PER_DEG, rel=1e-12)
    assert haversine_m(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_M, rel=1e-12)
    assert haversine_m(0, 179.5, 0, -179.5) == pytest.approx(M_PER_DEG, rel=1e-9)  # antimeridian
    assert haversine_m(LAT0, LON0, LAT0, LON0) == 0.0
    assert haversine_m(48.1, 11.5, 52.5, 13.4) == haversine_m(52.5, 13.4, 48.1, 11.5)


def test_distance_is_the_sum_of_hops_in_device_time_order() -> None:
    drive = [fix(t, 10.0 * t) for t in range(61)]  # 600 m north at 10 m/s
    assert distance_m(drive) == pytest.approx(600.0, abs=1e-6)
    assert distance_m(late(drive)) == distance_m(drive)
    assert distance_m(reversed(drive)) == distance_m(drive)


def test_distance_ignores_no_fix_reports() -> None:
    drive = [fix(0, 0), fix(1, 10), fix(2, 0, mode=FixMode.NO_FIX), fix(3, 30)]
    assert [p.ts_wall_ns for p in usable_fixes(drive)] == [T0, T0 + S, T0 + 3 * S]
    assert distance_m(drive) == pytest.approx(30.0, abs=1e-6)
    assert distance_m([fix(0, 0)]) == 0.0
    assert distance_m([]) == 0.0


def test_a_glitch_is_skipped_and_the_track_runs_past_it() -> None:
    drive = [fix(t, 10.0 * t) for t in range(11)]
    drive[5] = fix(5, 5_000.0)  # 5 km off for one second
    assert distance_m(drive) == pytest.approx(100.0, abs=1e-6)


def test_a_glitch_on_the_first_fix_restarts_the_track() -> None:
    drive = [fix(0, -8_000.0)] + [fix(t, 10.0 * t) for t in range(1, 11)]
    assert distance_m(drive) == pytest.approx(90.0, abs=1e-6)


def test_a_jump_no_vehicle_can_make_never_counts() -> None:
    # 50 m, then carried 20 km in 10 s (ferry, recovery truck, bad receiver), then 50 m more.
    first = [fix(t, 10.0 * t) for t in range(6)]
    second = [fix(t, 20_000.0 + 10.0 * (t - 15)) for t in range(15, 21)]
    assert distance_m(first + second) == pytest.approx(100.0, abs=1e-6)


def test_a_data_gap_counts_as_a_straight_line_when_plausible() -> None:
    drive = [fix(0, 0), fix(1, 10), fix(600, 6_000), fix(601, 6_010)]  # 10 m/s across the gap
    assert distance_m(drive) == pytest.approx(6_010.0, abs=1e-6)


def test_two_fixes_for_one_instant_are_not_travel() -> None:
    drive = [fix(0, 0), fix(1, 10), fix(1, 12), fix(2, 20)]
    assert distance_m(drive) == pytest.approx(20.0, abs=1e-6)


def test_max_speed_setting() -> None:
    drive = [fix(0, 0), fix(1, 40), fix(2, 80)]
    assert distance_m(drive) == pytest.approx(80.0, abs=1e-6)
    assert distance_m(drive, DerivedSettings(max_speed_mps=30.0)) == 0.0


# -- engine hours -----------------------------------------------------------------------------


def test_engine_hours_from_the_ecu_counter_count_only_increases() -> None:
    signals = [
        SignalValue(T0, ENGINE_HOURS_PATH, 1000.0),
        SignalValue(T0 + 3600 * S, ENGINE_HOURS_PATH, 1000.5),
        SignalValue(T0 + 7200 * S, ENGINE_HOURS_PATH, 3.0),  # ECU swapped: a reset
        SignalValue(T0 + 9000 * S, ENGINE_HOURS_PATH, 3.25),
        rpm(0, 800.0),
        rpm(10, 800.0),  # ignored: the counter wins
    ]
    assert engine_hours_h(signals) == pytest.approx(0.75, abs=1e-12)
    assert engine_hours_h(reversed(signals)) == engine_hours_h(signals)


def test_engine_hours_from_engine_speed_samples() -> None:
    signals = [rpm(t, 800.0) for t in range(0, 1801, 10)]  # 30 min running
    signals += [rpm(1810, 0.0), rpm(1820, 0.0)]  # stopped: 10 s of the last running sample
    signals += [rpm(5000, 900.0), rpm(5400, 900.0)]  # 400 s apart: unknown, not running
    signals += [rpm(6000, 900.0), rpm(6060, 900.0)]  # a minute more
    signals.append(SignalValue(T0 + 6070 * S, ENGINE_HOURS_PATH, 12.0))  # one counter value only
    expected_s = 1800 + 10 + 60
    assert engine_hours_h(signals) == pytest.approx(expected_s / 3600, abs=1e-12)
    shuffled = list(signals)
    random.Random(5).shuffle(shuffled)
    assert engine_hours_h(shuffled) == engine_hours_h(signals)


def test_engine_hours_ignore_non_numeric_and_non_finite_values() -> None:
    path = "Vehicle.OBD.EngineSpeed"
    signals = [
        SignalValue(T0, path, 800.0),
        SignalValue(T0 + S, path, math.nan),
        SignalValue(T0 + 2 * S, path, True),
        SignalValue(T0 + 3 * S, path, "800"),
        SignalValue(T0 + 4 * S, path, 800.0),
    ]
    assert engine_hours_h(signals) == pytest.approx(4 / 3600, abs=1e-12)
    assert engine_hours_h([]) == 0.0


# -- trips ------------------------------------------------------------------------------------


def two_drives() -> list[Position]:
    """Drive 0-120 s at 10 m/s, park 10 min (reporting), drive 840-900 s at 10 m/s."""
    out = [fix(t, 10.0 * t) for t in range(121)]
    out += [fix(t, 1_200.0 + (t % 3) * 0.5, speed_mps=0.0) for t in range(121, 840)]  # drift
    out += [fix(t, 1_200.0 + 10.0 * (t - 840)) for t in range(840, 901)]
    return out


def test_trips_split_at_a_long_stop() -> None:
    got = trips(two_drives())
    assert [(t.start_ns, t.end_ns, t.positions) for t in got] == [
        (T0, T0 + 120 * S, 121),
        (T0 + 840 * S, T0 + 900 * S, 61),
    ]
    assert got[0].distance_m == pytest.approx(1_200.0, abs=1e-6)
    assert got[1].distance_m == pytest.approx(600.0, abs=1e-6)
    assert got[0].start_lat_deg == LAT0
    assert got[1].end_lat_deg == pytest.approx(LAT0 + 1_800.0 / M_PER_DEG, abs=1e-12)
    assert got[0].max_speed_mps == 10.0
    assert got[1].duration_s == 60.0


def test_trips_are_the_same_when_history_arrives_late() -> None:
    assert trips(late(two_drives())) == trips(two_drives())


def test_a_short_stop_stays_inside_the_trip() -> None:
    drive = [fix(t, 10.0 * t) for t in range(61)]
    drive += [fix(t, 600.0, speed_mps=0.0) for t in range(61, 121)]  # a traffic light, 60 s
    drive += [fix(t, 600.0 + 10.0 * (t - 120)) for t in range(121, 181)]
    (trip,) = trips(drive)
    assert (trip.start_ns, trip.end_ns, trip.positions) == (T0, T0 + 180 * S, 181)
    assert trip.distance_m == pytest.approx(1_200.0, abs=1e-6)


def test_a_data_gap_longer_than_max_gap_ends_the_trip() -> None:
    drive = [fix(t, 10.0 * t) for t in range(11)]
    drive += [fix(t, 3_500.0 + 10.0 * (t - 400)) for t in range(400, 411)]  # 389 s silent
    got = trips(drive)
    assert [(t.start_ns, t.end_ns) for t in got] == [
        (T0, T0 + 10 * S),
        (T0 + 400 * S, T0 + 410 * S),
    ]
    assert [t.distance_m for t in got] == pytest.approx([100.0, 100.0], abs=1e-6)


def test_a_move_shorter_than_min_trip_distance_is_no_trip() -> None:
    yard = [fix(t, 2.0 * t, speed_mps=2.0) for t in range(21)]  # 40 m across the depot yard
    assert trips(yard) == []
    assert len(trips(yard, settings=DerivedSettings(min_trip_distance_m=39.0))) == 1
    assert trips([]) == []


def test_engine_running_counts_as_driving_below_walking_pace() -> None:
    crawl = [fix(t, 1.0 * t, speed_mps=1.0) for t in range(121)]  # 120 m in 2 minutes
    assert trips(crawl) == []
    ignition = [
        SignalValue(T0 - S, ENGINE_RUNNING_PATH, True),
        SignalValue(T0 + 100 * S, ENGINE_RUNNING_PATH, False),
    ]
    (trip,) = trips(crawl, ignition)
    assert (trip.start_ns, trip.end_ns, trip.positions) == (T0, T0 + 99 * S, 100)
    assert trip.distance_m == pytest.approx(99.0, abs=1e-6)
    assert trips(late(crawl), list(reversed(ignition))) == [trip]


def test_trip_fields() -> None:
    trip = Trip(T0, T0 + 90 * S, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7)
    assert trip.duration_s == 90.0
