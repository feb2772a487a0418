"""The doctor as a whole: checks in order, the config gate, robustness, and the CLI's exit codes
and ``--json`` shape (in-process and through the installed entry point)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import can
import pytest

from fleetlink_edge import cli, doctor
from fleetlink_edge.config import OutboxSettings
from fleetlink_edge.doctor.findings import Finding, Status
from fleetlink_edge.outbox import Outbox
from fleetlink_edge.sim.ecu import EcuState, SimulatedEcu
from fleetlink_protocols.records import FixMode, Position
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.edge.doctor.harness import Pty, by_check, quiet_config, receiver_bytes, write_config
from tests.peers import free_port
from tests.peers.mosquitto import Mosquitto

USERS = {"veh001": "secret1"}
KEYS = {"check", "status", "summary", "detail", "fix"}


@pytest.fixture(scope="module")
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto(USERS, mosquitto_acl_entries("fleet").splitlines()) as b:
        yield b


def broker_uplink(b: Mosquitto) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": b.port, "username": "veh001", "password": "secret1"}


def cli_run(config: Path, *extra: str) -> int:
    return cli.main(["doctor", "--config", str(config), "--timeout", "1", *extra])


def test_invalid_config_is_the_first_and_only_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "agent.toml", {"uplink": {"port": 70000, "hots": "x"}})
    assert cli_run(config, "--json") == 2
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    assert set(rows[0]) == KEYS
    assert (rows[0]["check"], rows[0]["status"]) == ("config", "fail")
    assert "uplink.port" in rows[0]["summary"]
    assert "uplink.hots" in rows[0]["summary"]


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_run(tmp_path / "nope.toml") == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL  config")
    assert "--config /etc/fleetlink/agent.toml" in out


def test_timeout_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "agent.toml", quiet_config(tmp_path))
    assert cli.main(["doctor", "--config", str(config), "--timeout", "0"]) == 2
    assert "--timeout" in capsys.readouterr().err


@pytest.mark.mosquitto
def test_all_ok_exits_0(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "agent.toml", quiet_config(tmp_path, uplink=broker_uplink(mosquitto))
    )
    assert cli_run(config) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("doctor: OK")
    assert "fix:" not in out


@pytest.mark.mosquitto
def test_a_warning_exits_1(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    sections = quiet_config(tmp_path, uplink=broker_uplink(mosquitto))
    outbox = Path(str(sections["outbox"]["path"]))
    two_hours_ago = time.time_ns() - 7200 * 10**9
    asyncio.run(_fill(outbox, [Position(two_hours_ago, 52.5, 13.4, mode=FixMode.FIX_3D)]))
    config = write_config(tmp_path / "agent.toml", sections)
    assert cli_run(config, "--json") == 1
    rows = {r["check"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["outbox"]["status"] == "warn"
    assert rows["outbox"]["fix"]
    assert {r["status"] for c, r in rows.items() if c != "outbox"} <= {"ok", "skip"}


async def _fill(path: Path, records: list[Position]) -> None:
    async with Outbox(OutboxSettings(path=path), boot_id=1) as outbox:
        await outbox.append(records)


def test_entry_point_exit_code_and_json(tmp_path: Path) -> None:
    """The installed command, as an engineer runs it: nothing listens on the broker port."""
    sections = quiet_config(tmp_path, uplink={"host": "127.0.0.1", "port": free_port()})
    config = write_config(tmp_path / "agent.toml", sections)
    argv = [sys.executable, "-m", "fleetlink_edge.cli", "doctor", "--config", str(config)]
    done = subprocess.run([*argv, "--json", "--timeout", "1"], capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr
    rows = json.loads(done.stdout)
    assert all(set(r) == KEYS for r in rows)
    assert [r["check"] for r in rows] == [
        "config",
        "gnss",
        "can",
        "broker.dns",
        "broker.tcp",
        "broker.mqtt",
        "clock",
        "disk",
        "outbox",
    ]
    tcp = next(r for r in rows if r["check"] == "broker.tcp")
    assert (tcp["status"], tcp["detail"]["verdict"]) == ("fail", "unreachable")
    assert done.stderr == b""  # the sources' retry warnings stay out of the way without -v


async def test_a_crashing_or_hanging_probe_becomes_a_finding() -> None:
    async def crash() -> list[Finding]:
        raise RuntimeError("boom")

    async def hang() -> list[Finding]:
        await asyncio.sleep(3600)
        return []

    crashed = await doctor._guarded("gnss", crash, 1.0)
    assert [(f.check, f.status) for f in crashed] == [("gnss", Status.FAIL)]
    assert "boom" in crashed[0].summary
    hung = await doctor._guarded("can", hang, 0.1)
    assert [(f.check, f.status) for f in hung] == [("can", Status.FAIL)]
    assert "did not finish" in hung[0].summary


@contextlib.asynccontextmanager
async def simulated_ecu(channel: str) -> AsyncIterator[None]:
    bus = can.Bus(interface="virtual", channel=channel)
    try:
        async with SimulatedEcu(bus, EcuState()):
            yield
    finally:
        bus.shutdown()


@pytest.mark.mosquitto
async def test_whole_vehicle_in_order(
    tmp_path: Path, shared_data: Path, mosquitto: Mosquitto
) -> None:
    """A pty receiver playing a real log, the simulated ECU, the real broker: every check."""
    receiver = Pty()
    channel = "doctor-whole-vehicle"
    sections = quiet_config(
        tmp_path,
        gnss={"source": "serial"},
        uplink=broker_uplink(mosquitto),
    )
    # The receiver's 2014 date is taken as sent: a clock check against GNSS must catch it.
    sections["gnss.serial"] = {"port": receiver.path, "rollover_reference": "2000-01-01"}
    sections["can"] = {"enabled": True, "interface": "virtual", "channel": channel}
    sections["can.obd"] = {"enabled": True}
    config = write_config(tmp_path / "agent.toml", sections)
    data = receiver_bytes(shared_data / "gpsd" / "bu353s4.log")

    async def play() -> None:
        await asyncio.sleep(0.2)
        await receiver.play(data, chunk=64, pause_s=0.01)

    player = asyncio.create_task(play())
    try:
        async with simulated_ecu(channel):
            findings = await doctor.run(config, timeout_s=2.0)
    finally:
        player.cancel()
        receiver.close()
    found = by_check(findings)
    assert list(found) == [
        "config",
        "gnss.device",
        "gnss.nmea",
        "gnss.fix",
        "can.interface",
        "can.bitrate",
        "can.traffic",
        "can.errors",
        "can.obd",
        "broker.dns",
        "broker.tcp",
        "broker.mqtt",
        "clock",
        "disk",
        "outbox",
    ]
    bad = {c: f.status for c, f in found.items() if f.status in (Status.WARN, Status.FAIL)}
    assert bad == {"clock": Status.FAIL}, [found[c] for c in bad]
    assert "rollover" in (found["clock"].fix or "")
    assert found["clock"].detail["gnss_time"].startswith("2014-12-31")
