"""VROOM (pyvroom) for Solomon instances and for the fleet; the only module that imports ``vroom``.

**Solomon instances** (:func:`solve`). VROOM works in integers, so coordinates are scaled by
:data:`SCALE` (instance units × 1000). Travel *times* are rounded **up** after scaling, so every
route VROOM finds is feasible with the exact real-valued times too
(:func:`fleetlink_cloud.dispatch.solomon.evaluate` checks it); travel *costs* are rounded to the
nearest integer. Callers report the distance recomputed exactly from the returned routes. The
search, bounded by ``time_limit_s``: a short VROOM solve (``_BASE_SEARCHES`` of its construction
heuristics, each followed by local search and ruin-and-recreate to ``_BASE_DEPTH`` jobs) on all
the threads given, then the iterated local search of :mod:`.local_search` from it.

**The fleet** (:func:`plan_fleet`, :func:`time_route`): see their docstrings. VROOM's integers
are seconds after ``FleetProblem.now`` (Unix times would work too, but relative ones keep an
always-on shift inside :data:`_HORIZON_S`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import vroom
from vroom import _vroom
from vroom.solution.solution import Solution

from fleetlink_cloud.dispatch import churn
from fleetlink_cloud.dispatch import fleet_plan as fp
from fleetlink_cloud.dispatch.local_search import CHAINS, SCALE, Chain, Model, Routes
from fleetlink_cloud.dispatch.local_search import improve as _improve
from fleetlink_cloud.dispatch.local_search import model as _model
from fleetlink_cloud.dispatch.local_search import score as _score
from fleetlink_cloud.dispatch.model import Job, Shift, StopKind, TimeWindow
from fleetlink_cloud.dispatch.solomon import Instance
from fleetlink_cloud.errors import CloudError

__all__ = ["CHAINS", "SCALE", "Chain", "Plan", "SolverError", "plan_fleet", "solve", "time_route"]

_BASE_SEARCHES = 4  # VROOM exploration level 5 runs 32; the chains make better use of the time
_BASE_DEPTH = 5
_BASE_SHARE = 0.5  # at most this share of the time limit goes to the first solve
_MARGIN_S = 0.15  # stop this long before the limit: collecting the chains, evaluating
_MIN_CHAIN_S = 0.2  # not worth starting the chains with less time than this
_HORIZON_S = 30 * 86_400  # the latest time a fleet plan looks at, after ``now``
_REFUSED = re.compile(r"for vehicle (\d+)")  # VROOM's message refusing an initial route
_VROOM_ERRORS = (
    _vroom.VroomInputException,
    _vroom.VroomInternalException,
    _vroom.VroomRoutingException,
)


class SolverError(CloudError):
    """VROOM refused the problem or failed while solving it."""


# --- Solomon instances ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """Routes (customer ids, depot implied) and how the search went."""

    routes: Routes
    unassigned: tuple[int, ...]
    rounds: int  # perturb-and-improve rounds over all chains
    first_distance: float  # after the first VROOM solve, before the chains


def _input(model: Model, costs: list[list[int]], start: Routes) -> Any:
    """A VROOM problem; ``start`` routes become the vehicles' initial steps."""
    problem = vroom.Input()
    problem.set_durations_matrix("car", model.durations)
    problem.set_costs_matrix("car", costs)
    depot = model.instance.depot
    horizon = vroom.TimeWindow(depot.ready * SCALE, depot.due * SCALE)
    for v in range(model.instance.vehicles):
        steps: list[Any] = []
        if v < len(start):
            single = [vroom.VehicleStepSingle(c) for c in start[v]]
            steps = [vroom.VehicleStepStart(), *single, vroom.VehicleStepEnd()]
        capacity = [model.instance.capacity]
        problem.add_vehicle(
            vroom.Vehicle(
                v + 1, start=0, end=0, capacity=capacity, time_window=horizon, steps=steps
            )
        )
    for c in model.instance.customers:
        window = vroom.TimeWindow(c.ready * SCALE, c.due * SCALE)
        job = vroom.Job(
            c.id,
            location=c.id,
            default_service=c.service * SCALE,
            delivery=[c.demand],
            time_windows=[window],
        )
        problem.add_job(job)
    return problem


