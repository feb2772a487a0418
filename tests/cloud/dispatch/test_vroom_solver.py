"""The VROOM adapter on a real instance and on tiny ones: feasible, bounded in time."""

from __future__ import annotations

import time
from pathlib import Path

from fleetlink_cloud.dispatch.solomon import evaluate, parse
from fleetlink_cloud.dispatch.vroom_solver import solve

C101_BEST_DISTANCE = 828.94  # best_known_distance_only.csv: 10 vehicles (proved optimal)


def tiny(rows: list[tuple[int, ...]], vehicles: int = 3, capacity: int = 10) -> str:
    head = f"TINY\nVEHICLE\nNUMBER CAPACITY\n{vehicles} {capacity}\nCUSTOMER\n"
    head += "CUST NO. XCOORD. YCOORD. DEMAND READY TIME DUE DATE SERVICE TIME\n"
    return head + "\n".join(" ".join(str(v) for v in row) for row in rows) + "\n"


def test_c101_feasible_near_optimal(shared_data: Path) -> None:
    inst = parse((shared_data / "solomon" / "C101.txt").read_text())
    started = time.monotonic()
    plan = solve(inst, time_limit_s=2.0, workers=2)
    elapsed = time.monotonic() - started
    result = evaluate(inst, plan.routes)
    assert result.feasible, result.problems
    assert plan.unassigned == ()
    assert result.vehicles == 10
    assert result.distance < C101_BEST_DISTANCE * 1.01
    assert plan.first_distance >= result.distance - 1e-9
    assert elapsed < 2.0 + 1.0  # the limit, plus slack for a busy machine


def test_one_worker_in_process() -> None:
    # Capacity 10 forces two routes: 6 + 5 units.
    text = tiny([(0, 0, 0, 0, 0, 100, 0), (1, 3, 4, 6, 0, 50, 1), (2, -3, -4, 5, 0, 50, 1)])
    inst = parse(text)
    plan = solve(inst, time_limit_s=0.5, workers=1)
    result = evaluate(inst, plan.routes)
    assert result.feasible, result.problems
    assert sorted(plan.routes) == [(1,), (2,)]
    assert result.distance == 20.0
    assert plan.rounds > 0


def test_unreachable_customer_is_left_out() -> None:
    # Customer 2 is 50 away but due at 10: no vehicle can start serving it in time.
    text = tiny([(0, 0, 0, 0, 0, 200, 0), (1, 3, 4, 1, 0, 50, 1), (2, 30, 40, 1, 0, 10, 1)])
    inst = parse(text)
    plan = solve(inst, time_limit_s=0.5, workers=2)
    assert plan.unassigned == (2,)
    assert plan.routes == ((1,),)
    assert not evaluate(inst, plan.routes).feasible
