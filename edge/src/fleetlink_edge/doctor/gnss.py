"""GNSS checks: a serial NMEA receiver or gpsd; the fix and its time for the clock check.

The serial receiver is read through the agent's own ``NmeaSerialSource`` (pyserial, the NMEA
decoder and its rejection counters); only the open test is done here, with ``os.open``, so a
permission or busy error is reported as such. gpsd is asked with the agent's ``?WATCH`` and
its replies go through the agent's ``GpsdJsonDecoder``. Observations are plain data; the
``*_findings`` functions that judge them are pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fleetlink_edge.config import GnssSettings, GpsdSettings, SerialGnssSettings
from fleetlink_edge.decode.gpsd_json import WATCH_COMMAND, GpsdJsonDecoder
from fleetlink_edge.decode.nmea import iso8601_ms
from fleetlink_edge.doctor.findings import Finding, fail, ok, skip, warn
from fleetlink_edge.sources.nmea_serial import NmeaSerialSource
from fleetlink_protocols.records import FixMode, Position

ENOUGH_FIXES = 3  # a steady fix: stop listening early
ENOUGH_SENTENCES = 20  # ... once this many sentences give a checksum sample
BAD_SHARE_WARN = 0.01
BAD_SHARE_FAIL = 0.10
STALE_FIX_S = 3.0  # the last fix is older than this at the end of the window: the fix was lost
_GPSD_READ = 65536
_BAD = ("rejected_bad_checksum", "rejected_malformed", "rejected_truncated", "rejected_too_long")


@dataclass(frozen=True, slots=True)
class FixSample:
    """The latest fix: the receiver's UTC time and the system clock when it arrived (ns)."""

    gnss_time_ns: int
    system_time_ns: int
    mode: int
    lat_deg: float
    lon_deg: float
    sats_used: int | None


@dataclass(frozen=True, slots=True)
class Reading:
    """What a listening window saw: position fixes, the last one and its age at the end."""

    window_s: float
    positions: int = 0
    last_fix: FixSample | None = None
    fix_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class SerialObservation:
    port: str
    baudrate: int
    exists: bool
    open_errno: int | None = None
    open_error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)  # NmeaSerialSource's
    reading: Reading | None = None


@dataclass(frozen=True, slots=True)
class GpsdObservation:
    address: str
    connect_error: str | None = None
    connect_kind: str | None = None  # "refused", "timeout", "dns", "other"
    release: str | None = None  # from gpsd's VERSION
    devices: list[str] | None = None  # from gpsd's DEVICES; None when none was seen
    counters: dict[str, int] = field(default_factory=dict)  # GpsdJsonDecoder's
    reading: Reading | None = None


# -- verdicts (pure) ------------------------------------------------------------------------------


def serial_findings(obs: SerialObservation) -> list[Finding]:
    """gnss.device, gnss.nmea and gnss.fix for a serial receiver."""
    port = obs.port
    if not obs.exists:
        fix = (
            f"plug the receiver in and check that gnss.serial.port ({port}) names it: "
            "`ls -l /dev/serial/by-id/`; a udev rule giving it a stable name such as "
            "/dev/gnss0 survives re-plugging"
        )
        return [fail("gnss.device", f"{port} does not exist", fix, port=port), *_not_checked()]
    if obs.open_error is not None:
        return [_open_failure(obs), *_not_checked()]
    c, reading = obs.counters, obs.reading or Reading(0.0)
    if c.get("opens", 0) == 0 and c.get("open_errors", 0) > 0:
        fix = (
            "gnss.serial.port must name the receiver's tty (/dev/ttyACM0, /dev/ttyUSB0, "
            "/dev/serial0 or a udev symlink to one)"
        )
        summary = f"{port} opens, but not as a serial port"
        return [fail("gnss.device", summary, fix, port=port), *_not_checked()]
    device = ok("gnss.device", f"{port} opens", port=port)
    return [device, _nmea_finding(obs, c, reading.window_s), fix_finding(reading, c["sentences"])]