def _run(problem: Any, searches: int, depth: int, threads: int, timeout_s: float) -> Routes:
    """Solve with VROOM's (searches, depth) entry point; exploration level 5 is (32, 5)."""
    timeout = timedelta(seconds=max(timeout_s, 0.01))
    try:
        raw = problem._solve(searches, depth, threads, timeout)
    except _VROOM_ERRORS as exc:
        raise SolverError(f"VROOM: {exc}") from exc
    frame = Solution(raw).routes
    jobs = frame[frame["type"] == "job"]
    routes = [tuple(int(i) for i in group["id"]) for _, group in jobs.groupby("vehicle_id")]
    return tuple(r for r in routes if r)


def _reoptimise(
    model: Model, costs: list[list[int]], start: Routes, depth: int, timeout_s: float
) -> Routes:
    """One local-search chain step: improve ``start`` under ``costs`` (one search, one thread)."""
    return _run(_input(model, costs, start), 1, depth, 1, timeout_s)


def solve(
    instance: Instance, *, time_limit_s: float = 5.0, workers: int = 2, seed: int = 0
) -> Plan:
    """Plan routes for ``instance`` within about ``time_limit_s`` seconds of wall time.

    ``workers`` is the number of CPU cores to use (VROOM threads for the first solve, then
    one chain process each). Raises :class:`SolverError` if VROOM fails.
    """
    started = time.monotonic()
    deadline = started + time_limit_s - _MARGIN_S
    model = _model(instance)
    workers = max(1, workers)
    budget = min(time_limit_s * _BASE_SHARE, deadline - time.monotonic())
    first = _run(_input(model, model.costs, ()), _BASE_SEARCHES, _BASE_DEPTH, workers, budget)
    best, rounds = first, 0
    if deadline - time.monotonic() > _MIN_CHAIN_S:
        best, rounds = _improve(model, first, workers, seed, deadline, _reoptimise)
    served = {c for r in best for c in r}
    unassigned = tuple(c.id for c in instance.customers if c.id not in served)
    return Plan(best, unassigned, rounds, _score(instance, first)[1])


# --- The fleet -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ids:
    """What VROOM's integers stand for: job ``k`` is ``jobs[k - 1]`` (single job, pickup and
    delivery all use ``k``: VROOM has an id space per type), vehicle ``v`` is
    ``vehicles[v - 1]``; times are seconds after ``base``; skills are ``named`` plus one
    ``pin`` per vehicle (skill 0, which no vehicle has, pins to a vehicle not planned)."""

    jobs: tuple[Job, ...]
    vehicles: tuple[fp.VehicleStart, ...]
    aboard: Mapping[str, str]  # shipment aboard -> its vehicle (VROOM sees a single delivery)
    base: int
    named: Mapping[str, int]
    pin: Mapping[str, int]


def _windows(windows: Sequence[TimeWindow], base: int) -> list[Any] | None:
    """Windows as seconds after ``base``; [] means any time; None means all have closed."""
    kept = [
        vroom.TimeWindow(max(w.start - base, 0), w.end - base) for w in windows if w.end >= base
    ]
    return kept if kept or not windows else None


def _amount(v: Sequence[int], dims: int) -> list[int]:
    return [max(x, 0) for x in (*v, *(0,) * (dims - len(v)))]


def _vehicle_window(start: fp.VehicleStart, base: int, plan_mode: bool) -> tuple[int, int] | None:
    """The shift as VROOM's vehicle window, None if off shift; plan mode times it regardless."""
    shift = start.shift or Shift(0, base + _HORIZON_S)
    begin, end = max(start.time, shift.start) - base, min(shift.end - base, _HORIZON_S)
    if plan_mode:
        return start.time - base, max(end, start.time - base)
    return (begin, end) if start.shift is not None and end >= begin else None


