"""gpsd's JSON protocol, sans-I/O: bytes from a gpsd socket in, Positions out.

Asked with ``?WATCH={"enable":true,"json":true}``, gpsd sends one JSON object per line
(https://gpsd.gitlab.io/gpsd/gpsd_json.html): VERSION, DEVICES and WATCH first, then a TPV
(time-position-velocity) per reporting cycle and a SKY (satellites, DOPs) when the sky changes.
A TPV with a 2D/3D fix, a time and a position becomes a Position; the latest SKY lends it the
HDOP and the number of satellites used. Every line that is not that is counted, never raised.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetlink_protocols.records import FixMode, Position

WATCH_COMMAND = b'?WATCH={"enable":true,"json":true}\n'
# gpsd's longest line is a SKY listing every satellite; 64 KiB is many times that.
MAX_LINE_BYTES = 64 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

COUNTERS = (
    "lines",  # complete JSON lines received
    "tpv",
    "sky",
    "fixes",  # TPVs that became a Position
    "no_fix",  # TPVs without a dated 2D/3D position (gpsd's intermediate and no-fix reports)
    "ignored",  # other classes: VERSION, DEVICES, WATCH, DEVICE, ERROR, GST, ATT...
    "rejected_malformed",  # not JSON, not an object, or fields of the wrong type or range
    "rejected_too_long",
)


def new_counters() -> dict[str, int]:
    return dict.fromkeys(COUNTERS, 0)


def _reject_constant(name: str) -> float:
    raise ValueError(f"JSON constant {name} is not a number")  # NaN, Infinity


def _number(obj: dict[str, Any], key: str, low: float, high: float) -> float | None:
    """A finite number within [low, high], None when absent; ValueError otherwise."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} is not a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{key} out of range: {value}")
    return float(value)


def parse_time_ns(text: object) -> int:
    """gpsd's ``2034-08-16T03:07:19.000Z`` -> UTC ns since the epoch; ValueError if malformed."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError("time is not an ISO-8601 UTC string")
    moment = datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


class GpsdJsonDecoder:
    """Incremental: ``feed(bytes)`` returns the Positions completed by those bytes.

    Lines are bounded by ``max_line``; ``counters`` (see COUNTERS) may be shared with the source
    that owns the connection.
    """

    def __init__(
        self, *, max_line: int = MAX_LINE_BYTES, counters: dict[str, int] | None = None
    ) -> None:
        self.counters = new_counters() if counters is None else counters
        self._max_line = max_line
        self._pending = bytearray()
        self._skipping = False  # inside an over-long line: drop up to its end
        self._hdop: float | None = None
        self._sats_used: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete line (never more than ``max_line``)."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[Position]:
        out: list[Position] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
            elif len(self._pending) + end - start > self._max_line:
                self.counters["rejected_too_long"] += 1
            else:
                self._pending += data[start:end]
                self._line(bytes(self._pending), out)
            self._pending.clear()
            start = end + 1
        rest = len(data) - start
        if not self._skipping and len(self._pending) + rest > self._max_line:
            self.counters["rejected_too_long"] += 1
            self._pending.clear()
            self._skipping = True
        elif not self._skipping:
            self._pending += data[start:]
        return out

    def reset(self) -> None:
        """A new connection: forget the partial line and the sky of the old one."""
        self._pending.clear()
        self._skipping = False
        self._hdop = self._sats_used = None

    def _line(self, line: bytes, out: list[Position]) -> None:
        if not line.strip():
            return
        self.counters["lines"] += 1
        try:
            obj = json.loads(line, parse_constant=_reject_constant)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            kind = obj.get("class")
            if kind == "TPV":
                self.counters["tpv"] += 1
                position = self._tpv(obj)
                if position is None:
                    self.counters["no_fix"] += 1
                else:
                    self.counters["fixes"] += 1
                    out.append(position)
            elif kind == "SKY":
                self.counters["sky"] += 1
                self._sky(obj)
            else:
                self.counters["ignored"] += 1
        except (ValueError, TypeError, OverflowError):  # JSONDecodeError is a ValueError
            self.counters["rejected_malformed"] += 1

    def _tpv(self, obj: dict[str, Any]) -> Position | None:
        mode = obj.get("mode", 0)
        if mode not in (0, 1, 2, 3) or isinstance(mode, bool):
            raise ValueError(f"bad mode {mode!r}")
        lat = _number(obj, "lat", -90.0, 90.0)
        lon = _number(obj, "lon", -180.0, 180.0)
        # gpsd 3.20 and later say altMSL; older ones only alt (also above mean sea level).
        alt = _number(obj, "altMSL" if "altMSL" in obj else "alt", -1e5, 1e6)
        speed = _number(obj, "speed", 0.0, 1e5)
        track = _number(obj, "track", 0.0, 360.0)
        if mode < FixMode.FIX_2D or lat is None or lon is None or "time" not in obj:
            return None
        return Position(
            ts_wall_ns=parse_time_ns(obj["time"]),
            lat_deg=lat,
            lon_deg=lon,
            mode=FixMode(mode),
            alt_msl_m=alt,
            speed_mps=speed,
            heading_deg=track,
            hdop=self._hdop,
            sats_used=self._sats_used,
        )

    def _sky(self, obj: dict[str, Any]) -> None:
        hdop = _number(obj, "hdop", 0.0, 100.0)
        used = obj.get("uSat")  # gpsd 3.21 and later count for us
        satellites = obj.get("satellites")
        if used is None and isinstance(satellites, list):
            used = sum(1 for sat in satellites if isinstance(sat, dict) and sat.get("used") is True)
        if used is not None and (isinstance(used, bool) or not isinstance(used, int) or used < 0):
            raise ValueError(f"bad satellites used {used!r}")
        self._hdop = hdop if hdop is not None else self._hdop
        self._sats_used = used if used is not None else self._sats_used
