"""``fleetlink-cloud plan``: plan vehicle routes.

``plan solomon FILE`` solves a Solomon-format VRPTW instance (100-customer Solomon, 200-customer
Gehring & Homberger) with VROOM and prints one JSON object::

    {"instance": "C101", "vehicles": 10, "distance": 828.9367, "seconds": 4.9,
     "feasible": true, "problems": [], "unassigned": [], "first_distance": 828.9367,
     "rounds": 130, "time_limit_s": 5.0, "workers": 2, "routes": [[...], ...]}

``distance`` is recomputed exactly (real-valued Euclidean) from the routes, in the instance's
units; ``first_distance`` is that of the first VROOM solve, before the improvement chains;
``seconds`` is the wall time from reading the file to the checked plan. Exit status 0 for a
feasible plan, 1 for an infeasible one (customers left out), 2 if the file cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fleetlink_cloud.dispatch import InstanceFormatError, evaluate, parse
from fleetlink_cloud.errors import CloudError


def register(subparsers: Any) -> None:
    """Add the ``plan`` command group to the top-level parser."""
    plan = subparsers.add_parser("plan", help="plan vehicle routes")
    sub = plan.add_subparsers(dest="plan_command", required=True)
    solomon = sub.add_parser("solomon", help="solve a Solomon-format VRPTW instance file")
    solomon.add_argument("file", type=Path, help="instance file (e.g. C101.txt)")
    solomon.add_argument(
        "--time-limit", type=float, default=5.0, metavar="S", help="wall-time bound (default 5)"
    )
    solomon.add_argument("--workers", type=int, default=2, help="CPU cores to use (default 2)")
    solomon.add_argument("--seed", type=int, default=0, help="seed of the cost perturbations")
    solomon.set_defaults(func=_cmd_solomon)


def plan_solomon(path: Path, *, time_limit_s: float, workers: int, seed: int) -> dict[str, Any]:
    """Read, solve and check one instance file; the JSON object ``plan solomon`` prints.

    Raises ``OSError`` if the file cannot be read, :class:`InstanceFormatError` if it is not an
    instance, :class:`~fleetlink_cloud.dispatch.vroom_solver.SolverError` if VROOM fails.
    """
    from fleetlink_cloud.dispatch import vroom_solver  # pyvroom loads only when planning

    started = time.perf_counter()
    instance = parse(path.read_text(encoding="ascii", errors="replace"))
    plan = vroom_solver.solve(instance, time_limit_s=time_limit_s, workers=workers, seed=seed)
    result = evaluate(instance, plan.routes)
    seconds = time.perf_counter() - started
    return {
        "instance": instance.name,
        "vehicles": result.vehicles,
        "distance": round(result.distance, 4),
        "seconds": round(seconds, 3),
        "feasible": result.feasible,
        "problems": list(result.problems),
        "unassigned": list(plan.unassigned),
        "first_distance": round(plan.first_distance, 4),
        "rounds": plan.rounds,
        "time_limit_s": time_limit_s,
        "workers": workers,
        "routes": [list(r) for r in plan.routes],
    }


def _cmd_solomon(args: argparse.Namespace) -> int:
    if args.time_limit <= 0 or args.workers < 1:
        print("fleetlink-cloud: --time-limit must be > 0 and --workers >= 1", file=sys.stderr)
        return 2
    try:
        out = plan_solomon(
            args.file, time_limit_s=args.time_limit, workers=args.workers, seed=args.seed
        )
    except (OSError, InstanceFormatError) as exc:
        print(f"fleetlink-cloud: {args.file}: {exc}", file=sys.stderr)
        return 2
    except CloudError as exc:
        print(f"fleetlink-cloud: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0 if out["feasible"] else 1
