"""A plausible drive around a point: a closed loop of streets, stops at corners. Pure.

The same state drives the simulated GNSS receiver and the simulated ECU, so the speed a CAN poll
reads agrees with the speed in the NMEA stream. ``Drive.steer`` sends the vehicle to a place
instead (a simulated driver's next stop) along a grid of streets, and parks it there.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

EARTH_RADIUS_M = 6_371_008.8
ACCEL_MPS2 = 1.8
DECEL_MPS2 = 2.5
STOP_S = 4.0
STEER_MPS = (8.0, 14.0)  # town speeds when heading for a stop: 29 to 50 km/h
SPEED_NOISE_MPS = 0.6  # how much the wanted speed wanders from one step to the next
TURN_MPS = 4.0  # speed through a corner of the street grid
_MIN_LEG_M = 30.0  # a shorter first leg is not worth a turn: go straight


@dataclass(frozen=True, slots=True)
class DriveState:
    """Where the simulated vehicle is at ``t_s`` seconds into the drive."""

    t_s: float
    lat_deg: float
    lon_deg: float
    speed_mps: float
    heading_deg: float
    odometer_m: float
    engine_rpm: float


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    dlon = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


def _bearing_and_distance(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """Initial bearing (deg) and distance (m) on a local flat approximation (fine below 10 km)."""
    north = math.radians(b[0] - a[0]) * EARTH_RADIUS_M
    east = math.radians(b[1] - a[1]) * EARTH_RADIUS_M * math.cos(math.radians(a[0]))
    return (math.degrees(math.atan2(east, north)) + 360.0) % 360.0, math.hypot(north, east)


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Metres between two (lat, lon) places a few km apart."""
    return _bearing_and_distance(a, b)[1]


def loop_waypoints(
    lat: float, lon: float, *, radius_m: float, corners: int, rng: random.Random
) -> list[tuple[float, float]]:
    """Corners of an irregular closed loop around (lat, lon)."""
    points = []
    for i in range(corners):
        angle = 2 * math.pi * i / corners + rng.uniform(-0.25, 0.25)
        r = radius_m * rng.uniform(0.6, 1.0)
        points.append(_offset(lat, lon, r * math.cos(angle), r * math.sin(angle)))
    return points


def engine_rpm_for(speed_mps: float) -> float:
    """Idle at 750 rpm; a five-gear box keeps the engine between about 1,300 and 2,600 rpm."""
    kmh = speed_mps * 3.6
    if kmh < 1.0:
        return 750.0
    gear_top_kmh = (20.0, 35.0, 50.0, 70.0, 200.0)
    gear = next(i for i, top in enumerate(gear_top_kmh) if kmh <= top)
    low = (0.0, *gear_top_kmh)[gear] * 0.8
    return 1300.0 + (kmh - low) / (gear_top_kmh[gear] - low) * 1300.0


def _approach(speed: float, wanted: float, dt_s: float) -> float:
    """The speed after ``dt_s`` of accelerating or braking toward ``wanted``."""
    if wanted >= speed:
        return min(wanted, speed + ACCEL_MPS2 * dt_s)
    return max(wanted, speed - DECEL_MPS2 * dt_s)


