"""The README's main command: ``fleetlink-cloud demo`` on embedded defaults, without peers.

It runs as a user would run it (a child process, its own embedded broker, SQLite in a folder of
its own) with ten vehicles for a while, then stops cleanly; every vehicle must have reached the
cloud with positions and signals, and the API must have answered with the token it printed. A
longer run with four vehicles shows dispatch: jobs offered, accepted by the simulated drivers
and assigned with ETAs, and at least one reallocated off the vehicle that falls silent or the
one that raises a fault, all of it in the database as jobs and job events.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_streams_ten_vehicles_and_stops_cleanly(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fleetlink_cloud.cli", "demo", "--vehicles", "10",
           "--duration", "25", "--port", "0", "--state-dir", str(tmp_path)]  # fmt: skip
    lines: list[str] = []
    answered = None
    deadline = time.monotonic() + 90
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if answered is None and line.startswith("cloud ") and "10/10 vehicles online" in line:
                answered = _get_vehicles("".join(lines))
            if time.monotonic() > deadline:
                proc.kill()
                break
        assert proc.wait(timeout=60) == 0, "".join(lines)[-3000:]
    out = "".join(lines)
    assert "API docs   http://127.0.0.1:" in out
    assert "stopping the fleet" in out
    assert answered is not None, out[-3000:]
    assert sorted(str(v["id"]) for v in answered) == [f"veh-sim-{i:03d}" for i in range(1, 11)]
    with contextlib.closing(sqlite3.connect(tmp_path / "fleetlink.sqlite3")) as db:
        per_device = dict(db.execute("SELECT device_id, count(*) FROM positions GROUP BY 1"))
        signals = db.execute("SELECT count(DISTINCT device_id) FROM signals").fetchone()[0]
    assert sorted(per_device) == [f"veh-sim-{i:03d}" for i in range(1, 11)]
    assert min(per_device.values()) >= 10, per_device
    assert signals == 10


DISPATCH_S = 150  # the default failures hit at 40 s and 60 s; the rules react within a minute


def test_demo_dispatches_jobs_and_reallocates_when_a_vehicle_fails(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fleetlink_cloud.cli", "demo", "--vehicles", "4",
           "--duration", str(DISPATCH_S), "--port", "0", "--state-dir", str(tmp_path)]  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + DISPATCH_S + 120
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if time.monotonic() > deadline:
                proc.kill()
                break
        assert proc.wait(timeout=60) == 0, "".join(lines)[-3000:]
    out = "".join(lines)
    tail = out[-4000:]
    assert re.search(r"^  jobs       http://127\.0\.0\.1:\d+/v1/jobs", out, re.M), out[:3000]
    assert "/v1/vehicles/{id}/route" in out
    assert "/v1/plans" in out
    assert "-H 'Idempotency-Key: " in out
    assert "failures: veh-sim-002 silent at 60 s, veh-sim-003 P0300 at 40 s" in out
    offered = re.findall(r"^dispatch job (\S+) offered to (veh-sim-00\d) \(.*candidate", out, re.M)
    assigned = re.findall(
        r"^dispatch job (\S+) assigned to (veh-sim-00\d), (?:pickup )?ETA \d\d:\d\d",
        out,
        re.M,
    )
    moved = re.findall(
        r"^dispatch job (\S+) reallocated (veh-sim-00[23]) -> (\S+) .*\(rule (offline|fault)",
        out,
        re.M,
    )
    assert offered, tail
    assert assigned, tail
    assert moved, tail
    assert "fleet veh-sim-002: uplink cut" in out
    assert re.search(r"^cloud  dispatch: \d+ jobs \(", out, re.M), tail

    with contextlib.closing(sqlite3.connect(tmp_path / "fleetlink.sqlite3")) as db:
        jobs = dict(db.execute("SELECT id, state FROM jobs"))
        created = {r[0] for r in db.execute("SELECT job_id FROM job_events WHERE kind = 'created'")}
        transitions = db.execute(
            "SELECT job_id, to_state, reason_code, vehicle_before, vehicle_after FROM job_events"
            " WHERE kind = 'transition'"
        ).fetchall()
        realloc_events = [
            json.loads(d)
            for (d,) in db.execute("SELECT data FROM stream_events WHERE type = 'job.reallocated'")
        ]
        audited = db.execute("SELECT count(*) FROM audit WHERE method = 'REALLOCATE'").fetchone()
        offers = db.execute("SELECT count(*) FROM commands WHERE name = 'offer_job'").fetchone()
    # About a job per vehicle at the start, then one every 10 s once the fleet is on the map.
    assert len(jobs) >= 4 + (DISPATCH_S - 40) // 10, jobs
    assert created == set(jobs)
    for job_id, vehicle in assigned:
        assert (job_id, "assigned", "driver_accepted", vehicle, vehicle) in transitions
    for job_id, old, _new, _rule in moved:
        assert any(t[0] == job_id and t[2] == "reallocated" and t[3] == old for t in transitions)
        assert any(e["job_id"] == job_id and e["old_vehicle_id"] == old for e in realloc_events)
    assert audited[0] >= len(moved)
    assert offers[0] >= len(offered)


def _get_vehicles(out: str) -> list[dict[str, object]]:
    """GET /v1/vehicles with the token and URL the demo printed."""
    url = re.search(r"API        (http://\S+)/v1", out)
    token = re.search(r"admin token \(demo only\): (\S+)", out)
    assert url is not None
    assert token is not None
    req = urllib.request.Request(
        f"{url.group(1)}/v1/vehicles", headers={"Authorization": f"Bearer {token.group(1)}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body: dict[str, list[dict[str, object]]] = json.load(resp)
    return body["items"]
