"""Solve a Solomon VRPTW instance with VROOM (pyvroom); the only module that imports ``vroom``.

VROOM works in integers, so coordinates are scaled by :data:`SCALE` (instance units × 1000).
Travel *times* are rounded **up** after scaling, so every route VROOM finds is feasible with the
exact real-valued times too (:func:`fleetlink_cloud.dispatch.solomon.evaluate` checks it); travel
*costs* are rounded to the nearest integer. Callers report the distance recomputed exactly from
the returned routes, in the instance's own units.

The search, bounded by ``time_limit_s``:

1. A short VROOM solve (``_BASE_SEARCHES`` of VROOM's construction heuristics, each followed by
   its local search and ruin-and-recreate to ``_BASE_DEPTH`` jobs) on all the threads given.
2. One chain per worker process, each starting from that solution: perturb every arc's cost by a
   random factor (log-normal, ``sigma``), let VROOM improve the current solution under the
   perturbed costs, then again under the true costs, and keep the result if it is shorter than
   the chain's current one, or at most ``accept`` longer (the chain's best is never lost; a chain
   that drifted too far returns to it). This iterated local search escapes the local optima
   where plain VROOM stops; the chains use different settings so they search differently.

The shortest complete plan wins. VROOM holds the GIL while it solves, so the chains run in
forked processes, not threads; where ``fork`` is unavailable one chain runs in this process.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import vroom
from vroom import _vroom
from vroom.solution.solution import Solution

from fleetlink_cloud.dispatch.solomon import Instance, route_distance
from fleetlink_cloud.errors import CloudError

SCALE = 1000  # instance units -> VROOM integers (times and costs)
_BASE_SEARCHES = 4  # VROOM exploration level 5 runs 32; the chains make better use of the time
_BASE_DEPTH = 5
_BASE_SHARE = 0.5  # at most this share of the time limit goes to the first solve
_MARGIN_S = 0.15  # stop this long before the limit: collecting the chains, evaluating
_MIN_CHAIN_S = 0.2  # not worth starting the chains with less time than this
_EPOCHS = 3  # the chains restart from the best plan so far this many times
_FACTORS = 1024  # perturbation factors drawn per round, then picked at random for every arc
_VROOM_ERRORS = (
    _vroom.VroomInputException,
    _vroom.VroomInternalException,
    _vroom.VroomRoutingException,
)

Routes = tuple[tuple[int, ...], ...]


class SolverError(CloudError):
    """VROOM refused the problem or failed while solving it."""


@dataclass(frozen=True, slots=True)
class Chain:
    """Settings of one iterated-local-search chain (see the module docstring)."""

    depth: int = 8  # VROOM's ruin-and-recreate depth (jobs removed at a time)
    shake_depth: int = 8  # the same, under the perturbed costs
    sigma: float = 0.3  # spread of the log-normal cost perturbation
    accept: float = 0.0  # relative worsening accepted for the chain's current solution
    split: float = 0.0  # share of rounds that split a random route in two instead of perturbing


CHAINS: tuple[Chain, ...] = (Chain(depth=8), Chain(depth=5, accept=0.005))


@dataclass(frozen=True, slots=True)
class Plan:
    """Routes (customer ids, depot implied) and how the search went."""

    routes: Routes
    unassigned: tuple[int, ...]
    rounds: int  # perturb-and-improve rounds over all chains
    first_distance: float  # after the first VROOM solve, before the chains


@dataclass(frozen=True, slots=True)
class _Model:
    """The instance as VROOM's integers: scaled times rounded up, scaled costs rounded."""

    instance: Instance
    durations: list[list[int]]
    costs: list[list[int]]


def _model(instance: Instance) -> _Model:
    n = len(instance.nodes)
    exact = [[instance.distance(a, b) * SCALE for b in range(n)] for a in range(n)]
    durations = [[math.ceil(d - 1e-6) for d in row] for row in exact]
    costs = [[round(d) for d in row] for row in exact]
    return _Model(instance, durations, costs)