class Drive:
    """Advance with ``step(dt_s)``; cruises between corners and stops briefly at each.

    ``steer((lat, lon))`` heads for that place instead and parks there (speed 0) until steered
    elsewhere; ``steer(None)`` resumes the loop, now around where the vehicle is.
    """

    def __init__(
        self,
        lat: float,
        lon: float,
        *,
        seed: int = 0,
        radius_m: float = 800.0,
        cruise_mps: float = 13.9,
        corners: int = 7,
    ) -> None:
        rng = random.Random(seed)
        self._rng = rng
        self._radius_m, self._corners = radius_m, corners
        self._points = loop_waypoints(lat, lon, radius_m=radius_m, corners=corners, rng=rng)
        self._cruise = cruise_mps * rng.uniform(0.8, 1.1)
        self._target = 1
        self._pos = self._points[0]
        self._speed = 0.0
        self._wait = STOP_S * rng.random()
        self._t = 0.0
        self._odo = 0.0
        self._heading, _ = _bearing_and_distance(self._points[0], self._points[1])
        self._goal: tuple[float, float] | None = None
        self._legs: list[tuple[float, float]] = []  # what is left of the way to the goal
        self._steer_mps = 0.0

    @property
    def goal(self) -> tuple[float, float] | None:
        return self._goal

    @property
    def parked(self) -> bool:
        """At the goal, standing still."""
        return self._goal is not None and not self._legs

    def steer(self, goal: tuple[float, float] | None) -> None:
        """Head for ``goal`` (lat, lon degrees): along one street, then across (a grid city);
        ``None``: back to a loop of streets around the current position."""
        if goal == self._goal:
            return
        self._goal, self._wait = goal, 0.0
        if goal is None:
            self._points = loop_waypoints(
                *self._pos, radius_m=self._radius_m, corners=self._corners, rng=self._rng
            )
            self._target = 0
            return
        self._steer_mps = self._rng.uniform(*STEER_MPS)
        north_first = self._rng.random() < 0.5
        corner = (goal[0], self._pos[1]) if north_first else (self._pos[0], goal[1])
        straight = min(distance_m(self._pos, corner), distance_m(corner, goal)) < _MIN_LEG_M
        self._legs = [goal] if straight else [corner, goal]

    def state(self) -> DriveState:
        return DriveState(
            t_s=self._t,
            lat_deg=self._pos[0],
            lon_deg=self._pos[1],
            speed_mps=self._speed,
            heading_deg=self._heading,
            odometer_m=self._odo,
            engine_rpm=engine_rpm_for(self._speed),
        )

    def step(self, dt_s: float) -> DriveState:
        self._t += dt_s
        if self._goal is not None:
            self._steered(dt_s)
            return self.state()
        if self._wait > 0:
            self._wait -= dt_s
            return self.state()
        target = self._points[self._target]
        bearing, remaining = _bearing_and_distance(self._pos, target)
        braking_m = self._speed**2 / (2 * DECEL_MPS2)
        if remaining <= braking_m + 1.0:
            self._speed = max(0.0, self._speed - DECEL_MPS2 * dt_s)
        else:
            self._speed = min(self._cruise, self._speed + ACCEL_MPS2 * dt_s)
        travel = min(self._speed * dt_s, remaining)
        if self._speed == 0.0 or remaining < 0.5:
            self._pos, travel = target, remaining
            self._speed = 0.0
            self._target = (self._target + 1) % len(self._points)
            self._wait = STOP_S
        else:
            self._heading = bearing
            rad = math.radians(bearing)
            self._pos = _offset(*self._pos, travel * math.cos(rad), travel * math.sin(rad))
        self._odo += travel
        return self.state()

    def _steered(self, dt_s: float) -> None:
        """One step toward the goal: cruise with a wandering speed, slow for the corner, brake
        to a stop exactly at the goal, then stand."""
        if not self._legs:
            self._speed = 0.0
            return
        point = self._legs[0]
        end_mps = TURN_MPS if len(self._legs) > 1 else 0.0
        bearing, remaining = _bearing_and_distance(self._pos, point)
        noise = self._rng.gauss(0.0, SPEED_NOISE_MPS)
        cruise = min(STEER_MPS[1], max(STEER_MPS[0], self._steer_mps + noise))
        # The fastest speed from which DECEL_MPS2 still gets down to end_mps at the point.
        can_stop = math.sqrt(end_mps**2 + 2 * DECEL_MPS2 * remaining)
        self._speed = _approach(self._speed, min(cruise, can_stop), dt_s)
        travel = self._speed * dt_s
        if travel >= remaining or remaining < 0.5 or self._speed == 0.0:
            self._pos, travel = point, remaining
            self._legs.pop(0)
            if not self._legs:
                self._speed = 0.0
        else:
            rad = math.radians(bearing)
            self._pos = _offset(*self._pos, travel * math.cos(rad), travel * math.sin(rad))
        if travel > 0:
            self._heading = bearing
        self._odo += travel
