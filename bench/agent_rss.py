"""Agent resident memory while streaming GNSS at 10 Hz and 2,000 CAN frames/s to a real broker.

Runs ``fleetlink-edge simulate`` in a child process (the simulated receiver, ECU and CAN replay
share the process with the agent, so the figure is an upper bound for the agent alone) against
a Mosquitto started here on a free port, and samples VmRSS once a second.
"""

from __future__ import annotations

import ast
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "fleetlink-edge.service"
J1939_LOG = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def unit_malloc_env() -> dict[str, str]:
    """The allocator settings the shipped systemd unit gives the agent, so we measure the same."""
    env: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment=MALLOC_"):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def agent_rss(data: Path, seconds: float) -> dict[str, Any]:
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if mosquitto is None:
        return {"skipped": "mosquitto not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            cmd = [
                sys.executable,
                "-m",
                "fleetlink_edge.cli",
                "simulate",
                "--gnss-hz",
                "10",
                "--can-replay",
                str(data / J1939_LOG),
                "--can-fps",
                "2000",
                "--duration",
                str(seconds),
                "--broker",
                f"127.0.0.1:{port}",
                "--state-dir",
                tmp,
                "--report-every",
                "10",
            ]
            env = {**os.environ, **unit_malloc_env()}
            agent = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            samples: list[int] = []
            while agent.poll() is None:
                rss = _rss_kib(agent.pid)
                if rss is not None:
                    samples.append(rss)
                time.sleep(1.0)
            _, err = agent.communicate()
        finally:
            broker.terminate()
            broker.wait()
    counters: dict[str, int] = {}
    for line in err.splitlines():
        if "counters: " in line:
            counters = ast.literal_eval(line.split("counters: ", 1)[1])
    steady = samples[len(samples) // 3 :] or samples
    frames = counters.get("can.frames", 0)
    return {
        "seconds": seconds,
        "exit_code": agent.returncode,
        "rss_max_mib": round(max(samples, default=0) / 1024, 1),
        "rss_max_mb": round(max(samples, default=0) * 1024 / 1e6, 1),
        "malloc_env": unit_malloc_env(),
        "rss_median_steady_mib": round(statistics.median(steady) / 1024, 1) if steady else None,
        "can_frames_received": frames,
        "can_frames_per_s": round(frames / seconds) if seconds else None,
        "can_frames_dropped": counters.get("can.dropped", 0),
        "gnss_fixes": counters.get("gnss.fixes", 0),
        "records_stored": counters.get("capture.appended", 0),
        "records_sent": counters.get("uplink.records_sent", 0),
        "goal_rss_mb": 50,
    }
