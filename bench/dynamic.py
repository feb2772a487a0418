"""A dynamic day on Solomon instances (R101, RC101, C101): fleetlink against nearest-vehicle.

Units: the instance's square is mapped onto a Berlin-sized area, one unit of distance = 500 m
(100 units = 50 km), one unit of time = a minute; vehicles are planned at 30 km/h (500 m a
minute), so a unit of distance takes a unit of time, as in the instance. Travel is the builtin
model (great circle, circuity 1, that constant speed). Each day (one per seed): half the
customers are known at the start, the others revealed 30 to 120 minutes before their ready
time; a third of the vehicles run late (legs take 1.1-1.4 × the planned time), the others
0.95-1.05 ×; at 35 % of the day the busiest working vehicle raises a critical fault (J1939 red
stop lamp), at 50 % the busiest left goes offline for good; both finish the service in
progress, then stop. A discrete-event simulation in one-minute steps (exact times within).

* fleetlink: a morning plan (``plan_fleet``); each revealed job assigned at once
  (``assignment.assign``; none on time: it waits in a pool, retried every step); ETAs from live
  positions every step; ``rules.evaluate`` (defaults: fault, offline after 5 + 10 minutes'
  grace, late by 15 minutes, shift end) moving jobs; after a rule moved one, a re-plan
  (``plan_fleet``, churn limit 5, the stop being driven to kept).
* nearest: each job appended to the vehicle with room, online and not faulted, whose route
  ends nearest to it; the ETA given then is never revised; the jobs of a vehicle offline for 15
  minutes go to the nearest other vehicle, nothing else moves.

Reported per policy: served on time (service starts by the window's end) and late, unserved,
reassignments, churn (jobs that changed vehicle after their first), km driven (and back to the
depot), and the mean absolute error (s) of the ETA given against the actual arrival, sampled
every 5 minutes for every stop not reached yet, by how long before the arrival it was given.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleetlink_cloud.dispatch.assignment import assign
from fleetlink_cloud.dispatch.eta import route_eta
from fleetlink_cloud.dispatch.fleet_plan import FleetProblem, FleetVehicle, PlanOptions
from fleetlink_cloud.dispatch.insertion import AssignSettings, route_stops
from fleetlink_cloud.dispatch.model import (
    Depot,
    Job,
    JobState,
    Location,
    RouteStop,
    Shift,
    Stop,
    TimeWindow,
    VehicleProfile,
    VehicleRoute,
)
from fleetlink_cloud.dispatch.routing import RouterSettings, builtin_model
from fleetlink_cloud.dispatch.routing.greatcircle import great_circle_m
from fleetlink_cloud.dispatch.rules import (
    Action,
    JobSnapshot,
    Rule,
    RuleSettings,
    Snapshot,
    VehicleSnapshot,
    evaluate,
)
from fleetlink_cloud.dispatch.slack import Candidate, Prepared, prepare
from fleetlink_cloud.dispatch.solomon import Instance, parse
from fleetlink_cloud.dispatch.speeds import M_PER_DEG_LAT
from fleetlink_cloud.dispatch.vroom_solver import plan_fleet
from fleetlink_cloud.planning import builtin_matrix
from fleetlink_cloud.store.base import DtcState
from fleetlink_protocols.records import DtcSource

INSTANCES = ("R101", "RC101", "C101")
SEEDS = range(1, 6)  # one simulated day each
UNIT_M, MINUTE = 500.0, 60
T0 = 1_772_431_200  # 2026-03-02 06:00 UTC: the instance's time 0
LAT0, LON0 = 52.30, 13.10  # the instance's (0, 0), south-west of Berlin
KNOWN_SHARE, LEAD_MIN = 0.5, (30, 120)
LATE_SHARE, LATE, NORMAL = 1 / 3, (1.1, 1.4), (0.95, 1.05)
FAULT_AT, OFFLINE_AT = 0.35, 0.5  # share of the day
STEP_S, SAMPLE_S = 60, 300
CHURN_LIMIT, REPLAN_S, MORNING_S = 5, 0.5, 2.0
HORIZONS = ((0, 15), (15, 30), (30, 60), (60, None))  # minutes before the actual arrival
RED_STOP = 1 << 12  # DM1 lamp word: byte 1 bits 6-5 = 01, red stop lamp on (J1939-73, SPN 623)
MODEL = builtin_model(RouterSettings(circuity=1.0, default_speed_mps=UNIT_M / MINUTE))
ASSIGN, RULES = AssignSettings(), RuleSettings()
SILENT_S = RULES.offline.offline_for_s + RULES.offline.grace_s


def _where(x: float, y: float) -> Location:
    """The instance's point as WGS84, ``UNIT_M`` metres a unit (flat at this scale)."""
    lat = LAT0 + y * UNIT_M / M_PER_DEG_LAT
    return Location(lat, LON0 + x * UNIT_M / (M_PER_DEG_LAT * math.cos(math.radians(LAT0))))


