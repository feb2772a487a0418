"""Where a new job fits into one vehicle's prepared route, and what each position costs. Pure.

With the route walked once (:mod:`fleetlink_cloud.dispatch.slack`), checking one insertion is
O(1): the times around the new stop and one comparison with the next stop's latest arrival. A
shipment's pickup and delivery pairs are O(n²), each O(1) along the way, pickup first.

Cost of a position: ``travel_weight`` × added driving time + ``response_weight`` × (service start
- now) + ``idle_cost`` for a vehicle without stops; positions that would be late are infeasible,
so lateness costs nothing. Ties go to the earlier position.

Straight lines (chords, Earth-centred) at the model's fastest pace give the lower bounds that
keep the work small. :func:`screen` covers a whole route in O(1): in the plane of two
consecutive nodes and a new stop, a stop at distance ρ from the segment between them (half as
long as it, a, at most the radius R of the ball around all nodes) adds at least 2(√(a² + ρ²) - a)
of straight line, so at least 2(√(R² + ρ²) - R) for ρ the stop's distance from the ball, less
what the slowest leg takes beyond its own straight line; a shipment placed in one piece also
drives pickup to delivery. With the earliest possible arrival this proves some vehicles too
far or too late, and orders the others. :func:`search` then bounds each position before timing
it and skips those that cannot beat the best cost so far (:attr:`Search.pruned` keeps the
lowest skipped bound).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from fleetlink_cloud.dispatch.eta import window_for
from fleetlink_cloud.dispatch.model import Job, Location, Reason, RouteStop, Stop, VehicleRoute
from fleetlink_cloud.dispatch.routing import TravelModel
from fleetlink_cloud.dispatch.routing.greatcircle import Unit, chord_m, unit
from fleetlink_cloud.dispatch.slack import INF, Evidence, Prepared
from fleetlink_cloud.live.derived import EARTH_RADIUS_M


class AssignSettings(BaseModel):
    """Limits and cost weights of instant assignment (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_detour_s: Annotated[float, Field(gt=0)] = 3600.0  # more added driving: TOO_FAR
    max_distance_m: Annotated[float, Field(gt=0)] | None = None  # vehicle farther: TOO_FAR
    travel_weight: Annotated[float, Field(ge=0)] = 1.0  # per second of added driving
    response_weight: Annotated[float, Field(ge=0)] = 0.0  # per second until the service starts
    idle_cost: float = 0.0  # added for a vehicle with no stops (negative: prefer idle ones)
    stale_after_s: Annotated[float, Field(ge=0)] = 30.0  # re-prepare routes prepared longer ago


class Search:
    """The tallies of one vehicle's positions: the cheapest timed, bounds, and failures."""

    __slots__ = ("best", "earliest", "fails", "late_stop", "min_added", "pruned", "threshold")

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold  # the best cost so far, over all vehicles
        self.best: tuple[float, tuple[int, ...], float, tuple[float, ...]] | None = None
        self.pruned = INF  # the lowest bound among positions skipped by bound
        self.fails: Counter[str] = Counter()
        self.earliest = INF  # earliest arrival at the job's first stop among failed positions
        self.min_added = INF  # least added driving among positions too far
        self.late_stop: int | None = None  # node whose window a failed position would break

    def bounded(self, lb: float) -> bool:
        limit = self.threshold if self.best is None else min(self.threshold, self.best[0])
        if lb > limit:
            self.pruned = min(self.pruned, lb)
            return True
        return False

    def offer(
        self, cost: float, pos: tuple[int, ...], added: float, starts: tuple[float, ...]
    ) -> None:
        if self.best is None or cost < self.best[0]:
            self.best = (cost, pos, added, starts)

    def too_far(self, added: float) -> None:
        self.fails["too_far"] += 1
        self.min_added = min(self.min_added, added)

    def downstream(self, pp: Prepared, k: int) -> None:
        """Arriving at node ``k`` too late breaks the window or shift end that binds there."""
        self.late(pp.binding[k], len(pp.nodes))

    def late(self, node: int, end: int, count: int = 1) -> None:
        self.fails["shift_end" if node == end else "downstream"] += count
        if node != end:
            self.late_stop = node


def _fits(pp: Prepared, demand: tuple[int, ...], load: tuple[int, ...]) -> bool:
    # zip stops at the job's dimensions; capacity_short excluded any extra nonzero ones
    return all(a + b <= c for a, b, c in zip(load, demand, pp.cap, strict=False))


class JobStops:
    """The job's stops with what every vehicle's search needs, computed once per job."""

    __slots__ = (
        "demand", "first", "gap_s", "job", "second", "u1", "u2", "w1_end", "w1_start", "w2_end",
        "w2_start",
    )  # fmt: skip

    def __init__(self, job: Job, k: float) -> None:
        self.job = job
        self.first: Stop = job.pickup if job.pickup is not None else job.stop
        self.second: Stop | None = job.stop if job.pickup is not None else None
        self.demand = tuple(job.demand) if any(job.demand) else ()
        self.u1: Unit = unit(self.first.location)
        self.u2: Unit | None = None if self.second is None else unit(self.second.location)
        self.w1_start = min((w.start for w in self.first.windows), default=-INF)
        self.w1_end = max((w.end for w in self.first.windows), default=INF)
        second = self.second.windows if self.second is not None else ()
        self.w2_start = min((w.start for w in second), default=-INF)
        self.w2_end = max((w.end for w in second), default=INF)
        self.gap_s = 0.0 if self.u2 is None else k * chord_m(self.u1, self.u2)  # at the least


def capacity_short(pp: Prepared, jb: JobStops) -> Evidence | None:
    """Evidence that no position can carry the job's demand (a quick necessary check)."""
    # A single stop's goods ride from the live position; a shipment's at best where the route
    # is emptiest.
    spare = pp.spare_single if jb.second is None else pp.spare_apart
    for i, d in enumerate(jb.demand):
        room = spare[i] if i < len(spare) else 0  # the vehicle may lack the dimension
        if d > 0 and d > room:
            cap = pp.cap[i] if i < len(pp.cap) else 0
            return {"dimension": i, "demand": d, "capacity": cap, "spare": room}
    return None


def _chords(pp: Prepared, u: Unit, k: float) -> list[float]:
    """k × the chord from ``u`` to every node, then to the route's end (0 without one)."""
    x, y, z = u
    kr = k * EARTH_RADIUS_M
    out = [kr * math.sqrt((a - x) ** 2 + (b - y) ** 2 + (c - z) ** 2) for a, b, c in pp.units]
    out.append(0.0 if pp.end_unit is None else k * chord_m(u, pp.end_unit))
    return out


def _ball(pp: Prepared, u: Unit, k: float) -> tuple[float, float]:
    """(least added driving of a stop at ``u`` anywhere in the route, k × its distance from
    the ball around the nodes); see the module docstring."""
    x, y, z = u
    cx, cy, cz = pp.centre
    r = pp.radius_m
    rho = EARTH_RADIUS_M * math.sqrt((cx - x) ** 2 + (cy - y) ** 2 + (cz - z) ** 2) - r
    if rho < 0.0:
        rho = 0.0
    between = 2.0 * k * (math.sqrt(r * r + rho * rho) - r) - pp.excess_s
    if pp.end is None and k * rho < between:  # appended after the last stop
        return k * rho, k * rho
    return between, k * rho


def screen(
    pp: Prepared, jb: JobStops, k: float, s: AssignSettings, now: int
) -> float | tuple[Reason, Evidence]:
    """O(1) for one vehicle: the reason no position can work (capacity, or straight lines at
    the fastest pace that already add too much or arrive too late), else a lower bound of the
    cost of every position."""
    if jb.demand:
        short = capacity_short(pp, jb)
        if short is not None:
            return Reason.CAPACITY, short
    added, to_first = _ball(pp, jb.u1, k)
    if jb.u2 is not None:
        apart, to_second = _ball(pp, jb.u2, k)
        # Right after the pickup: out of the ball to P, on to D, back into the ball instead of
        # one leg at most max_leg_s long (or, appended, not back); or apart, two detours.
        together = to_first + jb.gap_s + to_second - pp.max_leg_s
        if pp.end is None:
            together = min(together, to_first + jb.gap_s)
        added = min(max(added, together), added + apart)
    if added > s.max_detour_s:
        return Reason.TOO_FAR, {
            "min_added_travel_s": round(added),
            "max_detour_s": s.max_detour_s,
            "by_bound": True,
        }
    arrival = pp.dep[pp.first] + to_first  # from some node, none nearer than the ball
    late = _late(pp, jb, k, arrival)
    if late is not None:
        return Reason.WINDOW_VS_SHIFT, late
    cost = s.travel_weight * added
    if s.response_weight:
        cost += s.response_weight * (max(arrival, jb.w1_start) - now)
    if len(pp.nodes) == 1:
        cost += s.idle_cost
    return cost


def _late(pp: Prepared, jb: JobStops, k: float, arrival: float) -> Evidence | None:
    """Evidence that the windows or the shift end rule out the job from the earliest possible
    ``arrival`` at its first stop."""
    if arrival > jb.w1_end:
        return {"earliest_arrival": round(arrival), "window_end": jb.w1_end, "by_bound": True}
    done = max(arrival, jb.w1_start) + jb.first.service_s
    last = jb.u1
    if jb.second is not None and jb.u2 is not None:
        at_delivery = done + jb.gap_s
        if at_delivery > jb.w2_end:
            return {
                "earliest_delivery": round(at_delivery),
                "window_end": jb.w2_end,
                "by_bound": True,
            }
        done = max(at_delivery, jb.w2_start) + jb.second.service_s
        last = jb.u2
    if pp.end_unit is not None:
        done += k * chord_m(last, pp.end_unit)
    if done > pp.shift_end:
        return {"earliest_finish": round(done), "shift_end": round(pp.shift_end), "by_bound": True}
    return None


def _after(
    pp: Prepared, model: TravelModel, loc: Location, p: int, depart: float
) -> tuple[float, bool]:
    """(leg from ``loc`` to what follows node ``p``, whether arriving then keeps it on time)."""
    n = len(pp.nodes) - 1
    nxt = pp.nodes[p + 1] if p < n else pp.end
    leg = 0.0 if nxt is None else model.leg_s(loc, nxt, depart)
    return leg, depart + leg <= pp.latest[p + 1]


def _single(
    pp: Prepared, jb: JobStops, model: TravelModel, s: AssignSettings, now: int, sr: Search
) -> None:
    stop, k, n = jb.first, model.min_s_per_m, len(pp.nodes) - 1
    gc = _chords(pp, jb.u1, k)
    idle = s.idle_cost if n == 0 else 0.0
    for p in range(pp.first, n + 1):
        if jb.demand and not _fits(pp, jb.demand, pp.pmax[p]):
            sr.fails["capacity"] += n + 1 - p  # the running maximum only grows
            return
        lb_added = gc[p] + gc[p + 1] - pp.legs[p]
        lb_arrival = pp.dep[p] + gc[p]
        if lb_added > s.max_detour_s:
            sr.too_far(lb_added)
            continue
        if lb_arrival > jb.w1_end:
            sr.fails["window"] += 1
            sr.earliest = min(sr.earliest, lb_arrival)
            continue
        lb = s.travel_weight * lb_added + s.response_weight * (max(lb_arrival, jb.w1_start) - now)
        if sr.bounded(lb + idle):
            continue
        t = pp.dep[p]
        l1 = model.leg_s(pp.nodes[p], stop.location, t)
        w = window_for(t + l1, stop.windows)
        if stop.windows and w is None:
            sr.fails["window"] += 1
            sr.earliest = min(sr.earliest, t + l1)
            continue
        start = t + l1 if w is None else max(t + l1, float(w.start))
        l2, on_time = _after(pp, model, stop.location, p, start + stop.service_s)
        if not on_time:
            sr.downstream(pp, p + 1)
            continue
        added = l1 + l2 - pp.legs[p]
        if added > s.max_detour_s:
            sr.too_far(added)
            continue
        cost = s.travel_weight * added + s.response_weight * (start - now) + idle
        sr.offer(cost, (p,), added, (start,))


def _shipment(
    pp: Prepared, jb: JobStops, model: TravelModel, s: AssignSettings, now: int, sr: Search
) -> None:
    pick, drop, k, n = jb.first, jb.second, model.min_s_per_m, len(pp.nodes) - 1
    assert drop is not None
    assert jb.u2 is not None
    g1, g2 = _chords(pp, jb.u1, k), _chords(pp, jb.u2, k)
    idle = s.idle_cost if n == 0 else 0.0
    # Least detour of a delivery placed after node q or later (pickup elsewhere).
    rest = [INF] * (n + 2)
    for q in range(n, pp.first - 1, -1):
        rest[q] = min(rest[q + 1], g2[q] + g2[q + 1] - pp.legs[q])
    for p in range(pp.first, n + 1):
        lb_arrival = pp.dep[p] + g1[p]
        if lb_arrival > jb.w1_end:
            sr.fails["window"] += n + 1 - p
            sr.earliest = min(sr.earliest, lb_arrival)
            continue
        if max(lb_arrival, jb.w1_start) + pick.service_s + jb.gap_s > jb.w2_end:
            sr.fails["window"] += n + 1 - p  # too late for the delivery, wherever it goes
            continue
        together = g1[p] + jb.gap_s + g2[p + 1] - pp.legs[p]
        apart = g1[p] + g1[p + 1] - pp.legs[p] + rest[p + 1]
        lb = s.response_weight * (max(lb_arrival, jb.w1_start) - now) + idle
        if sr.bounded(s.travel_weight * min(together, apart) + lb):
            continue
        l1 = model.leg_s(pp.nodes[p], pick.location, pp.dep[p])
        w = window_for(pp.dep[p] + l1, pick.windows)
        if pick.windows and w is None:
            sr.fails["window"] += n + 1 - p
            sr.earliest = min(sr.earliest, pp.dep[p] + l1)
            continue
        s1 = pp.dep[p] + l1 if w is None else max(pp.dep[p] + l1, float(w.start))
        d1 = s1 + pick.service_s
        if d1 + jb.gap_s > jb.w2_end:  # too late for the delivery, wherever it goes
            sr.fails["window"] += n + 1 - p
            continue
        response = s.response_weight * (s1 - now) + idle
        _deliveries(pp, jb, model, s, sr, p, (l1, s1, d1, response), (g1, g2))


def _deliveries(
    pp: Prepared,
    jb: JobStops,
    model: TravelModel,
    s: AssignSettings,
    sr: Search,
    p: int,
    picked: tuple[float, float, float, float],
    bounds: tuple[list[float], list[float]],
) -> None:
    """Every delivery position after a pickup placed after node ``p``."""
    drop, n = jb.second, len(pp.nodes) - 1
    assert drop is not None
    assert jb.u2 is not None
    l1, s1, d1, response = picked
    g1, g2 = bounds
    load = pp.loads[p]
    walked, arrive, leave = p, INF, d1  # the shifted schedule, computed up to node ``walked``
    l_on = -1.0  # pickup -> node p + 1, once needed
    for q in range(p, n + 1):
        if jb.demand:
            load = tuple(map(max, load, pp.loads[q]))
            if not _fits(pp, jb.demand, load):
                sr.fails["capacity"] += n + 1 - q
                return
        if q == p:
            lb_added = g1[p] + jb.gap_s + g2[q + 1] - pp.legs[p]
        else:
            lb_added = g1[p] + g1[p + 1] - pp.legs[p] + g2[q] + g2[q + 1] - pp.legs[q]
        if lb_added > s.max_detour_s:
            sr.too_far(lb_added)
            continue
        if sr.bounded(s.travel_weight * lb_added + response):
            continue
        if q > p:
            if l_on < 0:
                l_on = model.leg_s(jb.first.location, pp.nodes[p + 1], d1)
                arrive = d1 + l_on
            while walked < q:  # existing stops p+1..q, later than before
                walked += 1
                begin = max(arrive, pp.opens[walked])
                if begin > pp.closes[walked]:
                    sr.late(walked, len(pp.nodes), n + 1 - q)
                    return
                leave = begin + pp.svc[walked]
                arrive = leave + pp.legs[walked]
        if q > p and leave + g2[q] > jb.w2_end:
            sr.fails["window"] += 1
            continue
        src = jb.first.location if q == p else pp.nodes[q]
        l2 = model.leg_s(src, drop.location, leave)
        w = window_for(leave + l2, drop.windows)
        if drop.windows and w is None:
            sr.fails["window"] += 1
            continue
        s2 = leave + l2 if w is None else max(leave + l2, float(w.start))
        l3, on_time = _after(pp, model, drop.location, q, s2 + drop.service_s)
        if not on_time:
            sr.downstream(pp, q + 1)
            continue
        added = l1 + l2 + l3 - pp.legs[p] + (0.0 if q == p else l_on - pp.legs[q])
        if added > s.max_detour_s:
            sr.too_far(added)
            continue
        sr.offer(s.travel_weight * added + response, (p, q + 1), added, (s1, s2))


def search(
    pp: Prepared, jb: JobStops, model: TravelModel, s: AssignSettings, now: int, threshold: float
) -> Search:
    """Every position of ``jb`` in ``pp``'s route, skipping those bound to cost more than
    ``threshold`` (the best cost so far); ``pp`` must not be excluded (``pp.reason`` is None)."""
    sr = Search(threshold)
    (_single if jb.second is None else _shipment)(pp, jb, model, s, now, sr)
    return sr


def route_stops(job: Job) -> tuple[RouteStop, ...]:
    """The job's stops as route stops (pickup first for a shipment)."""
    return tuple(
        RouteStop(job.id, kind, st.location, st.windows, st.service_s, tuple(job.demand))
        for kind, st in job.stops()
    )


def insert(route: VehicleRoute, job: Job, positions: Sequence[int]) -> VehicleRoute:
    """``route`` with ``job``'s stops at ``positions`` (indices into the new stops)."""
    stops = list(route.stops)
    for pos, rs in zip(positions, route_stops(job), strict=True):
        stops.insert(pos, rs)
    return replace(route, stops=tuple(stops))
