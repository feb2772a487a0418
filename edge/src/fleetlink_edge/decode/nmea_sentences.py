"""NMEA 0183 sentence bodies -> what each says about the current fix (pure; used by nmea.py).

One function per sentence type takes the comma-split fields (field 0 is the address, "GPRMC")
and returns an ``Update``; a field that cannot be parsed raises ValueError, which the decoder
counts as a malformed sentence. Field numbers follow NMEA 0183 4.11 and gpsd's NMEA notes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from fleetlink_protocols.records import FixMode

KNOTS_TO_MPS = 1852.0 / 3600.0  # RMC and VTG speeds are in knots: 1 kn = 0.514444 m/s
KMH_TO_MPS = 1.0 / 3.6

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")  # no exponents, no nan/inf, no '_'
_ANGLE = re.compile(r"\d+(?:\.\d*)?")  # NMEA ddmm.mmmm / dddmm.mmmm
_HHMMSS = re.compile(r"(\d\d)(\d\d)(\d\d)(?:\.(\d{0,9}))?")
_FIX_FAA = set("ADPRF")  # FAA mode letters of a GNSS fix: autonomous, differential, precise, RTK


@dataclass(slots=True)
class Update:
    """What one sentence states; None for what it does not say."""

    stamp_ns: int | None = None  # UTC time of day that marks the cycle, ns since midnight
    timed: bool = True  # the stamp may date the fix (not RMC's with the warning flag)
    closes: bool = True  # may be learned as the sentence that closes a cycle (not ZDA)
    date: date | None = None  # from RMC or ZDA, before any rollover correction
    mode: FixMode | None = None  # stated outright (GSA, GGA, GNS, or an invalid-data flag)
    valid: bool = False  # a valid fix of unstated dimension (RMC, GLL, GGA without altitude)
    lat_deg: float | None = None
    lon_deg: float | None = None
    alt_msl_m: float | None = None
    speed_mps: float | None = None
    track_deg: float | None = None
    hdop: float | None = None
    sats_used: int | None = None  # GGA/GNS count
    used: frozenset[tuple[str, str]] | None = None  # GSA: (constellation, PRN) used in the fix
    in_view: tuple[str, int] | None = None  # GSV: (talker, satellites in view)


def _get(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def number(text: str) -> float | None:
    """A decimal field; None when empty; ValueError for anything else."""
    if not text:
        return None
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def integer(text: str) -> int | None:
    value = number(text)
    return None if value is None else int(value)


def angle(value: str, hemisphere: str, positive: str, negative: str, limit: int) -> float | None:
    """NMEA ``(d)ddmm.mmmm`` plus hemisphere letter -> signed degrees; None when empty."""
    if not value:
        return None
    if not _ANGLE.fullmatch(value) or hemisphere not in (positive, negative):
        raise ValueError(f"bad angle: {value!r} {hemisphere!r}")
    raw = float(value)
    degrees = int(raw // 100)
    minutes = raw - degrees * 100
    if minutes >= 60.0 or degrees + minutes / 60.0 > limit:
        raise ValueError(f"angle out of range: {value!r}")
    result = degrees + minutes / 60.0
    return -result if hemisphere == negative else result


def time_of_day_ns(text: str) -> int | None:
    """``hhmmss[.sss]`` -> ns since midnight; None when empty or not a time (receivers without
    a fix send garbage times; gpsd drops the time and keeps the rest)."""
    m = _HHMMSS.fullmatch(text)
    if m is None:
        return None
    hh, mm, ss = int(m[1]), int(m[2]), int(m[3])
    if hh > 23 or mm > 59 or ss > 60:  # 60: a leap second
        return None
    fraction = int((m[4] or "").ljust(9, "0"))
    return ((hh * 60 + mm) * 60 + ss) * 1_000_000_000 + fraction


def ddmmyy(text: str) -> date | None:
    """RMC's two-digit-year date; years 80-99 are 19xx (GPS began in 1980), 00-79 are 20xx."""
    if len(text) != 6 or not text.isdigit():
        return None
    day, month, yy = int(text[:2]), int(text[2:4]), int(text[4:])
    try:
        return date(1900 + yy if yy >= 80 else 2000 + yy, month, day)
    except ValueError:
        return None


def _position(u: Update, fields: list[str], first: int) -> bool:
    """Lat/lon from ``fields[first:first + 4]``; False when either is missing."""
    u.lat_deg = angle(_get(fields, first), _get(fields, first + 1), "N", "S", 90)
    u.lon_deg = angle(_get(fields, first + 2), _get(fields, first + 3), "E", "W", 180)
    return u.lat_deg is not None and u.lon_deg is not None


def _no_fix(u: Update) -> Update:
    u.mode = FixMode.NO_FIX
    u.lat_deg = u.lon_deg = u.alt_msl_m = None
    return u