@dataclass(frozen=True)
class Scenario:
    """One day of one instance: the jobs, when each is known, how fast each vehicle is."""

    jobs: dict[str, Job]
    reveal: dict[str, int]  # when the dispatcher learns of the job (T0: known at the start)
    factor: dict[str, float]  # true leg time over planned, per vehicle
    depot: Depot
    capacity: int
    shift: Shift

    def at(self, share: float) -> int:
        return self.shift.start + round(share * (self.shift.end - self.shift.start))


def scenario(inst: Instance, seed: int) -> Scenario:
    """The day ``seed`` draws for ``inst`` (reveal times, true speeds)."""
    rng = random.Random(seed)
    jobs, reveal = {}, {}
    for c in inst.customers:
        window = TimeWindow(T0 + c.ready * MINUTE, T0 + c.due * MINUTE)
        stop = Stop(_where(c.x, c.y), (window,), c.service * MINUTE)
        job = jobs[f"c{c.id:03}"] = Job(f"c{c.id:03}", stop, demand=(c.demand,))
        lead = rng.randint(*LEAD_MIN) * MINUTE
        reveal[job.id] = T0 if rng.random() < KNOWN_SHARE else max(T0, window.start - lead)
    speeds = [LATE if rng.random() < LATE_SHARE else NORMAL for _ in range(inst.vehicles)]
    factor = {f"v{k:02}": rng.uniform(*band) for k, band in enumerate(speeds)}
    d, day = inst.depot, Shift(T0 + inst.depot.ready * MINUTE, T0 + inst.depot.due * MINUTE)
    return Scenario(jobs, reveal, factor, Depot("depot", _where(d.x, d.y)), inst.capacity, day)


# -- the world: true positions and times -------------------------------------------------------


@dataclass
class Truck:
    """Where a vehicle really is and what it does; the dispatcher sees its position only."""

    id: str
    factor: float
    at: Location  # where it is, or where its current leg began
    since: float  # when it left ``at`` (or got there)
    target: tuple[str, str] | None = None  # the stop it drives to
    dest: Location | None = None  # ...and where that is
    due: float = 0.0  # its true arrival there
    busy_until: float | None = None  # serving its route's first stop until then
    stopping: bool = False  # broken: halts after the service in progress
    halted: bool = False
    online: bool = True
    last_seen: int = T0
    fault: bool = False
    served: int = 0  # demand delivered
    km: float = 0.0