def _fleet_input(
    problem: fp.FleetProblem,
    split: fp.Split,
    pins: Mapping[str, str],
    warm: Mapping[str, Sequence[fp.StopKey]],
    plan_mode: bool = False,
) -> tuple[Any, _Ids]:
    """The VROOM input for the free jobs; ``pins`` hold jobs on one vehicle (job -> vehicle),
    ``warm`` gives vehicles their initial routes (the route to time, in plan mode)."""
    base = split.vehicles[0].time if plan_mode else problem.now
    vehicles = tuple(
        v
        for v in split.vehicles
        if _vehicle_window(v, base, plan_mode) is not None
        and (v.location_index, v.end_index) != (None, None)  # nowhere known: cannot be routed
    )
    named = {s: i for i, s in enumerate(sorted({s for j in split.free for s in j.skills}), 1)}
    pin = {v.vehicle_id: len(named) + i for i, v in enumerate(split.vehicles, 1)}
    aboard = {j: v.vehicle_id for v in split.vehicles for j in v.on_board}
    out = vroom.Input()
    m = problem.matrix
    out.set_durations_matrix("car", m.durations_s)
    if m.distances_m is not None:
        out.set_distances_matrix("car", m.distances_m)
    by_distance = problem.options.cost == "distance" and m.distances_m is not None
    out.set_costs_matrix("car", m.distances_m if by_distance else m.durations_s)
    dims = max(
        (len(x) for x in (*(v.capacity for v in vehicles), *(j.demand for j in split.free))),
        default=0,
    )
    ids = _Ids((), vehicles, aboard, base, named, pin)
    ids = replace(ids, jobs=_add_jobs(out, problem, split.free, pins, ids, dims, plan_mode))
    for v_id, start in enumerate(vehicles, start=1):
        sequence = warm.get(start.vehicle_id)
        steps = _steps(start.vehicle_id, sequence, ids, pins, plan_mode) if sequence else []
        out.add_vehicle(_vehicle(v_id, start, ids, dims, steps, plan_mode))
    return out, ids


def _vehicle(
    v_id: int, start: fp.VehicleStart, ids: _Ids, dims: int, steps: list[Any], plan_mode: bool
) -> Any:
    """The VROOM vehicle: from where free work starts to its depot, within its shift."""
    begin, end = _vehicle_window(start, ids.base, plan_mode) or (0, 0)
    breaks = []
    for b_id, brk in enumerate(() if plan_mode or not start.shift else start.shift.breaks, 1):
        tws = [w for w in _windows(brk.windows, ids.base) or [] if w.end >= begin]
        if tws:  # a break whose windows all closed before free work begins was taken
            breaks.append(vroom.Break(b_id, time_windows=tws, service=brk.duration_s))
    skills = {ids.named[s] for s in start.skills if s in ids.named} | {ids.pin[start.vehicle_id]}
    return vroom.Vehicle(
        v_id,
        start=start.location_index,
        end=start.end_index,
        capacity=_amount(start.capacity, dims),
        skills=skills,
        time_window=vroom.TimeWindow(begin, end),
        breaks=breaks,
        steps=steps,
    )


def _add_jobs(
    out: Any,
    problem: fp.FleetProblem,
    jobs: Sequence[Job],
    pins: Mapping[str, str],
    ids: _Ids,
    dims: int,
    plan_mode: bool,
) -> tuple[Job, ...]:
    """Add ``jobs`` to the VROOM input; the ones it was given, in id order."""
    index = problem.index()
    given: list[Job] = []
    for job in jobs:
        stops = {StopKind.DELIVERY: job.stop} if job.id in ids.aboard else dict(job.stops())
        windows = {kind: _windows(stop.windows, ids.base) for kind, stop in stops.items()}
        if any(w is None for w in windows.values()) and not plan_mode:
            continue  # every window has closed: it cannot be served on time (unassigned)
        given.append(job)
        owner = ids.aboard.get(job.id) or job.locked_vehicle_id or pins.get(job.id)
        skills = {ids.named[s] for s in job.skills} | ({ids.pin.get(owner, 0)} if owner else set())
        priority = job.priority if problem.options.use_priority else 0
        common: dict[str, Any] = {"skills": skills, "priority": priority}
        steps = {
            kind: {
                "id": len(given),
                "location": index[stop.location],
                "default_service": stop.service_s,
                "time_windows": windows[kind] or [],
            }
            for kind, stop in stops.items()
        }
        amount = _amount(job.demand, dims)
        if len(steps) == 2:
            pickup, delivery = (vroom.ShipmentStep(**steps[k]) for k in _PAIR)
            out.add_job(vroom.Shipment(pickup, delivery, amount=amount, **common))
        else:
            out.add_job(vroom.Job(**next(iter(steps.values())), delivery=amount, **common))
    return tuple(given)


