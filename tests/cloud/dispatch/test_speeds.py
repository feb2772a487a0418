"""Speeds learned from GNSS fixes: buckets, filters, robust statistics, fallbacks, round trips."""

from __future__ import annotations

import calendar
import itertools
import json
import random

import pytest

from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing.greatcircle import great_circle_m
from fleetlink_cloud.dispatch.speeds import (
    Grid,
    Level,
    Rejected,
    SpeedLearner,
    SpeedSettings,
    SpeedTable,
    SpeedTableError,
    hour_of_week,
)
from fleetlink_protocols.records import FixMode, Position

MONDAY = calendar.timegm((2024, 1, 1, 0, 0, 0))  # 2024-01-01 was a Monday
ALEX = (52.5219, 13.4132)  # Alexanderplatz
SPANDAU = (52.5350, 13.2000)
NS = 1_000_000_000


def fix(lat: float, lon: float, speed: float | None, ts_s: int, **kw: object) -> Position:
    return Position(ts_wall_ns=ts_s * NS, lat_deg=lat, lon_deg=lon, speed_mps=speed, **kw)  # type: ignore[arg-type]


def test_hour_of_week_counts_from_monday_midnight_utc() -> None:
    assert hour_of_week(MONDAY) == 0
    assert hour_of_week(MONDAY + 8 * 3600 + 1799) == 8
    assert hour_of_week(MONDAY + 3 * 86400 + 17 * 3600) == 3 * 24 + 17  # Thursday 17:00
    assert hour_of_week(MONDAY + 7 * 86400 - 1) == 167  # Sunday 23:59:59
    assert hour_of_week(MONDAY + 7 * 86400) == 0
    assert hour_of_week(0) == 72  # the epoch was a Thursday


@pytest.mark.parametrize(("dlat", "dlon"), [(0.0001, 0.0), (0.0, 0.0001)])
def test_cells_are_about_cell_m_wide_in_both_directions(dlat: float, dlon: float) -> None:
    grid = Grid(2000.0)
    start = Location(*ALEX)
    cells, boundaries = [grid.cell(*ALEX)], []
    for i in range(1, 2001):  # 2000 steps of about 11 m (north) or 7 m (east)
        here = Location(ALEX[0] + i * dlat, ALEX[1] + i * dlon)
        c = grid.cell(here.lat, here.lon)
        if c != cells[-1]:
            boundaries.append(great_circle_m(start, here))
            cells.append(c)
    gaps = [b - a for a, b in itertools.pairwise(boundaries)]
    assert gaps, "the walk crossed fewer than two cell boundaries"
    assert all(1990 < g < 2010 for g in gaps), gaps


def test_filters_count_every_rejected_fix() -> None:
    learner = SpeedLearner()
    lat, lon = ALEX
    assert learner.add(fix(lat, lon, 10.0, MONDAY)) is None
    assert learner.add(fix(lat, lon, 10.0, MONDAY, mode=FixMode.NO_FIX)) is Rejected.NO_FIX
    assert learner.add(fix(lat, lon, None, MONDAY)) is Rejected.NO_SPEED
    assert learner.add(fix(lat, lon, 10.0, MONDAY, hdop=9.5)) is Rejected.HDOP
    assert learner.add(fix(lat, lon, 0.4, MONDAY)) is Rejected.STOPPED
    assert learner.add(fix(lat, lon, 95.0, MONDAY)) is Rejected.IMPLAUSIBLE
    assert learner.add(fix(lat, lon, 12.0, MONDAY, mode=FixMode.FIX_2D, hdop=1.2)) is None
    assert learner.accepted == 2
    assert learner.rejected == {
        Rejected.NO_FIX: 1,
        Rejected.NO_SPEED: 1,
        Rejected.HDOP: 1,
        Rejected.STOPPED: 1,
        Rejected.IMPLAUSIBLE: 1,
    }


def test_median_and_percentiles_are_robust_to_outliers() -> None:
    # 100 moving fixes at Alexanderplatz on Monday 08:xx: 2, 3, ..., 11 m/s ten times each,
    # plus 10 plausible but wild 60 m/s ones: the median barely moves, the mean would.
    learner = SpeedLearner(SpeedSettings(min_samples=20))
    ts = MONDAY + 8 * 3600
    fixes = [fix(*ALEX, 2.0 + (i % 10), ts + i) for i in range(100)]
    fixes += [fix(*ALEX, 60.0, ts + 100 + i) for i in range(10)]
    assert learner.add_all(fixes) == 110
    st = learner.table(default_speed_mps=8.0).stats(*ALEX, ts)
    assert st.level is Level.CELL_HOUR
    assert st.samples == 110
    # Sorted, the 55th of 110 values lies in the 7 m/s bin; bins are 0.5 m/s wide.
    assert 7.0 <= st.median_mps <= 7.5
    assert 3.0 <= st.p15_mps <= 3.5  # the 16.5th value: in the 3 m/s bin
    assert 11.0 <= st.p85_mps <= 11.5  # the 93.5th value: in the 11 m/s bin
    assert st.p15_mps < st.median_mps < st.p85_mps