@dataclass
class World:
    """The vehicles, their routes (the policy writes them) and what happened, for the figures."""

    sc: Scenario
    t: int = T0
    trucks: dict[str, Truck] = field(default_factory=dict)
    routes: dict[str, list[RouteStop]] = field(default_factory=dict)
    vehicle_of: dict[str, str] = field(default_factory=dict)  # the job's last vehicle
    moves: Counter[str] = field(default_factory=Counter)
    arrived: dict[str, tuple[float, float]] = field(default_factory=dict)  # (arrival, late s)
    samples: list[tuple[str, int, int]] = field(default_factory=list)  # (job, at, ETA given)

    def __post_init__(self) -> None:
        for vid, f in self.sc.factor.items():
            self.trucks[vid] = Truck(vid, f, self.sc.depot.location, T0)
            self.routes[vid] = []

    def position(self, k: Truck, t: float) -> Location:
        if k.target is None or k.busy_until is not None:
            return k.at
        dest = k.dest or k.at
        f = min(1.0, max(0.0, (t - k.since) / max(k.due - k.since, 1e-9)))
        return Location(k.at.lat + f * (dest.lat - k.at.lat), k.at.lon + f * (dest.lon - k.at.lon))

    def view(self, vid: str, t: int) -> VehicleRoute:
        """The dispatcher's picture: the live (or last-seen) position and the route."""
        return VehicleRoute(vid, self.position(self.trucks[vid], t), t, tuple(self.routes[vid]))

    def profile(self, vid: str) -> VehicleProfile:
        """Capacity left for the rest of the day: what it has not delivered yet."""
        cap = (self.sc.capacity - self.trucks[vid].served,)
        return VehicleProfile(vid, capacity=cap, depot_id="depot", shifts=(self.sc.shift,))

    def put(self, vid: str, stops: list[RouteStop]) -> None:
        """Give ``vid`` this route; a job that lands on another vehicle than its last moved."""
        for s in stops:
            if self.vehicle_of.get(s.job_id, vid) != vid:
                self.moves[s.job_id] += 1
            self.vehicle_of[s.job_id] = vid
        self.routes[vid] = stops

    def halt(self, vid: str, t: int, offline: bool) -> None:
        """A critical fault (still online) or going offline; it stops after any service."""
        k = self.trucks[vid]
        k.fault, k.online = k.fault or not offline, k.online and not offline
        k.last_seen = t if offline else k.last_seen
        if k.busy_until is not None:
            k.stopping = True
            return
        here = self.position(k, t)
        k.km += great_circle_m(k.at, here) / 1000
        k.at, k.since, k.target, k.halted = here, t, None, True

    def advance(self, t_end: int) -> None:
        for k in self.trucks.values():
            self._drive(k, t_end)
            k.last_seen = t_end if k.online else k.last_seen
        self.t = t_end

    def _drive(self, k: Truck, t_end: int) -> None:
        t: float = self.t
        route = self.routes[k.id]
        while not k.halted:
            if k.busy_until is not None:
                if k.busy_until > t_end:
                    return
                t, k.busy_until = k.busy_until, None
                k.served += route.pop(0).demand[0]
                k.halted = k.stopping
                continue
            if not route:
                return
            nxt = route[0]
            if k.target != (nxt.job_id, nxt.kind):  # a new stop to drive to, or a re-route
                here = self.position(k, t)
                k.km += great_circle_m(k.at, here) / 1000
                k.at, k.since, k.target, k.dest = here, t, (nxt.job_id, nxt.kind), nxt.location
                k.due = t + MODEL.leg_s(here, nxt.location, t) * k.factor
            if k.due > t_end:
                return
            t = k.due
            k.km += great_circle_m(k.at, nxt.location) / 1000
            k.at, k.since, k.target = nxt.location, t, None
            w = nxt.windows[0]
            self.arrived[nxt.job_id] = (t, max(0.0, t - w.end))
            k.busy_until = max(t, w.start) + nxt.service_s
            route[0] = replace(nxt, started=True, arrival=round(t))


# -- the policies ------------------------------------------------------------------------------


