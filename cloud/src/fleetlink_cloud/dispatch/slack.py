"""A vehicle's live route walked once, for O(1) insertion checks: times, slack, loads. Pure.

:func:`prepare` walks the route from the live position at ``now`` (O(n) legs): when the vehicle
leaves each node, the time window each stop is served in, and backwards the *latest arrival* at
each stop that keeps that stop, every later one and the shift end on time (Savelsbergh's forward
time slack), assuming the legs between existing stops keep their durations. It also records the
load on board after each node and a ball (centre and radius, Earth-centred metres) holding every
node, whose distance to a new job bounds the detour of any insertion at once.

A stop already late may not get any later; a stop without windows answers only to the shift.
Remaining driver breaks are reserved off the end of the shift. Loads: a shipment's demand is on
board between its pickup and delivery; a single stop's demand is carried from the live position
to the stop (VROOM's "delivery"). ``VehicleRoute.load`` is what is on board for shipments
already picked up; the demands of the remaining single stops are added to it. Excluding
reasons that need no job (not dispatchable, offline, faulted, no position, off shift) are found
here and kept in :attr:`Prepared.reason`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fleetlink_cloud.dispatch.eta import window_for
from fleetlink_cloud.dispatch.model import Location, Reason, StopKind, VehicleProfile, VehicleRoute
from fleetlink_cloud.dispatch.routing import TravelModel
from fleetlink_cloud.dispatch.routing.greatcircle import Unit, chord_m, unit

INF = math.inf
Evidence = dict[str, Any]  # JSON-ready


@dataclass(frozen=True, slots=True)
class Candidate:
    """A vehicle as instant assignment sees it; ``route`` is None without a usable position."""

    profile: VehicleProfile
    route: VehicleRoute | None
    online: bool = True
    fault: bool = False
    driver_skills: frozenset[str] = frozenset()
    end: Location | None = None  # where the route must finish by the shift end (its depot)


class Prepared:
    """One vehicle's route walked once; reuse it until the route or the vehicle's state changes."""

    __slots__ = (
        "binding", "candidate", "cap", "centre", "closes", "dep", "end", "end_unit", "evidence",
        "excess_s", "first", "latest", "legs", "loads", "max_leg_s", "nodes", "now", "opens",
        "pmax", "radius_m", "reason", "shift_end", "spare_apart", "spare_single", "svc", "units",
    )  # fmt: skip
    # Node 0 is the live position, node k (1..n) is stop k - 1; index n + 1 is the route's end.
    nodes: list[Location]
    units: list[Unit]
    dep: list[float]  # leaves node k
    legs: list[float]  # node k -> node k + 1; legs[n]: to ``end`` (0 without one)
    opens: list[float]  # start of the window node k is served in (-inf: none)
    closes: list[float]  # latest service start at node k (inf: none)
    svc: list[int]
    latest: list[float]  # latest arrival at node k (1..n + 1) keeping k and later on time
    binding: list[int]  # the node (or n + 1: shift end) whose limit sets latest[k]
    loads: list[tuple[int, ...]]  # on board after leaving node k
    pmax: list[tuple[int, ...]]  # the most on board at any node up to k
    cap: tuple[int, ...]
    spare_single: tuple[int, ...]  # room for goods carried from now to anywhere on the route
    spare_apart: tuple[int, ...]  # room, per dimension, where the route carries least
    first: int  # first node a new stop may follow (1 when the first stop has started)
    end: Location | None
    end_unit: Unit | None
    shift_end: float  # minus the remaining breaks, and never before the route's end now
    centre: Unit  # every node (and the end) lies within radius_m of it, in a straight line
    radius_m: float
    excess_s: float  # the most any leg takes beyond the model's bound for it
    max_leg_s: float

    def __init__(self, candidate: Candidate, now: int) -> None:
        self.candidate = candidate
        self.now = now
        self.reason: Reason | None = None
        self.evidence: Evidence = {}

    @property
    def vehicle_id(self) -> str:
        return self.candidate.profile.id


def vector(v: Sequence[int], dims: int) -> tuple[int, ...]:
    """``v`` padded with zeros to ``dims`` dimensions."""
    return (*v, *(0,) * (dims - len(v)))


def _state(pp: Prepared, now: int) -> bool:
    """Record a job-independent exclusion; True when the vehicle can be planned."""
    c = pp.candidate
    prof = c.profile
    if not prof.dispatchable:
        pp.reason = Reason.NOT_DISPATCHABLE
    elif not c.online:
        pp.reason = Reason.OFFLINE
    elif c.fault:
        pp.reason = Reason.FAULT
    elif c.route is None:
        pp.reason = Reason.NO_POSITION
    elif prof.shift_at(now) is None:
        pp.reason = Reason.OFF_SHIFT
        later = [s.start for s in prof.shifts if s.start > now]
        pp.evidence = {"now": now, "next_shift_start": min(later, default=None)}
    return pp.reason is None


def prepare(candidate: Candidate, model: TravelModel, now: int) -> Prepared:
    """Walk ``candidate``'s route from its live position at ``now`` (O(n) legs)."""
    pp = Prepared(candidate, now)
    route, shift = candidate.route, candidate.profile.shift_at(now)
    if not _state(pp, now) or route is None or shift is None:
        return pp
    leave = float(max(now, route.origin_time))
    nodes, dep, legs = [route.origin], [leave], []
    opens, closes, svc = [-INF], [INF], [0]
    pp.first = 0
    for i, stop in enumerate(route.stops):
        started = i == 0 and stop.started  # the vehicle is there: nothing may go before it
        if started:
            arrival = float(stop.arrival if stop.arrival is not None else route.origin_time)
            leg, pp.first = 0.0, 1
        else:
            leg = model.leg_s(nodes[-1], stop.location, dep[-1])
            arrival = dep[-1] + leg
        w = window_for(arrival, stop.windows)
        start = arrival if w is None else max(arrival, float(w.start))
        opens.append(-INF if w is None else float(w.start))
        closes.append(INF if not stop.windows else (start if w is None else float(w.end)))
        legs.append(leg)
        nodes.append(stop.location)
        svc.append(stop.service_s)
        dep.append(max(start + stop.service_s, leave) if started else start + stop.service_s)
    pp.end = candidate.end
    legs.append(0.0 if pp.end is None else model.leg_s(nodes[-1], pp.end, dep[-1]))
    reserve = sum(b.duration_s for b in shift.breaks if max(w.end for w in b.windows) >= leave)
    pp.shift_end = max(float(shift.end - reserve), dep[-1] + legs[-1])
    n = len(nodes) - 1
    latest, binding = [0.0] * (n + 2), [n + 1] * (n + 2)
    latest[n + 1] = pp.shift_end
    for k in range(n, 0, -1):
        via = latest[k + 1] - svc[k] - legs[k]
        latest[k], binding[k] = (closes[k], k) if closes[k] <= via else (via, binding[k + 1])
    pp.nodes, pp.dep, pp.legs, pp.opens, pp.closes, pp.svc = nodes, dep, legs, opens, closes, svc
    pp.latest, pp.binding = latest, binding
    _geometry(pp, model.min_s_per_m)
    _loads(pp, candidate.profile, route)
    return pp


