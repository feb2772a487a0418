"""Fleet simulation: ids and per-vehicle settings (the drive itself is in test_agent), then the
failure flags end to end: ``--fault`` through the ECU into the outbox, ``--silence`` against a
real Mosquitto (Debian package ``mosquitto``)."""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetlink_edge import cli
from fleetlink_edge.app import Agent
from fleetlink_edge.config import EdgeSettings, OutboxSettings, load_settings
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.outbox import Lane, Outbox
from fleetlink_edge.sim.driver import DriverOptions
from fleetlink_edge.sim.faults import Failures, injections, parse_at
from fleetlink_edge.sim.route import Drive
from fleetlink_edge.simulate import SimOptions, fleet_ids, fleet_member, simulate, simulate_fleet
from fleetlink_protocols.messages import AckStatus, Death, decode_status
from fleetlink_protocols.records import Dtc, DtcSource, Position, Record
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.edge.test_jobs_uplink import USERS as JOB_USERS
from tests.edge.test_jobs_uplink import Dispatch, agent_settings, connected, until
from tests.peers import free_port
from tests.peers.mosquitto import Mosquitto


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: the driver sockets beside the outboxes need one (sun_path)."""
    folder = Path(tempfile.mkdtemp(prefix="fl-sim-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_fleet_ids_count_up_from_the_first() -> None:
    assert fleet_ids("veh-sim-001", 3) == ["veh-sim-001", "veh-sim-002", "veh-sim-003"]
    assert fleet_ids("truck-9", 2) == ["truck-9", "truck-10"]
    assert fleet_ids("bus", 2) == ["bus-001", "bus-002"]
    assert fleet_ids("veh-sim-098", 3)[-1] == "veh-sim-100"


def test_fleet_members_have_their_own_id_and_outbox(tmp_path: Path) -> None:
    base = EdgeSettings()
    a, b = (fleet_member(base, i, tmp_path) for i in fleet_ids("veh-a-1", 2))
    assert (a.device.id, b.device.id) == ("veh-a-1", "veh-a-2")
    assert a.outbox.path == tmp_path / "veh-a-1.outbox.sqlite3"
    assert a.outbox.path != b.outbox.path
    assert a.uplink == b.uplink == base.uplink


# -- failure injection: --fault and --silence -----------------------------------------------


def test_vehicle_at_seconds_is_parsed_and_must_name_a_simulated_vehicle() -> None:
    assert parse_at("veh-sim-002@120") == ("veh-sim-002", 120.0)
    assert parse_at("odd@name@2.5") == ("odd@name", 2.5)
    for bad in ("veh-sim-002", "@5", "veh@", "veh@-1", "veh@soon", "veh@nan"):
        with pytest.raises(ConfigError, match="VEHICLE@SECONDS"):
            parse_at(bad)
    ids = ["veh-1", "veh-2"]
    assert injections(["veh-2@4", "veh-1@0"], ids) == {"veh-2": 4.0, "veh-1": 0.0}
    with pytest.raises(ConfigError, match="veh-9 is not simulated here"):
        injections(["veh-9@4"], ids)
    with pytest.raises(ConfigError, match="not an SAE J2012 DTC"):
        Failures(fault_code="X1234")


def test_bad_failure_flags_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--vehicles", "2", "--state-dir", str(tmp_path)]
    assert cli.main([*argv, "--silence", "veh-sim-003@5"]) == 2
    assert "veh-sim-003 is not simulated here (veh-sim-001, veh-sim-002)" in capsys.readouterr().err
    assert cli.main([*argv, "--fault", "veh-sim-001"]) == 2
    assert "is not VEHICLE@SECONDS" in capsys.readouterr().err
    assert cli.main([*argv, "--reject-rate", "2"]) == 2
    assert "reject rate must be from 0 to 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing ran


def _fleet_config(tmp_path: Path, device: str, port: int, *, user: str | None = None) -> Path:
    path = tmp_path / "agent.toml"
    credentials = f'username = "{user}"\npassword = "{USERS[user]}"\n' if user else ""
    path.write_text(
        f"""