def _not_checked() -> list[Finding]:
    return [skip(c, "not checked: gnss.device failed") for c in ("gnss.nmea", "gnss.fix")]


def _open_failure(obs: SerialObservation) -> Finding:
    port, err = obs.port, obs.open_errno
    if err in (errno.EACCES, errno.EPERM):
        fix = (
            f"the agent's user needs read-write access to {port}: add it to the device's group "
            "(usually dialout; the unit sets SupplementaryGroups=dialout) and run the doctor "
            "as that user (sudo -u fleetlink ...)"
        )
    elif err == errno.EBUSY:
        fix = (
            f"another program holds {port} (gpsd? ModemManager?): stop it, or read the "
            "receiver through gpsd (gnss.source = 'gpsd')"
        )
    else:
        fix = f"{port} exists but cannot be opened: re-plug the receiver and see `dmesg`"
    summary = f"{port} cannot be opened: {obs.open_error}"
    return fail("gnss.device", summary, fix, port=port, errno=err)


def _nmea_finding(obs: SerialObservation, c: dict[str, int], window_s: float) -> Finding:
    got = c.get("bytes", 0)
    facts: dict[str, Any] = {"bytes": got, "window_s": round(window_s, 2), "baudrate": obs.baudrate}
    facts |= {k: c.get(k, 0) for k in ("sentences", "garbage_bytes", *_BAD)}
    if got == 0:
        fix = (
            "the receiver sends nothing: check its power and cable, that gnss.serial.port is "
            "the receiver and not another tty, and that gpsd is not reading it at the same time"
        )
        return fail("gnss.nmea", f"no data from {obs.port} in {window_s:.1f} s", fix, **facts)
    bad = sum(c.get(k, 0) for k in _BAD)
    total = c.get("sentences", 0) + bad
    if c.get("sentences", 0) == 0:
        fix = (
            f"{got} bytes but no NMEA sentence: set gnss.serial.baudrate ({obs.baudrate}) to the "
            "receiver's rate (4800, 9600, 38400 and 115200 are common), or switch the receiver "
            "from a binary protocol (UBX, SiRF) to NMEA output"
        )
        return fail("gnss.nmea", f"{got} bytes from {obs.port}, none of it NMEA", fix, **facts)
    share = bad / total
    facts["bad_share"] = round(share, 4)
    summary = f"{total} sentences in {window_s:.1f} s, {bad} bad ({share:.0%})"
    fix = (
        "sentences fail their checksum: a noisy or loose cable, a ground loop, or receiver "
        "firmware that miscomputes them; the agent drops every one (counted as "
        "rejected_bad_checksum)"
    )
    if share >= BAD_SHARE_FAIL:
        return fail("gnss.nmea", summary, fix, **facts)
    if share >= BAD_SHARE_WARN:
        return warn("gnss.nmea", summary, fix, **facts)
    return ok("gnss.nmea", summary, **facts)


def fix_finding(reading: Reading, reports: int) -> Finding:
    """gnss.fix: ``reports`` is how many sentences or TPVs arrived (0: nothing to judge)."""
    if reports == 0:
        return skip("gnss.fix", "not checked: no GNSS data")
    last = reading.last_fix
    if last is None:
        fix = (
            "the receiver talks but has no position: give the antenna open sky (not in a "
            "garage or under a metal roof), check the antenna cable; a cold start can take "
            "several minutes"
        )
        return warn("gnss.fix", f"no fix in {reading.window_s:.1f} s", fix, positions=0)
    age_s = reading.fix_age_s or 0.0
    mode = "3D" if last.mode == FixMode.FIX_3D else "2D"
    sats = f", {last.sats_used} satellites" if last.sats_used is not None else ""
    facts = {
        "positions": reading.positions,
        "mode": last.mode,
        "sats_used": last.sats_used,
        "lat_deg": last.lat_deg,
        "lon_deg": last.lon_deg,
        "fix_time": iso8601_ms(last.gnss_time_ns),
        "fix_age_s": round(age_s, 2),
    }
    summary = f"{mode} fix{sats} at {last.lat_deg:.5f},{last.lon_deg:.5f}, {age_s:.1f} s old"
    if age_s > STALE_FIX_S:
        fix = "the receiver lost its fix during the check: check the antenna and its sky view"
        return warn("gnss.fix", summary + " (lost since)", fix, **facts)
    return ok("gnss.fix", summary, **facts)