class Fleetlink:
    """Instant assignment, live ETAs, reallocation rules and event-driven re-plans."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.pool: dict[str, Job] = {}
        self.tried: dict[str, int] = {}  # last reallocation attempt: the anti-thrash clock
        self.replans = 0
        self.fired: Counter[str] = Counter()

    def start(self, jobs: list[Job]) -> None:
        self.pool = {j.id: j for j in jobs}
        self._replan(T0, None, MORNING_S)

    def _candidate(self, vid: str, t: int) -> Prepared:
        w, k = self.w, self.w.trucks[vid]
        c = Candidate(w.profile(vid), w.view(vid, t), k.online, k.fault, end=w.sc.depot.location)
        return prepare(c, MODEL, t)

    def _assign(self, job: Job, t: int, fleet: dict[str, Prepared]) -> bool:
        a = assign(job, list(fleet.values()), MODEL, ASSIGN, t)
        if a.vehicle_id is None or a.route is None:
            return False
        self.w.put(a.vehicle_id, list(a.route.stops))
        fleet[a.vehicle_id] = self._candidate(a.vehicle_id, t)
        return True

    def reveal(self, job: Job, t: int) -> None:
        if not self._assign(job, t, {v: self._candidate(v, t) for v in self.w.trucks}):
            self.pool[job.id] = job

    def tick(self, t: int) -> None:
        sample = (t - T0) % SAMPLE_S == 0
        starts: dict[str, int] = {}  # predicted service start, for the late rule
        for vid in self.w.trucks:
            eta = route_eta(self.w.view(vid, t), MODEL, t)
            for rs, s in zip(self.w.routes[vid], eta.stops, strict=True):
                starts[s.job_id] = s.service_start
                if sample and not rs.started:
                    self.w.samples.append((s.job_id, t, s.arrival))
        if self.pool:
            fleet = {v: self._candidate(v, t) for v in self.w.trucks}
            for job in list(self.pool.values()):
                if self._assign(job, t, fleet):
                    del self.pool[job.id]
        moved = False
        for f in evaluate(self._snapshot(t, starts), RULES):
            if f.action is Action.REALLOCATE:
                self.fired[f.rule.value] += 1
                moved = self._reallocate(f.rule, f.job_id, f.vehicle_id, t) or moved
        if moved:
            self._replan(t, CHURN_LIMIT, REPLAN_S)

    def _snapshot(self, t: int, starts: dict[str, int]) -> Snapshot:
        w, vehicles, jobs = self.w, [], []
        for vid, k in w.trucks.items():
            red = DtcState(vid, DtcSource.J1939, 0, "520:31", True, 520, 31, 1, RED_STOP, t, t, t)
            dtcs = (red,) if k.fault else ()
            vehicles.append(
                VehicleSnapshot(vid, k.online, k.last_seen, dtcs=dtcs, shifts=(w.sc.shift,))
            )
            for s in w.routes[vid]:
                state = JobState.ARRIVED if s.started else JobState.ASSIGNED
                job = replace(w.sc.jobs[s.job_id], state=state, vehicle_id=vid)
                eta = {s.kind: starts[s.job_id]} if s.job_id in starts else {}
                moves = w.moves[s.job_id]
                jobs.append(JobSnapshot(job, eta, last_moved=self.tried.get(s.job_id), moves=moves))
        return Snapshot(t, tuple(vehicles), tuple(jobs))

    def _reallocate(self, rule: Rule, job_id: str, vid: str, t: int) -> bool:
        """Move the job to the best other insertion; a late job with none stays where it is."""
        self.tried[job_id] = t
        old = self.w.routes[vid]
        self.w.routes[vid] = [s for s in old if s.job_id != job_id]
        job = self.w.sc.jobs[job_id]
        if self._assign(job, t, {v: self._candidate(v, t) for v in self.w.trucks}):
            return self.w.vehicle_of[job_id] != vid
        if rule in (Rule.LATE, Rule.SHIFT_END):
            self.w.routes[vid] = old
            return False
        self.pool[job_id] = job
        return True

    def _replan(self, t: int, limit: int | None, seconds: float) -> None:
        """Plan the whole fleet (VROOM) from where it is; started and driven-to stops stay."""
        w, jobs, vehicles, usable = self.w, dict(self.pool), [], {}
        for vid, k in w.trucks.items():
            for n, s in enumerate(w.routes[vid]):
                state = JobState.ARRIVED if s.started else JobState.ASSIGNED
                job = w.sc.jobs[s.job_id]
                jobs[job.id] = replace(job, state=state, vehicle_id=vid, announced=n == 0)
            usable[vid] = k.online and not k.fault
            profile = replace(w.profile(vid), dispatchable=usable[vid])
            vehicles.append(FleetVehicle(profile, w.view(vid, t)))
        places = [w.sc.depot.location, *(v.route.origin for v in vehicles if v.route)]
        at = tuple(dict.fromkeys([*places, *(j.stop.location for j in jobs.values())]))
        options = PlanOptions(churn_limit=limit, time_limit_s=seconds)
        matrix = builtin_matrix(MODEL, at, t)
        problem = FleetProblem(
            t, tuple(vehicles), tuple(jobs.values()), at, matrix, (w.sc.depot,), options
        )
        plan = plan_fleet(problem)
        self.replans += 1
        started = {s.job_id: s for r in w.routes.values() for s in r if s.started}
        served = plan.assignment()
        for r in plan.routes:
            new = [
                started.get(s.job_id) or replace(route_stops(jobs[s.job_id])[0], arrival=s.arrival)
                for s in r.stops
            ]
            left = [s for s in w.routes[r.vehicle_id] if s.job_id not in served]
            if not usable[r.vehicle_id]:
                self.pool |= {s.job_id: w.sc.jobs[s.job_id] for s in left}
                left = []
            w.put(r.vehicle_id, new + left)  # left out (too late now): served last, not dropped
        for job_id in served:
            self.pool.pop(job_id, None)


class Nearest:
    """The baseline: nearest vehicle, appended; only an offline vehicle's jobs move."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.eta: dict[str, int] = {}  # the ETA given when the job was placed
        self.pool: list[Job] = []
        self.cleared: set[str] = set()  # offline vehicles whose jobs were moved

    def start(self, jobs: list[Job]) -> None:
        for job in sorted(jobs, key=lambda j: (j.stop.windows[0].start, j.id)):
            self.reveal(job, T0)

    def reveal(self, job: Job, t: int, exclude: str = "") -> None:
        w, options = self.w, []
        for vid, k in w.trucks.items():
            route = w.routes[vid]
            room = w.sc.capacity - k.served - sum(s.demand[0] for s in route)
            if vid != exclude and k.online and not k.fault and room >= job.demand[0]:
                end = route[-1].location if route else w.position(k, t)
                options.append((great_circle_m(end, job.stop.location), len(route), vid))
        if not options:
            self.pool.append(job)
            return
        vid = min(options)[2]
        w.put(vid, [*w.routes[vid], *route_stops(job)])
        self.eta[job.id] = route_eta(w.view(vid, t), MODEL, t).stops[-1].arrival

    def tick(self, t: int) -> None:
        w = self.w
        if (t - T0) % SAMPLE_S == 0:
            w.samples += [
                (s.job_id, t, self.eta[s.job_id])
                for r in w.routes.values()
                for s in r
                if not s.started
            ]
        for vid, k in w.trucks.items():
            if not k.online and t - k.last_seen >= SILENT_S and vid not in self.cleared:
                self.cleared.add(vid)
                moving = [s for s in w.routes[vid] if not s.started]
                w.routes[vid] = [s for s in w.routes[vid] if s.started]
                for s in moving:
                    self.reveal(w.sc.jobs[s.job_id], t, exclude=vid)
        waiting, self.pool = self.pool, []
        for job in waiting:
            self.reveal(job, t)


