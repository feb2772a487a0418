"""``fleetlink-cloud plan solomon FILE`` prints one JSON object with the checked plan."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from fleetlink_cloud import cli


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_plan_solomon_json(shared_data: Path) -> None:
    path = shared_data / "solomon" / "C101.txt"
    code, out, _ = run("plan", "solomon", str(path), "--time-limit", "1")
    assert code == 0
    plan = json.loads(out)
    assert {"instance", "vehicles", "distance", "seconds", "feasible", "routes"} <= set(plan)
    assert (plan["instance"], plan["vehicles"], plan["feasible"]) == ("C101", 10, True)
    assert plan["distance"] < 828.94 * 1.01
    assert 0 < plan["seconds"] < 2.0
    assert plan["time_limit_s"] == 1.0
    assert sorted(c for route in plan["routes"] for c in route) == list(range(1, 101))


def test_plan_solomon_bad_input(tmp_path: Path) -> None:
    code, _, err = run("plan", "solomon", str(tmp_path / "missing.txt"))
    assert code == 2
    assert "missing.txt" in err
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not an instance\n")
    code, _, err = run("plan", "solomon", str(garbage))
    assert (code, "VEHICLE" in err) == (2, True)
    code, _, err = run("plan", "solomon", str(garbage), "--time-limit", "0")
    assert code == 2
