"""VRPTW planning quality: ``plan solomon`` on the 56 Solomon and 10 Gehring & Homberger instances.

Each instance is planned in turn, as ``fleetlink-cloud plan solomon FILE`` does it (the same
function, in this process), with the default 5 s limit on both cores; the solver already keeps
both cores busy, so instances are not run side by side. Distances are the exact real-valued
Euclidean lengths of the returned routes.

Solomon: the gap is to ``best_known_distance_only.csv`` (distance minimised with a fleet of 25,
as VROOM does), per class (C1, C2, R1, R2, RC1, RC2) and over all 56, beside the gap of the
first VROOM solve alone. Gehring & Homberger (200 customers): vehicles and distance beside the
vehicles-first best known (``homberger/best_known.csv``); with different vehicle counts the
distance gap is only indicative.
"""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path
from typing import Any

from fleetlink_cloud.cli_plan import plan_solomon

TIME_LIMIT_S = 5.0
WORKERS = 2
CLASSES = ("C1", "C2", "R1", "R2", "RC1", "RC2")


def _best_known(path: Path) -> dict[str, tuple[int, float]]:
    with path.open(newline="") as f:
        return {
            r["instance"]: (int(r["vehicles"]), float(r["distance"])) for r in csv.DictReader(f)
        }


def _gap_pct(distance: float, best: float) -> float:
    return round(100.0 * (distance / best - 1.0), 3)


def _plan(path: Path, best: tuple[int, float]) -> dict[str, Any]:
    out = plan_solomon(path, time_limit_s=TIME_LIMIT_S, workers=WORKERS, seed=0)
    row = {
        "vehicles": out["vehicles"],
        "distance": out["distance"],
        "best_vehicles": best[0],
        "best_distance": best[1],
        "gap_pct": _gap_pct(out["distance"], best[1]),
        "first_solve_gap_pct": _gap_pct(out["first_distance"], best[1]),
        "seconds": out["seconds"],
        "rounds": out["rounds"],
        "feasible": out["feasible"],
    }
    print(f"   {path.stem}: {row}", flush=True)
    return row


def _summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    by_class: dict[str, list[float]] = {c: [] for c in CLASSES}
    for name, row in rows.items():
        match = re.fullmatch(r"(RC|R|C)(\d)\d\d", name)
        if match:
            by_class[match[1] + match[2]].append(row["gap_pct"])
    seconds = [r["seconds"] for r in rows.values()]
    return {
        "solomon_gap_pct_avg": round(statistics.fmean(r["gap_pct"] for r in rows.values()), 3),
        "solomon_gap_pct_by_class": {
            c: round(statistics.fmean(g), 3) for c, g in by_class.items() if g
        },
        "solomon_first_solve_gap_pct_avg": round(
            statistics.fmean(r["first_solve_gap_pct"] for r in rows.values()), 3
        ),
        "solomon_seconds_avg": round(statistics.fmean(seconds), 3),
        "solomon_seconds_max": round(max(seconds), 3),
        "solomon_all_feasible": all(r["feasible"] for r in rows.values()),
    }


def solomon(data: Path) -> dict[str, Any]:
    """Plan every instance under ``data/solomon`` and ``data/homberger``; figures as a dict."""
    out: dict[str, Any] = {"time_limit_s": TIME_LIMIT_S, "workers": WORKERS}
    known = _best_known(data / "solomon" / "best_known_distance_only.csv")
    rows = {
        p.stem: _plan(p, known[p.stem])
        for p in sorted((data / "solomon").glob("*.txt"))
        if p.stem in known
    }
    out.update(_summary(rows))
    out["solomon_instances"] = rows
    known_gh = _best_known(data / "homberger" / "best_known.csv")
    gh = {
        p.stem: _plan(p, known_gh[p.stem])
        for p in sorted((data / "homberger").glob("*.txt"))
        if p.stem in known_gh
    }
    out["homberger_vehicles_over_best"] = sum(
        r["vehicles"] - r["best_vehicles"] for r in gh.values()
    )
    out["homberger_seconds_max"] = max((r["seconds"] for r in gh.values()), default=None)
    out["homberger_instances"] = gh
    out["goal_solomon_gap_pct_avg"] = 1.0
    out["goal_seconds_per_instance"] = TIME_LIMIT_S
    return out