_PAIR = (StopKind.PICKUP, StopKind.DELIVERY)
_STEP = {
    StopKind.PICKUP: vroom.VehicleStepPickup,
    StopKind.DELIVERY: vroom.VehicleStepDelivery,
    StopKind.SINGLE: vroom.VehicleStepSingle,
}


def _steps(
    vehicle_id: str,
    sequence: Sequence[fp.StopKey],
    ids: _Ids,
    pins: Mapping[str, str],
    plan_mode: bool,
) -> list[Any]:
    """``sequence`` as VROOM steps (plan mode: leaving at the start of the vehicle's window);
    stops VROOM was not given, or pinned to another vehicle, are left out."""
    rank = {j.id: k for k, j in enumerate(ids.jobs, start=1)}
    steps = [
        _STEP[StopKind.SINGLE if job_id in ids.aboard else kind](rank[job_id])
        for job_id, kind in sequence
        if job_id in rank and pins.get(job_id, vehicle_id) == vehicle_id
    ]
    # Plan mode would otherwise move the departure to avoid waiting, or earlier to be on time.
    first = vroom.VehicleStepStart(service_at=0) if plan_mode else vroom.VehicleStepStart()
    return [first, *steps, vroom.VehicleStepEnd()] if steps else []


def _solve(problem: Any, options: fp.PlanOptions, timeout_s: float | None) -> Solution:
    """Solve; VROOM's own errors pass through (the caller may retry a refused warm start)."""
    timeout = timedelta(seconds=max(timeout_s, 0.01)) if timeout_s is not None else None
    return problem.solve(options.exploration_level, options.threads, timeout)


def _steps_by_vehicle(solution: Solution) -> dict[int, list[dict[str, Any]]]:
    """VROOM's steps per vehicle number, in route order (its public route table; its JSON
    writer would go through ``sys.stdout``, which other threads may be using)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for row in solution.routes.to_dict("records"):
        out.setdefault(int(row["vehicle_id"]), []).append(row)
    return out


_KINDS = {"pickup": StopKind.PICKUP, "delivery": StopKind.DELIVERY}


def _read_route(
    steps: Sequence[Mapping[str, Any]], ids: _Ids, start: fp.VehicleStart
) -> fp.VehiclePlan:
    """One vehicle's steps of a VROOM solution, after its fixed head."""
    stops = list(start.head)
    breaks: list[fp.PlannedBreak] = []
    end = None
    for step in steps:
        arrival = ids.base + int(step["arrival"])
        begin = arrival + int(step["waiting_time"])
        if step["type"] == "break":
            breaks.append(fp.PlannedBreak(begin, int(step["service"])))
        elif step["type"] == "end":
            end = arrival
        elif step["type"] != "start":
            job = ids.jobs[int(step["id"]) - 1]
            kind = _KINDS.get(
                step["type"], StopKind.DELIVERY if job.is_shipment else StopKind.SINGLE
            )
            late = fp.lateness(dict(job.stops())[kind].windows, begin)
            where = int(step["location_index"])
            stops.append(fp.PlannedStop(job.id, kind, where, arrival, begin, late))
    return fp.VehiclePlan(
        start.vehicle_id,
        tuple(stops),
        tuple(breaks),
        end,
        duration_s=int(steps[-1]["duration"]),
        distance_m=int(steps[-1].get("distance", 0)),
    )