# -- running and reporting ---------------------------------------------------------------------


def _busiest(w: World) -> str:
    """The working vehicle with the most stops ahead (ties: the lowest id)."""
    able = [v for v, k in w.trucks.items() if k.online and not k.fault]
    return min(able, key=lambda v: (-sum(not s.started for s in w.routes[v]), v))


def run(sc: Scenario, policy: type[Fleetlink] | type[Nearest]) -> tuple[World, Any]:
    """One simulated day under ``policy``; the world at its end, and the policy."""
    w = World(sc)
    p = policy(w)
    p.start([j for j in sc.jobs.values() if sc.reveal[j.id] <= T0])
    pending = sorted((at, jid) for jid, at in sc.reveal.items() if at > T0)
    breaks = [(sc.at(FAULT_AT), False), (sc.at(OFFLINE_AT), True)]
    t = T0
    while pending or any(r and not w.trucks[v].halted for v, r in w.routes.items()):
        while pending and pending[0][0] <= t:
            p.reveal(sc.jobs[pending.pop(0)[1]], t)
        while breaks and breaks[0][0] <= t:
            w.halt(_busiest(w), t, breaks.pop(0)[1])
        p.tick(t)
        w.advance(t + STEP_S)
        t += STEP_S
    return w, p


def figures(days: list[tuple[World, Any]], seconds: float) -> dict[str, Any]:
    """Over several days: shares of all customers, means per day, ETA errors pooled."""
    n = sum(len(w.sc.jobs) for w, _ in days)
    served = sum(len(w.arrived) for w, _ in days)
    on_time = sum(late == 0 for w, _ in days for _, late in w.arrived.values())
    trucks = [(w.sc.depot.location, k) for w, _ in days for k in w.trucks.values()]
    km = sum(
        k.km + (great_circle_m(k.at, home) / 1000 if not k.halted else 0) for home, k in trucks
    )
    errors: dict[str, list[float]] = {_label(h): [] for h in HORIZONS}
    for w, _ in days:
        for job_id, at, eta in w.samples:
            if job_id in w.arrived:
                actual = w.arrived[job_id][0]
                errors[_label(_horizon(actual - at))].append(abs(eta - actual))
    per_day = len(days)
    out: dict[str, Any] = {
        "on_time_pct": round(100 * on_time / n, 1),
        "late_pct": round(100 * (served - on_time) / n, 1),
        "unserved": round((n - served) / per_day, 1),
        "reassignments": round(sum(sum(w.moves.values()) for w, _ in days) / per_day, 1),
        "churn_jobs": round(
            sum(sum(m > 0 for m in w.moves.values()) for w, _ in days) / per_day, 1
        ),
        "distance_km": round(km / per_day, 1),
        "eta_mae_s": {h: round(sum(e) / len(e)) if e else None for h, e in errors.items()},
        "eta_samples": {h: len(e) for h, e in errors.items()},
        "seconds_per_day": round(seconds / per_day, 2),
    }
    if all(isinstance(p, Fleetlink) for _, p in days):
        fired = sum((p.fired for _, p in days), Counter[str]())
        out["replans"] = round(sum(p.replans for _, p in days) / per_day, 1)
        out["reallocations_by_rule"] = {r: round(c / per_day, 1) for r, c in sorted(fired.items())}
    return out


