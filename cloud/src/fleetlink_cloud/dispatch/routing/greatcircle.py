"""The builtin travel model: great-circle distance × circuity ÷ the learned speed. No I/O.

A leg's road distance is its haversine distance times ``circuity`` (roads are not straight; 1.3
is typical of cities); its duration is that distance at the median moving speed the
:class:`~fleetlink_cloud.dispatch.speeds.SpeedTable` holds for the leg's midpoint cell and the
hour of departure. The table's 85th/15th percentile speeds give the early/late durations.
Unit vectors and chords give cheap lower bounds: a chord is never longer than its arc.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing import LegRange, Matrix, RouterSettings
from fleetlink_cloud.dispatch.speeds import SpeedTable
from fleetlink_cloud.live.derived import EARTH_RADIUS_M

_R2 = 2.0 * EARTH_RADIUS_M
_RAD = math.pi / 180.0
_sin, _cos, _asin, _sqrt = math.sin, math.cos, math.asin, math.sqrt

Unit = tuple[float, float, float]


def great_circle_m(a: Location, b: Location) -> float:
    """Haversine distance in metres on the mean-radius sphere."""
    la1 = a.lat * _RAD
    la2 = b.lat * _RAD
    h = math.sin((la2 - la1) * 0.5) ** 2 + math.cos(la1) * math.cos(la2) * (
        math.sin((b.lon - a.lon) * _RAD * 0.5) ** 2
    )
    return _R2 * math.asin(math.sqrt(min(h, 1.0)))


def unit(loc: Location) -> Unit:
    """The point as a unit vector (Earth-centred), for :func:`chord_m`."""
    la = loc.lat * _RAD
    lo = loc.lon * _RAD
    c = math.cos(la)
    return (c * math.cos(lo), c * math.sin(lo), math.sin(la))


def chord_m(u: Unit, v: Unit) -> float:
    """Straight-line (chord) distance in metres: a lower bound of the great-circle distance."""
    dx = u[0] - v[0]
    dy = u[1] - v[1]
    dz = u[2] - v[2]
    return EARTH_RADIUS_M * math.sqrt(dx * dx + dy * dy + dz * dz)


class GreatCircleModel:
    """The builtin :class:`TravelModel` and :class:`Router` (its matrices are computed here)."""

    def __init__(self, speeds: SpeedTable, circuity: float = 1.3) -> None:
        if circuity < 1.0:
            raise ValueError("circuity is road distance over great-circle distance: at least 1")
        self.speeds = speeds
        self.circuity = circuity
        self.min_s_per_m = circuity / speeds.max_median_mps

    def distance_m(self, a: Location, b: Location) -> float:
        """Estimated road distance: great-circle distance × circuity."""
        return great_circle_m(a, b) * self.circuity

    def leg_s(self, a: Location, b: Location, depart_at: float) -> float:
        # great_circle_m inlined: this is the insertion hot path
        la1 = a.lat * _RAD
        la2 = b.lat * _RAD
        h = _sin((la2 - la1) * 0.5) ** 2 + _cos(la1) * _cos(la2) * (
            _sin((b.lon - a.lon) * _RAD * 0.5) ** 2
        )
        if h == 0.0:
            return 0.0
        d = _R2 * _asin(_sqrt(min(h, 1.0))) * self.circuity
        return d / self.speeds.median_mps((a.lat + b.lat) * 0.5, (a.lon + b.lon) * 0.5, depart_at)

    def leg_range_s(self, a: Location, b: Location, depart_at: float) -> LegRange:
        d = great_circle_m(a, b) * self.circuity
        st = self.speeds.stats((a.lat + b.lat) * 0.5, (a.lon + b.lon) * 0.5, depart_at)
        if d == 0.0:
            return LegRange(0.0, 0.0, 0.0, st.measured)
        return LegRange(d / st.p85_mps, d / st.median_mps, d / st.p15_mps, st.measured)

    async def matrix(
        self, sources: Sequence[Location], destinations: Sequence[Location], depart_at: int
    ) -> Matrix:
        durations = tuple(tuple(self.leg_s(a, b, depart_at) for b in destinations) for a in sources)
        distances = tuple(tuple(self.distance_m(a, b) for b in destinations) for a in sources)
        return Matrix(durations, distances)

    async def aclose(self) -> None:
        return None


def from_settings(settings: RouterSettings, builtin: GreatCircleModel) -> GreatCircleModel:
    """The ``builtin`` entry of :data:`~fleetlink_cloud.dispatch.routing.ROUTERS`."""
    return builtin