def rmc(fields: list[str]) -> Update:
    """RMC: time, status A/V, lat, N/S, lon, E/W, speed (knots), track, ddmmyy, ..., FAA mode."""
    u = Update(stamp_ns=time_of_day_ns(_get(fields, 1)))
    faa = _get(fields, 12)
    if _get(fields, 2) not in ("A", "D") or faa == "N" or not _position(u, fields, 3):
        # With the warning flag the time still marks the cycle, but many receivers send a
        # bogus one (gpsd: MTK3301, RGM-3800): it dates nothing.
        u.timed = False
        return _no_fix(u)
    u.valid = True
    knots = number(_get(fields, 7))
    u.speed_mps = None if knots is None else knots * KNOTS_TO_MPS
    u.track_deg = number(_get(fields, 8))
    u.date = ddmmyy(_get(fields, 9))
    u.timed = u.date is not None  # a time without its date (e.g. "2208-1") is not trusted
    return u


def gga(fields: list[str]) -> Update:
    """GGA: time, lat, N/S, lon, E/W, quality, satellites used, HDOP, altitude MSL, M, ..."""
    if len(fields) < 10:
        raise ValueError("short GGA")
    u = Update(stamp_ns=time_of_day_ns(fields[1]))
    quality, sats = integer(fields[6]), integer(fields[7])
    u.hdop = number(fields[8])
    u.sats_used = sats
    if not quality or not _position(u, fields, 2) or (sats is not None and sats < 3):
        return _no_fix(u)
    u.alt_msl_m = number(fields[9])
    if u.alt_msl_m is None:
        u.valid = True  # SiRF up to 2.2 leaves the altitude empty: 2D at least
    else:
        u.mode = FixMode.FIX_3D if sats is None or sats >= 4 else FixMode.FIX_2D
    return u


def gns(fields: list[str]) -> Update:
    """GNS: time, lat, N/S, lon, E/W, mode letters (one per constellation), sats, HDOP, alt..."""
    if len(fields) < 10:
        raise ValueError("short GNS")
    u = Update(stamp_ns=time_of_day_ns(fields[1]))
    sats = integer(fields[7])
    u.hdop = number(fields[8])
    u.sats_used = sats
    if not set(fields[6]) - {"N"} or not _position(u, fields, 2):
        return _no_fix(u)
    u.alt_msl_m = number(fields[9])
    has_3d = u.alt_msl_m is not None and (sats is None or sats >= 4)
    u.mode = FixMode.FIX_3D if has_3d else FixMode.FIX_2D
    return u


def gll(fields: list[str]) -> Update:
    """GLL: lat, N/S, lon, E/W, time, status A/V, FAA mode."""
    if len(fields) < 7:
        raise ValueError("short GLL")
    u = Update(stamp_ns=time_of_day_ns(fields[5]))
    if fields[6] != "A" or _get(fields, 7) == "N" or not _position(u, fields, 1):
        return _no_fix(u)
    u.valid = True
    return u


def vtg(fields: list[str]) -> Update:
    """VTG: track true, T, track magnetic, M, speed knots, N, speed km/h, K, FAA mode."""
    if len(fields) < 8:
        raise ValueError("short VTG")
    u = Update()
    if _get(fields, 9)[:1] in ("N", "E"):
        return u  # not valid, or dead reckoning only: nothing to use
    u.track_deg = number(fields[1])
    knots, kmh = number(fields[5]), number(fields[7])
    if knots is not None:
        u.speed_mps = knots * KNOTS_TO_MPS
    elif kmh is not None:
        u.speed_mps = kmh * KMH_TO_MPS
    return u


def gsa(fields: list[str]) -> Update:
    """GSA: A/M, fix type 1/2/3, up to 12 PRNs used, PDOP, HDOP, VDOP[, NMEA 4.10 system id]."""
    if len(fields) < 18:
        raise ValueError("short GSA")  # e.g. the i.Trek M3's "$GPGSA,A,1,,,,*32"
    u = Update()
    fix_type = fields[2]
    if fix_type in ("1", "2", "3"):
        u.mode = FixMode(int(fix_type))
    system = fields[18] if len(fields) == 19 else fields[0][:2]
    prns = fields[3:15] if len(fields) == 19 else fields[3:-3]
    u.used = frozenset((system, prn.lstrip("0")) for prn in prns if prn.strip("0"))
    u.hdop = number(fields[16] if len(fields) == 19 else fields[-2])
    return u


def gsv(fields: list[str]) -> Update:
    """GSV: sentences in group, sentence number, satellites in view, then 4 x (PRN, el, az, SNR)."""
    if len(fields) < 4:
        raise ValueError("short GSV")
    in_view = integer(fields[3])
    return Update(in_view=None if in_view is None else (fields[0][:2], in_view))


def zda(fields: list[str]) -> Update:
    """ZDA: time, day, month, 4-digit year, local zone hours, minutes."""
    if len(fields) < 5:
        raise ValueError("short ZDA")
    tod = time_of_day_ns(fields[1])
    if tod is None or not all(fields[2:5]):
        return Update()  # receivers send empty ZDAs before they know the time
    day, month, year = integer(fields[2]), integer(fields[3]), integer(fields[4])
    if day is None or month is None or year is None or not 1980 <= year <= 2200:
        raise ValueError("bad ZDA date")
    return Update(stamp_ns=tod, closes=False, date=date(year, month, day))


HANDLERS: dict[str, Callable[[list[str]], Update]] = {
    "RMC": rmc,
    "GGA": gga,
    "GNS": gns,
    "GLL": gll,
    "VTG": vtg,
    "GSA": gsa,
    "GSV": gsv,
    "ZDA": zda,
}
