"""A simulated GNSS receiver: NMEA 0183 sentences for a drive, written to a pseudo-terminal.

The agent opens the pty's slave path exactly as it opens /dev/ttyACM0 on a vehicle, so the whole
serial path (pyserial, splitter, decoder) runs for real.
"""

from __future__ import annotations

import contextlib
import os
import tty
from datetime import UTC, datetime

from fleetlink_edge.sim.route import DriveState

KNOTS_PER_MPS = 1.0 / 0.514444  # NMEA RMC speed is in knots


def _checksum(body: str) -> str:
    value = 0
    for ch in body.encode("ascii"):
        value ^= ch
    return f"{value:02X}"


def sentence(body: str) -> bytes:
    """``$<body>*<checksum>\\r\\n`` as NMEA 0183 frames every sentence."""
    return f"${body}*{_checksum(body)}\r\n".encode("ascii")


def _lat(deg: float) -> tuple[str, str]:
    d = abs(deg)
    return f"{int(d):02d}{(d - int(d)) * 60:07.4f}", "N" if deg >= 0 else "S"


def _lon(deg: float) -> tuple[str, str]:
    d = abs(deg)
    return f"{int(d):03d}{(d - int(d)) * 60:07.4f}", "E" if deg >= 0 else "W"


def nmea_epoch(state: DriveState, utc: datetime, *, alt_m: float = 35.0) -> bytes:
    """One reporting cycle: GGA, GSA and RMC for ``state`` at time ``utc``."""
    hhmmss = utc.strftime("%H%M%S") + f".{utc.microsecond // 10000:02d}"
    lat, ns = _lat(state.lat_deg)
    lon, ew = _lon(state.lon_deg)
    sats = "05,07,09,13,17,19,28,30"
    gga = f"GPGGA,{hhmmss},{lat},{ns},{lon},{ew},1,08,0.9,{alt_m:.1f},M,47.0,M,,"
    gsa = f"GPGSA,A,3,{sats},,,,,1.6,0.9,1.3"
    knots = state.speed_mps * KNOTS_PER_MPS
    rmc = (
        f"GPRMC,{hhmmss},A,{lat},{ns},{lon},{ew},{knots:.2f},{state.heading_deg:.1f},"
        f"{utc.strftime('%d%m%y')},,,A"
    )
    return sentence(gga) + sentence(gsa) + sentence(rmc)


class PtyGnss:
    """Owns a pty pair; ``write_epoch`` pushes one cycle, dropping it if nobody reads."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.counters = {"epochs": 0, "dropped": 0}

    def write_epoch(self, state: DriveState, utc: datetime | None = None) -> None:
        data = nmea_epoch(state, utc or datetime.now(UTC))
        try:
            os.write(self._master, data)
            self.counters["epochs"] += 1
        except BlockingIOError:  # the reader is stalled: a real receiver would drop too
            self.counters["dropped"] += 1

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