def test_lookups_fall_back_cell_hour_then_cell_then_global_then_default() -> None:
    rng = random.Random(7)
    learner = SpeedLearner(SpeedSettings(min_samples=30))
    rush = MONDAY + 8 * 3600
    night = MONDAY + 2 * 3600
    # Alexanderplatz: 40 slow fixes in the rush hour, 10 fast ones at night (too few alone).
    learner.add_all(fix(*ALEX, rng.uniform(3, 5), rush + i) for i in range(40))
    learner.add_all(fix(*ALEX, rng.uniform(13, 15), night + i) for i in range(10))
    # Spandau: 20 fixes over the week (fewer than min_samples: only the global level sees them).
    learner.add_all(fix(*SPANDAU, rng.uniform(9, 11), MONDAY + i * 30_000) for i in range(20))
    table = learner.table(default_speed_mps=8.3)

    assert table.stats(*ALEX, rush).level is Level.CELL_HOUR
    assert 3 <= table.stats(*ALEX, rush).median_mps <= 5
    at_night = table.stats(*ALEX, night)  # 10 fixes: the cell over all hours answers (50 fixes)
    assert at_night.level is Level.CELL
    assert at_night.samples == 50
    assert table.stats(*SPANDAU, rush).level is Level.GLOBAL
    assert table.stats(*SPANDAU, rush).samples == 70
    assert table.median_mps(*ALEX, rush) == table.stats(*ALEX, rush).median_mps
    assert table.median_mps(*SPANDAU, night) == table.stats(*SPANDAU, night).median_mps

    empty = SpeedLearner().table(default_speed_mps=8.3)
    st = empty.stats(*ALEX, rush)
    assert st.level is Level.DEFAULT
    assert not st.measured
    assert st.median_mps == st.p15_mps == st.p85_mps == 8.3


def test_max_median_bounds_every_lookup() -> None:
    rng = random.Random(3)
    learner = SpeedLearner(SpeedSettings(min_samples=5))
    for _ in range(6000):  # about 200 cells, three hours: about ten fixes per bucket
        lat, lon = rng.uniform(52.40, 52.62), rng.uniform(13.15, 13.65)
        learner.add(fix(lat, lon, rng.uniform(2, 30), MONDAY + rng.randrange(8, 11) * 3600))
    table = learner.table(default_speed_mps=8.3)
    assert len(table) > 100
    for _ in range(2000):
        lat, lon = rng.uniform(52.3, 52.7), rng.uniform(13.0, 13.8)
        assert table.median_mps(lat, lon, MONDAY + rng.randrange(7 * 86400)) <= table.max_median_mps


def test_table_and_learner_round_trip_through_json() -> None:
    rng = random.Random(11)
    learner = SpeedLearner(SpeedSettings(min_samples=10))
    for i in range(2000):
        lat, lon = rng.uniform(52.45, 52.55), rng.uniform(13.30, 13.50)
        learner.add(fix(lat, lon, rng.uniform(2, 20), MONDAY + rng.randrange(3 * 86400) + i))
    table = learner.table(default_speed_mps=9.0)
    again = SpeedTable.from_dict(json.loads(json.dumps(table.to_dict())))
    relearned = SpeedLearner.from_dict(json.loads(json.dumps(learner.to_dict())))
    assert relearned.accepted == learner.accepted
    other = relearned.table(default_speed_mps=9.0)
    for _ in range(500):
        lat, lon = rng.uniform(52.44, 52.56), rng.uniform(13.29, 13.51)
        ts = MONDAY + rng.randrange(7 * 86400)
        assert again.stats(lat, lon, ts) == table.stats(lat, lon, ts)
        assert other.stats(lat, lon, ts) == table.stats(lat, lon, ts)
    assert again.max_median_mps == table.max_median_mps


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 2, "cell_m": 2000, "default_speed_mps": 8, "cell_hour": [], "cell": []},
        {"version": 1, "cell_m": 2000, "default_speed_mps": 8, "cell_hour": [[1, 2]], "cell": []},
        {
            "version": 1,
            "cell_m": 2000,
            "default_speed_mps": -1,
            "cell_hour": [],
            "cell": [],
            "global": None,
        },
    ],
)
def test_a_malformed_table_is_a_typed_error(data: dict[str, object]) -> None:
    with pytest.raises(SpeedTableError):
        SpeedTable.from_dict(data)
    with pytest.raises(SpeedTableError):
        SpeedLearner.from_dict(data)
