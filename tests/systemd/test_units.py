"""Every unit in systemd/ passes ``systemd-analyze verify``.

verify insists that ExecStart's program exists; the units name the install path on the device
(/opt/...), so the copy verified here points ExecStart at a stand-in executable and is otherwise
byte for byte the shipped unit.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.peers import require_binary

UNITS = sorted((Path(__file__).resolve().parents[2] / "systemd").glob("*.service"))


def test_there_are_units() -> None:
    assert [u.name for u in UNITS if u.name == "fleetlink-edge.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze", "systemd")
    stand_in = tmp_path / "program"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    text = unit.read_text()
    rewritten, count = re.subn(r"^(ExecStart=)(/\S+)", rf"\g<1>{stand_in}", text, flags=re.M)
    assert count == 1, "exactly one absolute ExecStart expected"
    copy = tmp_path / unit.name
    copy.write_text(rewritten)
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_edge_unit_is_notify_with_watchdog_and_state_directory() -> None:
    text = (UNITS[0].parent / "fleetlink-edge.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=always", "StateDirectory="):
        assert re.search(rf"^{re.escape(line)}", text, flags=re.M), line
