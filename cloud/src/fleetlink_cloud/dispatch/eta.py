"""Live ETA: walk a vehicle's remaining route from its live position. Pure; given ``now``.

The vehicle leaves its position (``route.origin``) at ``max(now, route.origin_time)`` and drives
each leg in the travel model's expected time. At a stop it waits for the earliest time window
that has not closed yet, serves for ``service_s`` and leaves; if every window has closed it
serves at once and the stop is late by ``service start - last window end``. A first stop marked
``started`` is where the vehicle is: it arrived at ``stop.arrival`` (else ``origin_time``) and
leaves once the service is over, not before ``now``.

Where the speed data has a spread (see :mod:`fleetlink_cloud.dispatch.speeds`), the same walk at
the fast (85th percentile) and slow (15th percentile) speeds of every leg gives the arrival range
``early``..``late``; speeds along one route are assumed to move together, so the range is wide
rather than optimistic (each leg's three speeds are those of the hour it expectedly starts in).
Without data for some leg, that stop and the ones after it get no range.
Times are rounded to the second only when reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetlink_cloud.dispatch.model import Location, StopKind, TimeWindow, VehicleRoute
from fleetlink_cloud.dispatch.routing import TravelModel


def window_for(arrival: float, windows: Sequence[TimeWindow]) -> TimeWindow | None:
    """The earliest-starting window that has not closed at ``arrival``; None if all have."""
    best: TimeWindow | None = None
    for w in windows:
        if w.end >= arrival and (best is None or w.start < best.start):
            best = w
    return best


def serve(arrival: float, windows: Sequence[TimeWindow]) -> tuple[float, float]:
    """(service start, lateness in s) for a vehicle arriving at ``arrival``."""
    if not windows:
        return arrival, 0.0
    w = window_for(arrival, windows)
    if w is None:
        return arrival, arrival - max(x.end for x in windows)
    return max(arrival, float(w.start)), 0.0


@dataclass(frozen=True, slots=True)
class StopEta:
    """When the vehicle reaches one stop (Unix seconds) and how late that is."""

    job_id: str
    kind: StopKind
    travel_s: int  # driving from the previous stop or the live position
    arrival: int
    wait_s: int  # until the window opens
    service_start: int
    departure: int
    lateness_s: int  # service start after the window's end; 0 when on time or unconstrained
    early: int | None = None  # arrival at the fast speeds; None without speed data
    late: int | None = None  # arrival at the slow speeds

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": self.kind.value,
            "travel_s": self.travel_s,
            "arrival": self.arrival,
            "wait_s": self.wait_s,
            "service_start": self.service_start,
            "departure": self.departure,
            "lateness_s": self.lateness_s,
            "early": self.early,
            "late": self.late,
        }


@dataclass(frozen=True, slots=True)
class RouteEta:
    """Every remaining stop's ETA, and when the vehicle reaches its end location (if any)."""

    vehicle_id: str
    departure: int  # from the live position
    stops: tuple[StopEta, ...]
    end_arrival: int | None = None

    @property
    def lateness_s(self) -> int:
        return sum(s.lateness_s for s in self.stops)

    def by_stop(self) -> dict[tuple[str, StopKind], StopEta]:
        return {(s.job_id, s.kind): s for s in self.stops}

    def to_dict(self) -> dict[str, Any]:
        return {
            "vehicle_id": self.vehicle_id,
            "departure": self.departure,
            "end_arrival": self.end_arrival,
            "lateness_s": self.lateness_s,
            "stops": [s.to_dict() for s in self.stops],
        }


class _Clock:
    """One walk's clock: where the vehicle is and when it leaves."""

    __slots__ = ("t",)

    def __init__(self, t: float) -> None:
        self.t = t

    def visit(
        self, leg_s: float, windows: Sequence[TimeWindow], service_s: int
    ) -> tuple[float, float, float]:
        """Drive ``leg_s``, wait, serve; returns (arrival, service start, lateness)."""
        arrival = self.t + leg_s
        start, lateness = serve(arrival, windows)
        self.t = start + service_s
        return arrival, start, lateness


def route_eta(
    route: VehicleRoute, model: TravelModel, now: int, end: Location | None = None
) -> RouteEta:
    """ETAs of ``route``'s stops from its live position; ``end``: where the route finishes."""
    leave = float(max(now, route.origin_time))
    expected, early, late = _Clock(leave), _Clock(leave), _Clock(leave)
    measured = True
    here = route.origin
    out: list[StopEta] = []
    for i, stop in enumerate(route.stops):
        if i == 0 and stop.started:
            arrival = float(stop.arrival if stop.arrival is not None else route.origin_time)
            start, lateness = serve(arrival, stop.windows)
            departure = max(start + stop.service_s, leave)
            for clock in (expected, early, late):
                clock.t = departure
            travel = 0.0
            lo = hi = arrival
        else:
            leg = model.leg_range_s(here, stop.location, expected.t)
            measured = measured and leg.measured
            travel = leg.expected_s
            arrival, start, lateness = expected.visit(leg.expected_s, stop.windows, stop.service_s)
            departure = expected.t
            lo = early.visit(leg.early_s, stop.windows, stop.service_s)[0]
            hi = late.visit(leg.late_s, stop.windows, stop.service_s)[0]
        out.append(
            StopEta(
                job_id=stop.job_id,
                kind=stop.kind,
                travel_s=round(travel),
                arrival=round(arrival),
                wait_s=round(start - arrival),
                service_start=round(start),
                departure=round(departure),
                lateness_s=round(lateness),
                early=round(lo) if measured else None,
                late=round(hi) if measured else None,
            )
        )
        here = stop.location
    end_arrival = None
    if end is not None:
        end_arrival = round(expected.t + model.leg_s(here, end, expected.t))
    return RouteEta(route.vehicle_id, round(leave), tuple(out), end_arrival)


@dataclass(frozen=True, slots=True)
class EtaChange:
    """A stop whose ETA moved by more than the threshold (or that is new on the route)."""

    job_id: str
    kind: StopKind
    previous: int | None  # None: the stop was not on the previous route
    arrival: int
    early: int | None
    late: int | None

    @property
    def delta_s(self) -> int | None:
        return None if self.previous is None else self.arrival - self.previous

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": self.kind.value,
            "previous": self.previous,
            "arrival": self.arrival,
            "delta_s": self.delta_s,
            "early": self.early,
            "late": self.late,
        }


def eta_changes(
    previous: RouteEta | Mapping[tuple[str, StopKind], StopEta] | None,
    current: RouteEta,
    threshold_s: int,
) -> tuple[EtaChange, ...]:
    """The stops of ``current`` whose arrival moved by more than ``threshold_s`` since
    ``previous`` (a route ETA or its :meth:`RouteEta.by_stop`), plus those new on the route."""
    before = previous.by_stop() if isinstance(previous, RouteEta) else (previous or {})
    changes: list[EtaChange] = []
    for s in current.stops:
        old = before.get((s.job_id, s.kind))
        if old is None or abs(s.arrival - old.arrival) > threshold_s:
            prev = None if old is None else old.arrival
            changes.append(EtaChange(s.job_id, s.kind, prev, s.arrival, s.early, s.late))
    return tuple(changes)