[device]
id = "{device}"
[outbox]
path = "{tmp_path / "unused.sqlite3"}"
[uplink]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
backoff_initial_s = 0.2
backoff_max_s = 1.0
{credentials}
[can.obd]
dtc_interval_s = 0.5
"""
    )
    return path


async def _records(path: Path) -> list[Record]:
    """Every record still in an outbox file."""
    out: list[Record] = []
    async with Outbox(OutboxSettings(path=path), boot_id=999) as outbox:
        for lane in Lane:
            while taken := await outbox.take(lane, 500):
                out += [s.record for s in taken]
    return out


async def test_fault_makes_the_ecu_store_a_dtc_the_agent_reports(short_dir: Path) -> None:
    # No broker listens on the port: whatever the agents record stays in their outboxes.
    config = _fleet_config(short_dir, "veh-f-1", free_port())
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "fleetlink_edge.cli", "simulate", "--config", str(config)],
        *["--vehicles", "2", "--state-dir", str(short_dir), "--duration", "7"],
        *["--fault", "veh-f-2@2", "--fault-code", "P0302", "--report-every", "60"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "veh-f-2: ECU stores P0302, MIL on (--fault)" in out.decode()
    faulty = await _records(short_dir / "veh-f-2.outbox.sqlite3")
    healthy = await _records(short_dir / "veh-f-1.outbox.sqlite3")
    dtcs = [r for r in faulty if isinstance(r, Dtc) and r.code == "P0302"]
    assert len(dtcs) == 1
    assert dtcs[0].active
    assert dtcs[0].source is DtcSource.OBD
    first_fix_ns = min(r.ts_wall_ns for r in faulty if isinstance(r, Position))
    assert dtcs[0].ts_wall_ns - first_fix_ns > 1.0e9  # it turned up mid-drive, as scheduled
    assert not [r for r in healthy if isinstance(r, Dtc) and r.code == "P0302"]
    assert any(isinstance(r, Position) for r in healthy)


class _Clocked(io.StringIO):
    """Output that notes when each line was written (time.monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.lines.append((time.monotonic(), text))
        return super().write(text)


class _Watcher:
    """A backend on every fleet topic, noting when each message arrived from which device."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[float, str, str, bytes]] = []  # (monotonic, device, kind, payload)
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.username_pw_set("backend", USERS["backend"])
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("fleet/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        _, device, kind = msg.topic.split("/", 2)
        with self._lock:
            self.seen.append((time.monotonic(), device, kind, msg.payload))

    def of(self, device: str) -> list[tuple[float, str, bytes]]:
        with self._lock:
            return [(t, k, p) for t, d, k, p in self.seen if d == device]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


USERS = {"fleetsim": "sim-secret", "backend": "backend-secret"}
# Every simulated vehicle logs in as one user here, so the ACL grants the fleet's topics to it.
FLEET_ACL = ["user fleetsim", "topic readwrite fleet/#", "user backend", "topic readwrite fleet/#"]


@pytest.mark.mosquitto
async def test_silence_cuts_one_vehicle_off_while_the_rest_go_on(short_dir: Path) -> None:
    with Mosquitto(USERS, FLEET_ACL) as broker:
        watcher = _Watcher(broker.port)
        try:
            settings = load_settings(
                _fleet_config(short_dir, "veh-s-1", broker.port, user="fleetsim")
            )
            options = SimOptions(
                duration_s=14.0,
                gnss_hz=2.0,
                report_every_s=60.0,
                failures=Failures(silences={"veh-s-1": 3.0}),
            )
            out = _Clocked()
            ids = ["veh-s-1", "veh-s-2"]
            await simulate_fleet(settings, options, ids, short_dir, out, asyncio.Event())
            ended = time.monotonic()
        finally:
            watcher.close()
    cut = [t for t, line in out.lines if "veh-s-1: uplink cut" in line]
    assert len(cut) == 1
    data = {"live", "history", "events"}
    silent = watcher.of("veh-s-1")
    assert any(k in data and t < cut[0] for t, k, _ in silent)  # it streamed before
    assert not [k for t, k, _ in silent if k in data and t > cut[0] + 0.3]  # and not after
    # The broker noticed only at its keepalive timeout (1.5 x 5 s) and published the will,
    # while the relay still held the connection open: a vehicle gone silent, not one that left.
    wills = [(t, p) for t, k, p in silent if k == "status" and t > cut[0]]
    assert len(wills) == 1
    assert isinstance(decode_status(wills[0][1]), Death)
    assert cut[0] + 5.0 < wills[0][0] < ended
    other = watcher.of("veh-s-2")
    assert any(k in data and t > cut[0] + 5.0 for t, k, _ in other)  # the rest streamed on


# -- simulated drivers on the simulated fleet -------------------------------------------------


@pytest.mark.mosquitto
async def test_a_simulated_driver_answers_an_offer_from_dispatch_over_mqtt(
    tmp_path: Path, short_dir: Path
) -> None:
    with Mosquitto(JOB_USERS, mosquitto_acl_entries("fleet").splitlines()) as broker:
        settings = agent_settings(tmp_path, broker.port, short_dir / "driver.sock")
        drivers = DriverOptions(reject_rate=0.0, accept_delay_s=(0.2, 0.5), min_dwell_s=1.0)
        options = SimOptions(gnss_hz=5.0, quiet=True, seed=3, drivers=drivers)
        start = Drive(options.lat, options.lon, seed=options.seed).state()  # where it sets off
        stop, agents = asyncio.Event(), list[Agent]()
        run = simulate(settings, options, io.StringIO(), stop, on_agent=agents.append)
        vehicle = asyncio.create_task(run)
        try:
            async with Dispatch(broker.port) as cloud:
                await until(lambda: connected(agents))  # subscribed to its commands
                stops = [{"kind": "single", "lat": start.lat_deg, "lon": start.lon_deg}]
                offer = {"job_id": "J-5", "kind": "single", "stops": stops, "version": 1}
                offer["respond_by"] = int(time.time()) + 600
                assert (await cloud.command("offer_job", offer)).status is AckStatus.DONE
                deadline = time.monotonic() + 60
                while len(cloud.answers()) < 3:
                    assert time.monotonic() < deadline, [e.data for e in cloud.answers()]
                    await asyncio.sleep(0.1)
                answers = [(e.data["answer"], e.data.get("stop")) for e in cloud.answers()]
        finally:
            stop.set()
            await asyncio.wait_for(vehicle, 30)
    assert answers == [("accept", None), ("arrived", 0), ("completed", None)]