def _horizon(ahead_s: float) -> tuple[int, int | None]:
    return next(h for h in HORIZONS if h[1] is None or ahead_s < h[1] * MINUTE)


def _label(h: tuple[int, int | None]) -> str:
    return f"{h[0]}-{h[1]}min" if h[1] is not None else f"{h[0]}+min"


def dynamic(data: Path) -> dict[str, Any]:
    """Both policies on each instance, one day per seed; prints a table, returns the figures."""
    out: dict[str, Any] = {"seeds": list(SEEDS)}
    for name in INSTANCES:
        inst = parse((data / "solomon" / f"{name}.txt").read_text())
        out[name] = {}
        for policy in (Fleetlink, Nearest):
            started = time.perf_counter()
            days = [run(scenario(inst, seed), policy) for seed in SEEDS]
            out[name][policy.__name__.lower()] = figures(days, time.perf_counter() - started)
        _table(name, out[name])
    return out


def _table(name: str, rows: dict[str, dict[str, Any]]) -> None:
    labels = [_label(h) for h in HORIZONS]
    print(f"   {name}, {len(SEEDS)} days; unserved to km: per day; ETA MAE (s) by horizon")
    head = ("policy", "on-time%", "late%", "unserved", "reassign", "churn", "km", *labels)
    keys = ("on_time_pct", "late_pct", "unserved", "reassignments", "churn_jobs", "distance_km")
    print("   " + " ".join(f"{x:>9}" for x in head))
    for policy, r in rows.items():
        cells = [policy, *(r[k] for k in keys), *(r["eta_mae_s"][x] for x in labels)]
        print("   " + " ".join(f"{'-' if x is None else x:>9}" for x in cells), flush=True)
