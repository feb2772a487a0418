"""Churn: how much a new fleet plan moves the jobs of the previous one, and how to limit it.

Pure; the solver is a function passed in. Counted over the jobs that were free to move
(:func:`.fleet_plan.split`): stops kept fixed are never churn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from fleetlink_cloud.dispatch.fleet_plan import (
    Churn,
    FleetPlan,
    Matrix,
    PlanOptions,
    Split,
    StopKey,
    VehiclePlan,
    VehicleStart,
)
from fleetlink_cloud.dispatch.model import DispatchError

# (pins: job -> the only vehicle that may serve it, solves still allowed) -> a plan
SolveOnce = Callable[[Mapping[str, str], int], FleetPlan]


class ChurnLimitBroken(DispatchError):
    """The solver moved a job it was told to keep on its vehicle (a pin was ignored)."""


def limit(split_: Split, matrix: Matrix, options: PlanOptions, solve: SolveOnce) -> FleetPlan:
    """Solve, keeping at most ``options.churn_limit`` (K) free jobs from changing vehicle.

    Solve; while more than K jobs moved to another available vehicle, pin the moves with the
    smallest benefit (:func:`move_benefits`) back to their old vehicle and solve again. The
    last of ``churn_rounds`` solves pins *every* previously assigned job except the K best
    moves of the solve before, so the plan returned never moves more than K (else
    :class:`ChurnLimitBroken`); a job held on a vehicle that can no longer serve it is left
    unassigned rather than moved. Jobs whose vehicle dropped out or went off shift move
    freely (``forced``). K = 0, or a single round, pins everything from the first solve.
    """
    k, rounds = options.churn_limit, options.churn_rounds
    available = split_.available()
    keepable = {j: v for j, v in split_.previous.items() if v in available}
    pins = dict(keepable) if k == 0 or (k is not None and rounds == 1) else {}
    solves, last = 1, bool(pins)
    plan = solve(pins, rounds if k else 1)
    while k is not None and len(plan.churn.moved) > k:
        if last:
            raise ChurnLimitBroken(f"{len(plan.churn.moved)} jobs moved, over the limit of {k}")
        gain = move_benefits(split_, plan.routes, plan.churn.moved, matrix)
        ranked = sorted(plan.churn.moved, key=lambda j: (gain[j], j))
        last = solves + 1 >= rounds
        if last:  # only the K best moves stay free
            free = set(ranked[len(ranked) - k :])
            pins = {j: v for j, v in keepable.items() if j not in free}
        else:
            pins |= {j: keepable[j] for j in ranked[: len(ranked) - k]}
        plan = solve(pins, rounds - solves)
        solves += 1
    return replace(plan, solves=solves, pinned=len(pins))


def compare(split_: Split, routes: Sequence[VehiclePlan]) -> Churn:
    """Compare ``routes`` with the previous assignment in ``split_`` (fixed stops excluded)."""
    now = {s.job_id: r.vehicle_id for r in routes for s in r.stops if not s.fixed}
    available = split_.available()
    moved: list[str] = []
    forced: list[str] = []
    dropped: list[str] = []
    for job_id, before in sorted(split_.previous.items()):
        after = now.get(job_id)
        if after is None:
            dropped.append(job_id)
        elif after != before:
            (moved if before in available else forced).append(job_id)
    new_order = {r.vehicle_id: [(s.job_id, s.kind) for s in r.stops if not s.fixed] for r in routes}
    reordered = 0
    for start in split_.vehicles:
        kept = set(new_order.get(start.vehicle_id, ()))
        old = [k for k in start.sequence if k in kept]
        new = [k for k in new_order.get(start.vehicle_id, ()) if k in set(old)]
        reordered += len(old) - _common_subsequence(old, new)
    return Churn(tuple(moved), tuple(forced), tuple(dropped), reordered)


def _common_subsequence(a: Sequence[StopKey], b: Sequence[StopKey]) -> int:
    """Length of the longest common subsequence: the stops that need not move."""
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0
        for j, y in enumerate(b):
            diag, row[j + 1] = row[j + 1], diag + 1 if x == y else max(row[j + 1], row[j])
    return row[-1]


def move_benefits(
    split_: Split, routes: Sequence[VehiclePlan], moved: Sequence[str], matrix: Matrix
) -> dict[str, int]:
    """Seconds of travel each moved job saves where it is now, against its old vehicle.

    Estimated per stop, independently: the cheapest insertion into the old vehicle's new route
    minus what removing the stop from its new route saves. The churn limit pins back the jobs
    with the smallest benefit first.
    """
    d = matrix.durations_s
    starts = {v.vehicle_id: v for v in split_.vehicles}
    paths: dict[str, list[int]] = {}
    placed: dict[str, list[tuple[list[int], int]]] = {}  # job -> (its new path, position) per stop
    for r in routes:
        if r.vehicle_id not in starts:
            continue
        start = starts[r.vehicle_id]
        path = paths[r.vehicle_id] = _path(start, r)
        offset = start.location_index is not None
        for k, s in enumerate(s for s in r.stops if not s.fixed):
            placed.setdefault(s.job_id, []).append((path, k + offset))
    out: dict[str, int] = {}
    for job_id in moved:
        old = paths.get(split_.previous[job_id], [])
        gain = 0
        for path, k in placed.get(job_id, []):
            before, after = path[k - 1] if k else None, path[k + 1] if k + 1 < len(path) else None
            gain += _insert_cost(d, old, path[k]) - _leg(d, before, path[k], after)
        out[job_id] = gain
    return out


def _path(start: VehicleStart, route: VehiclePlan) -> list[int]:
    free = [s.location_index for s in route.stops if not s.fixed]
    ends = [x for x in (start.location_index,) if x is not None]
    return [*ends, *free, *([start.end_index] if start.end_index is not None else [])]


def _leg(d: Sequence[Sequence[int]], a: int | None, x: int, b: int | None) -> int:
    """Travel added by visiting ``x`` between ``a`` and ``b`` (either may be absent)."""
    via = (d[a][x] if a is not None else 0) + (d[x][b] if b is not None else 0)
    return via - (d[a][b] if a is not None and b is not None else 0)


def _insert_cost(d: Sequence[Sequence[int]], path: Sequence[int], x: int) -> int:
    if not path:
        return 0
    gaps = [
        (path[k - 1] if k else None, path[k] if k < len(path) else None)
        for k in range(len(path) + 1)
    ]
    return min(_leg(d, a, x, b) for a, b in gaps)
