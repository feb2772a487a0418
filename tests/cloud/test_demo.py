"""The README's main command: ``fleetlink-cloud demo`` on embedded defaults, without peers.

It runs as a user would run it (a child process, its own embedded broker, SQLite in a folder of
its own) with ten vehicles for a while, then stops cleanly; every vehicle must have reached the
cloud with positions and signals, and the API must have answered with the token it printed.
"""

from __future__ import annotations

import contextlib
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
    assert sorted(v["id"] for v in answered) == [f"veh-sim-{i:03d}" for i in range(1, 11)]
    with contextlib.closing(sqlite3.connect(tmp_path / "fleetlink.sqlite3")) as db:
        per_device = dict(db.execute("SELECT device_id, count(*) FROM positions GROUP BY 1"))
        signals = db.execute("SELECT count(DISTINCT device_id) FROM signals").fetchone()[0]
    assert sorted(per_device) == [f"veh-sim-{i:03d}" for i in range(1, 11)]
    assert min(per_device.values()) >= 10, per_device
    assert signals == 10


def _get_vehicles(out: str) -> list[dict[str, object]]:
    """GET /v1/vehicles with the token and URL the demo printed."""
    import json

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