def _perturbed(costs: list[list[int]], sigma: float, rng: random.Random) -> list[list[int]]:
    """Every cost times an independent log-normal factor (median 1)."""
    factors = [math.exp(rng.gauss(0.0, sigma)) for _ in range(_FACTORS)]
    n = len(costs)
    return [
        [round(c * f) for c, f in zip(row, rng.choices(factors, k=n), strict=True)] for row in costs
    ]


def _input(model: _Model, costs: list[list[int]], start: Routes) -> Any:
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


def _score(instance: Instance, routes: Routes) -> tuple[int, float]:
    """Order of plans: fewest customers left out, then shortest real distance."""
    served = sum(len(r) for r in routes)
    return len(instance.customers) - served, sum(route_distance(instance, r) for r in routes)


def _shake(model: _Model, routes: Routes, chain: Chain, rng: random.Random, left: float) -> Routes:
    """Move away from ``routes``: split one in two (still feasible), or improve under noise."""
    if rng.random() < chain.split and len(routes) < model.instance.vehicles:
        k = rng.randrange(len(routes))
        if len(routes[k]) > 1:
            cut = rng.randrange(1, len(routes[k]))
            return (*routes[:k], *routes[k + 1 :], routes[k][:cut], routes[k][cut:])
    costs = _perturbed(model.costs, chain.sigma, rng)
    return _run(_input(model, costs, routes), 1, chain.shake_depth, 1, left)


def _chain(
    model: _Model, start: Routes, chain: Chain, seed: int, deadline: float
) -> tuple[Routes, int]:
    """Iterated local search from ``start`` until ``deadline`` (``time.monotonic``)."""
    rng = random.Random(seed)
    best = current = start
    best_score = current_score = _score(model.instance, start)
    rounds = 0
    while (left := deadline - time.monotonic()) > 0.05:
        shaken = _shake(model, current, chain, rng, left)
        left = deadline - time.monotonic()
        candidate = _run(_input(model, model.costs, shaken), 1, chain.depth, 1, left)
        score = _score(model.instance, candidate)
        rounds += 1
        if score < best_score:
            best, best_score = candidate, score
        if score[0] <= current_score[0] and score[1] < current_score[1] * (1 + chain.accept):
            current, current_score = candidate, score
        if current_score[1] > best_score[1] * (1 + 2 * chain.accept):
            current, current_score = best, best_score
    return best, rounds


def _run_chain(job: tuple[_Model, Routes, Chain, int, float]) -> tuple[Routes, int]:
    return _chain(*job)


def _improve(
    model: _Model, start: Routes, workers: int, seed: int, deadline: float
) -> tuple[Routes, int]:
    """Run the chains in ``_EPOCHS`` epochs, every epoch's chains starting from the best so far."""
    chains = [CHAINS[i % len(CHAINS)] for i in range(workers)]
    best, best_score, rounds = start, _score(model.instance, start), 0
    with contextlib.ExitStack() as stack:
        run_all: Callable[..., Iterable[tuple[Routes, int]]] = map
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            # fork: the children inherit the imported modules; spawn would import pyvroom again.
            context = multiprocessing.get_context("fork")
            run_all = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context)).map
        else:
            chains = chains[:1]
        for epoch in range(_EPOCHS):
            now = time.monotonic()
            epoch_end = now + (deadline - now) / (_EPOCHS - epoch)
            jobs = [
                (model, best, c, (seed * 1000 + epoch) * 100 + i, epoch_end)
                for i, c in enumerate(chains)
            ]
            for routes, n in run_all(_run_chain, jobs):
                rounds += n
                if (score := _score(model.instance, routes)) < best_score:
                    best, best_score = routes, score
    return best, rounds


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
        best, rounds = _improve(model, first, workers, seed, deadline)
    served = {c for r in best for c in r}
    unassigned = tuple(c.id for c in instance.customers if c.id not in served)
    return Plan(best, unassigned, rounds, _score(instance, first)[1])
