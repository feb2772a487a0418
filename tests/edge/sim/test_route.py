from __future__ import annotations

import itertools
import math
import os
from datetime import UTC, datetime

import pynmea2

from fleetlink_edge.sim.gnss import PtyGnss, nmea_epoch
from fleetlink_edge.sim.route import Drive, _bearing_and_distance


def test_drive_stays_near_home_moves_and_stops() -> None:
    drive = Drive(52.52, 13.405, seed=3, radius_m=800)
    states = [drive.step(0.1) for _ in range(20 * 60 * 10)]  # 20 minutes at 10 Hz
    far = max(_bearing_and_distance((52.52, 13.405), (s.lat_deg, s.lon_deg))[1] for s in states)
    assert 300 < far <= 800 * 1.01
    speeds = [s.speed_mps for s in states]
    assert max(speeds) > 10
    assert speeds.count(0.0) > 100
    # the odometer agrees with the distance between successive positions
    path = sum(
        _bearing_and_distance((a.lat_deg, a.lon_deg), (b.lat_deg, b.lon_deg))[1]
        for a, b in itertools.pairwise(states)
    )
    assert math.isclose(path, states[-1].odometer_m - states[0].odometer_m, rel_tol=0.01)
    assert all(750 <= s.engine_rpm <= 2700 for s in states)


def test_nmea_epoch_is_valid_and_carries_the_state() -> None:
    drive = Drive(-37.78, 175.31, seed=1)
    for _ in range(300):
        state = drive.step(0.1)
    raw = nmea_epoch(state, datetime(2026, 11, 25, 12, 0, 1, 500000, tzinfo=UTC))
    msgs = [pynmea2.parse(line, check=True) for line in raw.decode().splitlines()]
    gga, _gsa, rmc = msgs
    assert abs(gga.latitude - state.lat_deg) < 1e-5
    assert abs(rmc.longitude - state.lon_deg) < 1e-5
    assert abs(rmc.spd_over_grnd * 0.514444 - state.speed_mps) < 0.01
    assert rmc.datestamp.isoformat() == "2026-11-25"


def test_pty_delivers_bytes_to_the_slave_path() -> None:
    gnss = PtyGnss()
    try:
        fd = os.open(gnss.path, os.O_RDONLY | os.O_NOCTTY)
        gnss.write_epoch(Drive(1.0, 2.0).state())
        data = os.read(fd, 4096)
        os.close(fd)
        assert data.startswith(b"$GPGGA,")
        assert data.count(b"\r\n") == 3
    finally:
        gnss.close()