def _plan_once(
    problem: fp.FleetProblem,
    split: fp.Split,
    pins: Mapping[str, str],
    warm: Mapping[str, Sequence[fp.StopKey]],
    timeout_s: float | None,
) -> fp.FleetPlan:
    """One VROOM solve of the free jobs, warm-started from ``warm`` (vehicle -> its stops)."""
    warm = dict(warm)
    steps: dict[int, list[dict[str, Any]]] = {}
    while True:
        inp, ids = _fleet_input(problem, split, pins, warm)
        if not (ids.jobs and ids.vehicles):
            break
        try:
            steps = _steps_by_vehicle(_solve(inp, problem.options, timeout_s))
            break
        except _VROOM_ERRORS as exc:
            # An initial route VROOM finds infeasible (a delay since the last plan) is refused
            # with the vehicle's number; that vehicle starts cold, the others stay warm.
            refused = _REFUSED.search(str(exc))
            vehicle_id = ids.vehicles[int(refused[1]) - 1].vehicle_id if refused else ""
            if (
                not isinstance(exc, _vroom.VroomInputException)
                or warm.pop(vehicle_id, None) is None
            ):
                raise SolverError(f"VROOM: {exc}") from exc
    planned = {v.vehicle_id: k for k, v in enumerate(ids.vehicles, start=1)}
    routes = tuple(
        _read_route(steps[planned[v.vehicle_id]], ids, v)
        if planned.get(v.vehicle_id) in steps
        else fp.VehiclePlan(v.vehicle_id, v.head)
        for v in split.vehicles
    )
    served = {s.job_id for r in routes for s in r.stops}
    unassigned = tuple(j.id for j in split.free if j.id not in served)
    return fp.FleetPlan(routes, unassigned, churn.compare(split, routes), pinned=len(pins))


def plan_fleet(problem: fp.FleetProblem) -> fp.FleetPlan:
    """Plan every free job of ``problem`` onto its vehicles with VROOM; the fixed heads stay.

    Fixed stops (:func:`~.fleet_plan.split`) are taken out of VROOM's problem and the vehicle's
    start moved to the end of its head, at the time the head ends, timed here on the same
    matrix. VROOM's own ``steps`` would not do: in solve mode they are only a first solution it
    may rearrange, and in plan mode nothing else is planned. Instead the previous free stops
    are each vehicle's ``steps``, as a warm start: faster, and closer to the previous plan (a
    vehicle whose old route VROOM finds infeasible starts cold). The churn limit pins jobs to
    a vehicle with a skill only it has, between solves (:func:`~.churn.limit`).

    Raises :class:`SolverError` if VROOM fails, :class:`~.fleet_plan.PlanIncomplete` if jobs
    are left out and ``allow_unassigned`` is off, :class:`~.fleet_plan.FleetProblemError`
    for an inconsistent problem.
    """
    options = problem.options
    split = fp.split(problem)
    deadline = time.monotonic() + options.time_limit_s if options.time_limit_s else None
    warm = {v.vehicle_id: v.sequence for v in split.vehicles}

    def solve_once(pins: Mapping[str, str], solves_left: int) -> fp.FleetPlan:
        return _plan_once(problem, split, pins, warm, _share(deadline, solves_left))

    plan = churn.limit(split, problem.matrix, options, solve_once)
    if plan.unassigned and not options.allow_unassigned:
        raise fp.PlanIncomplete(plan)
    return plan


def _share(deadline: float | None, solves_left: int) -> float | None:
    """An equal share of the time left for each solve still allowed."""
    return None if deadline is None else (deadline - time.monotonic()) / max(solves_left, 1)


def time_route(
    problem: fp.FleetProblem, vehicle_id: str, sequence: Sequence[fp.StopKey]
) -> fp.VehiclePlan:
    """Time ``sequence`` as given (VROOM's plan mode) for one vehicle, from its live origin.

    Nothing is fixed or moved: every stop gets its arrival and its lateness (service start past
    its last window), the route its end; capacity and skills are not checked. A delivery whose
    pickup is not in the sequence is aboard. Breaks are not inserted. Raises
    :class:`~.fleet_plan.FleetProblemError` for an unknown vehicle or job,
    :class:`SolverError` if VROOM fails.
    """
    vehicle = next((v for v in problem.vehicles if v.profile.id == vehicle_id), None)
    jobs = {j.id: j for j in problem.jobs}
    if vehicle is None or any(j not in jobs for j, _ in sequence):
        raise fp.FleetProblemError(f"unknown vehicle {vehicle_id!r} or job in the sequence")
    start = fp.route_start(problem, vehicle, sequence)
    split = fp.Split((start,), tuple(jobs[j] for j in dict.fromkeys(j for j, _ in sequence)), {})
    inp, ids = _fleet_input(problem, split, {}, {vehicle_id: sequence}, plan_mode=True)
    try:
        steps = _steps_by_vehicle(inp.check(problem.options.threads))
    except _VROOM_ERRORS as exc:
        raise SolverError(f"VROOM: {exc}") from exc
    return _read_route(steps[1], ids, start) if steps else fp.VehiclePlan(vehicle_id, ())