def _geometry(pp: Prepared, k: float) -> None:
    """Unit vectors of the nodes, the ball around them, and how much slower legs are than k."""
    pp.units = [unit(x) for x in pp.nodes]
    pp.end_unit = None if pp.end is None else unit(pp.end)
    points = pp.units if pp.end_unit is None else [*pp.units, pp.end_unit]
    m = len(points)
    pp.centre = (
        sum(p[0] for p in points) / m,
        sum(p[1] for p in points) / m,
        sum(p[2] for p in points) / m,
    )
    pp.radius_m = max(chord_m(pp.centre, p) for p in points)
    excess = 0.0
    for i, leg in enumerate(pp.legs):
        nxt = points[i + 1] if i + 1 < m else None
        if nxt is not None:
            excess = max(excess, leg - k * chord_m(points[i], nxt))
    pp.excess_s = excess
    pp.max_leg_s = max(pp.legs)


def _loads(pp: Prepared, prof: VehicleProfile, route: VehicleRoute) -> None:
    """Load after leaving each node, its running maximum, and the capacity, as equal vectors."""
    dims = max([len(prof.capacity), len(route.load), *(len(s.demand) for s in route.stops)])
    load = list(vector(route.load, dims))
    for s in route.stops:
        if s.kind is StopKind.SINGLE:
            load = [a + abs(b) for a, b in zip(load, vector(s.demand, dims), strict=True)]
    loads = [tuple(load)]
    for s in route.stops:
        sign = 1 if s.kind is StopKind.PICKUP else -1
        d = vector(s.demand, dims)
        loads.append(tuple(a + sign * abs(b) for a, b in zip(loads[-1], d, strict=True)))
    pmax = [loads[0]]
    for ld in loads[1:]:
        pmax.append(tuple(map(max, pmax[-1], ld)))
    pp.loads, pp.pmax, pp.cap = loads, pmax, vector(prof.capacity, dims)
    ahead = loads[pp.first :]
    pp.spare_single = tuple(c - m for c, m in zip(pp.cap, pmax[pp.first], strict=True))
    pp.spare_apart = tuple(c - min(ld[i] for ld in ahead) for i, c in enumerate(pp.cap))


def prepare_all(candidates: Iterable[Candidate], model: TravelModel, now: int) -> list[Prepared]:
    return [prepare(c, model, now) for c in candidates]
