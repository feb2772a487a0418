"""GNSS checks against a pty playing real receiver logs, a missing device, and a real gpsd."""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetlink_edge.config import GnssSettings, GpsdSettings, SerialGnssSettings
from fleetlink_edge.doctor import gnss
from fleetlink_edge.doctor.findings import Status
from fleetlink_edge.doctor.gnss import GpsdObservation, Reading, SerialObservation
from tests.edge.doctor.harness import Pty, by_check, receiver_bytes
from tests.peers import free_port
from tests.peers.gpsd import Gpsfake


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


async def observe(pty: Pty, data: bytes, timeout_s: float = 3.0) -> SerialObservation:
    """The doctor's serial probe while the 'receiver' sends ``data`` (after the port opened:
    pyserial flushes what was queued before)."""

    async def receiver() -> None:
        await asyncio.sleep(0.2)
        await pty.play(data, chunk=64, pause_s=0.01)

    player = asyncio.create_task(receiver())
    try:
        return await gnss.observe_serial(SerialGnssSettings(port=pty.path), timeout_s)
    finally:
        player.cancel()


async def test_healthy_receiver_gives_a_3d_fix(pty: Pty, shared_data: Path) -> None:
    obs = await observe(pty, receiver_bytes(shared_data / "gpsd" / "bu353s4.log"))
    found = by_check(gnss.serial_findings(obs))
    assert [f.status for f in found.values()] == [Status.OK] * 3
    assert found["gnss.nmea"].detail["rejected_bad_checksum"] == 0
    fix = found["gnss.fix"]
    assert fix.detail["mode"] == 3
    assert fix.detail["fix_time"].startswith("2034-08-16T")  # gpsd's rollover rule, as the agent
    assert obs.reading is not None
    assert obs.reading.last_fix is not None
    assert obs.reading.positions >= gnss.ENOUGH_FIXES  # stopped early, before the timeout
    assert obs.reading.window_s < 3.0


async def test_bad_checksums_fail_with_their_share(pty: Pty, shared_data: Path) -> None:
    # firefly-II: every GGA has a bad checksum, a third of all sentences.
    obs = await observe(pty, receiver_bytes(shared_data / "gpsd" / "firefly-II.log"))
    nmea = by_check(gnss.serial_findings(obs))["gnss.nmea"]
    assert nmea.status is Status.FAIL
    assert 0.25 < nmea.detail["bad_share"] < 0.40
    assert "checksum" in (nmea.fix or "")


async def test_one_bad_checksum_in_a_hundred_warns(pty: Pty, shared_data: Path) -> None:
    obs = await observe(pty, receiver_bytes(shared_data / "gpsd" / "com-1289.log"), 2.5)
    nmea = by_check(gnss.serial_findings(obs))["gnss.nmea"]
    bad = nmea.detail["rejected_bad_checksum"]
    assert nmea.status is (Status.WARN if bad else Status.OK), nmea


async def test_receiver_without_fix_warns(pty: Pty, shared_data: Path) -> None:
    obs = await observe(pty, receiver_bytes(shared_data / "gpsd" / "eXplorist110.log"), 2.0)
    found = by_check(gnss.serial_findings(obs))
    assert found["gnss.nmea"].status is Status.OK
    assert found["gnss.fix"].status is Status.WARN
    assert "sky" in (found["gnss.fix"].fix or "")


async def test_silent_receiver_fails(pty: Pty) -> None:
    obs = await observe(pty, b"", 1.0)
    found = by_check(gnss.serial_findings(obs))
    assert found["gnss.device"].status is Status.OK
    assert found["gnss.nmea"].status is Status.FAIL
    assert found["gnss.nmea"].summary.startswith("no data")
    assert found["gnss.fix"].status is Status.SKIP


