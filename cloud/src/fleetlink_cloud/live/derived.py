"""Derived values: distance, engine hours and trips. Pure functions over records.

Every function sorts its input by device time (``ts_wall_ns``) before it looks at neighbours, so
a history backlog that arrived hours after the live data gives the same answer as an
uninterrupted stream. Nothing here reads the clock or the database; the API gives these
functions the positions and signals of a time range and serves what they return.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleetlink_protocols.records import FixMode, Position, SignalValue

_NS = 1_000_000_000
EARTH_RADIUS_M = 6_371_008.8
"""IUGG mean Earth radius R1; the haversine error against WGS-84 stays below 0.5 %."""

ENGINE_HOURS_PATH = "Vehicle.Powertrain.CombustionEngine.EngineHours"  # VSS 6.0, h
ENGINE_SPEED_PATHS = (
    "Vehicle.Powertrain.CombustionEngine.Speed",  # VSS 6.0, rpm (J1939-71 SPN 190)
    "Vehicle.OBD.EngineSpeed",  # SAE J1979 PID 0C, rpm
)
ENGINE_RUNNING_PATH = "Vehicle.Powertrain.CombustionEngine.IsRunning"  # VSS 6.0, boolean


@dataclass(frozen=True, slots=True)
class DerivedSettings:
    """Thresholds of the derivations; the defaults suit road vehicles reporting every second."""

    max_speed_mps: float = 90.0  # 324 km/h: a faster hop between fixes is a GNSS glitch
    max_gap_s: float = 300.0  # a longer silence is unknown time, never engine time
    moving_speed_mps: float = 1.5  # above walking pace: the vehicle is driving
    stop_after_s: float = 300.0  # stopped this long: the trip ended
    min_trip_distance_m: float = 50.0  # shorter "trips" are GNSS drift while parked


@dataclass(frozen=True, slots=True)
class Trip:
    """A drive between two stops. Times are device times in ns; distance in metres."""

    start_ns: int
    end_ns: int
    start_lat_deg: float
    start_lon_deg: float
    end_lat_deg: float
    end_lon_deg: float
    distance_m: float
    max_speed_mps: float
    positions: int

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / _NS


def haversine_m(lat1_deg: float, lon1_deg: float, lat2_deg: float, lon2_deg: float) -> float:
    """Great-circle distance in metres between two WGS-84 points (spherical Earth)."""
    phi1, phi2 = math.radians(lat1_deg), math.radians(lat2_deg)
    dphi = phi2 - phi1
    dlam = math.radians(lon2_deg - lon1_deg)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def usable_fixes(positions: Iterable[Position]) -> list[Position]:
    """2D/3D fixes in device-time order; "no fix" reports carry stale or zero coordinates."""
    fixes = [p for p in positions if p.mode >= FixMode.FIX_2D]
    fixes.sort(key=lambda p: p.ts_wall_ns)
    return fixes


def _plausible(a: Position, b: Position, settings: DerivedSettings) -> bool:
    """Whether a road vehicle can get from fix ``a`` to the later fix ``b`` in the time between.

    Two fixes for one instant (or out of order) are never travel: one of them is wrong.
    """
    dt_s = (b.ts_wall_ns - a.ts_wall_ns) / _NS
    if dt_s <= 0:
        return False
    return haversine_m(a.lat_deg, a.lon_deg, b.lat_deg, b.lon_deg) / dt_s <= settings.max_speed_mps


def distance_m(positions: Iterable[Position], settings: DerivedSettings | None = None) -> float:
    """Distance driven along the fixes, in metres, in device-time order; glitches skipped.

    A fix that no road vehicle could have reached from the previous good one is a GNSS glitch
    and is skipped: the distance runs from the fix before it to the fix after it. When the next
    fix agrees with the suspect one instead (the earlier fix was the glitch, or the vehicle was
    carried, by ferry or on a truck), the track restarts there; the jump itself never counts.

    A hop across a data gap still counts when its implied speed is plausible: the vehicle did
    get from one fix to the other, and a straight line is the least it drove.
    """
    s = settings or DerivedSettings()
    total = 0.0
    anchor: Position | None = None  # the last good fix
    suspect: Position | None = None  # implausible from the anchor; the next fix decides
    for fix in usable_fixes(positions):
        if anchor is None or _plausible(anchor, fix, s):
            start = anchor
        elif suspect is not None and _plausible(suspect, fix, s):
            start = suspect
        else:
            suspect = fix
            continue
        if start is not None:
            total += haversine_m(start.lat_deg, start.lon_deg, fix.lat_deg, fix.lon_deg)
        anchor, suspect = fix, None
    return total


def _numeric(signals: Iterable[SignalValue], paths: Sequence[str]) -> list[tuple[int, float]]:
    out = [
        (s.ts_wall_ns, float(s.value))
        for s in signals
        if s.path in paths
        and isinstance(s.value, int | float)
        and not isinstance(s.value, bool)  # a bool is an int to Python, never a reading
        and math.isfinite(s.value)
    ]
    out.sort()
    return out


def engine_hours_h(
    signals: Iterable[SignalValue], settings: DerivedSettings | None = None
) -> float:
    """Engine running time in hours over the samples given (device-time order).

    The ECU's own counter (VSS EngineHours; J1939-71 SPN 247) wins when it was reported at
    least twice: its increase is exact. Otherwise the time between consecutive engine-speed
    samples is added up wherever the earlier one showed the engine turning (rpm > 0) and the
    samples are at most ``max_gap_s`` apart; a longer silence is unknown, not running.
    """
    s = settings or DerivedSettings()
    items = list(signals)
    counter = _numeric(items, (ENGINE_HOURS_PATH,))
    if len(counter) >= 2:
        # A counter reset (ECU swap) is a negative step; count only the increases.
        return sum(max(0.0, b - a) for (_, a), (_, b) in itertools.pairwise(counter))
    rpm = _numeric(items, ENGINE_SPEED_PATHS)
    max_gap_ns = s.max_gap_s * _NS
    running_ns = 0
    for (t0, v0), (t1, _) in itertools.pairwise(rpm):
        if v0 > 0 and 0 < t1 - t0 <= max_gap_ns:
            running_ns += t1 - t0
    return running_ns / _NS / 3600


def ignition_samples(signals: Iterable[SignalValue]) -> list[tuple[int, bool]]:
    """(ts_wall_ns, engine running) from the VSS IsRunning signal, in device-time order."""
    out = [
        (s.ts_wall_ns, bool(s.value))
        for s in signals
        if s.path == ENGINE_RUNNING_PATH and isinstance(s.value, bool | int)
    ]
    out.sort()
    return out


def _ignition_at(samples: Sequence[tuple[int, bool]], ts_ns: int, start: int) -> tuple[int, bool]:
    """Advance ``start`` through ``samples`` up to ``ts_ns``; return the index and the state."""
    i = start
    while i + 1 < len(samples) and samples[i + 1][0] <= ts_ns:
        i += 1
    on = bool(samples) and samples[i][0] <= ts_ns and samples[i][1]
    return i, on


def trips(
    positions: Iterable[Position],
    signals: Iterable[SignalValue] = (),
    settings: DerivedSettings | None = None,
) -> list[Trip]:
    """Split the fixes into trips, in device-time order.

    A fix is "driving" when its speed is above ``moving_speed_mps`` or, where the vehicle
    reports it, the engine is running (VSS IsRunning). A trip ends when the vehicle was not
    driving for ``stop_after_s`` or the data has a gap longer than ``max_gap_s``; a trip shorter
    than ``min_trip_distance_m`` is parking drift and is left out.
    """
    s = settings or DerivedSettings()
    fixes = usable_fixes(positions)
    ignition = ignition_samples(signals)
    result: list[Trip] = []
    current: list[Position] = []
    last_driving_ns: int | None = None
    ig_index = 0
    for fix in fixes:
        ig_index, engine_on = _ignition_at(ignition, fix.ts_wall_ns, ig_index)
        driving = (fix.speed_mps or 0.0) > s.moving_speed_mps or engine_on
        if current:
            gap_s = (fix.ts_wall_ns - current[-1].ts_wall_ns) / _NS
            since_ns = fix.ts_wall_ns if last_driving_ns is None else last_driving_ns
            idle_s = (fix.ts_wall_ns - since_ns) / _NS
            if gap_s > s.max_gap_s or (not driving and idle_s >= s.stop_after_s):
                _close(current, last_driving_ns, s, result)
                current, last_driving_ns = [], None
        if driving:
            current.append(fix)
            last_driving_ns = fix.ts_wall_ns
        elif current:
            current.append(fix)  # a short stop inside a trip (traffic light) stays in it
    _close(current, last_driving_ns, s, result)
    return result


def _close(
    fixes: list[Position], last_driving_ns: int | None, s: DerivedSettings, out: list[Trip]
) -> None:
    """Append the trip made of ``fixes`` up to the last driving fix, if it went anywhere."""
    if last_driving_ns is None:
        return
    moving = [f for f in fixes if f.ts_wall_ns <= last_driving_ns]
    if len(moving) < 2:
        return
    dist = distance_m(moving, s)
    if dist < s.min_trip_distance_m:
        return
    first, last = moving[0], moving[-1]
    out.append(
        Trip(
            start_ns=first.ts_wall_ns,
            end_ns=last.ts_wall_ns,
            start_lat_deg=first.lat_deg,
            start_lon_deg=first.lon_deg,
            end_lat_deg=last.lat_deg,
            end_lon_deg=last.lon_deg,
            distance_m=dist,
            max_speed_mps=max((f.speed_mps or 0.0) for f in moving),
            positions=len(moving),
        )
    )