def gpsd_findings(obs: GpsdObservation) -> list[Finding]:
    """gnss.gpsd and gnss.fix for gpsd."""
    where = obs.address
    if obs.connect_error is not None:
        fix = (
            "start gpsd (systemctl enable --now gpsd.socket gpsd) or correct gnss.gpsd.host "
            "and gnss.gpsd.port"
        )
        summary = f"gpsd {where} unreachable: {obs.connect_error}"
        return [
            fail("gnss.gpsd", summary, fix, address=where, error=obs.connect_kind),
            skip("gnss.fix", "not checked: gnss.gpsd failed"),
        ]
    c, reading = obs.counters, obs.reading or Reading(0.0)
    facts = {"address": where, "release": obs.release, "devices": obs.devices, "tpv": c["tpv"]}
    if obs.release is None:
        fix = f"{where} is not gpsd: check gnss.gpsd.port (gpsd listens on 2947)"
        summary = f"{where} accepts connections but does not speak gpsd"
        gpsd = fail("gnss.gpsd", summary, fix, **facts)
    elif c["tpv"] == 0:
        fix = (
            "gpsd has no receiver: plug it in, or name it in /etc/default/gpsd "
            '(DEVICES="/dev/ttyACM0") and restart gpsd; `gpspipe -w` shows what gpsd reports'
        )
        if obs.devices:
            fix = f"gpsd's receiver {', '.join(obs.devices)} is silent: re-plug it; see `gpsmon`"
        summary = f"gpsd {where} sent no TPV in {reading.window_s:.1f} s"
        gpsd = fail("gnss.gpsd", summary, fix, **facts)
    else:
        source = ", ".join(obs.devices) if obs.devices else "its receiver"
        summary = f"gpsd {obs.release} at {where}: {c['tpv']} TPVs from {source}"
        gpsd = ok("gnss.gpsd", summary, **facts)
    return [gpsd, fix_finding(reading, c["tpv"])]


# -- probes (I/O) ---------------------------------------------------------------------------------


async def check(settings: GnssSettings, timeout_s: float) -> tuple[list[Finding], FixSample | None]:
    """Run the configured source's checks; the fix, if any, goes on to the clock check."""
    if settings.source == "none":
        return [skip("gnss", "GNSS is off (gnss.source = 'none')")], None
    if settings.source == "serial":
        serial_obs = await observe_serial(settings.serial, timeout_s)
        reading = serial_obs.reading
        findings = serial_findings(serial_obs)
    else:
        gpsd_obs = await observe_gpsd(settings.gpsd, timeout_s)
        reading = gpsd_obs.reading
        findings = gpsd_findings(gpsd_obs)
    return findings, reading.last_fix if reading is not None else None