async def test_bytes_without_nmea_point_at_the_baud_rate(pty: Pty) -> None:
    noise = bytes(random.Random(7).choice(range(0x80, 0x100)) for _ in range(3000))
    obs = await observe(pty, noise, 1.5)
    nmea = by_check(gnss.serial_findings(obs))["gnss.nmea"]
    assert nmea.status is Status.FAIL
    assert "baudrate" in (nmea.fix or "")


async def test_missing_device_path(tmp_path: Path) -> None:
    findings, sample = await gnss.check(
        GnssSettings(source="serial", serial=SerialGnssSettings(port=str(tmp_path / "ttyGNSS"))),
        1.0,
    )
    found = by_check(findings)
    assert found["gnss.device"].status is Status.FAIL
    assert "does not exist" in found["gnss.device"].summary
    assert found["gnss.nmea"].status is found["gnss.fix"].status is Status.SKIP
    assert sample is None


async def test_a_path_that_is_no_tty(tmp_path: Path) -> None:
    not_a_tty = tmp_path / "ttyFAKE"
    not_a_tty.write_bytes(b"$GPRMC\r\n")
    obs = await gnss.observe_serial(SerialGnssSettings(port=str(not_a_tty)), 1.0)
    device = by_check(gnss.serial_findings(obs))["gnss.device"]
    assert device.status is Status.FAIL
    assert "not as a serial port" in device.summary


@pytest.mark.parametrize(
    ("err", "hint"),
    [(errno.EACCES, "dialout"), (errno.EBUSY, "another program"), (errno.EIO, "dmesg")],
)
def test_open_errors_name_their_cause(err: int, hint: str) -> None:
    obs = SerialObservation("/dev/ttyACM0", 9600, True, err, "some error")
    device = by_check(gnss.serial_findings(obs))["gnss.device"]
    assert device.status is Status.FAIL
    assert hint in (device.fix or "")


def test_gpsd_without_receiver_names_devices_setting() -> None:
    obs = GpsdObservation(
        "127.0.0.1:2947", release="3.22", devices=[], counters={"tpv": 0}, reading=Reading(2.0)
    )
    found = by_check(gnss.gpsd_findings(obs))
    assert found["gnss.gpsd"].status is Status.FAIL
    assert "DEVICES" in (found["gnss.gpsd"].fix or "")
    assert found["gnss.fix"].status is Status.SKIP


async def test_gpsd_not_listening() -> None:
    settings = GnssSettings(source="gpsd", gpsd=GpsdSettings(port=free_port()))
    findings, _ = await gnss.check(settings, 1.0)
    found = by_check(findings)
    assert found["gnss.gpsd"].status is Status.FAIL
    assert found["gnss.gpsd"].detail["error"] == "refused"
    assert "gpsd" in (found["gnss.gpsd"].fix or "")


@pytest.mark.gpsd
async def test_gpsd_reports_tpvs_with_a_fix(shared_data: Path) -> None:
    port = free_port()
    with Gpsfake(shared_data / "gpsd" / "bu353s4.log", port, cycle_s=0.05):
        settings = GnssSettings(source="gpsd", gpsd=GpsdSettings(port=port))
        findings, sample = await gnss.check(settings, 5.0)
    found = by_check(findings)
    assert found["gnss.gpsd"].status is Status.OK, found["gnss.gpsd"]
    assert found["gnss.gpsd"].detail["release"]
    assert found["gnss.gpsd"].detail["tpv"] >= 1
    assert found["gnss.fix"].status is Status.OK
    assert sample is not None
    assert sample.mode == 3


@pytest.mark.gpsd
async def test_gpsd_with_a_receiver_that_never_fixes(shared_data: Path) -> None:
    port = free_port()
    with Gpsfake(shared_data / "gpsd" / "tn200.log", port, cycle_s=0.05):
        settings = GnssSettings(source="gpsd", gpsd=GpsdSettings(port=port))
        findings, sample = await gnss.check(settings, 2.0)
    found = by_check(findings)
    assert found["gnss.gpsd"].status is Status.OK, found["gnss.gpsd"]
    assert found["gnss.fix"].status is Status.WARN
    assert sample is None
