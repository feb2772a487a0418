"""Steering the simulated drive: it converges on a goal at town speeds, parks there, resumes its
loop, and the NMEA it feeds stays valid for the agent's own decoder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetlink_edge.decode.nmea import NmeaDecoder
from fleetlink_edge.sim.ecu import EcuState
from fleetlink_edge.sim.gnss import nmea_epoch
from fleetlink_edge.sim.route import STEER_MPS, Drive, DriveState, distance_m

HOME = (52.52, 13.405)
GOAL = (52.531, 13.392)  # 1.2 km north, 0.9 km west: a two-leg grid route


def here(state: DriveState) -> tuple[float, float]:
    return state.lat_deg, state.lon_deg


def drive_to(
    drive: Drive, goal: tuple[float, float], dt_s: float, limit_s: float
) -> list[DriveState]:
    drive.steer(goal)
    states = []
    for _ in range(int(limit_s / dt_s)):
        states.append(drive.step(dt_s))
        if drive.parked:
            break
    return states


def test_the_drive_converges_on_the_goal_at_town_speed_and_parks() -> None:
    drive = Drive(*HOME, seed=5)
    for _ in range(30):
        drive.step(1.0)  # under way on its loop first
    start = here(drive.state())
    states = drive_to(drive, GOAL, 1.0, 900)
    assert drive.parked
    assert distance_m(here(states[-1]), GOAL) < 0.01
    assert states[-1].speed_mps == 0.0
    speeds = [s.speed_mps for s in states]
    assert max(speeds) <= STEER_MPS[1]
    cruising = [v for v in speeds if v >= STEER_MPS[0] - 1]
    assert len(cruising) > len(speeds) / 2  # most of the way at 8-14 m/s
    assert len({round(v, 1) for v in cruising}) > 5  # with noise, not one fixed speed
    # A grid route (either leg first): longer than the straight line, no longer than two legs.
    corner = (GOAL[0], start[1])
    legs_m = distance_m(start, corner) + distance_m(corner, GOAL)
    driven_m = states[-1].odometer_m - states[0].odometer_m
    assert distance_m(start, GOAL) * 1.1 < driven_m <= legs_m * 1.01
    # Seconds taken: as at 6 to 14 m/s on average, a town drive with a turn and two stops.
    assert driven_m / 14 < len(states) < driven_m / 6


def test_parked_means_parked_for_as_long_as_the_goal_holds_and_the_ecu_agrees() -> None:
    drive = Drive(*HOME, seed=2)
    drive_to(drive, GOAL, 0.5, 900)
    ecu = EcuState(drive_fault_after_s=None)
    dwell = []
    for _ in range(150):  # 75 s: longer than the cloud's 60 s geofence dwell
        state = drive.step(0.5)
        ecu.follow(state)
        dwell.append(state)
        assert ecu.speed_kmh == 0.0
        assert ecu.rpm == 750.0
    assert all(s.speed_mps == 0.0 and distance_m(here(s), GOAL) < 0.01 for s in dwell)
    assert dwell[-1].odometer_m == dwell[0].odometer_m
    drive.steer(None)  # back to random driving, now around the goal
    after = [drive.step(0.5) for _ in range(600)]
    assert max(s.speed_mps for s in after) > 8
    assert max(distance_m(here(s), GOAL) for s in after) > 300


def test_a_new_goal_on_the_way_takes_over_and_the_ecu_speed_follows() -> None:
    drive = Drive(*HOME, seed=9)
    drive.steer(GOAL)
    ecu = EcuState(drive_fault_after_s=None)
    for _ in range(60):
        ecu.follow(drive.step(1.0))
    moving = drive.state()
    assert moving.speed_mps > 0
    assert abs(ecu.speed_kmh - moving.speed_mps * 3.6) < 1e-9
    other = (52.515, 13.42)
    drive_to(drive, other, 1.0, 900)
    assert drive.parked
    assert distance_m(here(drive.state()), other) < 0.01


def test_the_nmea_of_a_steered_drive_decodes_to_the_same_fixes() -> None:
    drive = Drive(*HOME, seed=4)
    states = drive_to(drive, GOAL, 1.0, 900)
    states += [drive.step(1.0) for _ in range(10)]  # parked: still a fix every second
    decoder = NmeaDecoder()
    t0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
    fixes = []
    for i, state in enumerate(states):
        fixes += decoder.feed(nmea_epoch(state, t0 + timedelta(seconds=i)))
    fixes += decoder.flush()
    rejected = {k: v for k, v in decoder.counters.items() if k.startswith("rejected") and v}
    assert rejected == {}
    assert len(fixes) == len(states)
    for fix, state in zip(fixes, states, strict=True):
        assert fix.lat_deg is not None
        assert fix.lon_deg is not None
        assert fix.speed_mps is not None
        assert distance_m((fix.lat_deg, fix.lon_deg), here(state)) < 0.5  # 0.0001' per field
        assert abs(fix.speed_mps - state.speed_mps) < 0.01  # RMC: knots, two decimals
    times = [f.time_ns for f in fixes]
    t0_ns = int(t0.timestamp()) * 10**9
    assert times == [t0_ns + i * 10**9 for i in range(len(states))]
