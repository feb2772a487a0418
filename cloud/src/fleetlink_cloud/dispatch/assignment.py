"""Instant assignment: the best vehicle for a new job, and the explanation of the choice. Pure.

:func:`assign` takes the job and every vehicle's prepared route (:func:`.slack.prepare`; keep
them fresh as telemetry arrives: one older than ``stale_after_s`` is prepared again for this
decision). It excludes the vehicles that cannot take the job, with the reason and its evidence:
not dispatchable, offline, faulted, no position, off shift, the job locked to another vehicle,
missing skills, not enough spare capacity, too far, or no position that meets the job's
windows, the other stops' windows and the shift end (see
:class:`~fleetlink_cloud.dispatch.model.Reason`). The others are searched in the order of their
lower bound (:func:`.insertion.screen`): once the bound exceeds the best cost found, a vehicle
is *bounded* in the explanation (its cost is at least ``bound``, more than the winner's), never
given a cost that was not computed. The cheapest insertion wins; ties go to the lower vehicle
id. A job nobody can take stays unassigned with the exclusion reasons counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleetlink_cloud.dispatch.eta import RouteEta, route_eta
from fleetlink_cloud.dispatch.insertion import (
    AssignSettings,
    JobStops,
    Search,
    insert,
    screen,
    search,
)
from fleetlink_cloud.dispatch.model import Job, Reason, VehicleRoute
from fleetlink_cloud.dispatch.routing import TravelModel
from fleetlink_cloud.dispatch.routing.greatcircle import great_circle_m
from fleetlink_cloud.dispatch.slack import INF, Evidence, Prepared, prepare


@dataclass(frozen=True, slots=True)
class Insertion:
    """Where the job's stops go (indices into the new route's stops) and what that costs."""

    positions: tuple[int, ...]
    cost: float
    added_travel_s: float
    service_starts: tuple[int, ...]  # of the job's stops, Unix seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "positions": list(self.positions),
            "cost": round(self.cost, 3),
            "added_travel_s": round(self.added_travel_s, 1),
            "service_starts": list(self.service_starts),
        }


@dataclass(frozen=True, slots=True)
class Considered:
    """A vehicle that could take the job: its cheapest insertion, or only a bound on its cost.

    ``insertion`` is set when the cheapest position was timed; otherwise ``bound`` says the cost
    is at least that much, which is more than the chosen vehicle's (so it was not timed)."""

    vehicle_id: str
    insertion: Insertion | None
    bound: float | None = None

    @property
    def cost(self) -> float:
        return self.insertion.cost if self.insertion is not None else (self.bound or INF)

    def to_dict(self) -> dict[str, Any]:
        ins = self.insertion
        return {
            "vehicle_id": self.vehicle_id,
            "status": "evaluated" if ins is not None else "bounded",
            "cost": None if ins is None else round(ins.cost, 3),
            "bound": None if self.bound is None else round(self.bound, 3),
            "insertion": None if ins is None else ins.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Excluded:
    vehicle_id: str
    reason: Reason
    evidence: Evidence

    def to_dict(self) -> dict[str, Any]:
        return {"vehicle_id": self.vehicle_id, "reason": self.reason.value, **self.evidence}


@dataclass(frozen=True, slots=True)
class Assignment:
    """The decision and its explanation: every vehicle is in ``considered`` or ``excluded``."""

    job_id: str
    decided_at: int
    vehicle_id: str | None
    insertion: Insertion | None
    route: VehicleRoute | None  # the chosen vehicle's new route, arrivals filled in
    eta: RouteEta | None
    considered: tuple[Considered, ...]  # cheapest first
    excluded: tuple[Excluded, ...]  # by vehicle id
    unassigned_reasons: tuple[tuple[Reason, int], ...] = ()  # most frequent first

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: only str, int, float, bool, None, lists and dicts."""
        return {
            "job_id": self.job_id,
            "decided_at": self.decided_at,
            "vehicle_id": self.vehicle_id,
            "insertion": None if self.insertion is None else self.insertion.to_dict(),
            "eta": None if self.eta is None else self.eta.to_dict(),
            "considered": [c.to_dict() for c in self.considered],
            "excluded": [e.to_dict() for e in self.excluded],
            "unassigned_reasons": [
                {"reason": r.value, "vehicles": n} for r, n in self.unassigned_reasons
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _static(pp: Prepared, jb: JobStops, s: AssignSettings) -> tuple[Reason, Evidence] | None:
    """Exclusions by the vehicle's state, the lock, skills, the distance limit."""
    if pp.reason is not None:
        return pp.reason, pp.evidence
    c, job = pp.candidate, jb.job
    if job.locked_vehicle_id is not None and job.locked_vehicle_id != c.profile.id:
        return Reason.LOCKED, {"locked_vehicle_id": job.locked_vehicle_id}
    if job.skills and not job.skills <= c.profile.skills | c.driver_skills:
        return Reason.SKILLS, {"missing": sorted(job.skills - c.profile.skills - c.driver_skills)}
    if s.max_distance_m is not None:
        d = great_circle_m(pp.nodes[0], jb.first.location)
        if d > s.max_distance_m:
            return Reason.TOO_FAR, {"distance_m": round(d), "max_distance_m": s.max_distance_m}
    return None


def _verdict(pp: Prepared, jb: JobStops, sr: Search, s: AssignSettings) -> tuple[Reason, Evidence]:
    """Why no position of this vehicle works, from the tallies of its search."""
    counts = dict(sorted(sr.fails.items()))
    if sr.fails["too_far"]:
        return Reason.TOO_FAR, {
            "min_added_travel_s": round(sr.min_added),
            "max_detour_s": s.max_detour_s,
            "positions": counts,
        }
    if sr.fails["window"] or sr.fails["downstream"] or sr.fails["shift_end"]:
        route = pp.candidate.route
        late = None
        if route is not None and sr.late_stop is not None:
            late = route.stops[sr.late_stop - 1].job_id  # node k is stop k - 1
        return Reason.WINDOW_VS_SHIFT, {
            "earliest_arrival": None if sr.earliest == INF else round(sr.earliest),
            "window_end": None if jb.w1_end == INF else jb.w1_end,
            "shift_end": round(pp.shift_end),
            "late_stop": late,
            "positions": counts,
        }
    return Reason.CAPACITY, {"positions": counts}


def _fresh(pp: Prepared, model: TravelModel, s: AssignSettings, now: int) -> Prepared:
    return pp if abs(now - pp.now) <= s.stale_after_s else prepare(pp.candidate, model, now)


def assign(
    job: Job, fleet: Sequence[Prepared], model: TravelModel, settings: AssignSettings, now: int
) -> Assignment:
    """Choose the vehicle whose cheapest feasible insertion of ``job`` costs least, and say why."""
    k = model.min_s_per_m
    jb = JobStops(job, k)
    excluded: list[Excluded] = []
    open_: list[tuple[float, str, Prepared]] = []
    for pp in fleet:
        pp = _fresh(pp, model, settings, now)
        why = _static(pp, jb, settings) or screen(pp, jb, k, settings, now)
        if isinstance(why, float):
            open_.append((why, pp.vehicle_id, pp))
        else:
            excluded.append(Excluded(pp.vehicle_id, *why))
    # Lowest bound first: a good best early, and once the bound passes it the rest are skipped.
    open_.sort(key=lambda x: (x[0], x[1]))
    best: tuple[float, str, Prepared] | None = None
    considered: list[Considered] = []
    for bound, vid, pp in open_:
        if best is not None and bound > best[0]:
            considered.append(Considered(vid, None, bound))
            continue
        sr = search(pp, jb, model, settings, now, INF if best is None else best[0])
        if sr.best is not None and sr.best[0] <= sr.pruned:
            cost, pos, added, starts = sr.best
            ins = Insertion(pos, cost, added, tuple(round(t) for t in starts))
            considered.append(Considered(vid, ins))
            if best is None or (cost, vid) < (best[0], best[1]):
                best = (cost, vid, pp)
        elif sr.pruned < INF:
            considered.append(Considered(vid, None, max(bound, sr.pruned)))
        else:
            excluded.append(Excluded(vid, *_verdict(pp, jb, sr, settings)))
    considered.sort(key=lambda c: (c.cost, c.vehicle_id))
    excluded.sort(key=lambda e: e.vehicle_id)
    if best is None:
        tally = Counter(e.reason for e in excluded) or Counter({Reason.NO_VEHICLES: 0})
        reasons = tuple(sorted(tally.items(), key=lambda x: (-x[1], x[0].value)))
        return Assignment(
            job.id, now, None, None, None, None, tuple(considered), tuple(excluded), reasons
        )
    chosen = next(c for c in considered if c.vehicle_id == best[1])
    old = best[2].candidate.route
    assert chosen.insertion is not None
    assert old is not None
    route = insert(old, job, chosen.insertion.positions)
    eta = route_eta(route, model, now, best[2].candidate.end)
    route = replace(
        route,
        stops=tuple(
            replace(st, arrival=e.arrival) for st, e in zip(route.stops, eta.stops, strict=True)
        ),
    )
    return Assignment(
        job.id, now, best[1], chosen.insertion, route, eta, tuple(considered), tuple(excluded)
    )