class _Tracker:
    """Positions seen while listening, stamped with the system clock when they arrived."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.start_s = self._loop.time()
        self.positions = 0
        self.last: FixSample | None = None
        self._last_at_s = 0.0

    def saw(self, p: Position) -> None:
        self.positions += 1
        self._last_at_s = self._loop.time()
        self.last = FixSample(
            p.ts_wall_ns, time.time_ns(), int(p.mode), p.lat_deg, p.lon_deg, p.sats_used
        )

    def reading(self) -> Reading:
        now_s = self._loop.time()
        age = None if self.last is None else now_s - self._last_at_s
        return Reading(now_s - self.start_s, self.positions, self.last, age)


async def observe_serial(settings: SerialGnssSettings, timeout_s: float) -> SerialObservation:
    """Open the receiver like the agent does and listen for up to ``timeout_s``."""
    port = settings.port
    if not await asyncio.to_thread(os.path.exists, port):
        return SerialObservation(port, settings.baudrate, exists=False)
    failure = await asyncio.to_thread(_open_error, port)
    if failure is not None:
        return SerialObservation(port, settings.baudrate, True, failure.errno, failure.strerror)
    source = NmeaSerialSource(settings)
    tracker = _Tracker()

    def enough() -> bool:
        return (
            tracker.positions >= ENOUGH_FIXES and source.counters["sentences"] >= ENOUGH_SENTENCES
        )

    await _listen(source.positions(), tracker, timeout_s, enough)
    return SerialObservation(
        port, settings.baudrate, True, counters=dict(source.counters), reading=tracker.reading()
    )


def _open_error(port: str) -> OSError | None:
    """Whether ``port`` opens as the agent opens it (read-write, no controlling tty)."""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc
    os.close(fd)
    return None


async def _listen(
    positions: AsyncIterator[Position],
    tracker: _Tracker,
    timeout_s: float,
    enough: Callable[[], bool],
) -> None:
    """Consume ``positions`` until ``enough()`` or ``timeout_s``; closes the iterator."""
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                async for position in positions:
                    tracker.saw(position)
                    if enough():
                        break
    finally:
        aclose = getattr(positions, "aclose", None)
        if aclose is not None:
            await aclose()


async def observe_gpsd(settings: GpsdSettings, timeout_s: float) -> GpsdObservation:
    """Connect to gpsd, send the agent's WATCH, and read its reports for up to ``timeout_s``."""
    address = f"{settings.host}:{settings.port}"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(settings.host, settings.port)
    except TimeoutError:
        return GpsdObservation(address, f"no answer in {timeout_s:g} s", "timeout")
    except OSError as exc:
        return GpsdObservation(address, str(exc), _connect_kind(exc))
    decoder, meta, tracker = GpsdJsonDecoder(), _GpsdMeta(), _Tracker()
    try:
        writer.write(WATCH_COMMAND)
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while tracker.positions < ENOUGH_FIXES and (data := await reader.read(_GPSD_READ)):
                    meta.feed(data)
                    for position in decoder.feed(data):
                        tracker.saw(position)
    except OSError as exc:
        return GpsdObservation(address, f"connection lost: {exc}", "other")
    finally:
        writer.close()
    return GpsdObservation(
        address, None, None, meta.release, meta.devices, dict(decoder.counters), tracker.reading()
    )


def _connect_kind(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, socket.gaierror):
        return "dns"
    return "other"


class _GpsdMeta:
    """gpsd's VERSION release and its receivers' paths (DEVICES, DEVICE), from the lines that
    carry them; the partial line kept is bounded."""

    def __init__(self) -> None:
        self.release: str | None = None
        self.devices: list[str] | None = None
        self._partial = b""

    def feed(self, data: bytes) -> None:
        *lines, rest = (self._partial + data).split(b"\n")
        self._partial = rest[-_GPSD_READ:]
        for line in lines:
            if b'"class":"VERSION"' in line or b'"class":"DEVICE' in line:
                with contextlib.suppress(ValueError):
                    self._take(json.loads(line))

    def _take(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("class")
        if kind == "VERSION" and isinstance(obj.get("release"), str):
            self.release = obj["release"]
        elif kind == "DEVICES" and isinstance(obj.get("devices"), list):
            self.devices = [
                str(d["path"]) for d in obj["devices"] if isinstance(d, dict) and "path" in d
            ]
        elif kind == "DEVICE" and isinstance(obj.get("path"), str):
            known = self.devices or []
            self.devices = known if obj["path"] in known else [*known, obj["path"]]
