"""The whole agent on simulated hardware against a real Mosquitto: streams, stops, survives kill -9.

Peer: Mosquitto (Debian package ``mosquitto``), started by the test on a free port with a password
file and an ACL that confines the device to its own topics.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetlink_edge.config import load_settings
from fleetlink_edge.simulate import SimOptions, simulate
from fleetlink_protocols.codec import decode_batch
from fleetlink_protocols.messages import Birth, Death, decode_status
from fleetlink_protocols.records import Position, SignalValue
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.peers.mosquitto import Mosquitto

pytestmark = pytest.mark.mosquitto

DEVICE = "veh-e2e-01"
USERS = {DEVICE: "dev-secret", "backend": "backend-secret"}


class Backend:
    """A dispatch backend's view: a persistent QoS 1 subscription to every device topic."""

    def __init__(self, port: int) -> None:
        self.received: dict[int, set[int]] = defaultdict(set)  # boot -> seqs
        self.positions: list[Position] = []
        self.signals: list[SignalValue] = []
        self.status: list[Birth | Death] = []
        self.rejected = 0
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="e2e-backend", protocol=paho.MQTTv5
        )
        self.client.username_pw_set("backend", USERS["backend"])
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("fleet/#", qos=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            if kind == "status":
                self.status.append(decode_status(msg.payload))
            elif kind in {"live", "history", "events"}:
                decoded = decode_batch(msg.payload)
                self.rejected += len(decoded.rejected)
                for entry in decoded.batch.entries:
                    self.received[decoded.batch.boot_id].add(entry.seq)
                    if isinstance(entry.record, Position):
                        self.positions.append(entry.record)
                    elif isinstance(entry.record, SignalValue):
                        self.signals.append(entry.record)

    def count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self.received.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(USERS, mosquitto_acl_entries("fleet").splitlines()) as b:
        yield b


@pytest.fixture
def backend(broker: Mosquitto) -> Iterator[Backend]:
    b = Backend(broker.port)
    yield b
    b.close()


def agent_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[device]
id = "{DEVICE}"
[outbox]
path = "{tmp_path / "outbox.sqlite3"}"
[uplink]
host = "127.0.0.1"
port = {port}
username = "{DEVICE}"
password = "{USERS[DEVICE]}"
backoff_initial_s = 0.2
backoff_max_s = 1.0
[health]
interval_s = 2.0
"""
    )
    return path


def wait_for(predicate: object, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


async def test_simulated_vehicle_streams_positions_and_obd_that_agree(
    tmp_path: Path, broker: Mosquitto, backend: Backend
) -> None:
    settings = load_settings(agent_config(tmp_path, broker.port))
    stop = asyncio.Event()
    out = io.StringIO()
    options = SimOptions(duration_s=12.0, gnss_hz=5.0, report_every_s=3.0)
    await simulate(settings, options, out, stop)
    assert wait_for(lambda: any(isinstance(s, Death) for s in backend.status))
    assert isinstance(backend.status[0], Birth)
    assert backend.status[0].device_id == DEVICE
    assert len(backend.positions) >= 8
    obd_speed = [s for s in backend.signals if s.path == "Vehicle.OBD.Speed"]
    assert len(obd_speed) >= 3
    vins = {s.value for s in backend.signals if s.path == "Vehicle.VehicleIdentification.VIN"}
    assert vins == {"1FLTS2AB1NA000042"}
    # The ECU and the receiver follow one drive: OBD speed (km/h, whole numbers) matches the
    # GNSS speed of the nearest fix within what the car can change in the time between them.
    for sample in obd_speed:
        fix = min(backend.positions, key=lambda p: abs(p.ts_wall_ns - sample.ts_wall_ns))
        gap_s = abs(fix.ts_wall_ns - sample.ts_wall_ns) / 1e9
        assert fix.speed_mps is not None
        assert abs(fix.speed_mps * 3.6 - float(sample.value)) <= 1.5 + 9.0 * gap_s
    assert backend.rejected == 0
    assert "stored" in out.getvalue()


def _agent_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "fleetlink_edge.cli", "simulate", "--config", str(config),
            "--gnss-hz", "10", "--report-every", "60"]  # fmt: skip


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_no_committed_record(
    tmp_path: Path, broker: Mosquitto, backend: Backend
) -> None:
    config = agent_config(tmp_path, broker.port)
    rng = random.Random(1939)
    for _ in range(8):
        proc = subprocess.Popen(
            _agent_cmd(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(2.0, 5.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.Popen(_agent_cmd(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(6.0)
    final.send_signal(signal.SIGTERM)
    _, err = final.communicate(timeout=30)
    assert final.returncode == 0, err.decode()[-2000:]

    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    pending: dict[int, set[int]] = defaultdict(set)
    for boot, seq in db.execute("SELECT boot_id, seq FROM records"):
        pending[boot].add(seq)
    db.close()
    assert wait_for(lambda: backend.count() > 0)
    time.sleep(1.0)
    boots = set(backend.received) | set(pending)
    # A start killed while still importing commits nothing; most starts get records out.
    assert 6 <= len(boots) <= 9, "one boot per agent start"
    for boot in boots:
        seen = backend.received[boot] | pending[boot]
        # Sequences are gap-free at commit: a hole would be a committed record that vanished.
        assert seen == set(range(max(seen) + 1)), (
            f"boot {boot}: lost {set(range(max(seen) + 1)) - seen}"
        )
        assert backend.received[boot], f"boot {boot}: nothing delivered"


def test_sigterm_flushes_and_says_goodbye(
    tmp_path: Path, broker: Mosquitto, backend: Backend
) -> None:
    config = agent_config(tmp_path, broker.port)
    proc = subprocess.Popen(_agent_cmd(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: backend.count() >= 5)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"agent stopped" in err
    assert wait_for(lambda: bool(backend.status) and isinstance(backend.status[-1], Death))
