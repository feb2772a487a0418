"""Iterated local search around VROOM for Solomon VRPTW instances; the solver call is injected.

One chain per worker process, each starting from a first VROOM solution: perturb every arc's
cost by a random factor (log-normal, ``sigma``), let VROOM improve the current solution under
the perturbed costs, then again under the true costs, and keep the result if it is shorter than
the chain's current one, or at most ``accept`` longer (the chain's best is never lost; a chain
that drifted too far returns to it). This escapes the local optima where plain VROOM stops; the
chains use different settings so they search differently.

VROOM holds the GIL while it solves, so the chains run in forked processes, not threads; where
``fork`` is unavailable one chain runs in this process. The VROOM call itself is the
``reoptimise`` argument (:mod:`fleetlink_cloud.dispatch.vroom_solver` passes it), so this
module never imports ``vroom``.
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

from fleetlink_cloud.dispatch.solomon import Instance, route_distance

SCALE = 1000  # instance units -> VROOM integers (times and costs)
_EPOCHS = 3  # the chains restart from the best plan so far this many times
_FACTORS = 1024  # perturbation factors drawn per round, then picked at random for every arc

Routes = tuple[tuple[int, ...], ...]


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
class Model:
    """The instance as VROOM's integers: scaled times rounded up, scaled costs rounded."""

    instance: Instance
    durations: list[list[int]]
    costs: list[list[int]]


# (model, arc costs, start routes, ruin-and-recreate depth, seconds left) -> improved routes
Reoptimise = Callable[[Model, list[list[int]], Routes, int, float], Routes]


def model(instance: Instance) -> Model:
    """Scale ``instance``: times rounded up (so VROOM's routes stay feasible), costs rounded."""
    n = len(instance.nodes)
    exact = [[instance.distance(a, b) * SCALE for b in range(n)] for a in range(n)]
    durations = [[math.ceil(d - 1e-6) for d in row] for row in exact]
    costs = [[round(d) for d in row] for row in exact]
    return Model(instance, durations, costs)


def _perturbed(costs: list[list[int]], sigma: float, rng: random.Random) -> list[list[int]]:
    """Every cost times an independent log-normal factor (median 1)."""
    factors = [math.exp(rng.gauss(0.0, sigma)) for _ in range(_FACTORS)]
    n = len(costs)
    return [
        [round(c * f) for c, f in zip(row, rng.choices(factors, k=n), strict=True)] for row in costs
    ]


def score(instance: Instance, routes: Routes) -> tuple[int, float]:
    """Order of plans: fewest customers left out, then shortest real distance."""
    served = sum(len(r) for r in routes)
    return len(instance.customers) - served, sum(route_distance(instance, r) for r in routes)


def _shake(
    m: Model, routes: Routes, chain: Chain, rng: random.Random, left: float, run: Reoptimise
) -> Routes:
    """Move away from ``routes``: split one in two (still feasible), or improve under noise."""
    if rng.random() < chain.split and len(routes) < m.instance.vehicles:
        k = rng.randrange(len(routes))
        if len(routes[k]) > 1:
            cut = rng.randrange(1, len(routes[k]))
            return (*routes[:k], *routes[k + 1 :], routes[k][:cut], routes[k][cut:])
    return run(m, _perturbed(m.costs, chain.sigma, rng), routes, chain.shake_depth, left)


def _chain(
    m: Model, start: Routes, chain: Chain, seed: int, deadline: float, run: Reoptimise
) -> tuple[Routes, int]:
    """Iterated local search from ``start`` until ``deadline`` (``time.monotonic``)."""
    rng = random.Random(seed)
    best = current = start
    best_score = current_score = score(m.instance, start)
    rounds = 0
    while (left := deadline - time.monotonic()) > 0.05:
        shaken = _shake(m, current, chain, rng, left, run)
        left = deadline - time.monotonic()
        candidate = run(m, m.costs, shaken, chain.depth, left)
        candidate_score = score(m.instance, candidate)
        rounds += 1
        if candidate_score < best_score:
            best, best_score = candidate, candidate_score
        if candidate_score[0] <= current_score[0] and candidate_score[1] < current_score[1] * (
            1 + chain.accept
        ):
            current, current_score = candidate, candidate_score
        if current_score[1] > best_score[1] * (1 + 2 * chain.accept):
            current, current_score = best, best_score
    return best, rounds


def _run_chain(job: tuple[Model, Routes, Chain, int, float, Reoptimise]) -> tuple[Routes, int]:
    return _chain(*job)


def improve(
    m: Model, start: Routes, workers: int, seed: int, deadline: float, run: Reoptimise
) -> tuple[Routes, int]:
    """Run the chains in ``_EPOCHS`` epochs, every epoch's chains starting from the best so far.

    ``run`` must be a module-level function: it is pickled to the worker processes.
    """
    chains = [CHAINS[i % len(CHAINS)] for i in range(workers)]
    best, best_score, rounds = start, score(m.instance, start), 0
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
                (m, best, c, (seed * 1000 + epoch) * 100 + i, epoch_end, run)
                for i, c in enumerate(chains)
            ]
            for routes, n in run_all(_run_chain, jobs):
                rounds += n
                if (routes_score := score(m.instance, routes)) < best_score:
                    best, best_score = routes, routes_score
    return best, rounds
